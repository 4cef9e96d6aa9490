// Package coarse is a cheap clock for expiry checks on hot paths.
//
// Reading the system clock costs tens of nanoseconds on some virtual
// machines, which is a large share of a field encryption. Expiry checks of
// cached keys and verified attestations need no such precision: Now returns
// the time of the last tick of a background ticker, advanced by two ticks,
// for the cost of an atomic load.
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
	mu      sync.Mutex
	running atomic.Bool
	used    atomic.Bool
	last    atomic.Int64 // Unix nanoseconds: the last tick plus lead
)

// Now returns the current time rounded up: it runs ahead of the true time
// by up to 3*Granularity, so expiries are seen slightly early, and falls
// behind it only while the ticker goroutine is delayed by more than a tick
// (a starved process), by that delay. The result has no monotonic reading.
func Now() time.Time {
	if running.Load() {
		if !used.Load() {
			used.Store(true)
		}
		return time.Unix(0, last.Load())
	}
	return start()
}

func start() time.Time {
	mu.Lock()
	defer mu.Unlock()
	t := time.Now()
	last.Store(t.Add(lead).UnixNano())
	used.Store(true)
	if !running.Load() {
		running.Store(true)
		go tick()
	}
	return time.Unix(0, last.Load())
}

func tick() {
	tk := time.NewTicker(Granularity)
	defer tk.Stop()
	idle := 0
	for range tk.C {
		last.Store(time.Now().Add(lead).UnixNano())
		if used.Swap(false) {
			idle = 0
			continue
		}
		if idle++; idle < idleTicks {
			continue
		}
		mu.Lock()
		if !used.Load() {
			running.Store(false)
			mu.Unlock()
			return
		}
		mu.Unlock()
		idle = 0
	}
}
