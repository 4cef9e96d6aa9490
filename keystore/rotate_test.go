package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

// rotEnv is a bolt store and the local KEK files of zones "eu" and "us",
// with one custodian per zone that the keyrings share, as processes share
// a Vault or Cloud KMS key.
type rotEnv struct {
	dir   string
	store *boltstore.Store
	cust  map[string]*localkms.Custodian
	clock *clock
}

func newRotEnv(t *testing.T) *rotEnv {
	t.Helper()
	dir := t.TempDir()
	bs, err := boltstore.Open(filepath.Join(dir, "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bs.Close() })
	e := &rotEnv{dir: dir, store: bs, cust: map[string]*localkms.Custodian{}, clock: &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}}
	for _, zone := range []string{"eu", "us"} {
		e.cust[zone] = e.openKEK(t, zone)
	}
	return e
}

// openKEK opens a new custodian on the zone's KEK file.
func (e *rotEnv) openKEK(t *testing.T, zone string) *localkms.Custodian {
	t.Helper()
	c, err := localkms.Open(filepath.Join(e.dir, zone+".kek"), localkms.WithCreate())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// keyring returns a keyring over the env's store and shared custodians.
func (e *rotEnv) keyring(t *testing.T, mod ...func(*keystore.Config)) *keystore.Keyring {
	t.Helper()
	cfg := keystore.Config{
		Store:      e.store,
		Custodians: map[string]kms.Custodian{"eu": e.cust["eu"], "us": e.cust["us"]},
		Now:        e.clock.Now,
	}
	for _, m := range mod {
		m(&cfg)
	}
	k, err := keystore.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// cold returns a keyring with cold caches and custodians that read the KEK
// files afresh, as a process started after the rotation would.
func (e *rotEnv) cold(t *testing.T) *keystore.Keyring {
	t.Helper()
	return e.keyring(t, func(c *keystore.Config) {
		c.Custodians = map[string]kms.Custodian{"eu": e.openKEK(t, "eu"), "us": e.openKEK(t, "us")}
	})
}

// sealed is a message sealed under a DEK.
type sealed struct {
	id   envelope.KeyID
	bind envelope.Binding
	msg  string
	ct   []byte
}

func seal(t *testing.T, d *keystore.DEK, msg string) sealed {
	t.Helper()
	b := envelope.Binding{Path: "Email", Subject: d.Subject}
	ct, err := d.Seal([]byte(msg), b)
	require.NoError(t, err)
	return sealed{id: d.ID(), bind: b, msg: msg, ct: ct}
}

// requireOpens checks that k opens every message of recs.
func requireOpens(t *testing.T, k *keystore.Keyring, recs []sealed, when string) {
	t.Helper()
	for _, r := range recs {
		d, err := k.Key(t.Context(), r.id)
		require.NoError(t, err, "%s: Key(%s)", when, r.id)
		pt, err := d.Open(r.ct, r.bind)
		require.NoError(t, err, "%s: opening a message of DEK %s", when, r.id)
		require.Equal(t, r.msg, string(pt), when)
	}
}

// makeDEKs creates n DEKs of zone through k, each with a sealed message.
func makeDEKs(t *testing.T, k *keystore.Keyring, zone, prefix string, n int) []sealed {
	t.Helper()
	recs := make([]sealed, 0, n)
	for i := range n {
		subject := fmt.Sprintf("%s-%05d", prefix, i)
		recs = append(recs, seal(t, dataKey(t, k, zone, subject), "message of "+subject))
	}
	return recs
}

// dekVersions counts the zone's DEK rows by zone-key version.
func dekVersions(t *testing.T, rs keystore.RotationStore, zone string) map[uint32]int {
	t.Helper()
	out := map[uint32]int{}
	for cursor := ""; ; {
		rows, next, err := rs.ScanDEKs(t.Context(), zone, cursor, 1000)
		require.NoError(t, err)
		for _, r := range rows {
			out[r.ZoneKeyVersion]++
		}
		if next == "" {
			return out
		}
		cursor = next
	}
}

// zoneKeyRows returns the zone's zone-key rows.
func zoneKeyRows(t *testing.T, rs keystore.RotationStore, zone string) []keystore.ZoneKeyRow {
	t.Helper()
	rows, err := rs.ZoneKeys(t.Context(), zone)
	require.NoError(t, err)
	return rows
}

func kekVersionsOf(rows []keystore.ZoneKeyRow) []uint32 {
	var out []uint32
	for _, r := range rows {
		out = append(out, r.KEKVersion)
	}
	return out
}

func TestRotateKEK(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Audit = events })
	recs := makeDEKs(t, k, "eu", "before", 5)
	_, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	recs = append(recs, makeDEKs(t, k, "eu", "v2", 5)...)
	usRecs := makeDEKs(t, k, "us", "us", 3)
	require.Equal(t, []uint32{1, 1}, kekVersionsOf(zoneKeyRows(t, e.store, "eu")))

	res, err := k.RotateKEK(t.Context(), "eu")
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: "eu", KEKVersion: 2, Rewrapped: 2}, res)
	require.Equal(t, []uint32{2, 2}, kekVersionsOf(zoneKeyRows(t, e.store, "eu")), "every zone-key row is under the new KEK version")
	require.Equal(t, []uint32{1}, kekVersionsOf(zoneKeyRows(t, e.store, "us")), "other zones are untouched")
	minLive, primary, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary})

	// The keyring goes on working, and data decrypts from a cold keyring.
	recs = append(recs, makeDEKs(t, k, "eu", "after", 3)...)
	requireOpens(t, k, recs, "rotating keyring")
	cold := e.cold(t)
	requireOpens(t, cold, recs, "cold keyring")
	requireOpens(t, cold, usRecs, "cold keyring, zone us")

	// Recorded: the rotation, then each row's rewrap.
	rot := events.of(audit.Rotate, audit.Allow)
	require.Len(t, rot, 2, "the zone-key rotation and the KEK rotation")
	require.Equal(t, uint32(2), rot[1].KEKVersion)
	rewraps := events.of(audit.Rewrap, audit.Allow)
	var zoneKeyRewraps []audit.Event
	for _, ev := range rewraps {
		if ev.DEK == "" {
			zoneKeyRewraps = append(zoneKeyRewraps, ev)
		}
	}
	require.Len(t, zoneKeyRewraps, 2)
	for i, ev := range zoneKeyRewraps {
		require.Equal(t, "eu", ev.Zone)
		require.Equal(t, uint32(i+1), ev.ZoneKeyVersion)
		require.Equal(t, uint32(2), ev.KEKVersion)
	}

	// Nothing left to rewrap; a new zone-key version is wrapped under the
	// new KEK version.
	res, err = k.RewrapZoneKeys(t.Context(), "eu")
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: "eu", KEKVersion: 2, Skipped: 2}, res)
	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, []uint32{2, 2, 2}, kekVersionsOf(zoneKeyRows(t, e.store, "eu")))
	requireOpens(t, e.cold(t), recs, "cold keyring after a zone-key rotation")
}

