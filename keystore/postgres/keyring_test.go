package postgres_test

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

// kekFile creates a KEK file for zone "eu" and returns its path.
func kekFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eu.kek")
	require.NoError(t, localkms.CreateKEKFile(path))
	return path
}

// newKeyring returns a keyring of zone "eu" over store, with the KEK in the
// file kek, closed when t ends; tune adjusts its config.
func newKeyring(t testing.TB, store keystore.Store, kek string, tune func(*keystore.Config)) *keystore.Keyring {
	t.Helper()
	cust, err := localkms.Open(kek)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cust.Close() })
	cfg := keystore.Config{Store: store, Custodians: map[string]kms.Custodian{"eu": cust}}
	if tune != nil {
		tune(&cfg)
	}
	kr, err := keystore.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = kr.Close() })
	return kr
}

// clock is a settable keystore.Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestCrossInstanceCacheBound: two instances — each its own store (pool)
// and keyring — share one schema. A change made behind one instance's back
// is seen by it no later than its keyring's DEKTTL (DEK rows) or ZoneKeyTTL
// (zone-key versions): before, its cache still serves the old key; after,
// it reads the change.
func TestCrossInstanceCacheBound(t *testing.T) {
	const (
		dekTTL     = time.Minute
		zoneKeyTTL = 10 * time.Minute
	)
	type instance struct {
		store *postgres.Store
		kr    *keystore.Keyring
	}
	setup := func(t *testing.T) (schema, kek string, clk *clock, a, b instance) {
		schema = freshSchema(t)
		kek = kekFile(t)
		clk = &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		tune := func(cfg *keystore.Config) {
			cfg.DEKTTL, cfg.ZoneKeyTTL, cfg.Now = dekTTL, zoneKeyTTL, clk.Now
		}
		for _, in := range []*instance{&a, &b} {
			in.store = openStore(t, schema, appName())
			in.kr = newKeyring(t, in.store, kek, tune)
		}
		return schema, kek, clk, a, b
	}

	t.Run("Shred", func(t *testing.T) {
		schema, _, clk, a, b := setup(t)
		d, err := a.kr.DataKey(t.Context(), "eu", "alice")
		require.NoError(t, err)
		got, err := b.kr.Key(t.Context(), d.ID())
		require.NoError(t, err)
		require.Equal(t, d.ID(), got.ID())

		// Another instance shreds the subject: its DEK rows are deleted.
		_, err = admin.Exec(t.Context(), "DELETE FROM "+table(schema, "deks")+" WHERE subject = $1", []byte("alice"))
		require.NoError(t, err)

		clk.advance(dekTTL - time.Second)
		got, err = b.kr.Key(t.Context(), d.ID())
		require.NoError(t, err, "within DEKTTL the cached DEK is still served")
		require.Equal(t, d.ID(), got.ID())

		clk.advance(time.Second)
		_, err = b.kr.Key(t.Context(), d.ID())
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "after DEKTTL the shred is seen")
		_, err = a.kr.Key(t.Context(), d.ID())
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "by the instance that made the DEK too")
	})

	t.Run("Replace", func(t *testing.T) {
		schema, _, clk, a, b := setup(t)
		old, err := b.kr.DataKey(t.Context(), "eu", "bob")
		require.NoError(t, err)

		// Another instance replaces the subject's DEK: the row is deleted
		// and a new DEK created in its place.
		_, err = admin.Exec(t.Context(), "DELETE FROM "+table(schema, "deks")+" WHERE subject = $1", []byte("bob"))
		require.NoError(t, err)
		replacement, err := a.kr.DataKey(t.Context(), "eu", "bob")
		require.NoError(t, err)
		require.NotEqual(t, old.ID(), replacement.ID())

		clk.advance(dekTTL - time.Second)
		got, err := b.kr.DataKey(t.Context(), "eu", "bob")
		require.NoError(t, err)
		require.Equal(t, old.ID(), got.ID(), "within DEKTTL the cached current DEK is still used")

		clk.advance(time.Second)
		got, err = b.kr.DataKey(t.Context(), "eu", "bob")
		require.NoError(t, err)
		require.Equal(t, replacement.ID(), got.ID(), "after DEKTTL the replacement is used")
	})

	t.Run("ZoneKeyVersion", func(t *testing.T) {
		_, kek, clk, a, b := setup(t)
		_, err := b.kr.DataKey(t.Context(), "eu", "s1")
		require.NoError(t, err)
		requireZoneKeyVersion(t, a.store, "s1", 1)

		// Another instance adds zone-key version 2.
		addZoneKeyVersion(t, a.store, kek, 2)

		clk.advance(zoneKeyTTL - time.Second)
		_, err = b.kr.DataKey(t.Context(), "eu", "s2")
		require.NoError(t, err)
		requireZoneKeyVersion(t, a.store, "s2", 1)

		clk.advance(time.Second)
		d3, err := b.kr.DataKey(t.Context(), "eu", "s3")
		require.NoError(t, err)
		requireZoneKeyVersion(t, a.store, "s3", 2)
		// And the other instance opens it.
		got, err := a.kr.Key(t.Context(), d3.ID())
		require.NoError(t, err)
		require.Equal(t, d3.ID(), got.ID())
	})
}

func requireZoneKeyVersion(t *testing.T, s keystore.Store, subject string, want uint32) {
	t.Helper()
	row, err := s.LatestDEK(t.Context(), "eu", subject)
	require.NoError(t, err)
	require.Equal(t, want, row.ZoneKeyVersion, "zone-key version of the DEK of %s", subject)
}

// addZoneKeyVersion stores a new version of zone "eu"'s key, wrapped by the
// custodian of the keyrings' KEK file, as a rotation by another instance
// would.
func addZoneKeyVersion(t *testing.T, s *postgres.Store, kek string, version uint32) {
	t.Helper()
	prev, err := s.ZoneKey(t.Context(), "eu", 0)
	require.NoError(t, err)
	require.Equal(t, version-1, prev.Version)
	cust, err := localkms.Open(kek)
	require.NoError(t, err)
	defer cust.Close()
	secret := make([]byte, 32)
	rand.Read(secret)
	id := randomHex(16)
	w, err := cust.Wrap(context.Background(), secret, kms.Binding{Zone: "eu", KeyID: id, Version: version})
	require.NoError(t, err)
	require.NoError(t, s.CreateZoneKey(t.Context(), keystore.ZoneKeyRow{
		Zone: "eu", Version: version, ID: id, Wrapped: w.Ciphertext, KEKVersion: w.KEKVersion, Created: time.Now().UTC(),
	}))
}
