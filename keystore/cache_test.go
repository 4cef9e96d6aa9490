package keystore

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
)

func testDEK(t *testing.T, zone, subject string, expires time.Time) *DEK {
	t.Helper()
	key, err := envelope.NewKey(envelope.NewKeyID(), make([]byte, envelope.KeySize))
	require.NoError(t, err)
	return &DEK{Key: key, Zone: zone, Subject: subject, Generation: 1, expires: expires}
}

// requireConsistent checks that the indexes of c name only listed entries.
func requireConsistent(t *testing.T, c *lru) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.LessOrEqual(t, c.ll.Len(), c.max)
	require.Equal(t, c.ll.Len(), len(c.byID))
	for e := c.ll.Front(); e != nil; e = e.Next() {
		require.Same(t, e, c.byID[e.Value.(*entry).ID()])
	}
	for sk, e := range c.bySubject {
		d := e.Value.(*entry).DEK
		require.Same(t, e, c.byID[d.ID()], "subject index names an evicted entry")
		require.Equal(t, nameKey(d.Zone, d.Subject), sk)
	}
}

func TestLRU(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)

	t.Run("GetAndCurrent", func(t *testing.T) {
		c := newLRU(4)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true, c.mark())
		require.Same(t, a, c.get(a.ID(), now))
		require.Same(t, a, c.current("eu", "alice", now))
		require.Nil(t, c.current("us", "alice", now))
		require.Nil(t, c.current("eu", "alic", now))
		require.Nil(t, c.get(envelope.NewKeyID(), now))

		// A DEK added for decryption only is not current.
		b := testDEK(t, "eu", "bob", later)
		c.add(b, false, c.mark())
		require.Same(t, b, c.get(b.ID(), now))
		require.Nil(t, c.current("eu", "bob", now))

		// The rolling DEK (no subject) is never a subject's current.
		r := testDEK(t, "eu", "", later)
		c.add(r, true, c.mark())
		require.Nil(t, c.current("eu", "", now))
		require.Same(t, r, c.get(r.ID(), now))
		requireConsistent(t, c)
	})

	t.Run("Expiry", func(t *testing.T) {
		c := newLRU(4)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true, c.mark())
		require.Nil(t, c.current("eu", "alice", later), "current at its expiry")
		require.Zero(t, c.len(), "an expired entry stays")
		c.add(a, true, c.mark())
		require.Nil(t, c.get(a.ID(), later.Add(time.Second)), "get after expiry")
		require.Zero(t, c.len())
		requireConsistent(t, c)
	})

	t.Run("EvictsLeastRecentlyUsed", func(t *testing.T) {
		c := newLRU(3)
		var ds []*DEK
		for _, s := range []string{"a", "b", "c"} {
			d := testDEK(t, "eu", s, later)
			c.add(d, true, c.mark())
			ds = append(ds, d)
		}
		c.get(ds[0].ID(), now) // a is now the most recent
		c.current("eu", "b", now)
		d := testDEK(t, "eu", "d", later)
		c.add(d, true, c.mark())
		require.Equal(t, 3, c.len())
		require.Nil(t, c.get(ds[2].ID(), now), "c, the least recently used, was kept")
		require.Nil(t, c.current("eu", "c", now))
		for _, kept := range []*DEK{ds[0], ds[1], d} {
			require.Same(t, kept, c.get(kept.ID(), now))
		}
		requireConsistent(t, c)
	})

	t.Run("ReAdd", func(t *testing.T) {
		c := newLRU(3)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true, c.mark())
		// Re-adding the same DEK for decryption drops its current
		// mark; the subject's DEK is then looked up again.
		c.add(a, false, c.mark())
		require.Equal(t, 1, c.len())
		require.Nil(t, c.current("eu", "alice", now))
		c.add(a, true, c.mark())
		require.Same(t, a, c.current("eu", "alice", now))
		// A newer DEK of the subject replaces the current one; the old
		// stays for decryption.
		a2 := testDEK(t, "eu", "alice", later)
		c.add(a2, true, c.mark())
		require.Same(t, a2, c.current("eu", "alice", now))
		require.Same(t, a, c.get(a.ID(), now))
		// Evicting the old one leaves the new one current.
		c.remove(a.ID())
		require.Same(t, a2, c.current("eu", "alice", now))
		requireConsistent(t, c)
	})

	t.Run("RemoveAndPurge", func(t *testing.T) {
		c := newLRU(3)
		a, b := testDEK(t, "eu", "alice", later), testDEK(t, "eu", "bob", later)
		c.add(a, true, c.mark())
		c.add(b, true, c.mark())
		c.remove(a.ID())
		c.remove(envelope.NewKeyID()) // not cached: no effect
		require.Nil(t, c.get(a.ID(), now))
		require.Nil(t, c.current("eu", "alice", now))
		require.Same(t, b, c.current("eu", "bob", now))
		requireConsistent(t, c)
		c.purge()
		require.Zero(t, c.len())
		require.Nil(t, c.current("eu", "bob", now))
		requireConsistent(t, c)
	})
}