func TestRetireKEKBelow(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "s", 4)
	old := zoneKeyRows(t, e.store, "eu")[0]

	// A rotation at the custodian whose rewrap has not run yet.
	v, err := e.cust["eu"].Rotate(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)

	err = k.RetireKEKBelow(t.Context(), "eu", 2)
	var inUse *keystore.KEKInUseError
	require.ErrorAs(t, err, &inUse)
	require.Equal(t, &keystore.KEKInUseError{Zone: "eu", Below: 2, ZoneKeyVersions: []uint32{1}, OldestKEKVersion: 1}, inUse)
	require.Contains(t, err.Error(), `zone "eu"`)
	minLive, _, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(1), minLive, "a refused retirement changes nothing")

	res, err := k.RewrapZoneKeys(t.Context(), "eu")
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: "eu", KEKVersion: 2, Rewrapped: 1}, res)
	require.NoError(t, k.RetireKEKBelow(t.Context(), "eu", 2))
	minLive, _, err = e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(2), minLive)

	// The old KEK version is refused; the data still decrypts.
	_, err = e.cust["eu"].Unwrap(t.Context(), kms.Wrapped{Ciphertext: old.Wrapped, KEKVersion: old.KEKVersion}, kms.Binding{Zone: "eu", KeyID: old.ID, Version: old.Version})
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	requireOpens(t, e.cold(t), recs, "cold keyring after retiring KEK v1")

	require.ErrorIs(t, k.RetireKEKBelow(t.Context(), "eu", 0), keystore.ErrInvalidValue)
	require.ErrorIs(t, k.RetireKEKBelow(t.Context(), "eu", 3), keystore.ErrInvalidValue, "the primary version cannot be retired")
	require.NoError(t, k.RetireKEKBelow(t.Context(), "eu", 1), "a retirement can be lowered again")
}

