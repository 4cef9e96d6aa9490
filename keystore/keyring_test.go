package keystore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	_ "github.com/zonekey/zonekey/kms/localkms" // registers local://
)

// countingCustodian instruments a real custodian: it counts Wrap and Unwrap
// calls and, while down is set, fails them as an unreachable custodian would.
type countingCustodian struct {
	kms.Custodian
	wraps, unwraps atomic.Int64
	down           atomic.Bool
}

func (c *countingCustodian) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	c.wraps.Add(1)
	if c.down.Load() {
		return kms.Wrapped{}, fmt.Errorf("%w: custodian switched off by the test", kms.ErrUnavailable)
	}
	return c.Custodian.Wrap(ctx, key, b)
}

func (c *countingCustodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	c.unwraps.Add(1)
	if c.down.Load() {
		return nil, fmt.Errorf("%w: custodian switched off by the test", kms.ErrUnavailable)
	}
	return c.Custodian.Unwrap(ctx, w, b)
}

// calls returns the number of Wrap and Unwrap calls so far.
func (c *countingCustodian) calls() (wraps, unwraps int64) {
	return c.wraps.Load(), c.unwraps.Load()
}

// spyStore instruments a real Store: it counts calls and can alter rows on
// their way out, as a row changed directly in the database would be.
type spyStore struct {
	keystore.Store
	zoneKeys, dek, deks, latest, createDEKs atomic.Int64

	mu             sync.Mutex
	rewriteDEK     func(keystore.DEKRow) keystore.DEKRow
	rewriteZoneKey func(keystore.ZoneKeyRow) keystore.ZoneKeyRow
}

func (s *spyStore) setRewriteDEK(f func(keystore.DEKRow) keystore.DEKRow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rewriteDEK = f
}

func (s *spyStore) setRewriteZoneKey(f func(keystore.ZoneKeyRow) keystore.ZoneKeyRow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rewriteZoneKey = f
}

func (s *spyStore) outDEK(row keystore.DEKRow) keystore.DEKRow {
	s.mu.Lock()
	f := s.rewriteDEK
	s.mu.Unlock()
	if f != nil {
		return f(row)
	}
	return row
}

func (s *spyStore) ZoneKey(ctx context.Context, zone string, version uint32) (keystore.ZoneKeyRow, error) {
	s.zoneKeys.Add(1)
	row, err := s.Store.ZoneKey(ctx, zone, version)
	s.mu.Lock()
	f := s.rewriteZoneKey
	s.mu.Unlock()
	if err == nil && f != nil {
		row = f(row)
	}
	return row, err
}

func (s *spyStore) DEK(ctx context.Context, id envelope.KeyID) (keystore.DEKRow, error) {
	s.dek.Add(1)
	row, err := s.Store.DEK(ctx, id)
	return s.outDEK(row), err
}

func (s *spyStore) DEKs(ctx context.Context, ids []envelope.KeyID) ([]keystore.DEKRow, error) {
	s.deks.Add(1)
	rows, err := s.Store.DEKs(ctx, ids)
	for i := range rows {
		rows[i] = s.outDEK(rows[i])
	}
	return rows, err
}

func (s *spyStore) LatestDEK(ctx context.Context, zone, subject string) (keystore.DEKRow, error) {
	s.latest.Add(1)
	row, err := s.Store.LatestDEK(ctx, zone, subject)
	return s.outDEK(row), err
}

func (s *spyStore) CreateDEK(ctx context.Context, row keystore.DEKRow) error {
	s.createDEKs.Add(1)
	return s.Store.CreateDEK(ctx, row)
}

// clock is an injectable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a bolt store and the local custodians of zones "eu" and "us".
type env struct {
	store *spyStore
	cust  map[string]*countingCustodian
	clock *clock
}

