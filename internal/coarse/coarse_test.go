package coarse

import (
	"testing"
	"time"
)

func TestNowBoundsTheTrueTime(t *testing.T) {
	for i := 0; i < 200; i++ {
		before := time.Now()
		c := Now()
		after := time.Now()
		// It may fall behind only by the ticker's scheduling delay,
		// which a loaded machine under the race detector stretches.
		if c.Before(before.Add(-50 * time.Millisecond)) {
			t.Fatalf("coarse time %v is far before the true time %v", c, before)
		}
		// Scheduling delays of the ticker add to the bound on a loaded
		// machine; allow generously, the point is it tracks the clock.
		if c.After(after.Add(3*Granularity + 50*time.Millisecond)) {
			t.Fatalf("coarse time %v is too far after the true time %v", c, after)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNowAdvances(t *testing.T) {
	a := Now()
	time.Sleep(10 * Granularity)
	b := Now()
	if !b.After(a) {
		t.Fatalf("the clock did not advance: %v then %v", a, b)
	}
}

func TestTickerStopsWhenIdleAndRestarts(t *testing.T) {
	Now()
	deadline := time.Now().Add(10 * time.Second)
	for last.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the ticker kept running without reads")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := time.Now()
	if c := Now(); c.Before(before) {
		t.Fatalf("after a restart the coarse time %v is before the true time %v", c, before)
	}
	if last.Load() == nil {
		t.Fatal("a read did not restart the ticker")
	}
}

func BenchmarkNow(b *testing.B) {
	Now()
	for b.Loop() {
		Now()
	}
}

func BenchmarkTimeNow(b *testing.B) {
	for b.Loop() {
		time.Now()
	}
}