func TestRotateZoneKey(t *testing.T) {
	const n, batch = 2000, 100
	e := newRotEnv(t)
	k := e.keyring(t)
	other := e.keyring(t) // another process, which learns of the new version late
	recs := makeDEKs(t, k, "eu", "before", n)
	usRecs := makeDEKs(t, k, "us", "us", 5)
	cached := dataKey(t, k, "eu", "before-00007")

	type call struct{ done, total int }
	var calls []call
	var during []sealed
	res, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{
		BatchSize: batch,
		Progress: func(done, total int) {
			calls = append(calls, call{done, total})
			// Data encrypted during the rotation, by the rotating
			// keyring, under the new version.
			if len(calls)%5 == 0 {
				during = append(during, seal(t, dataKey(t, k, "eu", fmt.Sprintf("during-rotation-%d", len(calls))), "during"))
			}
		},
	})
	require.NoError(t, err)
	// The rows created during the rotation may or may not be scanned.
	require.GreaterOrEqual(t, res.Scanned, n)
	require.LessOrEqual(t, res.Scanned, n+len(during))
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 2, Created: true, Scanned: res.Scanned, Rewrapped: n}, res)

	require.Len(t, calls, (res.Scanned+batch-1)/batch, "one call per batch")
	for i, c := range calls {
		require.Equal(t, max(n, c.done), c.total, "call %d: total", i)
		if i > 0 {
			require.Greater(t, c.done, calls[i-1].done, "call %d: done goes backwards", i)
		}
	}
	require.Equal(t, res.Scanned, calls[len(calls)-1].done)

	require.Equal(t, map[uint32]int{2: n + len(during)}, dekVersions(t, e.store, "eu"), "every DEK is under the new version")
	require.Equal(t, map[uint32]int{1: 5}, dekVersions(t, e.store, "us"))
	require.Len(t, zoneKeyRows(t, e.store, "eu"), 2)

	// The cached DEK is still the stored one.
	requireSameKey(t, cached, key(t, e.cold(t), cached.ID()), "cached DEK after the rotation")
	after := makeDEKs(t, k, "eu", "after", 3)
	for _, r := range append(after, during...) {
		row, err := e.store.DEK(t.Context(), r.id)
		require.NoError(t, err)
		require.Equal(t, uint32(2), row.ZoneKeyVersion, "a DEK made during or after the rotation")
	}
	all := append(append(append(recs, during...), after...), usRecs...)
	requireOpens(t, k, all, "rotating keyring")
	requireOpens(t, other, all, "another keyring")
	requireOpens(t, e.cold(t), all, "cold keyring")
}

// TestRotateZoneKeyLateProcess shows the ZoneKeyTTL caveat: a process that
// has not yet seen the new version creates DEKs under the previous one,
// which the verification scan reports and a later run rewraps.
func TestRotateZoneKeyLateProcess(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	late := e.keyring(t)
	recs := makeDEKs(t, late, "eu", "s", 20)

	var lateRecs []sealed
	res, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{
		BatchSize: 10,
		Progress: func(done, total int) {
			if done == total {
				// After the last batch, before the verification.
				lateRecs = append(lateRecs, seal(t, dataKey(t, late, "eu", "late"), "late"))
			}
		},
	})
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.Version)
	require.Equal(t, 1, res.Remaining, "the late process's DEK")
	require.Equal(t, map[uint32]int{1: 1, 2: 20}, dekVersions(t, e.store, "eu"))

	// Once ZoneKeyTTL has passed, the late process uses the new version
	// and a second run completes the rotation.
	e.clock.Advance(keystore.DefaultZoneKeyTTL)
	lateRecs = append(lateRecs, seal(t, dataKey(t, late, "eu", "later"), "later"))
	res, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{BatchSize: 10})
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 2, Scanned: 22, Rewrapped: 1}, res, "the second run resumes")
	require.Equal(t, map[uint32]int{2: 22}, dekVersions(t, e.store, "eu"))
	requireOpens(t, e.cold(t), append(recs, lateRecs...), "cold keyring")
}

func TestRotateZoneKeyInterrupted(t *testing.T) {
	const n, batch = 600, 100
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "s", n)
	stale := e.keyring(t)
	recs = append(recs, makeDEKs(t, stale, "eu", "stale", 1)...)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	batches := 0
	res, err := k.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{
		BatchSize: batch,
		Progress: func(done, total int) {
			if batches++; batches == 3 {
				cancel()
			}
		},
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, err.Error(), `zone "eu"`)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 2, Created: true, Scanned: 3 * batch, Rewrapped: 3 * batch}, res)
	require.Equal(t, map[uint32]int{1: n + 1 - 3*batch, 2: 3 * batch}, dekVersions(t, e.store, "eu"))

	// Data encrypted between the runs, and everything so far, decrypts.
	recs = append(recs, makeDEKs(t, k, "eu", "between", 2)...)
	requireOpens(t, e.cold(t), recs, "cold keyring after the interruption")

	// Another process resumes toward version 2, without making another,
	// and creates DEKs under it from then on, although it had seen version
	// 1 as current a moment before.
	var calls int
	res, err = stale.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{BatchSize: batch, Progress: func(int, int) { calls++ }})
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 2, Scanned: n + 3, Rewrapped: n + 1 - 3*batch}, res)
	require.Equal(t, 7, calls)
	require.Len(t, zoneKeyRows(t, e.store, "eu"), 2, "no third version")
	recs = append(recs, makeDEKs(t, stale, "eu", "resumed", 1)...)
	require.Equal(t, map[uint32]int{2: n + 4}, dekVersions(t, e.store, "eu"))
	requireOpens(t, e.cold(t), recs, "cold keyring after the second run")

	// The rotation is complete: the next run makes version 3.
	res, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 3, Created: true, Scanned: n + 4, Rewrapped: n + 4}, res)
}

