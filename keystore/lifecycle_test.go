package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
)

// zonePolicy lets callers use only the zones it lists: a process in one
// zone, without attestation.
type zonePolicy map[string]bool

func (p zonePolicy) Authorize(_ context.Context, zone string) (keystore.Caller, error) {
	if !p[zone] {
		return keystore.Caller{Region: "test"}, fmt.Errorf("%w: test policy closes zone %q", keystore.ErrOutsideCustody, zone)
	}
	return keystore.Caller{Region: "test"}, nil
}

func inZones(zones ...string) func(*keystore.Config) {
	p := zonePolicy{}
	for _, z := range zones {
		p[z] = true
	}
	return func(c *keystore.Config) { c.Policy = p }
}

// requireRefused checks that k cannot open any message of recs, with an
// error that is target.
func requireRefused(t *testing.T, k *keystore.Keyring, recs []sealed, target error, when string) {
	t.Helper()
	for _, r := range recs {
		_, err := k.Key(t.Context(), r.id)
		require.ErrorIs(t, err, target, "%s: Key(%s)", when, r.id)
	}
}

func TestShredSubject(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Audit = events })
	alice := makeDEKs(t, k, "eu", "alice", 1)
	bob := makeDEKs(t, k, "eu", "bob", 1)
	aliceUS := makeDEKs(t, k, "us", "alice", 1)
	requireOpens(t, k, alice, "before the shred")

	res, err := k.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	require.Equal(t, []envelope.KeyID{alice[0].id}, res.DEKs)
	require.False(t, res.AlreadyShredded)
	require.Equal(t, keystore.Shredded, res.Tombstone.Kind)
	require.Equal(t, uint32(1), res.Tombstone.Generation)
	require.Len(t, events.of(audit.Shred, audit.Allow), 1)

	// At once in this process, though the DEK was cached.
	requireRefused(t, k, alice, keystore.ErrKeyShredded, "after the shred")
	_, err = k.DataKey(t.Context(), "eu", "alice-00000")
	require.ErrorIs(t, err, keystore.ErrKeyShredded, "no new DEK is made silently")
	// Other subjects, and the same subject in another zone, are untouched.
	requireOpens(t, k, bob, "another subject")
	requireOpens(t, k, aliceUS, "the subject in another zone")
	requireOpens(t, e.cold(t), bob, "another subject, cold")
	requireRefused(t, e.cold(t), alice, keystore.ErrKeyShredded, "cold keyring")

	// Again: nothing to do, and said so.
	again, err := k.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	require.True(t, again.AlreadyShredded)
	require.Empty(t, again.DEKs)
	require.Len(t, events.of(audit.Shred, audit.Allow), 1, "a repeated shred deletes nothing and records nothing")

	// A returning user is a new generation; the old data stays gone.
	d, err := k.Reinstate(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	require.Equal(t, uint32(2), d.Generation)
	require.NotEqual(t, alice[0].id, d.ID())
	cur := dataKey(t, k, "eu", "alice-00000")
	require.Equal(t, d.ID(), cur.ID())
	requireRefused(t, e.cold(t), alice, keystore.ErrKeyShredded, "old data after reinstating")
	fresh := []sealed{seal(t, cur, "after returning")}
	requireOpens(t, e.cold(t), fresh, "new data after reinstating")
	// Shredding the new generation leaves a tombstone of generation 2.
	res, err = k.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.Tombstone.Generation)
	d, err = k.Reinstate(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	require.Equal(t, uint32(3), d.Generation)

	// Reinstating a living subject returns its DEK.
	d, err = k.Reinstate(t.Context(), "eu", "bob-00000")
	require.NoError(t, err)
	require.Equal(t, bob[0].id, d.ID())
}

