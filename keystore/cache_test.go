package keystore

import (
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
		require.Same(t, e, c.byID[e.Value.(*DEK).ID()])
	}
	for sk, e := range c.bySubject {
		d := e.Value.(*DEK)
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
		c.add(a, true)
		require.Same(t, a, c.get(a.ID(), now))
		require.Same(t, a, c.current("eu", "alice", now))
		require.Nil(t, c.current("us", "alice", now))
		require.Nil(t, c.current("eu", "alic", now))
		require.Nil(t, c.get(envelope.NewKeyID(), now))

		// A DEK added for decryption only is not current.
		b := testDEK(t, "eu", "bob", later)
		c.add(b, false)
		require.Same(t, b, c.get(b.ID(), now))
		require.Nil(t, c.current("eu", "bob", now))

		// The rolling DEK (no subject) is never a subject's current.
		r := testDEK(t, "eu", "", later)
		c.add(r, true)
		require.Nil(t, c.current("eu", "", now))
		require.Same(t, r, c.get(r.ID(), now))
		requireConsistent(t, c)
	})

	t.Run("Expiry", func(t *testing.T) {
		c := newLRU(4)
		a := testDEK(t, "eu", "alice", later)
		c.add(a, true)
		require.Nil(t, c.current("eu", "alice", later), "current at its expiry")
		require.Zero(t, c.len(), "an expired entry stays")
		c.add(a, true)
		require.Nil(t, c.get(a.ID(), later.Add(time.Second)), "get after expiry")
		require.Zero(t, c.len())
		requireConsistent(t, c)
	})

	t.Run("EvictsLeastRecentlyUsed", func(t *testing.T) {
		c := newLRU(3)
		var ds []*DEK
		for _, s := range []string{"a", "b", "c"} {
			d := testDEK(t, "eu", s, later)
			c.add(d, true)
			ds = append(ds, d)
		}
		c.get(ds[0].ID(), now) // a is now the most recent
		c.current("eu", "b", now)
		d := testDEK(t, "eu", "d", later)
		c.add(d, true)
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
		c.add(a, true)
		// Re-adding the same DEK for decryption drops its current
		// mark; the subject's DEK is then looked up again.
		c.add(a, false)
		require.Equal(t, 1, c.len())
		require.Nil(t, c.current("eu", "alice", now))
		c.add(a, true)
		require.Same(t, a, c.current("eu", "alice", now))
		// A newer DEK of the subject replaces the current one; the old
		// stays for decryption.
		a2 := testDEK(t, "eu", "alice", later)
		c.add(a2, true)
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
		c.add(a, true)
		c.add(b, true)
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