// meeting holds each of its parties at arrive until all have arrived, so
// that rotations in a test overlap whatever the scheduling.
type meeting struct {
	wg  sync.WaitGroup
	all chan struct{}
}

func newMeeting(parties int) *meeting {
	m := &meeting{all: make(chan struct{})}
	m.wg.Add(parties)
	go func() { m.wg.Wait(); close(m.all) }()
	return m
}

func (m *meeting) arrive() error {
	m.wg.Done()
	select {
	case <-m.all:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("the other rotation never reached its first row update")
	}
}

// meetingStore is the env's store for one keyring: its first row update
// waits until every keyring of the meeting has reached its own.
type meetingStore struct {
	*boltstore.Store
	m    *meeting
	once sync.Once
}

func (s *meetingStore) meet() (err error) {
	s.once.Do(func() { err = s.m.arrive() })
	return err
}

func (s *meetingStore) UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevVersion uint32, prev, wrapped []byte, version uint32) error {
	if err := s.meet(); err != nil {
		return err
	}
	return s.Store.UpdateDEKWrap(ctx, id, prevVersion, prev, wrapped, version)
}

func (s *meetingStore) UpdateDEKWraps(ctx context.Context, updates []keystore.DEKWrapUpdate) ([]error, error) {
	if err := s.meet(); err != nil {
		return nil, err
	}
	return s.Store.UpdateDEKWraps(ctx, updates)
}

func (s *meetingStore) UpdateZoneKeyWrap(ctx context.Context, zone string, version uint32, prev, wrapped []byte, kekVersion uint32) error {
	if err := s.meet(); err != nil {
		return err
	}
	return s.Store.UpdateZoneKeyWrap(ctx, zone, version, prev, wrapped, kekVersion)
}

// rowByRow hides the batch update of the store it wraps, so that
// rotations and epochs over it rewrap one row per update.
type rowByRow struct {
	keystore.Store
	keystore.RotationStore
	keystore.LifecycleStore
}

// Two rotations of one zone at once, from two keyrings: over a store that
// rewraps a page in one batch, and over one that rewraps row by row.
func TestRotateZoneKeyRace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(*meetingStore) keystore.Store
	}{
		{"batch", func(s *meetingStore) keystore.Store { return s }},
		{"row by row", func(s *meetingStore) keystore.Store { return rowByRow{s, s, s} }},
	} {
		t.Run(tc.name, func(t *testing.T) { testRotateZoneKeyRace(t, tc.store) })
	}
}

func testRotateZoneKeyRace(t *testing.T, store func(*meetingStore) keystore.Store) {
	const n = 300
	e := newRotEnv(t)
	recs := makeDEKs(t, e.keyring(t), "eu", "s", n)
	m := newMeeting(2)
	var keyrings [2]*keystore.Keyring
	for i := range keyrings {
		keyrings[i] = e.keyring(t, func(c *keystore.Config) { c.Store = store(&meetingStore{Store: e.store, m: m}) })
		// Each has seen version 1 as current.
		recs = append(recs, makeDEKs(t, keyrings[i], "eu", fmt.Sprintf("keyring-%d", i), 1)...)
	}
	var results [2]keystore.ZoneKeyRotationResult
	var errs [2]error
	var wg sync.WaitGroup
	for i, k := range keyrings {
		wg.Go(func() {
			results[i], errs[i] = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{BatchSize: 25})
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])

	require.Len(t, zoneKeyRows(t, e.store, "eu"), 2, "exactly one new version")
	require.Equal(t, uint32(2), results[0].Version)
	require.Equal(t, uint32(2), results[1].Version)
	require.True(t, results[0].Created != results[1].Created, "exactly one run made the version: %+v", results)
	require.Equal(t, n+2, results[0].Rewrapped+results[1].Rewrapped, "each DEK rewrapped once")
	require.Zero(t, results[0].Remaining+results[1].Remaining)
	// Both create DEKs under the new version, the loser of the create too.
	for i, k := range keyrings {
		recs = append(recs, makeDEKs(t, k, "eu", fmt.Sprintf("after-%d", i), 1)...)
	}
	require.Equal(t, map[uint32]int{2: n + 4}, dekVersions(t, e.store, "eu"))
	requireOpens(t, e.cold(t), recs, "cold keyring")
}

