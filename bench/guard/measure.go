package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"
)

// pair is a hot-path case and its floor, as benchmark functions.
type pair struct {
	name     string
	fields   int
	reported bool
	run      func(b *testing.B)
	floor    func(b *testing.B)
}

// settings says how to measure.
type settings struct {
	rounds    int
	benchtime time.Duration // per round, for each of a case and its floor
	slices    int           // the case and its floor alternate this many times a round
	procs     int           // GOMAXPROCS while measuring; 0 leaves it
	progress  io.Writer     // one line per round, or nil
}

// sample is benchmark runs added up: the time, iterations and allocations.
type sample struct {
	ns, n, allocs float64
}

func (s *sample) add(t sample) { s.ns, s.n, s.allocs = s.ns+t.ns, s.n+t.n, s.allocs+t.allocs }

func (s sample) nsPerOp() float64     { return s.ns / s.n }
func (s sample) allocsPerOp() float64 { return s.allocs / s.n }

// measure runs every pair for s.rounds rounds. In a round, a case and its
// floor run in turn s.slices times each, for benchtime/slices a turn, and
// the round compares their totals: a slow spell of the shared machine that
// lasts longer than a turn hits both sides alike, and one that lasts
// shorter is averaged out. Which side starts alternates from turn to turn.
// Every function first runs untimed, to warm caches, pools and the CPU's
// frequency, and to find how many iterations make a turn; the turns then
// run that many, so that a turn is one run, not testing's search for a
// count.
func measure(pairs []pair, s settings) ([]Measurement, error) {
	restore, err := setBenchtime(s.benchtime)
	if err != nil {
		return nil, err
	}
	defer restore()
	if s.procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(s.procs))
	}
	slices := max(s.slices, 1)
	turn := max(s.benchtime/time.Duration(slices), time.Millisecond)

	// Warm up, and size the turns.
	type counts struct{ run, floor int }
	ns := make([]counts, len(pairs))
	for i, p := range pairs {
		for _, side := range []struct {
			f func(*testing.B)
			n *int
		}{{p.run, &ns[i].run}, {p.floor, &ns[i].floor}} {
			if err := setBenchtimeTo(turn.String()); err != nil {
				return nil, err
			}
			t, err := run(p.name, side.f)
			if err != nil {
				return nil, err
			}
			*side.n = max(int(float64(turn)/t.nsPerOp()), 1)
		}
	}

	ms := make([]Measurement, len(pairs))
	for i, p := range pairs {
		ms[i] = Measurement{Case: p.name, Fields: p.fields, Reported: p.reported}
	}
	for round := range s.rounds {
		for i, p := range pairs {
			var c, f sample
			for k := range slices {
				first, second := &c, &f
				ff, sf := p.run, p.floor
				fn, sn := ns[i].run, ns[i].floor
				if (round+k)%2 == 1 {
					first, second, ff, sf, fn, sn = second, first, sf, ff, sn, fn
				}
				for _, side := range []struct {
					into *sample
					f    func(*testing.B)
					n    int
				}{{first, ff, fn}, {second, sf, sn}} {
					if err := setBenchtimeTo(fmt.Sprintf("%dx", side.n)); err != nil {
						return nil, err
					}
					t, err := run(p.name, side.f)
					if err != nil {
						return nil, err
					}
					side.into.add(t)
				}
			}
			ms[i].Rounds = append(ms[i].Rounds, Round{NsPerOp: c.nsPerOp(), FloorNsPerOp: f.nsPerOp(), AllocsPerOp: c.allocsPerOp(), FloorAllocsPerOp: f.allocsPerOp()})
			if s.progress != nil {
				fmt.Fprintf(s.progress, "round %d/%d %-16s %9.1f ns/op  floor %9.1f ns/op  ratio %.3f\n",
					round+1, s.rounds, p.name, c.nsPerOp(), f.nsPerOp(), c.nsPerOp()/f.nsPerOp())
			}
		}
	}
	return ms, nil
}

// run measures f once with testing.Benchmark, after a garbage collection so
// that each run starts from the same heap state.
func run(name string, f func(b *testing.B)) (sample, error) {
	runtime.GC()
	r := testing.Benchmark(f)
	if r.N <= 0 || r.T <= 0 {
		return sample{}, fmt.Errorf("guard: benchmark %s failed (run the benchmarks in ./bench to see why)", name)
	}
	return sample{ns: float64(r.T.Nanoseconds()), n: float64(r.N), allocs: float64(r.MemAllocs)}, nil
}

// setBenchtime sets how long testing.Benchmark runs a function, and returns
// a function that puts the old value back. The testing flags must be
// registered (testing.Init, or a test binary).
func setBenchtime(d time.Duration) (restore func(), err error) {
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return nil, fmt.Errorf("guard: testing flags are not registered (call testing.Init)")
	}
	old := f.Value.String()
	if err := f.Value.Set(d.String()); err != nil {
		return nil, err
	}
	return func() { f.Value.Set(old) }, nil
}

// setBenchtimeTo sets the registered test.benchtime flag to v: a duration,
// or a count of iterations such as "1000x".
func setBenchtimeTo(v string) error {
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return fmt.Errorf("guard: testing flags are not registered (call testing.Init)")
	}
	return f.Value.Set(v)
}