// newEnv makes an env. If sameKEK, both zones' custodians use one KEK file,
// so that only the binding tells their zone keys apart.
func newEnv(t *testing.T, sameKEK bool) *env {
	t.Helper()
	dir := t.TempDir()
	bs, err := boltstore.Open(filepath.Join(dir, "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bs.Close() })
	e := &env{
		store: &spyStore{Store: bs},
		cust:  map[string]*countingCustodian{},
		clock: &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, zone := range []string{"eu", "us"} {
		file := zone
		if sameKEK {
			file = "shared"
		}
		c, err := kms.Open(t.Context(), "local://"+filepath.ToSlash(filepath.Join(dir, file+".kek"))+"?create=1")
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		e.cust[zone] = &countingCustodian{Custodian: c}
	}
	return e
}

// keyring returns a new Keyring over e, with cold caches, closed when t
// ends. mod adjusts its Config.
func (e *env) keyring(t *testing.T, mod ...func(*keystore.Config)) *keystore.Keyring {
	t.Helper()
	cfg := keystore.Config{
		Store:      e.store,
		Custodians: map[string]kms.Custodian{},
		Now:        e.clock.Now,
	}
	for z, c := range e.cust {
		cfg.Custodians[z] = c
	}
	for _, m := range mod {
		m(&cfg)
	}
	k, err := keystore.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// requireSameKey checks that a and b are the same DEK: same id and
// metadata, and what one seals the other opens.
func requireSameKey(t *testing.T, a, b *keystore.DEK, msg string) {
	t.Helper()
	require.Equal(t, a.ID(), b.ID(), "%s: id", msg)
	require.Equal(t, a.Zone, b.Zone, "%s: zone", msg)
	require.Equal(t, a.Subject, b.Subject, "%s: subject", msg)
	require.Equal(t, a.Generation, b.Generation, "%s: generation", msg)
	bind := envelope.Binding{Path: "Email", Subject: a.Subject}
	ct, err := a.Seal([]byte("secret"), bind)
	require.NoError(t, err)
	pt, err := b.Open(ct, bind)
	require.NoError(t, err, "%s: the keys differ", msg)
	require.Equal(t, "secret", string(pt))
}

func dataKey(t *testing.T, k *keystore.Keyring, zone, subject string) *keystore.DEK {
	t.Helper()
	d, err := k.DataKey(t.Context(), zone, subject)
	require.NoError(t, err, "DataKey(%q, %q)", zone, subject)
	require.NotNil(t, d)
	return d
}

func key(t *testing.T, k *keystore.Keyring, id envelope.KeyID) *keystore.DEK {
	t.Helper()
	d, err := k.Key(t.Context(), id)
	require.NoError(t, err, "Key(%s)", id)
	require.NotNil(t, d)
	return d
}

func TestDataKey(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	subjects := []string{"alice", "bob", "a", "ab", "a\x00b", "\xff\xfe", "\u00fc", "u\u0308", strings.Repeat("s", keystore.MaxSubject)}
	type zs struct{ zone, subject string }
	deks := map[zs]*keystore.DEK{}
	ids := map[envelope.KeyID]zs{}
	for _, zone := range []string{"eu", "us"} {
		for _, subject := range subjects {
			d := dataKey(t, k, zone, subject)
			require.Equal(t, zone, d.Zone)
			require.Equal(t, subject, d.Subject)
			require.Equal(t, uint32(1), d.Generation)
			prev, dup := ids[d.ID()]
			require.False(t, dup, "(%q, %q) got the DEK of %v", zone, subject, prev)
			ids[d.ID()] = zs{zone, subject}
			deks[zs{zone, subject}] = d

			// The same subject gets the same DEK, and Key finds it.
			requireSameKey(t, d, dataKey(t, k, zone, subject), "second DataKey")
			requireSameKey(t, d, key(t, k, d.ID()), "Key")
		}
	}
	// What one DEK seals, another subject's does not open.
	bind := envelope.Binding{Path: "Email"}
	ct, err := deks[zs{"eu", "alice"}].Seal([]byte("x"), bind)
	require.NoError(t, err)
	_, err = deks[zs{"eu", "bob"}].Open(ct, bind)
	require.Error(t, err)

	// A new keyring on the same store, with cold caches, finds the same
	// DEKs by id and by subject.
	k2 := e.keyring(t)
	for s, d := range deks {
		requireSameKey(t, d, key(t, k2, d.ID()), fmt.Sprintf("Key of (%q, %q) through a new keyring", s.zone, s.subject))
	}
	k3 := e.keyring(t)
	for s, d := range deks {
		requireSameKey(t, d, dataKey(t, k3, s.zone, s.subject), fmt.Sprintf("DataKey(%q, %q) through a new keyring", s.zone, s.subject))
	}
	// One zone key per zone was made.
	for zone, c := range e.cust {
		wraps, _ := c.calls()
		require.Equal(t, int64(1), wraps, "zone %q: Wrap calls", zone)
	}
}

// TestCustodianCallsPerZoneKey checks the promise of the key hierarchy: one
// custodian call per zone key per ZoneKeyTTL, however many subjects.
func TestCustodianCallsPerZoneKey(t *testing.T) {
	const (
		subjects   = 1000
		zoneKeyTTL = 10 * time.Minute
	)
	e := newEnv(t, false)
	// The zone key exists before the keyring under test starts.
	dataKey(t, e.keyring(t), "eu", "seed")
	eu := e.cust["eu"]
	wraps0, unwraps0 := eu.calls()
	require.Equal(t, int64(1), wraps0)

	k := e.keyring(t, func(c *keystore.Config) {
		c.ZoneKeyTTL = zoneKeyTTL
		c.DEKTTL = time.Hour
	})
	ids := make([]envelope.KeyID, subjects)
	for i := range subjects {
		d := dataKey(t, k, "eu", fmt.Sprintf("subject-%d", i))
		ids[i] = d.ID()
		require.Equal(t, d.ID(), key(t, k, d.ID()).ID())
		e.clock.Advance(zoneKeyTTL / 2 / subjects) // time passes, within the TTL
	}
	wraps, unwraps := eu.calls()
	require.Equal(t, int64(0), wraps-wraps0, "Wrap calls for %d subjects", subjects)
	require.Equal(t, int64(1), unwraps-unwraps0, "Unwrap calls for %d subjects", subjects)
	require.Equal(t, int64(subjects), e.store.createDEKs.Load()-1, "one stored DEK per subject")

	// After ZoneKeyTTL the next miss unwraps the zone key again, once.
	e.clock.Advance(zoneKeyTTL)
	dataKey(t, k, "eu", "after-ttl-1")
	dataKey(t, k, "eu", "after-ttl-2")
	_, unwraps = eu.calls()
	require.Equal(t, int64(2), unwraps-unwraps0, "Unwrap calls after ZoneKeyTTL")
	// The DEKs of the other zone were not touched.
	w, u := e.cust["us"].calls()
	require.Zero(t, w+u, "calls to the other zone's custodian")
}

// TestColdStartConcurrent checks that concurrent misses on a cold keyring
// make one custodian call, not one per goroutine.
func TestColdStartConcurrent(t *testing.T) {
	e := newEnv(t, false)
	k0 := e.keyring(t)
	var ids []envelope.KeyID
	for i := range 32 {
		ids = append(ids, dataKey(t, k0, "eu", fmt.Sprintf("s%d", i)).ID())
	}
	_, unwraps0 := e.cust["eu"].calls()
	k := e.keyring(t)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				_, errs[i] = k.Key(t.Context(), id)
			} else {
				_, errs[i] = k.DataKey(t.Context(), "eu", fmt.Sprintf("s%d", i))
			}
		})
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	_, unwraps := e.cust["eu"].calls()
	require.Equal(t, int64(1), unwraps-unwraps0, "Unwrap calls of %d concurrent misses", len(ids))
}

// TestDEKMissUsesCachedZoneKey checks that a DEK cache miss costs a store
// read and a local unwrap, not a custodian call.
func TestDEKMissUsesCachedZoneKey(t *testing.T) {
	e := newEnv(t, false)
	k0 := e.keyring(t)
	var deks []*keystore.DEK
	for i := range 20 {
		deks = append(deks, dataKey(t, k0, "eu", fmt.Sprintf("s%d", i)))
	}
	k := e.keyring(t)
	requireSameKey(t, deks[0], key(t, k, deks[0].ID()), "first miss")
	_, unwraps0 := e.cust["eu"].calls()
	reads0 := e.store.dek.Load()
	for _, d := range deks[1:] {
		requireSameKey(t, d, key(t, k, d.ID()), "miss with the zone key cached")
	}
	requireSameKey(t, deks[0], dataKey(t, k, "eu", "s0"), "DataKey")
	requireSameKey(t, deks[5], dataKey(t, k, "eu", "s5"), "DataKey")
	_, unwraps := e.cust["eu"].calls()
	require.Equal(t, unwraps0, unwraps, "custodian calls on DEK misses")
	require.Equal(t, int64(len(deks)-1), e.store.dek.Load()-reads0, "store reads: one per missed DEK")
}

func TestCustodianUnavailable(t *testing.T) {
	e := newEnv(t, false)
	eu := e.cust["eu"]
	k := e.keyring(t)

	// The first DataKey of a zone must create the zone key: Wrap fails.
	eu.down.Store(true)
	for _, subject := range []string{"alice", ""} {
		_, err := k.DataKey(t.Context(), "eu", subject)
		require.ErrorIs(t, err, keystore.ErrKMSUnavailable, "DataKey(eu, %q)", subject)
		require.ErrorIs(t, err, kms.ErrUnavailable)
	}
	_, err := e.store.Store.ZoneKey(t.Context(), "eu", 0)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "a zone key row was stored although the custodian failed")
	for _, subject := range []string{"alice", ""} {
		_, err = e.store.Store.LatestDEK(t.Context(), "eu", subject)
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "a DEK row of %q was stored although the custodian failed", subject)
	}
	require.Zero(t, e.store.createDEKs.Load(), "CreateDEK calls")
	// Other zones are not affected.
	dataKey(t, k, "us", "alice")

	// The custodian recovers.
	eu.down.Store(false)
	alice := dataKey(t, k, "eu", "alice")
	zk, err := e.store.Store.ZoneKey(t.Context(), "eu", 0)
	require.NoError(t, err)
	require.Equal(t, uint32(1), zk.Version)

	// A cold keyring whose custodian fails on Unwrap neither hands out
	// keys nor creates a second zone key or another DEK.
	eu.down.Store(true)
	k2 := e.keyring(t)
	_, err = k2.DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrKMSUnavailable, "DataKey of an existing subject")
	_, err = k2.DataKey(t.Context(), "eu", "carol")
	require.ErrorIs(t, err, keystore.ErrKMSUnavailable, "DataKey of a new subject")
	_, err = k2.Key(t.Context(), alice.ID())
	require.ErrorIs(t, err, keystore.ErrKMSUnavailable, "Key")
	require.ErrorIs(t, k2.Prefetch(t.Context(), []envelope.KeyID{alice.ID()}), keystore.ErrKMSUnavailable, "Prefetch")
	_, err = e.store.Store.ZoneKey(t.Context(), "eu", 2)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "a second zone key was made")
	_, err = e.store.Store.LatestDEK(t.Context(), "eu", "carol")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	eu.down.Store(false)
	requireSameKey(t, alice, dataKey(t, k2, "eu", "alice"), "after recovery")
	requireSameKey(t, alice, key(t, k2, alice.ID()), "after recovery")
}