func TestShredSubjectBadInput(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Audit = events })
	bob := makeDEKs(t, k, "eu", "bob", 1)
	for _, tc := range []struct {
		name, zone, subject string
		want                error
	}{
		{"unknown subject", "eu", "nobody", keystore.ErrUnknownKey},
		{"subject of another zone only", "us", "bob-00000", keystore.ErrUnknownKey},
		{"empty subject", "eu", "", keystore.ErrInvalidValue},
		{"reserved subject", "eu", keystore.ReservedPrefix + "idx", keystore.ErrInvalidValue},
		{"unknown zone", "mars", "bob-00000", keystore.ErrUnknownZone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.ShredSubject(t.Context(), tc.zone, tc.subject)
			require.ErrorIs(t, err, tc.want)
		})
	}
	require.Empty(t, events.of(audit.Shred, audit.Allow), "nothing was shredded")
	requireOpens(t, e.cold(t), bob, "after refused shreds")
	_, err := k.Reinstate(t.Context(), "eu", "nobody")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	// Out of custody: refused before anything is read.
	_, err = e.keyring(t, inZones("us")).ShredSubject(t.Context(), "eu", "bob-00000")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	requireOpens(t, e.cold(t), bob, "after a refused shred")
}

func TestShredSeenByAnotherProcessWithinDEKTTL(t *testing.T) {
	e := newRotEnv(t)
	const ttl = time.Minute
	a := e.keyring(t)
	b := e.keyring(t, func(c *keystore.Config) { c.DEKTTL = ttl })
	recs := makeDEKs(t, a, "eu", "alice", 1)
	requireOpens(t, b, recs, "b caches the DEK")
	_, err := a.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)

	e.clock.Advance(ttl - time.Second)
	requireOpens(t, b, recs, "within DEKTTL the cached DEK still serves")
	e.clock.Advance(time.Second)
	requireRefused(t, b, recs, keystore.ErrKeyShredded, "after DEKTTL")
}

// copyFile copies a store file, as a backup of the keystore would.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(to)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

func TestEpochMakesShredFinalInBackups(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	k := e.keyring(t, func(c *keystore.Config) { c.Audit = events })
	alice := makeDEKs(t, k, "eu", "alice", 1)
	bob := makeDEKs(t, k, "eu", "bob", 3)
	us := makeDEKs(t, k, "us", "carol", 2)
	// A zone-key rotation and a KEK rotation before the backup: the
	// backup's zone keys are then under two KEK versions.
	_, err := k.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	_, err = k.RotateKEK(t.Context(), "eu")
	require.NoError(t, err)
	bob = append(bob, makeDEKs(t, k, "eu", "dave", 2)...)

	backup := filepath.Join(e.dir, "backup.db")
	copyFile(t, e.store.Path(), backup)

	_, err = k.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	// Before the epoch the backup still yields the shredded subject's DEK:
	// the hole the epoch closes.
	var open *boltstore.Store
	restored := func() *keystore.Keyring {
		if open != nil {
			require.NoError(t, open.Close())
		}
		bs, err := boltstore.Open(backup, nil)
		require.NoError(t, err)
		open = bs
		t.Cleanup(func() { _ = bs.Close() })
		return e.keyring(t, func(c *keystore.Config) {
			c.Store = bs
			c.Custodians = map[string]kms.Custodian{"eu": e.openKEK(t, "eu"), "us": e.openKEK(t, "us")}
		})
	}
	requireOpens(t, restored(), alice, "backup before the epoch")

	var phases []string
	res, err := k.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1, BatchSize: 2, Progress: func(p keystore.EpochProgress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}})
	require.NoError(t, err)
	require.Equal(t, uint32(1), res.Number)
	require.Equal(t, uint32(3), res.KEKVersion, "v1 made the zone keys, v2 the KEK rotation, v3 the epoch")
	require.Equal(t, uint32(3), res.ZoneKeyVersion)
	require.Equal(t, 5, res.Scanned)
	require.Equal(t, 5, res.Rewrapped)
	require.Equal(t, 2, res.ZoneKeysDeleted)
	require.False(t, res.Finished.IsZero())
	require.Equal(t, []string{keystore.PhaseRotateKEK, keystore.PhaseZoneKey, keystore.PhaseRewrap, keystore.PhaseRetire, keystore.PhaseDestroy, keystore.PhaseDone}, phases)
	minLive, primary, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, [2]uint32{3, 3}, [2]uint32{minLive, primary})
	require.Len(t, events.of(audit.Epoch, audit.Allow), 2)

	// The backup opens nothing of the zone any more, shredded or not.
	rk := restored()
	for _, r := range append(append([]sealed{}, alice...), bob...) {
		_, err := rk.Key(t.Context(), r.id)
		require.ErrorIs(t, err, kms.ErrUnknownKey, "backup after the epoch: DEK %s", r.id)
	}
	// The live store still opens the living subjects, the other zone is
	// untouched, and the shredded subject stays shredded.
	requireOpens(t, e.cold(t), bob, "live store after the epoch")
	requireOpens(t, e.cold(t), us, "other zone after the epoch")
	requireOpens(t, restored(), us, "other zone from the backup")
	requireRefused(t, e.cold(t), alice, keystore.ErrKeyShredded, "shredded subject after the epoch")
	// New DEKs are made under the epoch's zone key.
	d := dataKey(t, e.cold(t), "eu", "erin")
	requireOpens(t, e.cold(t), []sealed{seal(t, d, "new")}, "new DEK after the epoch")
	st, err := k.ZoneKeyStatus(t.Context(), "eu")
	require.NoError(t, err)
	require.Len(t, st, 1)
	require.Equal(t, uint32(3), st[0].Version)
	require.Equal(t, 6, st[0].DEKs, "five rewrapped and erin's new one")

	// A second epoch starts a new one.
	res, err = k.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.Number)
	requireOpens(t, e.cold(t), bob, "after the second epoch")
}

