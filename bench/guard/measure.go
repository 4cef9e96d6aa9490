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
	name   string
	fields int
	run    func(b *testing.B)
	floor  func(b *testing.B)
}

// settings says how to measure.
type settings struct {
	rounds    int
	benchtime time.Duration // per run of a case or a floor
	procs     int           // GOMAXPROCS while measuring; 0 leaves it
	progress  io.Writer     // one line per round, or nil
}

// sample is one testing.Benchmark run reduced to per-op figures.
type sample struct {
	ns, allocs float64
}

// measure runs every pair for s.rounds rounds. In each round each case runs
// right next to its own floor, the two in alternating order from round to
// round, so that a slow spell of the machine, or a drift over the run, hits
// both sides of a ratio alike. Every function runs once first, untimed, to
// warm caches, pools and the CPU's frequency.
func measure(pairs []pair, s settings) ([]Measurement, error) {
	restore, err := setBenchtime(s.benchtime)
	if err != nil {
		return nil, err
	}
	defer restore()
	if s.procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(s.procs))
	}

	warm, err := setBenchtime(max(s.benchtime/4, time.Millisecond))
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		if _, err := run(p.name, p.run); err != nil {
			return nil, err
		}
		if _, err := run(p.name+" floor", p.floor); err != nil {
			return nil, err
		}
	}
	warm()

	ms := make([]Measurement, len(pairs))
	for i, p := range pairs {
		ms[i] = Measurement{Case: p.name, Fields: p.fields}
	}
	for round := range s.rounds {
		for i, p := range pairs {
			var c, f sample
			var err error
			if round%2 == 0 {
				if c, err = run(p.name, p.run); err == nil {
					f, err = run(p.name+" floor", p.floor)
				}
			} else {
				if f, err = run(p.name+" floor", p.floor); err == nil {
					c, err = run(p.name, p.run)
				}
			}
			if err != nil {
				return nil, err
			}
			ms[i].Rounds = append(ms[i].Rounds, Round{NsPerOp: c.ns, FloorNsPerOp: f.ns, AllocsPerOp: c.allocs, FloorAllocsPerOp: f.allocs})
			if s.progress != nil {
				fmt.Fprintf(s.progress, "round %d/%d %-16s %9.1f ns/op  floor %9.1f ns/op  ratio %.3f\n",
					round+1, s.rounds, p.name, c.ns, f.ns, c.ns/f.ns)
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
	return sample{
		ns:     float64(r.T.Nanoseconds()) / float64(r.N),
		allocs: float64(r.MemAllocs) / float64(r.N),
	}, nil
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