func TestRelabelledDEKRows(t *testing.T) {
	e := newEnv(t, false)
	k0 := e.keyring(t)
	alice := dataKey(t, k0, "eu", "alice")
	bob := dataKey(t, k0, "eu", "bob")
	carol := dataKey(t, k0, "eu", "carol")
	dataKey(t, k0, "us", "someone") // the us zone key exists
	row, err := e.store.Store.DEK(t.Context(), alice.ID())
	require.NoError(t, err)

	// Rows copied through the Store with altered labels (and a new id,
	// since ids are unique).
	for _, tc := range []struct {
		name  string
		alter func(r *keystore.DEKRow)
	}{
		{"OtherSubject", func(r *keystore.DEKRow) { r.Subject = "mallory" }},
		{"OtherZone", func(r *keystore.DEKRow) { r.Zone = "us" }},
		{"OtherGeneration", func(r *keystore.DEKRow) { r.Generation = 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := row
			r.ID = envelope.NewKeyID()
			tc.alter(&r)
			require.NoError(t, e.store.Store.CreateDEK(t.Context(), r))
			k := e.keyring(t)
			_, err := k.Key(t.Context(), r.ID)
			require.ErrorIs(t, err, keystore.ErrTampered, "Key of the copied row")
			// The copy is now the latest DEK of its (zone, subject).
			_, err = k.DataKey(t.Context(), r.Zone, r.Subject)
			require.ErrorIs(t, err, keystore.ErrTampered, "DataKey of the subject the row was copied to")
		})
	}

	// Rows changed in place, keeping their id, as a direct database
	// update would. carol's rows were not copied above, so that her
	// latest DEK is her own.
	for _, tc := range []struct {
		name string
		call func(k *keystore.Keyring) error
		edit func(r keystore.DEKRow) keystore.DEKRow
	}{
		{
			name: "SubjectInPlace",
			call: func(k *keystore.Keyring) error { _, err := k.Key(t.Context(), carol.ID()); return err },
			edit: func(r keystore.DEKRow) keystore.DEKRow { r.Subject = "mallory"; return r },
		},
		{
			name: "WrappedInPlace",
			call: func(k *keystore.Keyring) error { _, err := k.Key(t.Context(), carol.ID()); return err },
			edit: func(r keystore.DEKRow) keystore.DEKRow {
				r.Wrapped = slices.Clone(r.Wrapped)
				r.Wrapped[len(r.Wrapped)-1] ^= 1
				return r
			},
		},
		{
			// The store answers Key(carol) with bob's intact row.
			name: "OtherRowForID",
			call: func(k *keystore.Keyring) error { _, err := k.Key(t.Context(), carol.ID()); return err },
			edit: func(r keystore.DEKRow) keystore.DEKRow {
				if r.ID == carol.ID() {
					b, err := e.store.Store.DEK(t.Context(), bob.ID())
					require.NoError(t, err)
					return b
				}
				return r
			},
		},
		{
			// The store's subject index names bob's intact row as
			// carol's current DEK: carol's data must not be sealed
			// under bob's key.
			name: "OtherSubjectsRowAsLatest",
			call: func(k *keystore.Keyring) error { _, err := k.DataKey(t.Context(), "eu", "carol"); return err },
			edit: func(r keystore.DEKRow) keystore.DEKRow {
				if r.ID == carol.ID() {
					b, err := e.store.Store.DEK(t.Context(), bob.ID())
					require.NoError(t, err)
					return b
				}
				return r
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The untouched row opens ...
			require.NoError(t, tc.call(e.keyring(t)))
			// ... the changed one does not.
			e.store.setRewriteDEK(tc.edit)
			defer e.store.setRewriteDEK(nil)
			require.ErrorIs(t, tc.call(e.keyring(t)), keystore.ErrTampered)
		})
	}
}

