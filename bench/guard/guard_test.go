package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/zonekey/zonekey/bench"
)

// rounds makes rounds with the given case/floor time ratios, a 100 ns
// floor, and allocs allocations per op on both sides.
func rounds(allocs float64, ratios ...float64) []Round {
	rs := make([]Round, len(ratios))
	for i, r := range ratios {
		rs[i] = Round{NsPerOp: 100 * r, FloorNsPerOp: 100, AllocsPerOp: allocs, FloorAllocsPerOp: allocs}
	}
	return rs
}

func TestJudge(t *testing.T) {
	budget := Budget{Ratio: 1.2, AllocsPerField: 1}
	tests := []struct {
		name     string
		budget   *Budget // nil: budget
		ms       []Measurement
		pass     bool
		failing  []string // cases that must fail
		reasonIn []string // substrings the reasons must hold
	}{
		{
			name: "passing figures pass",
			ms: []Measurement{
				{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.05, 1.10, 1.08)},
				{Case: "struct-decrypt", Fields: 5, Rounds: rounds(5, 1.01, 0.98, 1.15)},
			},
			pass: true,
		},
		{
			name: "exactly at the budget passes",
			ms:   []Measurement{{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.2, 1.2, 1.2)}},
			pass: true,
		},
		{
			name: "a ratio of 1.3 fails, naming the case",
			ms: []Measurement{
				{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.05, 1.1, 1.0)},
				{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.3, 1.3, 1.3)},
			},
			failing:  []string{"field-decrypt"},
			reasonIn: []string{"field-decrypt: 1.30× the floor", "1.20× budget"},
		},
		{
			name:     "2 allocations per field fail",
			ms:       []Measurement{{Case: "struct-encrypt", Fields: 5, Rounds: rounds(10, 1.0, 1.0, 1.0)}},
			failing:  []string{"struct-encrypt"},
			reasonIn: []string{"struct-encrypt: 2.00 allocations per field"},
		},
		{
			name:     "2 allocations on a single field fail",
			ms:       []Measurement{{Case: "field-encrypt", Fields: 1, Rounds: rounds(2, 1.0, 1.0, 1.0)}},
			failing:  []string{"field-encrypt"},
			reasonIn: []string{"field-encrypt: 2.00 allocations per field"},
		},
		{
			name: "amortised fractions of an allocation pass",
			ms:   []Measurement{{Case: "field-encrypt", Fields: 1, Rounds: rounds(1.02, 1.0, 1.0, 1.0)}},
			pass: true,
		},
		{
			name: "noisy rounds: a few slow ones do not fail a fast case",
			ms: []Measurement{{Case: "field-encrypt", Fields: 1,
				Rounds: rounds(1, 1.05, 2.8, 1.10, 1.02, 3.5, 1.08, 1.12, 0.97, 1.9)}},
			pass: true,
		},
		{
			name: "noisy rounds: a few fast ones do not pass a slow case",
			ms: []Measurement{{Case: "field-decrypt", Fields: 1,
				Rounds: rounds(1, 1.45, 0.9, 1.5, 1.38, 1.0, 1.6, 1.41, 1.52, 1.35)}},
			failing:  []string{"field-decrypt"},
			reasonIn: []string{"field-decrypt: 1.41× the floor (median of 9 rounds)"},
		},
		{
			name: "invalid rounds are left out",
			ms: []Measurement{{Case: "field-encrypt", Fields: 1, Rounds: append(rounds(1, 1.1, 1.1),
				Round{NsPerOp: 500, FloorNsPerOp: 0, AllocsPerOp: 1}, Round{NsPerOp: 0, FloorNsPerOp: 100})}},
			pass: true,
		},
		{
			name:     "a case without valid rounds fails",
			ms:       []Measurement{{Case: "struct-decrypt", Fields: 5, Rounds: []Round{{NsPerOp: 0, FloorNsPerOp: 0}}}},
			failing:  []string{"struct-decrypt"},
			reasonIn: []string{"struct-decrypt: no valid measurement"},
		},
		{
			name:     "no cases fail",
			ms:       nil,
			reasonIn: []string{"no cases were measured"},
		},
		{
			name: "a reported case over budget does not fail the verdict",
			ms: []Measurement{
				{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.1, 1.1, 1.1)},
				{Case: "det-encrypt", Fields: 1, Reported: true, Rounds: rounds(8, 1.6, 1.6, 1.6)},
			},
			pass:    true,
			failing: []string{"det-encrypt"}, // its Result says so
		},
		{
			name: "a judged case over budget fails beside a reported one",
			ms: []Measurement{
				{Case: "index-term", Fields: 1, Rounds: rounds(1, 1.5, 1.5, 1.5)},
				{Case: "det-encrypt", Fields: 1, Reported: true, Rounds: rounds(1, 1.0, 1.0, 1.0)},
			},
			failing:  []string{"index-term"},
			reasonIn: []string{"index-term: 1.50× the floor"},
		},
		{
			name:   "a case's own ceiling replaces the budget",
			budget: &Budget{Ratio: 1.2, AllocsPerField: 1, Cases: map[string]float64{"field-decrypt": 1.5}},
			ms: []Measurement{
				{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.4, 1.4, 1.4)},
				{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.1, 1.1, 1.1)},
			},
			pass: true,
		},
		{
			name:   "a case over its own ceiling fails, naming it",
			budget: &Budget{Ratio: 1.2, AllocsPerField: 1, Cases: map[string]float64{"field-decrypt": 1.5}},
			ms: []Measurement{
				{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.6, 1.6, 1.6)},
				{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.3, 1.3, 1.3)},
			},
			failing:  []string{"field-decrypt", "field-encrypt"},
			reasonIn: []string{"field-decrypt: 1.60× the floor (median of 3 rounds), over the 1.50× budget", "field-encrypt: 1.30× the floor (median of 3 rounds), over the 1.20× budget"},
		},
		{
			name:     "a ceiling may be stricter than the budget",
			budget:   &Budget{Ratio: 1.2, AllocsPerField: 1, Cases: map[string]float64{"struct-encrypt": 1.1}},
			ms:       []Measurement{{Case: "struct-encrypt", Fields: 5, Rounds: rounds(5, 1.15, 1.15, 1.15)}},
			failing:  []string{"struct-encrypt"},
			reasonIn: []string{"over the 1.10× budget"},
		},
		{
			name:     "reported cases alone are no verdict",
			ms:       []Measurement{{Case: "det-encrypt", Fields: 1, Reported: true, Rounds: rounds(1, 1.0)}},
			reasonIn: []string{"no cases were measured"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := budget
			if tt.budget != nil {
				b = *tt.budget
			}
			v := Judge(tt.ms, b)
			if v.Pass != tt.pass {
				t.Errorf("Pass = %v, want %v; reasons: %q", v.Pass, tt.pass, v.Reasons)
			}
			if tt.pass && len(v.Reasons) > 0 {
				t.Errorf("passing verdict with reasons %q", v.Reasons)
			}
			for _, r := range v.Results {
				if r.Reported && strings.Contains(strings.Join(v.Reasons, "\n"), r.Case+":") {
					t.Errorf("the verdict gives the reported case %s as a reason: %q", r.Case, v.Reasons)
				}
			}
			failed := map[string]bool{}
			for _, r := range v.Results {
				if !r.Pass {
					failed[r.Case] = true
				}
				if r.Pass != (len(r.Reasons) == 0) {
					t.Errorf("case %s: Pass = %v with reasons %q", r.Case, r.Pass, r.Reasons)
				}
			}
			for _, c := range tt.failing {
				if !failed[c] {
					t.Errorf("case %s passed, want it to fail", c)
				}
			}
			if len(failed) != len(tt.failing) {
				t.Errorf("failing cases %v, want %v", failed, tt.failing)
			}
			all := strings.Join(v.Reasons, "\n")
			for _, s := range tt.reasonIn {
				if !strings.Contains(all, s) {
					t.Errorf("reasons %q lack %q", v.Reasons, s)
				}
			}
		})
	}
}