// failingKM makes one KeyManager method fail once.
type failingKM struct {
	kms.Custodian
	km     kms.KeyManager
	method string
	failed bool
}

var errInjected = errors.New("injected failure")

func (f *failingKM) fail(m string) error {
	if f.method == m && !f.failed {
		f.failed = true
		return fmt.Errorf("%w: %w", kms.ErrUnavailable, errInjected)
	}
	return nil
}
func (f *failingKM) Rotate(ctx context.Context) (uint32, error) {
	if err := f.fail("Rotate"); err != nil {
		return 0, err
	}
	return f.km.Rotate(ctx)
}
func (f *failingKM) Rewrap(ctx context.Context, w kms.Wrapped, b kms.Binding) (kms.Wrapped, error) {
	return f.km.Rewrap(ctx, w, b)
}
func (f *failingKM) KEKVersions(ctx context.Context) (uint32, uint32, error) {
	return f.km.KEKVersions(ctx)
}
func (f *failingKM) RetireBelow(ctx context.Context, v uint32) error { return f.km.RetireBelow(ctx, v) }
func (f *failingKM) DestroyBelow(ctx context.Context, v uint32) error {
	if err := f.fail("DestroyBelow"); err != nil {
		return err
	}
	return f.km.DestroyBelow(ctx, v)
}
func (f *failingKM) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	if err := f.fail("Wrap"); err != nil {
		return kms.Wrapped{}, err
	}
	return f.Custodian.Wrap(ctx, key, b)
}