func TestRotateKEKRace(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "v1", 3)
	for i := range 2 {
		_, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
		require.NoError(t, err)
		recs = append(recs, makeDEKs(t, k, "eu", fmt.Sprintf("v%d", i+2), 3)...)
	}
	m := newMeeting(2)
	var keyrings [2]*keystore.Keyring
	for i := range keyrings {
		keyrings[i] = e.keyring(t, func(c *keystore.Config) { c.Store = &meetingStore{Store: e.store, m: m} })
	}
	var results [2]keystore.KEKRotation
	var errs [2]error
	var wg sync.WaitGroup
	for i, k := range keyrings {
		wg.Go(func() { results[i], errs[i] = k.RotateKEK(t.Context(), "eu") })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.ElementsMatch(t, []uint32{2, 3}, []uint32{results[0].KEKVersion, results[1].KEKVersion})
	for _, r := range results {
		require.Equal(t, 3, r.Rewrapped+r.Skipped, "%+v", r)
	}

	minLive, primary, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	for _, row := range zoneKeyRows(t, e.store, "eu") {
		require.GreaterOrEqual(t, row.KEKVersion, uint32(2), "zone key v%d is under a rotated KEK version", row.Version)
		require.True(t, row.KEKVersion >= minLive && row.KEKVersion <= primary, "zone key v%d is under KEK v%d, not live", row.Version, row.KEKVersion)
	}
	require.NoError(t, keyrings[0].RetireKEKBelow(t.Context(), "eu", 2))
	requireOpens(t, e.cold(t), recs, "cold keyring")
}

func TestZoneKeyStatus(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	st, err := k.ZoneKeyStatus(t.Context(), "eu")
	require.NoError(t, err)
	require.Empty(t, st)

	makeDEKs(t, k, "eu", "a", 3)
	_, err = k.RotateKEK(t.Context(), "eu")
	require.NoError(t, err)
	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	makeDEKs(t, k, "eu", "b", 2)
	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)

	rows := zoneKeyRows(t, e.store, "eu")
	st, err = k.ZoneKeyStatus(t.Context(), "eu")
	require.NoError(t, err)
	require.Len(t, st, 3)
	for i, s := range st {
		require.Equal(t, rows[i].Version, s.Version)
		require.Equal(t, rows[i].ID, s.ID)
		require.Equal(t, rows[i].KEKVersion, s.KEKVersion)
		require.True(t, rows[i].Created.Equal(s.Created))
		require.Equal(t, time.UTC, s.Created.Location())
		require.Equal(t, "eu", s.Zone)
	}
	require.Equal(t, []int{0, 0, 5}, []int{st[0].DEKs, st[1].DEKs, st[2].DEKs})
	require.Equal(t, uint32(2), st[0].KEKVersion, "v1 rewrapped by the KEK rotation")

	_, err = k.ZoneKeyStatus(t.Context(), "mars")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
}

func TestRotationAudit(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Audit = events })
	recs := makeDEKs(t, k, "eu", "s", 4)

	res, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, 4, res.Rewrapped)
	rot := events.of(audit.Rotate, audit.Allow)
	require.Len(t, rot, 1)
	require.Equal(t, audit.Event{Action: audit.Rotate, Decision: audit.Allow, Zone: "eu", ZoneKeyVersion: 2}, withoutTime(rot[0]))
	rewraps := events.of(audit.Rewrap, audit.Allow)
	require.Len(t, rewraps, 4)
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.id.String()] = true
	}
	for _, ev := range rewraps {
		require.True(t, ids[ev.DEK], "event for DEK %s", ev.DEK)
		require.Equal(t, "eu", ev.Zone)
		require.Equal(t, uint32(2), ev.ZoneKeyVersion)
		require.NotEmpty(t, ev.Subject)
	}
	require.Len(t, events.of(audit.ZoneKeyCreate, audit.Allow), 2)

	// Failing closed: a rewrap that cannot be recorded is not done, and
	// neither is anything after it; the next run resumes.
	_, err = e.keyring(t, func(c *keystore.Config) { c.Audit = failingSink{events, audit.Rewrap} }).
		RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, keystore.ErrAudit)
	require.Equal(t, map[uint32]int{2: 4}, dekVersions(t, e.store, "eu"))
	res, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 3, Scanned: 4, Rewrapped: 4}, res)

	// A KEK rotation that cannot be recorded rewraps nothing;
	// RewrapZoneKeys finishes it.
	_, err = e.keyring(t, func(c *keystore.Config) { c.Audit = failingSink{events, audit.Rotate} }).RotateKEK(t.Context(), "eu")
	require.ErrorIs(t, err, keystore.ErrAudit)
	require.Equal(t, []uint32{1, 1, 1}, kekVersionsOf(zoneKeyRows(t, e.store, "eu")))
	kres, err := k.RewrapZoneKeys(t.Context(), "eu")
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: "eu", KEKVersion: 2, Rewrapped: 3}, kres)
	requireOpens(t, e.cold(t), recs, "cold keyring")
}

// failingSink fails to record the events of one action.
type failingSink struct {
	audit.Sink
	action audit.Action
}

func (s failingSink) Record(ctx context.Context, e audit.Event) error {
	if e.Action == s.action {
		return errors.New("audit store is full")
	}
	return s.Sink.Record(ctx, e)
}

func withoutTime(e audit.Event) audit.Event {
	e.Time = time.Time{}
	return e
}