func TestJudgeFigures(t *testing.T) {
	m := Measurement{Case: "struct-encrypt", Fields: 5, Rounds: []Round{
		{NsPerOp: 1100, FloorNsPerOp: 1000, AllocsPerOp: 5, FloorAllocsPerOp: 5},
		{NsPerOp: 3000, FloorNsPerOp: 1500, AllocsPerOp: 5, FloorAllocsPerOp: 5},
		{NsPerOp: 1200, FloorNsPerOp: 1100, AllocsPerOp: 5, FloorAllocsPerOp: 5},
	}}
	r := Judge([]Measurement{m}, Budget{Ratio: 1.2, AllocsPerField: 1}).Results[0]
	if want := 1.1; r.Ratio != want {
		t.Errorf("Ratio = %v, want the median %v", r.Ratio, want)
	}
	if r.RatioMin != 1200.0/1100 || r.RatioMax != 2 {
		t.Errorf("RatioMin, RatioMax = %v, %v, want %v, 2", r.RatioMin, r.RatioMax, 1200.0/1100)
	}
	if r.NsPerOp != 1200 || r.FloorNsPerOp != 1100 || r.NsPerField != 240 {
		t.Errorf("NsPerOp, FloorNsPerOp, NsPerField = %v, %v, %v, want 1200, 1100, 240", r.NsPerOp, r.FloorNsPerOp, r.NsPerField)
	}
	if r.AllocsPerField != 1 || r.FloorAllocsPerField != 1 || r.Rounds != 3 {
		t.Errorf("AllocsPerField, FloorAllocsPerField, Rounds = %v, %v, %v, want 1, 1, 3", r.AllocsPerField, r.FloorAllocsPerField, r.Rounds)
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), tt.in...)
		if got := median(in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.in[i] {
				t.Errorf("median modified its input: %v", in)
			}
		}
	}
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.budget, Budget{Ratio: 1.2, AllocsPerField: 1}) || c.rounds != 9 || c.slices != 5 || c.size != 64 || c.procs != 1 || !c.confirm || c.json {
		t.Errorf("defaults: %+v", c)
	}
	c, err = parseFlags([]string{"-budget", "1.5", "-allocs", "2", "-rounds", "11", "-json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.budget, Budget{Ratio: 1.5, AllocsPerField: 2}) || c.rounds != 11 || !c.json || c.run != nil {
		t.Errorf("parsed: %+v", c)
	}
	c, err = parseFlags([]string{"-run", "^field-"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.run == nil || !c.run.MatchString("field-encrypt") || c.run.MatchString("struct-encrypt") {
		t.Errorf("-run ^field-: %v", c.run)
	}
	c, err = parseFlags([]string{"-case-budget", "field-decrypt=1.5,index-term=1.45", "-case-budget", "field-encrypt=1.3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]float64{"field-decrypt": 1.5, "index-term": 1.45, "field-encrypt": 1.3}; !reflect.DeepEqual(c.budget.Cases, want) || c.budget.Ratio != 1.2 {
		t.Errorf("-case-budget: %+v", c.budget)
	}
	for _, args := range [][]string{{"-rounds", "0"}, {"-slices", "0"}, {"-size", "0"}, {"-budget", "0"}, {"-benchtime", "0s"}, {"-run", "("}, {"extra"},
		{"-case-budget", "field-decrypt"}, {"-case-budget", "field-decrypt=0"}, {"-case-budget", "=1.3"}, {"-case-budget", "x=abc"}, {"-case-budget", "x=-1"}, {"-case-budget", "x=NaN"}} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded", args)
		}
	}
}

// A case within its own ceiling but over the budget's ratio passes, and
// the report says it is over the target.
func TestReportOverTarget(t *testing.T) {
	v := Judge([]Measurement{
		{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.3)},
		{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.1)},
	}, Budget{Ratio: 1.2, AllocsPerField: 1, Cases: map[string]float64{"field-decrypt": 1.45, "field-encrypt": 1.4}})
	if !v.Pass {
		t.Fatalf("verdict failed: %q", v.Reasons)
	}
	if r := v.Results[0]; !r.OverTarget || r.Budget != 1.45 {
		t.Errorf("field-decrypt: OverTarget %v, Budget %v", r.OverTarget, r.Budget)
	}
	if r := v.Results[1]; r.OverTarget || r.Budget != 1.4 {
		t.Errorf("field-encrypt: OverTarget %v, Budget %v", r.OverTarget, r.Budget)
	}
	var text bytes.Buffer
	printText(&text, &report{Verdict: v})
	for _, s := range []string{"ok within its 1.45× ceiling; over the 1.20× target", "PASS", "(or its own ceiling)"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, text.String())
		}
	}
}

