// Package coarse is a cheap clock for expiry checks on hot paths.
//
// Reading the system clock costs tens of nanoseconds on some virtual
// machines, which is a large share of a field encryption. Expiry checks of
// cached keys and verified attestations need no such precision: Now returns
// the time of the last tick of a background ticker, advanced by two ticks,
// for the cost of two atomic loads and a copy.
//
// The ticker runs only while the clock is used: it stops after a second
// without reads, and the next read restarts it (that read pays for one
// system clock read).
package coarse

import (
	"sync"
	"sync/atomic"
	"time"
)

// Granularity is the tick of the clock.
const Granularity = 5 * time.Millisecond

// lead is how far ahead of its tick the clock reads, so that it is not
// behind the true time unless the ticker is delayed by more than a tick.
const lead = 2 * Granularity

// idleTicks is how many ticks without a read stop the ticker.
const idleTicks = int(time.Second / Granularity)

var (
	mu   sync.Mutex
	used atomic.Bool
	// last is the last tick plus lead, while the ticker runs; nil when
	// it does not. Each tick stores a new value: a reader copies it.
	last atomic.Pointer[time.Time]
)

// Now returns the current time rounded up: it runs ahead of the true time
// by up to 3*Granularity, so expiries are seen slightly early, and falls
// behind it only while the ticker goroutine is delayed by more than a tick
// (a starved process), by that delay. The result has no monotonic reading.
func Now() time.Time {
	if t := last.Load(); t != nil {
		if !used.Load() {
			used.Store(true)
		}
		return *t
	}
	return start()
}

// reading returns the clock's reading for the system time t.
func reading(t time.Time) *time.Time {
	r := time.Unix(0, t.Add(lead).UnixNano())
	return &r
}

func start() time.Time {
	mu.Lock()
	defer mu.Unlock()
	used.Store(true)
	if t := last.Load(); t != nil {
		return *t
	}
	r := reading(time.Now())
	last.Store(r)
	go tick()
	return *r
}

func tick() {
	tk := time.NewTicker(Granularity)
	defer tk.Stop()
	idle := 0
	for range tk.C {
		last.Store(reading(time.Now()))
		if used.Swap(false) {
			idle = 0
			continue
		}
		if idle++; idle < idleTicks {
			continue
		}
		mu.Lock()
		if !used.Load() {
			last.Store(nil)
			mu.Unlock()
			return
		}
		mu.Unlock()
		idle = 0
	}
}