func TestRotationCustody(t *testing.T) {
	iss, err := attest.NewDevIssuer("https://attest.test")
	require.NoError(t, err)
	v, err := attest.NewVerifier(iss.IssuerConfig(audience))
	require.NoError(t, err)
	who := &caller{}
	attestors := map[string]*attest.Attestor{}
	for _, region := range []string{"europe-west1", "us-east1"} {
		tok, err := iss.Token(audience, region, "operator", time.Hour)
		require.NoError(t, err)
		attestors[region] = attest.NewAttestor(attest.StaticSource(tok), v)
	}
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) {
		c.Now = nil // attestation checks expiry against the real clock
		c.Audit = events
		c.Policy = &keystore.RegionPolicy{Regions: map[string][]string{"eu": {"europe-west1"}, "us": {"us-east1"}}, Attestor: who}
	})
	who.cur.Store(attestors["europe-west1"])
	recs := makeDEKs(t, k, "eu", "s", 3)

	// Out of zone: refused and recorded before anything is read or
	// changed.
	who.cur.Store(attestors["us-east1"])
	_, err = k.RotateKEK(t.Context(), "eu")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = k.RewrapZoneKeys(t.Context(), "eu")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	require.ErrorIs(t, k.RetireKEKBelow(t.Context(), "eu", 1), keystore.ErrOutsideCustody)
	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = k.ZoneKeyStatus(t.Context(), "eu")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	require.Len(t, events.of(audit.Access, audit.Deny), 5)
	_, primary, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(1), primary)
	require.Len(t, zoneKeyRows(t, e.store, "eu"), 1)

	// In zone: done, and the events name the operator.
	who.cur.Store(attestors["europe-west1"])
	_, err = k.RotateKEK(t.Context(), "eu")
	require.NoError(t, err)
	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	for _, ev := range events.of(audit.Rotate, audit.Allow) {
		require.Equal(t, "europe-west1", ev.Region)
		require.Equal(t, "operator", ev.Workload)
	}
	requireOpens(t, k, recs, "after the rotations")
}

func TestRotationRequirements(t *testing.T) {
	ctx := t.Context()
	// A custodian that cannot manage KEK versions: zone-key rotation
	// works, KEK rotation is refused as a configuration error.
	e := newRotEnv(t)
	k := e.keyring(t, func(c *keystore.Config) {
		c.Custodians = map[string]kms.Custodian{"eu": &countingCustodian{Custodian: e.cust["eu"]}}
	})
	makeDEKs(t, k, "eu", "s", 2)
	_, err := k.RotateKEK(ctx, "eu")
	require.ErrorIs(t, err, kms.ErrConfig)
	require.Contains(t, err.Error(), "kms.KeyManager")
	_, err = k.RewrapZoneKeys(ctx, "eu")
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorIs(t, k.RetireKEKBelow(ctx, "eu", 1), kms.ErrConfig)
	res, err := k.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, 2, res.Rewrapped)

	// A store without RotationStore.
	k = e.keyring(t, func(c *keystore.Config) { c.Store = &spyStore{Store: e.store} })
	_, err = k.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, errors.ErrUnsupported)
	_, err = k.ZoneKeyStatus(ctx, "eu")
	require.ErrorIs(t, err, errors.ErrUnsupported)

	// Unknown zones, and a closed keyring.
	k = e.keyring(t)
	_, err = k.RotateKEK(ctx, "mars")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
	_, err = k.RotateZoneKey(ctx, "mars", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
	require.NoError(t, k.Close())
	_, err = k.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, keystore.ErrClosed)
	_, err = k.RotateKEK(ctx, "eu")
	require.ErrorIs(t, err, keystore.ErrClosed)
}

// TestRotateZoneKeyTampered checks that a DEK row that does not
// authenticate stops the rotation instead of being rewrapped.
func TestRotateZoneKeyTampered(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "s", 3)
	row, err := e.store.DEK(t.Context(), recs[1].id)
	require.NoError(t, err)
	bad := append([]byte(nil), row.Wrapped...)
	bad[len(bad)-1] ^= 1
	require.NoError(t, e.store.UpdateDEKWrap(t.Context(), row.ID, row.ZoneKeyVersion, row.Wrapped, bad, row.ZoneKeyVersion))

	_, err = k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.ErrorIs(t, err, keystore.ErrTampered)
	require.Contains(t, err.Error(), row.ID.String())
	got, err := e.store.DEK(t.Context(), row.ID)
	require.NoError(t, err)
	require.Equal(t, bad, got.Wrapped, "the tampered row is left as it is")
}

// shredBeforeBatch is a store that shreds a subject's rows right before the
// first batch of rewraps is written: a shred that lands between a
// rotation's scan and its write.
type shredBeforeBatch struct {
	*boltstore.Store
	zone, subject string
	once          sync.Once
}