// A ceiling for a case the guard does not have is refused before anything
// is measured: a misspelt name must not drop a case's ceiling silently.
func TestUnknownCaseBudget(t *testing.T) {
	var stderr bytes.Buffer
	if code := run1([]string{"-case-budget", "field-decrypt=1.5,feild-encrypt=1.4"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit status %d, want 2; stderr: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"feild-encrypt", which is not a case`) {
		t.Errorf("stderr: %s", stderr.String())
	}
}

func TestReportOutput(t *testing.T) {
	v := Judge([]Measurement{
		{Case: "field-encrypt", Fields: 1, Rounds: rounds(1, 1.1)},
		{Case: "field-decrypt", Fields: 1, Rounds: rounds(1, 1.3)},
		{Case: "det-encrypt", Fields: 1, Reported: true, Rounds: rounds(8, 1.5)},
	}, Budget{Ratio: 1.2, AllocsPerField: 1})
	rep := &report{Verdict: v, Environment: environment{Go: "go1.x", CPUs: 2, GOMAXPROCS: 1, Rounds: 1, Benchtime: "1ms"}}
	var text bytes.Buffer
	printText(&text, rep)
	for _, s := range []string{"field-encrypt", "1.100", "OVER", "FAIL", "field-decrypt: 1.30× the floor", "over (reported, not judged)"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, text.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Pass    bool `json:"pass"`
		Results []struct {
			Case  string  `json:"case"`
			Ratio float64 `json:"ratio"`
		} `json:"results"`
		Environment struct {
			CPUs int `json:"cpus"`
		} `json:"environment"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Pass || len(back.Results) != 3 || back.Results[1].Case != "field-decrypt" || back.Results[1].Ratio != 1.3 || back.Environment.CPUs != 2 {
		t.Errorf("JSON report: %s", b)
	}
}

// spin busy-waits for d.
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// TestGuardRejectsSlowedCase runs the measurement machinery on a case that
// is the floor plus a busy loop as long as the floor itself, a stand-in for
// a hot path slowed down twofold, and checks that the guard fails it.
func TestGuardRejectsSlowedCase(t *testing.T) {
	if testing.Short() {
		t.Skip("measures for a few seconds")
	}
	floor := bench.NewFloor(bench.FieldSize, bench.ADSize(bench.OneFieldPath, bench.Subject(0)))
	restore, err := setBenchtime(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	per := testing.Benchmark(floor.BenchmarkSeal)
	restore()
	if per.N == 0 {
		t.Fatal("the floor benchmark failed")
	}
	d := time.Duration(per.NsPerOp())
	slowed := func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			floor.Seal()
			spin(d)
		}
	}
	ms, err := measure([]pair{{name: "slowed-encrypt", fields: 1, run: slowed, floor: floor.BenchmarkSeal}},
		settings{rounds: 5, benchtime: 40 * time.Millisecond, slices: 3, procs: 1})
	if err != nil {
		t.Fatal(err)
	}
	v := Judge(ms, Budget{Ratio: 1.2, AllocsPerField: 1})
	r := v.Results[0]
	t.Logf("slowed case: ratio %.2f (%.2f–%.2f), %.0f ns/op against %.0f; allocs/field %.2f",
		r.Ratio, r.RatioMin, r.RatioMax, r.NsPerOp, r.FloorNsPerOp, r.AllocsPerField)
	if v.Pass || r.Pass {
		t.Fatalf("the guard passed a case twice as slow as its floor: %+v", r)
	}
	if !strings.Contains(strings.Join(v.Reasons, "\n"), "slowed-encrypt: ") {
		t.Errorf("reasons do not name the case: %q", v.Reasons)
	}
	if r.AllocsPerField > 1.05 {
		t.Errorf("allocs/field = %.2f, want 1 (the floor's output only)", r.AllocsPerField)
	}
}

// TestGuardCases checks the cases the guard measures: the four encrypt and
// decrypt cases, the blind-index term and the deterministic encrypt, each
// with a floor, the last one reported only, and that each case and floor
// runs.
func TestGuardCases(t *testing.T) {
	ctx := context.Background()
	c, err := bench.Open(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cases, err := bench.HotPath(ctx, c, bench.FieldSize)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cases {
		names = append(names, c.Name)
	}
	want := []string{"field-encrypt", "field-decrypt", "struct-encrypt", "struct-decrypt", "index-term", "det-encrypt"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("cases %q, want %q", names, want)
	}
	for _, c := range cases {
		if c.Reported != (c.Name == "det-encrypt") {
			t.Errorf("case %s: Reported = %v", c.Name, c.Reported)
		}
	}
	restore, err := setBenchtime(time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	for _, c := range cases[4:] {
		for _, f := range []func(*testing.B){c.Run, c.Floor} {
			if _, err := run(c.Name, f); err != nil {
				t.Error(err)
			}
		}
	}
}