func TestEpochResumes(t *testing.T) {
	for _, stop := range []string{"Rotate", "Wrap", "rewrap", keystore.PhaseRetire, "DestroyBelow"} {
		t.Run(stop, func(t *testing.T) {
			e := newRotEnv(t)
			k := e.keyring(t)
			recs := makeDEKs(t, k, "eu", "s", 5)
			shredded := makeDEKs(t, k, "eu", "gone", 1)
			_, err := k.ShredSubject(t.Context(), "eu", "gone-00000")
			require.NoError(t, err)

			f := &failingKM{Custodian: e.cust["eu"], km: e.cust["eu"], method: stop}
			kf := e.keyring(t, func(c *keystore.Config) { c.Custodians = map[string]kms.Custodian{"eu": f, "us": e.cust["us"]} })
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			_, err = kf.Epoch(ctx, "eu", keystore.EpochOptions{Settle: -1, BatchSize: 2, Progress: func(p keystore.EpochProgress) {
				if p.Phase == stop && (p.Phase != keystore.PhaseRewrap || p.Done > 0) {
					cancel()
				}
			}})
			require.Error(t, err, "the epoch stops at %s", stop)
			requireOpens(t, e.cold(t), recs, "after the interrupted epoch")

			// The same owner, or anyone once the lease lapsed, resumes.
			e.clock.Advance(keystore.DefaultEpochLease + time.Second)
			res, err := k.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
			require.NoError(t, err)
			require.True(t, res.Resumed)
			require.Equal(t, uint32(1), res.Number)
			minLive, primary, err := e.cust["eu"].KEKVersions(t.Context())
			require.NoError(t, err)
			require.Equal(t, primary, minLive, "older KEK versions destroyed")
			require.Equal(t, res.KEKVersion, primary)
			requireOpens(t, e.cold(t), recs, "after the resumed epoch")
			requireRefused(t, e.cold(t), shredded, keystore.ErrKeyShredded, "shredded")
		})
	}
}

func TestEpochWhileAnotherRuns(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "s", 20)
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	results := make([]keystore.EpochResult, 2)
	runners := []*keystore.Keyring{e.keyring(t), e.keyring(t)}
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = runners[i].Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1, BatchSize: 3, Owner: fmt.Sprint("runner-", i)})
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for i, err := range errs {
		if err == nil {
			ok++
			continue
		}
		var running *keystore.EpochRunningError
		require.ErrorAs(t, err, &running, "runner %d fails cleanly", i)
		require.ErrorIs(t, err, keystore.ErrConflict)
		require.Equal(t, fmt.Sprint("runner-", 1-i), running.Owner)
	}
	require.GreaterOrEqual(t, ok, 1)
	requireOpens(t, e.cold(t), recs, "after racing epochs")
	minLive, primary, err := e.cust["eu"].KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, primary, minLive)

	// A live claim by another owner refuses a new run.
	_, err = e.keyring(t).Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1, Progress: func(p keystore.EpochProgress) {
		if p.Phase == keystore.PhaseZoneKey {
			_, err := e.keyring(t).Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1, Owner: "intruder"})
			var running *keystore.EpochRunningError
			require.ErrorAs(t, err, &running)
		}
	}})
	require.NoError(t, err)
}

func TestEpochWaitsForOtherProcesses(t *testing.T) {
	e := newRotEnv(t)
	const zkTTL = 10 * time.Minute
	ttl := func(c *keystore.Config) { c.ZoneKeyTTL = zkTTL }
	k := e.keyring(t, ttl)
	other := e.keyring(t, ttl)
	recs := makeDEKs(t, other, "eu", "early", 2)
	var late []sealed
	res, err := k.Epoch(t.Context(), "eu", keystore.EpochOptions{Progress: func(p keystore.EpochProgress) {
		if p.Phase == keystore.PhaseSettle {
			require.Equal(t, e.clock.Now().Add(zkTTL), p.Until)
			// The other process still makes DEKs under the zone key it
			// knows, until its view expires.
			late = makeDEKs(t, other, "eu", "late", 2)
			e.clock.Advance(zkTTL)
		}
	}})
	require.NoError(t, err)
	require.Len(t, late, 2)
	require.Equal(t, 4, res.Rewrapped, "the DEKs made during the settle are rewrapped too")
	requireOpens(t, e.cold(t), append(recs, late...), "after the epoch")
}

