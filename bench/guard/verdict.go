package main

import (
	"fmt"
	"math"
	"slices"
)

// allocSlack is how far above the allocation budget a median may be and
// still pass: allocations are whole numbers per call, and what shows as a
// fraction is amortised (a pool refilled after a garbage collection, the
// runtime's own), not the hot path's.
const allocSlack = 0.05

// Budget is what the hot path may cost relative to its floor.
type Budget struct {
	Ratio          float64 `json:"ratio"`            // median time ratio to the floor, at most
	AllocsPerField float64 `json:"allocs_per_field"` // median allocations per field, at most
	// Cases holds ratios that replace Ratio for the cases they name: a
	// looser ceiling for a case that does not meet Ratio yet, so that a
	// regression still fails. A case judged by its own ceiling and over
	// Ratio passes, and its Result says it is over the target.
	Cases map[string]float64 `json:"cases,omitempty"`
}

// ratioFor returns the ratio the case named c is judged by.
func (b Budget) ratioFor(c string) float64 {
	if r, ok := b.Cases[c]; ok {
		return r
	}
	return b.Ratio
}

// Round is one paired measurement: a case and its floor, run one right
// after the other.
type Round struct {
	NsPerOp          float64 `json:"ns_per_op"`
	FloorNsPerOp     float64 `json:"floor_ns_per_op"`
	AllocsPerOp      float64 `json:"allocs_per_op"`
	FloorAllocsPerOp float64 `json:"floor_allocs_per_op"`
}

// Measurement is every round of one case. One op handles Fields fields. A
// Reported case is judged and printed but does not decide the verdict.
type Measurement struct {
	Case     string  `json:"case"`
	Fields   int     `json:"fields"`
	Reported bool    `json:"reported,omitempty"`
	Rounds   []Round `json:"rounds"`
}

// Result is the verdict on one case. Every figure is a median over its
// valid rounds; RatioMin and RatioMax show their spread. Pass says whether
// the case is within budget, also for a Reported one.
type Result struct {
	Case                string   `json:"case"`
	Fields              int      `json:"fields"`
	Reported            bool     `json:"reported,omitempty"`
	Rounds              int      `json:"rounds"`
	Ratio               float64  `json:"ratio"`
	RatioMin            float64  `json:"ratio_min"`
	RatioMax            float64  `json:"ratio_max"`
	NsPerOp             float64  `json:"ns_per_op"`
	FloorNsPerOp        float64  `json:"floor_ns_per_op"`
	NsPerField          float64  `json:"ns_per_field"`
	AllocsPerField      float64  `json:"allocs_per_field"`
	FloorAllocsPerField float64  `json:"floor_allocs_per_field"`
	Budget              float64  `json:"budget"`                // the ratio it was judged by
	OverTarget          bool     `json:"over_target,omitempty"` // within its own ceiling, over the Budget's Ratio
	Pass                bool     `json:"pass"`
	Reasons             []string `json:"reasons,omitempty"`
}

// Verdict is the guard's decision over all cases.
type Verdict struct {
	Pass    bool     `json:"pass"`
	Budget  Budget   `json:"budget"`
	Results []Result `json:"results"`
	Reasons []string `json:"reasons,omitempty"` // every failing case's reasons, Reported ones excepted
}

// Judge decides, from measurements alone, whether the hot path is within
// budget. A case fails when the median of its per-round time ratios to the
// floor exceeds b.Ratio (or its ceiling in b.Cases), or the median of its allocations per field exceeds
// b.AllocsPerField (by more than allocSlack), or it has no valid round. The
// median makes a few rounds disturbed by other load irrelevant. The verdict
// fails when any case that is not Reported fails, or none is measured.
// Judge is a pure function: same measurements, same verdict.
func Judge(ms []Measurement, b Budget) Verdict {
	v := Verdict{Pass: true, Budget: b}
	judged := 0
	for _, m := range ms {
		r := judgeCase(m, b)
		if !r.Reported {
			judged++
			if !r.Pass {
				v.Pass = false
				v.Reasons = append(v.Reasons, r.Reasons...)
			}
		}
		v.Results = append(v.Results, r)
	}
	if judged == 0 {
		v.Pass = false
		v.Reasons = append(v.Reasons, "no cases were measured")
	}
	return v
}

func judgeCase(m Measurement, b Budget) Result {
	r := Result{Case: m.Case, Fields: m.Fields, Reported: m.Reported, Budget: b.ratioFor(m.Case)}
	fields := float64(max(m.Fields, 1))
	var ratios, ns, floorNs, allocs, floorAllocs []float64
	for _, rd := range m.Rounds {
		if !positive(rd.NsPerOp) || !positive(rd.FloorNsPerOp) || !nonNegative(rd.AllocsPerOp) || !nonNegative(rd.FloorAllocsPerOp) {
			continue // a failed or empty run: nothing to compare
		}
		ratios = append(ratios, rd.NsPerOp/rd.FloorNsPerOp)
		ns = append(ns, rd.NsPerOp)
		floorNs = append(floorNs, rd.FloorNsPerOp)
		allocs = append(allocs, rd.AllocsPerOp/fields)
		floorAllocs = append(floorAllocs, rd.FloorAllocsPerOp/fields)
	}
	r.Rounds = len(ratios)
	if r.Rounds == 0 {
		r.Reasons = append(r.Reasons, fmt.Sprintf("%s: no valid measurement (%d rounds, none with positive times)", m.Case, len(m.Rounds)))
		return r
	}
	r.Ratio = median(ratios)
	r.RatioMin, r.RatioMax = slices.Min(ratios), slices.Max(ratios)
	r.NsPerOp, r.FloorNsPerOp = median(ns), median(floorNs)
	r.NsPerField = r.NsPerOp / fields
	r.AllocsPerField, r.FloorAllocsPerField = median(allocs), median(floorAllocs)
	if r.Ratio > r.Budget {
		r.Reasons = append(r.Reasons, fmt.Sprintf("%s: %.2f× the floor (median of %d rounds), over the %.2f× budget", m.Case, r.Ratio, r.Rounds, r.Budget))
	} else if r.Ratio > b.Ratio {
		r.OverTarget = true
	}
	if r.AllocsPerField > b.AllocsPerField+allocSlack {
		r.Reasons = append(r.Reasons, fmt.Sprintf("%s: %.2f allocations per field, over the budget of %g", m.Case, r.AllocsPerField, b.AllocsPerField))
	}
	r.Pass = len(r.Reasons) == 0
	return r
}

func positive(x float64) bool    { return x > 0 && !math.IsInf(x, 0) }
func nonNegative(x float64) bool { return x >= 0 && !math.IsInf(x, 0) }

// median returns the median of xs, which must not be empty; it does not
// modify xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