// The lock-free index of current DEKs never hands out a DEK that is no
// longer its subject's current one, and subjects that share a slot take
// turns in it.
func TestLRUCurrentSlots(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)

	t.Run("Replaced", func(t *testing.T) {
		c := newLRU(8)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true, c.mark())
		require.Same(t, a, c.current("eu", "alice", now)) // fills the slot
		require.Same(t, a, c.current("eu", "alice", now)) // from the slot
		a2 := testDEK(t, "eu", "alice", later)
		c.add(a2, true, c.mark())
		require.Same(t, a2, c.current("eu", "alice", now), "a newer DEK replaces the slot's")
		require.Same(t, a, c.get(a.ID(), now), "the old one stays for decryption")
		// The same subject in another zone is another DEK.
		require.Nil(t, c.current("us", "alice", now))
		requireConsistent(t, c)
	})

	t.Run("SharedSlot", func(t *testing.T) {
		c := newLRU(8)
		s1, s2 := "subject-0", ""
		for i := 1; s2 == ""; i++ {
			if s := fmt.Sprintf("subject-%d", i); c.curSlot(s) == c.curSlot(s1) {
				s2 = s
			}
		}
		d1, d2 := testDEK(t, "eu", s1, later), testDEK(t, "eu", s2, later)
		c.add(d1, true, c.mark())
		c.add(d2, true, c.mark())
		for range 3 {
			require.Same(t, d1, c.current("eu", s1, now))
			require.Same(t, d2, c.current("eu", s2, now))
		}
		requireConsistent(t, c)
	})

	t.Run("Dropped", func(t *testing.T) {
		c := newLRU(8)
		a, b := testDEK(t, "eu", "alice", later), testDEK(t, "eu", "bob", later)
		c.add(a, true, c.mark())
		c.add(b, true, c.mark())
		require.Same(t, a, c.current("eu", "alice", now))
		require.Same(t, b, c.current("eu", "bob", now))
		require.Equal(t, 1, c.removeWhere(func(d *DEK) bool { return d.Subject == "alice" }))
		require.Nil(t, c.current("eu", "alice", now), "a removed DEK leaves its slot")
		require.Nil(t, c.get(a.ID(), now))
		require.Same(t, b, c.current("eu", "bob", now))
		c.add(a, false, c.mark()) // cached again for decryption only
		require.Nil(t, c.current("eu", "alice", now))
		c.purge()
		require.Nil(t, c.current("eu", "bob", now))
		require.Nil(t, c.get(b.ID(), now))
		requireConsistent(t, c)
	})

	t.Run("ReadBeforeForget", func(t *testing.T) {
		// A DEK read from the store before a forget (a shred or move
		// removed its row meanwhile) is not cached after it; one read
		// after it is.
		c := newLRU(8)
		a, b := testDEK(t, "eu", "alice", later), testDEK(t, "eu", "bob", later)
		before := c.mark()
		require.Equal(t, 0, c.forget(func(d *DEK) bool { return d.Subject == "alice" }))
		c.add(a, true, before)
		require.Nil(t, c.get(a.ID(), now), "read before the forget")
		require.Nil(t, c.current("eu", "alice", now))
		c.add(b, true, c.mark())
		require.Same(t, b, c.current("eu", "bob", now), "read after the forget")
		requireConsistent(t, c)
	})

	t.Run("Expired", func(t *testing.T) {
		c := newLRU(8)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true, c.mark())
		require.Same(t, a, c.current("eu", "alice", now))
		require.Nil(t, c.current("eu", "alice", later), "expired in its slot")
		require.Zero(t, c.len())
		requireConsistent(t, c)
	})
}

func TestUnixNanoSaturates(t *testing.T) {
	now := time.Now()
	require.Equal(t, now.UnixNano(), unixNano(now))
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	require.Equal(t, int64(math.MaxInt64), unixNano(far))
	require.Greater(t, unixNano(far), unixNano(now))
}

// The decision cache hands out only decisions that hold, and a decision
// that leaves it (replaced, forgotten, purged) is revoked for the entries
// that remember it.
func TestDecisionCache(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var c decisionCache
	require.Nil(t, c.lookup("eu", now))

	c.remember(c.generation(), "eu", now.Add(time.Second))
	c.remember(c.generation(), "us", now.Add(2*time.Second))
	c.remember(c.generation(), "apac", time.Time{}) // no lasting decision
	eu := c.lookup("eu", now)
	require.NotNil(t, eu)
	require.Nil(t, c.lookup("eu", now.Add(time.Second)), "not at its end")
	require.Nil(t, c.lookup("apac", now))
	require.NotNil(t, c.lookup("us", now.Add(time.Second)))

	e := &entry{}
	e.auth.Store(eu)
	require.True(t, e.allowed(now.UnixNano()))
	require.False(t, e.allowed(now.Add(time.Second).UnixNano()))

	// A newer decision of the zone revokes the older one.
	c.remember(c.generation(), "eu", now.Add(time.Minute))
	require.False(t, e.allowed(now.UnixNano()))
	e.auth.Store(c.lookup("eu", now))
	require.True(t, e.allowed(now.UnixNano()))

	// A decision asked for before a forget is not remembered after it.
	gen := c.generation()
	c.forget("eu")
	require.False(t, e.allowed(now.UnixNano()))
	require.Nil(t, c.lookup("eu", now))
	c.remember(gen, "eu", now.Add(time.Minute))
	require.Nil(t, c.lookup("eu", now))
	require.NotNil(t, c.lookup("us", now), "other zones are kept")

	us := c.lookup("us", now)
	c.purge()
	require.True(t, us.revoked.Load())
	require.Nil(t, c.lookup("us", now))
}