func TestRelabelledZoneKeyRows(t *testing.T) {
	// Both zones share one KEK, so only the binding can tell their zone
	// keys apart.
	e := newEnv(t, true)
	dataKey(t, e.keyring(t), "eu", "alice")
	euRow, err := e.store.Store.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)

	t.Run("CopiedToOtherZone", func(t *testing.T) {
		r := euRow
		r.Zone = "us"
		r.ID = euRow.ID + "-copy"
		require.NoError(t, e.store.Store.CreateZoneKey(t.Context(), r))
		_, err := e.keyring(t).DataKey(t.Context(), "us", "bob")
		require.ErrorIs(t, err, keystore.ErrTampered)
		_, err = e.store.Store.LatestDEK(t.Context(), "us", "bob")
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "a DEK was made under the relabelled zone key")
	})
	t.Run("RelabelledInPlace", func(t *testing.T) {
		// The store answers for zone "us" with eu's row, its zone
		// changed and its id kept.
		e.store.setRewriteZoneKey(func(r keystore.ZoneKeyRow) keystore.ZoneKeyRow {
			if r.Zone == "us" {
				r = euRow
				r.Zone = "us"
			}
			return r
		})
		defer e.store.setRewriteZoneKey(nil)
		_, err := e.keyring(t).DataKey(t.Context(), "us", "carol")
		require.ErrorIs(t, err, keystore.ErrTampered)
	})
	t.Run("CopiedToOtherVersion", func(t *testing.T) {
		r := euRow
		r.Version = 2
		r.ID = euRow.ID + "-v2"
		require.NoError(t, e.store.Store.CreateZoneKey(t.Context(), r))
		_, err := e.keyring(t).DataKey(t.Context(), "eu", "dave")
		require.ErrorIs(t, err, keystore.ErrTampered)
	})
}