func TestMoveSubject(t *testing.T) {
	e := newRotEnv(t)
	events := &sink{}
	inEU := e.keyring(t, inZones("eu"), func(c *keystore.Config) { c.Audit = events })
	inUS := e.keyring(t, inZones("us"))
	old := makeDEKs(t, inEU, "eu", "alice", 1)
	// A second generation of the subject's DEK.
	_, err := inEU.ShredSubject(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	d, err := inEU.Reinstate(t.Context(), "eu", "alice-00000")
	require.NoError(t, err)
	alice := []sealed{seal(t, d, "gen 2")}
	d = dataKey(t, inEU, "eu", "alice-00000")
	alice = append(alice, seal(t, d, "gen 2 again"))
	// The same subject already has a DEK in us.
	aliceUS := makeDEKs(t, inUS, "us", "alice", 1)
	bob := makeDEKs(t, inEU, "eu", "bob", 1)

	res, err := inEU.MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.NoError(t, err)
	require.Len(t, res.DEKs, 1)
	require.Len(t, events.of(audit.Migrate, audit.Allow), 1)

	requireRefused(t, inEU, alice, keystore.ErrOutsideCustody, "the eu process after the move")
	requireOpens(t, inUS, alice, "a us process after the move")
	requireOpens(t, inUS, aliceUS, "the subject's own us data")
	requireOpens(t, inEU, bob, "another eu subject")
	_, err = inEU.DataKey(t.Context(), "eu", "alice-00000")
	require.ErrorIs(t, err, keystore.ErrSubjectMoved)
	cur := dataKey(t, e.keyring(t, inZones("us")), "us", "alice-00000")
	require.Equal(t, alice[0].id, cur.ID(), "the moved DEK is the subject's newest in us")

	// The us process adopted the DEK under its zone key.
	row, err := e.store.DEK(t.Context(), alice[0].id)
	require.NoError(t, err)
	require.False(t, row.Pending())
	require.Equal(t, "us", row.Zone)

	again, err := inEU.MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.NoError(t, err)
	require.True(t, again.AlreadyMoved)
	requireOpens(t, e.cold(t), alice, "cold, after the move")
	requireRefused(t, e.cold(t), old, keystore.ErrKeyShredded, "the generation shredded before the move")
}

func TestMoveSubjectBadInput(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	recs := makeDEKs(t, k, "eu", "bob", 1)
	makeDEKs(t, k, "eu", "gone", 1)
	_, err := k.ShredSubject(t.Context(), "eu", "gone-00000")
	require.NoError(t, err)
	for _, tc := range []struct {
		name, subject, from, to string
		want                    error
	}{
		{"same zone", "bob-00000", "eu", "eu", keystore.ErrInvalidValue},
		{"unknown target zone", "bob-00000", "eu", "mars", keystore.ErrUnknownZone},
		{"unknown source zone", "bob-00000", "mars", "eu", keystore.ErrUnknownZone},
		{"unknown subject", "nobody", "eu", "us", keystore.ErrUnknownKey},
		{"shredded subject", "gone-00000", "eu", "us", keystore.ErrKeyShredded},
		{"empty subject", "", "eu", "us", keystore.ErrInvalidValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.MoveSubject(t.Context(), tc.subject, tc.from, tc.to)
			require.ErrorIs(t, err, tc.want)
		})
	}
	_, err = e.keyring(t, inZones("us")).MoveSubject(t.Context(), "bob-00000", "eu", "us")
	require.ErrorIs(t, err, keystore.ErrOutsideCustody, "the mover must be in the source zone")
	requireOpens(t, e.keyring(t, inZones("eu")), recs, "nothing moved")
}

// crashStore fails MoveDEKs, as a process killed just before its commit,
// or (afterCommit) just after it.
type crashStore struct {
	*boltstore.Store
	afterCommit bool
}

