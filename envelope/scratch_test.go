package envelope

import (
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// A Scratch used for many values of different sizes in a row gives what
// the calls without one give, and any mix of the two interoperates.
func TestScratchSequence(t *testing.T) {
	k := newTestKey(t, 1)
	other := newTestKey(t, 2)
	lookup := func(id KeyID) (*Key, error) {
		if id == k.ID() {
			return k, nil
		}
		return other, nil
	}
	var sc Scratch
	defer sc.Release()
	for i, size := range []int{0, 1, 15, 16, 64, 200, 5000, 70 << 10, 3, 100} {
		pt := strings.Repeat(string(rune('a'+i%26)), size)
		b := Binding{Path: "F" + strings.Repeat("x", i), Subject: "s-1"}
		text, err := k.SealStringWith(&sc, pt, b)
		require.NoError(t, err)
		got, err := k.OpenString(text, b) // without a Scratch
		require.NoError(t, err)
		require.Equal(t, pt, got, "size %d", size)
		got, err = OpenStringFuncWith(&sc, text, b, lookup)
		require.NoError(t, err)
		require.Equal(t, pt, got, "size %d", size)

		bin, err := k.SealBytesWith(&sc, []byte(pt), b)
		require.NoError(t, err)
		gotB, err := OpenBytesFuncWith(&sc, bin, b, lookup)
		require.NoError(t, err)
		require.Equal(t, pt, string(gotB))
		gotB, err = OpenBytesFunc(bin, b, lookup)
		require.NoError(t, err)
		require.Equal(t, pt, string(gotB))

		// Errors leave the Scratch usable.
		_, err = OpenStringFuncWith(&sc, text, Binding{Path: "other", Subject: "s-1"}, lookup)
		require.ErrorIs(t, err, ErrTampered)
		_, err = OpenStringFuncWith(&sc, "zk1.!!!", b, lookup)
		require.ErrorIs(t, err, ErrFormat)
		_, err = OpenStringFuncWith(&sc, text, b, func(KeyID) (*Key, error) { return other, nil })
		require.ErrorIs(t, err, ErrUnknownKey)
	}
}

// The zero Scratch is ready to use, Release may be called any number of
// times, and a released Scratch works again.
func TestScratchRelease(t *testing.T) {
	k := newTestKey(t, 1)
	b := Binding{Path: "Email", Subject: "s-1"}
	var sc Scratch
	sc.Release() // nothing claimed
	for range 3 {
		text, err := k.SealStringWith(&sc, "alice@example.com", b)
		require.NoError(t, err)
		require.False(t, sc.slot == 0 && sc.pooled == nil, "a seal claims memory")
		sc.Release()
		sc.Release()
		require.Equal(t, Scratch{}, sc, "Release gives everything back")
		got, err := k.OpenString(text, b)
		require.NoError(t, err)
		require.Equal(t, "alice@example.com", got)
	}
}

// Two Scratches held at once by one goroutine pick the same slot: the
// second takes a buffer from the pool, and both work and are given back.
func TestScratchSlotBusy(t *testing.T) {
	k := newTestKey(t, 1)
	b := Binding{Path: "Email", Subject: "s-1"}
	var first, second Scratch
	t1, err := k.SealStringWith(&first, "one", b)
	require.NoError(t, err)
	t2, err := k.SealStringWith(&second, "two", b)
	require.NoError(t, err)
	require.NotZero(t, first.slot)
	require.NotNil(t, second.pooled, "the slot is taken: the pool serves")
	require.NotSame(t, first.buf(), second.buf())
	lookup := func(KeyID) (*Key, error) { return k, nil }
	o1, err := OpenStringFuncWith(&second, t1, b, lookup)
	require.NoError(t, err)
	o2, err := OpenStringFuncWith(&first, t2, b, lookup)
	require.NoError(t, err)
	require.Equal(t, []string{"one", "two"}, []string{o1, o2})
	slot := first.slot
	first.Release()
	second.Release()
	require.Zero(t, scratchSlots[slot-1].claimed.Load(), "the slot is free again")
}

// Scratches of many goroutines at once (run with -race).
func TestScratchConcurrent(t *testing.T) {
	k := newTestKey(t, 1)
	lookup := func(KeyID) (*Key, error) { return k, nil }
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sc Scratch
			defer sc.Release()
			for i := range 200 {
				b := Binding{Path: "F", Subject: string(rune('a' + g))}
				pt := strings.Repeat("v", i)
				text, err := k.SealStringWith(&sc, pt, b)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := OpenStringFuncWith(&sc, text, b, lookup)
				if err != nil || got != pt {
					t.Errorf("goroutine %d, value %d: %q, %v", g, i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// claimedSlots counts the scratch slots claimed now.
func claimedSlots() (n int) {
	for i := range scratchSlots {
		if scratchSlots[i].claimed.Load() != 0 {
			n++
		}
	}
	return n
}

// A key lookup that panics (a caller recovers) does not leave the slot of
// the open's scratch claimed: lost slots would send every later call to
// the pool.
func TestScratchGivenBackOnPanic(t *testing.T) {
	k := newTestKey(t, 1)
	s, err := k.SealString("secret", Binding{Path: "A"})
	require.NoError(t, err)
	panicking := func(KeyID) (*Key, error) { panic("keyring panicked") }
	for name, open := range map[string]func(){
		"OpenStringFunc": func() { _, _ = OpenStringFunc(s, Binding{Path: "A"}, panicking) },
		"OpenBytesFunc":  func() { _, _ = OpenBytesFunc([]byte(s), Binding{Path: "A"}, panicking) },
	} {
		before := claimedSlots()
		require.Panics(t, open, name)
		require.Equal(t, before, claimedSlots(), "%s: a slot was left claimed", name)
	}
}