func TestConcurrentDataKey(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)

	t.Run("SameSubject", func(t *testing.T) {
		const n = 32
		got := make([]*keystore.DEK, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				got[i], errs[i] = k.DataKey(t.Context(), "eu", "fresh")
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			require.NoError(t, errs[i])
			require.Equal(t, got[0].ID(), got[i].ID(), "goroutine %d got another DEK", i)
		}
		row, err := e.store.Store.LatestDEK(t.Context(), "eu", "fresh")
		require.NoError(t, err)
		require.Equal(t, got[0].ID(), row.ID)
		require.Equal(t, uint32(1), row.Generation, "more than one DEK was stored")
	})

	t.Run("ManySubjects", func(t *testing.T) {
		const goroutines, subjects = 8, 24
		got := make([][]envelope.KeyID, goroutines)
		errs := make([]error, goroutines)
		var wg sync.WaitGroup
		for g := range goroutines {
			got[g] = make([]envelope.KeyID, subjects)
			wg.Go(func() {
				// Each goroutine visits every subject, starting
				// at a different one.
				for j := range subjects {
					i := (j + g*3) % subjects
					zone := []string{"eu", "us"}[i%2]
					d, err := k.DataKey(t.Context(), zone, fmt.Sprintf("m%d", i))
					if err != nil {
						errs[g] = err
						return
					}
					if _, err := k.Key(t.Context(), d.ID()); err != nil {
						errs[g] = err
						return
					}
					got[g][i] = d.ID()
				}
			})
		}
		wg.Wait()
		for g := range goroutines {
			require.NoError(t, errs[g])
			require.Equal(t, got[0], got[g], "goroutine %d saw other DEKs", g)
		}
		require.Len(t, distinct(got[0]), subjects)
	})
}