func (s *crashStore) MoveDEKs(ctx context.Context, from string, rows []keystore.DEKRow, at time.Time) error {
	if s.afterCommit {
		if err := s.Store.MoveDEKs(ctx, from, rows, at); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: %w", keystore.ErrStore, errInjected)
}

func TestMoveSubjectInterrupted(t *testing.T) {
	e := newRotEnv(t)
	inEU := e.keyring(t, inZones("eu"))
	inUS := e.keyring(t, inZones("us"))
	recs := makeDEKs(t, inEU, "eu", "alice", 1)
	readableOnlyIn := func(zone, when string) {
		t.Helper()
		eu, us := e.keyring(t, inZones("eu")), e.keyring(t, inZones("us"))
		if zone == "eu" {
			requireOpens(t, eu, recs, when)
			requireRefused(t, us, recs, keystore.ErrOutsideCustody, when)
		} else {
			requireOpens(t, us, recs, when)
			requireRefused(t, eu, recs, keystore.ErrOutsideCustody, when)
		}
	}

	// Killed while wrapping for us: nothing moved.
	f := &failingKM{Custodian: e.cust["us"], km: e.cust["us"], method: "Wrap"}
	_, err := e.keyring(t, inZones("eu"), func(c *keystore.Config) {
		c.Custodians = map[string]kms.Custodian{"eu": e.cust["eu"], "us": f}
	}).MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.ErrorIs(t, err, errInjected)
	readableOnlyIn("eu", "after a failed wrap")

	// Killed before the store's commit: nothing moved.
	cs := &crashStore{Store: e.store}
	_, err = e.keyring(t, inZones("eu"), func(c *keystore.Config) { c.Store = cs }).MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.ErrorIs(t, err, errInjected)
	readableOnlyIn("eu", "after a failed commit")

	// Killed just after the commit: moved; the re-run has nothing to do. A
	// us process adopts on first use, or its epoch adopts what nobody used.
	cs.afterCommit = true
	_, err = e.keyring(t, inZones("eu"), func(c *keystore.Config) { c.Store = cs }).MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.ErrorIs(t, err, errInjected)
	res, err := inEU.MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.NoError(t, err)
	require.True(t, res.AlreadyMoved)
	row, err := e.store.DEK(t.Context(), recs[0].id)
	require.NoError(t, err)
	require.True(t, row.Pending(), "wrapped by us's KEK until adopted")
	_, err = inUS.Epoch(t.Context(), "us", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)
	row, err = e.store.DEK(t.Context(), recs[0].id)
	require.NoError(t, err)
	require.False(t, row.Pending(), "adopted by the epoch")
	readableOnlyIn("us", "after a commit whose process died, and us's epoch")

	// After the source zone's next epoch, its backups cannot read the
	// subject; the live store never could again.
	_, err = inEU.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)
	readableOnlyIn("us", "after eu's epoch")
}

func TestShredZone(t *testing.T) {
	e := newRotEnv(t)
	k := e.keyring(t)
	eu := makeDEKs(t, k, "eu", "s", 3)
	us := makeDEKs(t, k, "us", "s", 3)

	_, err := k.ShredZone(t.Context(), "eu", "")
	require.ErrorIs(t, err, keystore.ErrInvalidValue, "a zone shred needs its confirmation")
	_, err = k.ShredZone(t.Context(), "eu", "us")
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	requireOpens(t, e.cold(t), eu, "after refused zone shreds")

	ts, err := k.ShredZone(t.Context(), "eu", "eu")
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneShredded, ts.Kind)
	requireRefused(t, k, eu, keystore.ErrKeyShredded, "this process")
	requireRefused(t, e.cold(t), eu, keystore.ErrKeyShredded, "a new process")
	_, err = k.DataKey(t.Context(), "eu", "new")
	require.ErrorIs(t, err, keystore.ErrKeyShredded)
	_, err = k.DataKey(t.Context(), "eu", "")
	require.ErrorIs(t, err, keystore.ErrKeyShredded)
	requireOpens(t, e.cold(t), us, "the other zone")
	_, err = k.ShredZone(t.Context(), "eu", "eu")
	require.NoError(t, err, "a repeated zone shred completes")
}

// shredAfterTombstoneRead runs shred once, right after the keyring's first
// Tombstone read of subject: between DataKey's check that the subject was
// never shredded and its CreateDEK.
type shredAfterTombstoneRead struct {
	*boltstore.Store
	subject string
	once    sync.Once
	shred   func()
}