func (s *shredBeforeBatch) UpdateDEKWraps(ctx context.Context, updates []keystore.DEKWrapUpdate) ([]error, error) {
	var err error
	s.once.Do(func() { _, _, err = s.Store.ShredSubject(ctx, s.zone, s.subject, time.Now()) })
	if err != nil {
		return nil, err
	}
	return s.Store.UpdateDEKWraps(ctx, updates)
}

// A subject shredded while a rotation writes its page is skipped, not an
// error: its rows are gone, and the others are rewrapped.
func TestRotateZoneKeyShredDuringBatch(t *testing.T) {
	const n = 40
	e := newRotEnv(t)
	recs := makeDEKs(t, e.keyring(t), "eu", "s", n)
	store := &shredBeforeBatch{Store: e.store, zone: "eu", subject: "s-00003"}
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Store, c.Audit = store, events })
	res, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{BatchSize: 16})
	require.NoError(t, err)
	require.Equal(t, n-1, res.Rewrapped, "every row but the shredded one")
	require.Zero(t, res.Remaining)
	require.Equal(t, map[uint32]int{2: n - 1}, dekVersions(t, e.store, "eu"))
	requireOpens(t, e.cold(t), append(recs[:3:3], recs[4:]...), "cold keyring")
	// The shredded row's rewrap was audited before the write, then said
	// not to be applied; every other row has one allow.
	events.mu.Lock()
	defer events.mu.Unlock()
	byDEK := map[string][]audit.Decision{}
	for _, ev := range events.events {
		if ev.Action == audit.Rewrap && ev.DEK != "" {
			byDEK[ev.DEK] = append(byDEK[ev.DEK], ev.Decision)
		}
	}
	for i, r := range recs {
		want := []audit.Decision{audit.Allow}
		if i == 3 {
			want = append(want, audit.Error)
		}
		require.Equal(t, want, byDEK[r.id.String()], "rewrap events of DEK %d", i)
	}
}

// moveBeforeWrite is a store that runs move once, right before the first
// write of a rewrap of DEK id (in a batch or alone): a move of id's subject
// to another zone that lands between a rotation's scan, and the audit of
// the rewrap, and its write.
type moveBeforeWrite struct {
	*boltstore.Store
	id   envelope.KeyID
	move func()
	once sync.Once
}

func (s *moveBeforeWrite) UpdateDEKWraps(ctx context.Context, updates []keystore.DEKWrapUpdate) ([]error, error) {
	if slices.ContainsFunc(updates, func(u keystore.DEKWrapUpdate) bool { return u.ID == s.id }) {
		s.once.Do(s.move)
	}
	return s.Store.UpdateDEKWraps(ctx, updates)
}

func (s *moveBeforeWrite) UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevVersion uint32, prev, wrapped []byte, version uint32) error {
	if id == s.id {
		s.once.Do(s.move)
	}
	return s.Store.UpdateDEKWrap(ctx, id, prevVersion, prev, wrapped, version)
}

// A subject moved to another zone while a zone-key rotation or a key epoch
// of its source zone rewraps the zone is skipped, as a shredded one is:
// the conflict's re-read finds its row in the target zone, which is the
// move's doing, not tampering. The other rows are rewrapped, the moved one
// is left as the move stored it, and no event recorded after the move
// claims a rewrap of it (the one audited before the write that lost to
// the move stands, as for a shred). Over a store that rewraps a page in
// one batch, and over one that rewraps row by row.
func TestRewrapSkipsSubjectMovedMeanwhile(t *testing.T) {
	rotate := func(k *keystore.Keyring) (int, uint32, error) {
		res, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
		return res.Rewrapped, res.Version, err
	}
	epoch := func(k *keystore.Keyring) (int, uint32, error) {
		res, err := k.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
		return res.Rewrapped, res.ZoneKeyVersion, err
	}
	for _, tc := range []struct {
		name  string
		store func(*moveBeforeWrite) keystore.Store
		run   func(*keystore.Keyring) (rewrapped int, version uint32, err error)
	}{
		{"rotation, batch", func(s *moveBeforeWrite) keystore.Store { return s }, rotate},
		{"rotation, row by row", func(s *moveBeforeWrite) keystore.Store { return rowByRow{s, s, s} }, rotate},
		{"epoch, batch", func(s *moveBeforeWrite) keystore.Store { return s }, epoch},
		{"epoch, row by row", func(s *moveBeforeWrite) keystore.Store { return rowByRow{s, s, s} }, epoch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRotEnv(t)
			mover := e.keyring(t)
			alice := makeDEKs(t, mover, "eu", "alice", 1)
			bob := makeDEKs(t, mover, "eu", "bob", 3)
			events := &sink{}
			moved := -1 // events recorded before the move
			store := &moveBeforeWrite{Store: e.store, id: alice[0].id, move: func() {
				events.mu.Lock()
				moved = len(events.events)
				events.mu.Unlock()
				_, err := mover.MoveSubject(t.Context(), "alice-00000", "eu", "us")
				require.NoError(t, err)
			}}
			k := e.keyring(t, func(c *keystore.Config) { c.Store, c.Audit = tc.store(store), events })

			n, version, err := tc.run(k)
			require.NoError(t, err, "a concurrent move is not tampering")
			require.GreaterOrEqual(t, moved, 0, "the move ran during the rewrap")
			require.Equal(t, 3, n, "bob's rows, not alice's")
			require.Equal(t, map[uint32]int{version: 3}, dekVersions(t, e.store, "eu"))
			row, err := e.store.DEK(t.Context(), alice[0].id)
			require.NoError(t, err)
			require.Equal(t, "us", row.Zone)
			require.True(t, row.Pending(), "left as the move stored it")

			events.mu.Lock()
			after := events.events[moved:]
			events.mu.Unlock()
			// Alice's rewrap, audited before the move, is followed by
			// an event saying it was not applied; nothing after the
			// move claims a rewrap of her DEK.
			notApplied := 0
			for _, ev := range after {
				if ev.Action != audit.Rewrap || ev.DEK != alice[0].id.String() {
					continue
				}
				require.Equal(t, audit.Error, ev.Decision, "an event after the move claims a rewrap of the moved DEK: %+v", ev)
				require.Contains(t, ev.Reason, "rewrap not applied")
				notApplied++
			}
			require.Equal(t, 1, notApplied, "events of alice's DEK after the move")
			requireOpens(t, e.cold(t), append(alice, bob...), "cold keyring")
		})
	}
}