func distinct(ids []envelope.KeyID) map[envelope.KeyID]bool {
	m := map[envelope.KeyID]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// TestTwoKeyrings simulates two processes over one store racing to create
// the first zone key and the first DEK of each subject.
func TestTwoKeyrings(t *testing.T) {
	const subjects, goroutines = 16, 8
	e := newEnv(t, false)
	rings := []*keystore.Keyring{e.keyring(t), e.keyring(t)}
	got := make([][]envelope.KeyID, goroutines)
	errs := make([]error, goroutines)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		got[g] = make([]envelope.KeyID, subjects)
		k := rings[g%2]
		wg.Go(func() {
			<-start
			for j := range subjects {
				i := (j + g) % subjects
				d, err := k.DataKey(t.Context(), "eu", fmt.Sprintf("s%d", i))
				if err != nil {
					errs[g] = err
					return
				}
				got[g][i] = d.ID()
			}
		})
	}
	close(start)
	wg.Wait()
	for g := range goroutines {
		require.NoError(t, errs[g], "goroutine %d", g)
		require.Equal(t, got[0], got[g], "goroutine %d (keyring %d) ended with other DEKs", g, g%2)
	}
	// One zone key, one DEK per subject, each readable by both keyrings.
	_, err := e.store.Store.ZoneKey(t.Context(), "eu", 2)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "two zone keys were stored")
	for i, id := range got[0] {
		row, err := e.store.Store.LatestDEK(t.Context(), "eu", fmt.Sprintf("s%d", i))
		require.NoError(t, err)
		require.Equal(t, id, row.ID)
		require.Equal(t, uint32(1), row.Generation)
		for _, k := range rings {
			key(t, k, id)
		}
	}
	wraps, _ := e.cust["eu"].calls()
	require.LessOrEqual(t, wraps, int64(2), "Wrap calls: at most one per keyring")
}