func (s *shredAfterTombstoneRead) Tombstone(ctx context.Context, zone, subject string) (keystore.Tombstone, error) {
	t, err := s.Store.Tombstone(ctx, zone, subject)
	if subject == s.subject {
		s.once.Do(s.shred)
	}
	return t, err
}

// TestShredDuringFirstCreate: a process asks for the first DEK of a subject
// that another process creates and shreds meanwhile. The store refuses its
// create after the shred, so it gets ErrKeyShredded, and no process gets a
// DEK for the shredded subject afterwards.
func TestShredDuringFirstCreate(t *testing.T) {
	e := newRotEnv(t)
	other := e.keyring(t)
	var shredded keystore.ShredResult
	hs := &shredAfterTombstoneRead{Store: e.store, subject: "alice", shred: func() {
		d, err := other.DataKey(t.Context(), "eu", "alice")
		require.NoError(t, err)
		seal(t, d, "alice's data")
		shredded, err = other.ShredSubject(t.Context(), "eu", "alice")
		require.NoError(t, err)
	}}
	k := e.keyring(t, func(c *keystore.Config) { c.Store = hs })
	_, err := k.DataKey(t.Context(), "eu", "alice")
	require.Len(t, shredded.DEKs, 1, "the other process created and shredded alice's DEK in between")
	require.ErrorIs(t, err, keystore.ErrKeyShredded)
	require.ErrorContains(t, err, "Reinstate")
	_, err = e.store.LatestDEK(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "no DEK behind the tombstone")
	_, err = e.cold(t).DataKey(t.Context(), "eu", "alice")
	require.ErrorIs(t, err, keystore.ErrKeyShredded, "a fresh process")
}

// pauseAfterDEKRead holds the keyring's first DEK read until released,
// after the row has been read.
type pauseAfterDEKRead struct {
	*boltstore.Store
	once          sync.Once
	read, proceed chan struct{}
}

func (s *pauseAfterDEKRead) DEK(ctx context.Context, id envelope.KeyID) (keystore.DEKRow, error) {
	row, err := s.Store.DEK(ctx, id)
	s.once.Do(func() { close(s.read); <-s.proceed })
	return row, err
}

// TestShredDuringKeyMiss: in the shredding process, a Key call that read
// the DEK row just before the shred finishes after it. It returns the DEK
// (it started before the shred) but does not cache it, so the next call is
// refused at once, as a shred promises its own process.
func TestShredDuringKeyMiss(t *testing.T) {
	for _, op := range []string{"shred", "move"} {
		t.Run(op, func(t *testing.T) {
			e := newRotEnv(t)
			recs := makeDEKs(t, e.keyring(t), "eu", "alice", 1)
			hs := &pauseAfterDEKRead{Store: e.store, read: make(chan struct{}), proceed: make(chan struct{})}
			k := e.keyring(t, func(c *keystore.Config) { c.Store = hs })
			done := make(chan error, 1)
			go func() {
				_, err := k.Key(context.Background(), recs[0].id)
				done <- err
			}()
			<-hs.read
			var want error
			if op == "shred" {
				_, err := k.ShredSubject(t.Context(), "eu", recs[0].bind.Subject)
				require.NoError(t, err)
				want = keystore.ErrKeyShredded
			} else {
				_, err := k.MoveSubject(t.Context(), recs[0].bind.Subject, "eu", "us")
				require.NoError(t, err)
				want = keystore.ErrSubjectMoved
			}
			close(hs.proceed)
			require.NoError(t, <-done, "the call that read the row before the %s", op)
			_, err := k.Key(t.Context(), recs[0].id)
			if op == "move" {
				// The row now opens in us; this process may use us
				// too, so it is served from the store, as us's.
				require.NoError(t, err)
				d, err := k.Key(t.Context(), recs[0].id)
				require.NoError(t, err)
				require.Equal(t, "us", d.Zone, "after the move: the DEK as us's, not a cached eu copy")
				return
			}
			require.ErrorIs(t, err, want, "after the %s", op)
		})
	}
}