// foreignScan is a store whose scan of zone also returns the DEK rows of
// zone other, as a store that mixes zones up would.
type foreignScan struct {
	*boltstore.Store
	zone, other string
}

func (s *foreignScan) ScanDEKs(ctx context.Context, zone, cursor string, limit int) ([]keystore.DEKRow, string, error) {
	rows, next, err := s.Store.ScanDEKs(ctx, zone, cursor, limit)
	if err != nil || zone != s.zone || next != "" {
		return rows, next, err
	}
	foreign, _, err := s.Store.ScanDEKs(ctx, s.other, "", 1000)
	return append(rows, foreign...), "", err
}

// A row of another zone in the zone's own scan is still tampering, unlike
// one found by id after a move: the rotation stops with ErrTampered and
// leaves the other zone's row as it was. Over a store that rewraps a page
// in one batch, and over one that rewraps row by row.
func TestRotateZoneKeyForeignRowTampered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(*foreignScan) keystore.Store
	}{
		{"batch", func(s *foreignScan) keystore.Store { return s }},
		{"row by row", func(s *foreignScan) keystore.Store { return rowByRow{s, s, s} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRotEnv(t)
			k := e.keyring(t)
			recs := makeDEKs(t, k, "eu", "s", 3)
			us := makeDEKs(t, k, "us", "s", 1)
			before, err := e.store.DEK(t.Context(), us[0].id)
			require.NoError(t, err)

			store := &foreignScan{Store: e.store, zone: "eu", other: "us"}
			_, err = e.keyring(t, func(c *keystore.Config) { c.Store = tc.store(store) }).
				RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
			require.ErrorIs(t, err, keystore.ErrTampered)
			require.Contains(t, err.Error(), us[0].id.String())
			after, err := e.store.DEK(t.Context(), us[0].id)
			require.NoError(t, err)
			require.Equal(t, before, after, "the foreign row is left as it is")
			requireOpens(t, e.cold(t), append(recs, us...), "cold keyring")
		})
	}
}

// TestRetireKEKBelowMovedDEKs: a DEK moved in from another zone is wrapped
// by the zone's KEK itself until the zone adopts it; retiring that KEK
// version is refused while such a DEK is not adopted, and allowed once a
// zone-key rotation has adopted it, after which it still opens.
func TestRetireKEKBelowMovedDEKs(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "s", 1)
	makeDEKs(t, k, "us", "u", 2)
	_, err := k.MoveSubject(t.Context(), "s-00000", "eu", "us") // pending in us, under us's KEK v1
	require.NoError(t, err)
	_, err = k.RotateKEK(t.Context(), "us") // KEK v2; the zone-key rows are rewrapped
	require.NoError(t, err)

	err = k.RetireKEKBelow(t.Context(), "us", 2)
	var inUse *keystore.KEKInUseError
	require.ErrorAs(t, err, &inUse)
	require.Equal(t, &keystore.KEKInUseError{Zone: "us", Below: 2, PendingDEKs: 1, OldestKEKVersion: 1}, inUse)
	require.ErrorContains(t, err, "moved in from another zone")
	minLive, _, err := e.cust["us"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint32(1), minLive, "a refused retirement changes nothing")

	_, err = k.RotateZoneKey(t.Context(), "us", keystore.ZoneKeyRotation{}) // adopts the moved DEK
	require.NoError(t, err)
	require.NoError(t, k.RetireKEKBelow(t.Context(), "us", 2))
	requireOpens(t, e.cold(t), recs, "the moved DEK after the retirement")
}