func TestRollingDEK(t *testing.T) {
	const maxUses, maxAge = 3, time.Hour
	e := newEnv(t, false)
	cfg := func(c *keystore.Config) {
		c.RollingMaxUses = maxUses
		c.RollingMaxAge = maxAge
		c.DEKTTL = 10 * maxAge
		c.ZoneKeyTTL = 10 * maxAge
	}
	k := e.keyring(t, cfg)
	var gens []*keystore.DEK
	use := func() *keystore.DEK {
		d := dataKey(t, k, "eu", "")
		require.Equal(t, "", d.Subject)
		require.Equal(t, "eu", d.Zone)
		if len(gens) == 0 || gens[len(gens)-1].ID() != d.ID() {
			gens = append(gens, d)
		}
		return d
	}

	// Rolls after maxUses.
	for range maxUses {
		use()
	}
	require.Len(t, gens, 1)
	use()
	require.Len(t, gens, 2, "no roll after %d uses", maxUses)

	// Rolls after maxAge, before maxUses.
	e.clock.Advance(maxAge - time.Second)
	use()
	require.Len(t, gens, 2, "rolled before maxAge")
	e.clock.Advance(time.Second)
	use()
	require.Len(t, gens, 3, "no roll after maxAge")

	// Each generation is stored, numbered in order, and readable by
	// another keyring.
	k2 := e.keyring(t, cfg)
	for i, d := range gens {
		require.Equal(t, uint32(i+1), d.Generation)
		requireSameKey(t, d, key(t, k2, d.ID()), fmt.Sprintf("generation %d", i+1))
	}
	row, err := e.store.Store.LatestDEK(t.Context(), "eu", "")
	require.NoError(t, err)
	require.Equal(t, gens[2].ID(), row.ID)

	// A new keyring rolls its own.
	d2 := dataKey(t, k2, "eu", "")
	require.NotEqual(t, gens[2].ID(), d2.ID())
	require.Equal(t, uint32(4), d2.Generation)
	// ... and the first keeps using its current one.
	require.Equal(t, gens[2].ID(), use().ID())

	// Two keyrings rolling at once never share a DEK.
	one := func(c *keystore.Config) { cfg(c); c.RollingMaxUses = 1 }
	rings := []*keystore.Keyring{e.keyring(t, one), e.keyring(t, one)}
	const per = 10
	ids := make([][]envelope.KeyID, len(rings))
	errs := make([]error, len(rings))
	var wg sync.WaitGroup
	for r, k := range rings {
		wg.Go(func() {
			for range per {
				d, err := k.DataKey(t.Context(), "eu", "")
				if err != nil {
					errs[r] = err
					return
				}
				ids[r] = append(ids[r], d.ID())
			}
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.Len(t, distinct(append(slices.Clone(ids[0]), ids[1]...)), 2*per, "keyrings shared a rolling DEK")
}

func TestDEKCacheBound(t *testing.T) {
	const size, subjects = 10, 100
	e := newEnv(t, false)
	k := e.keyring(t, func(c *keystore.Config) { c.DEKCacheSize = size })
	var ids []envelope.KeyID
	check := func(when string) {
		t.Helper()
		entries, byID, bySubject := keystore.CacheSizes(k)
		require.LessOrEqual(t, entries, size, "%s: cache entries", when)
		require.Equal(t, entries, byID, "%s: id index out of step with the list", when)
		require.LessOrEqual(t, bySubject, entries, "%s: subject index larger than the list", when)
	}
	for i := range subjects {
		ids = append(ids, dataKey(t, k, "eu", fmt.Sprintf("s%d", i)).ID())
		check(fmt.Sprintf("after %d subjects", i+1))
	}
	entries, _, _ := keystore.CacheSizes(k)
	require.Equal(t, size, entries)
	for i, id := range ids {
		key(t, k, id)
		check(fmt.Sprintf("after Key %d", i))
	}
	// The most recently used are cached: no store reads.
	reads := e.store.dek.Load()
	for _, id := range ids[subjects-size:] {
		key(t, k, id)
	}
	require.Equal(t, reads, e.store.dek.Load(), "store reads for cached DEKs")
	key(t, k, ids[0])
	require.Equal(t, reads+1, e.store.dek.Load(), "store reads for an evicted DEK")
}

func TestDEKTTL(t *testing.T) {
	const dekTTL = time.Minute
	e := newEnv(t, false)
	k := e.keyring(t, func(c *keystore.Config) {
		c.DEKTTL = dekTTL
		c.ZoneKeyTTL = time.Hour
	})
	d := dataKey(t, k, "eu", "alice")
	latest, reads := e.store.latest.Load(), e.store.dek.Load()
	e.clock.Advance(dekTTL - time.Second)
	requireSameKey(t, d, dataKey(t, k, "eu", "alice"), "before DEKTTL")
	requireSameKey(t, d, key(t, k, d.ID()), "before DEKTTL")
	require.Equal(t, latest, e.store.latest.Load(), "LatestDEK reads before DEKTTL")
	require.Equal(t, reads, e.store.dek.Load(), "DEK reads before DEKTTL")

	e.clock.Advance(time.Second)
	requireSameKey(t, d, dataKey(t, k, "eu", "alice"), "after DEKTTL")
	require.Equal(t, latest+1, e.store.latest.Load(), "DataKey after DEKTTL reads the store")
	e.clock.Advance(dekTTL)
	requireSameKey(t, d, key(t, k, d.ID()), "after DEKTTL")
	require.Equal(t, reads+1, e.store.dek.Load(), "Key after DEKTTL reads the store")

	// A row changed in the store is seen once the cached DEK expires.
	e.clock.Advance(dekTTL)
	e.store.setRewriteDEK(func(r keystore.DEKRow) keystore.DEKRow { r.Subject = "mallory"; return r })
	defer e.store.setRewriteDEK(nil)
	_, err := k.Key(t.Context(), d.ID())
	require.ErrorIs(t, err, keystore.ErrTampered, "the expired DEK was not reloaded")
}

func TestPrefetch(t *testing.T) {
	e := newEnv(t, false)
	k0 := e.keyring(t)
	var ids []envelope.KeyID
	for i := range 30 {
		ids = append(ids, dataKey(t, k0, []string{"eu", "us"}[i%2], fmt.Sprintf("s%d", i)).ID())
	}
	unknown := envelope.NewKeyID()

	k := e.keyring(t)
	require.NoError(t, k.Prefetch(t.Context(), nil))
	require.Zero(t, e.store.deks.Load(), "Prefetch of nothing queried the store")

	deks, reads := e.store.deks.Load(), e.store.dek.Load()
	_, eu0 := e.cust["eu"].calls()
	_, us0 := e.cust["us"].calls()
	require.NoError(t, k.Prefetch(t.Context(), append(slices.Clone(ids), unknown)))
	require.Equal(t, deks+1, e.store.deks.Load(), "DEKs queries")
	_, eu := e.cust["eu"].calls()
	_, us := e.cust["us"].calls()
	require.Equal(t, int64(1), eu-eu0, "eu Unwrap calls")
	require.Equal(t, int64(1), us-us0, "us Unwrap calls")

	for _, id := range ids {
		key(t, k, id)
	}
	require.Equal(t, reads, e.store.dek.Load(), "Key read the store after Prefetch")
	// Everything is cached: a second Prefetch does not query.
	require.NoError(t, k.Prefetch(t.Context(), ids))
	require.Equal(t, deks+1, e.store.deks.Load(), "DEKs queries for cached ids")
	// The unknown id is Key's to report.
	_, err := k.Key(t.Context(), unknown)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
}

func TestErrors(t *testing.T) {
	e := newEnv(t, false)

	t.Run("UnknownZone", func(t *testing.T) {
		k := e.keyring(t)
		for _, zone := range []string{"xx", "", "EU", "eu2"} {
			_, err := k.DataKey(t.Context(), zone, "alice")
			require.ErrorIs(t, err, keystore.ErrUnknownZone, "DataKey(%q, alice)", zone)
			_, err = k.DataKey(t.Context(), zone, "")
			require.ErrorIs(t, err, keystore.ErrUnknownZone, "DataKey(%q, \"\")", zone)
		}
		// A DEK of a zone this keyring is not configured for.
		d := dataKey(t, k, "us", "alice")
		euOnly := e.keyring(t, func(c *keystore.Config) { delete(c.Custodians, "us") })
		_, err := euOnly.Key(t.Context(), d.ID())
		require.ErrorIs(t, err, keystore.ErrUnknownZone)
		require.ErrorIs(t, euOnly.Prefetch(t.Context(), []envelope.KeyID{d.ID()}), keystore.ErrUnknownZone)
	})

	t.Run("UnknownKey", func(t *testing.T) {
		_, err := e.keyring(t).Key(t.Context(), envelope.NewKeyID())
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
	})

	t.Run("New", func(t *testing.T) {
		c := e.cust["eu"]
		for _, zone := range []string{"", "EU", "-eu", "_eu", "eu.west", "eu west", "eu/1", "\u00fc", "eu\x00", strings.Repeat("z", 64)} {
			_, err := keystore.New(keystore.Config{Store: e.store, Custodians: map[string]kms.Custodian{zone: c}})
			require.ErrorIs(t, err, keystore.ErrUnknownZone, "zone %q", zone)
		}
		for _, zone := range []string{"eu", "0", "eu-west_1", strings.Repeat("z", 63)} {
			k, err := keystore.New(keystore.Config{Store: e.store, Custodians: map[string]kms.Custodian{zone: c}})
			require.NoError(t, err, "zone %q", zone)
			require.NoError(t, k.Close())
		}
		_, err := keystore.New(keystore.Config{Custodians: map[string]kms.Custodian{"eu": c}})
		require.Error(t, err, "no store")
		_, err = keystore.New(keystore.Config{Store: e.store})
		require.ErrorIs(t, err, keystore.ErrUnknownZone, "no zones")
		_, err = keystore.New(keystore.Config{Store: e.store, Custodians: map[string]kms.Custodian{"eu": nil}})
		require.Error(t, err, "nil custodian")
	})

	t.Run("Closed", func(t *testing.T) {
		k := e.keyring(t)
		d := dataKey(t, k, "eu", "alice")
		require.NoError(t, k.Close())
		require.NoError(t, k.Close(), "second Close")
		_, err := k.DataKey(t.Context(), "eu", "alice")
		require.ErrorIs(t, err, keystore.ErrClosed, "DataKey")
		_, err = k.DataKey(t.Context(), "eu", "")
		require.ErrorIs(t, err, keystore.ErrClosed, "DataKey of the rolling DEK")
		_, err = k.Key(t.Context(), d.ID())
		require.ErrorIs(t, err, keystore.ErrClosed, "Key")
		require.ErrorIs(t, k.Prefetch(t.Context(), []envelope.KeyID{d.ID()}), keystore.ErrClosed, "Prefetch")
		entries, _, _ := keystore.CacheSizes(k)
		require.Zero(t, entries, "a closed keyring keeps DEKs")
	})

	t.Run("SubjectTooLong", func(t *testing.T) {
		k := e.keyring(t)
		_, err := k.DataKey(t.Context(), "eu", strings.Repeat("s", keystore.MaxSubject+1))
		require.ErrorIs(t, err, keystore.ErrInvalidValue)
		dataKey(t, k, "eu", strings.Repeat("s", keystore.MaxSubject))
	})

	t.Run("StoreClosed", func(t *testing.T) {
		k := e.keyring(t)
		d := dataKey(t, k, "eu", "alice")
		e2 := newEnv(t, false)
		require.NoError(t, e2.store.Close())
		k2 := e2.keyring(t)
		_, err := k2.DataKey(t.Context(), "eu", "alice")
		require.ErrorIs(t, err, keystore.ErrClosed)
		_, err = k2.Key(t.Context(), d.ID())
		require.ErrorIs(t, err, keystore.ErrClosed)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		k := e.keyring(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := k.DataKey(ctx, "eu", "never")
		require.ErrorIs(t, err, context.Canceled)
		_, err = e.store.Store.LatestDEK(t.Context(), "eu", "never")
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
	})
}
