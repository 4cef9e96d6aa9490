package vault_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// rotZone is the zone of the rotation tests; rotKey is its Transit key.
const (
	rotZone = "eu"
	rotKey  = "eu-users"
)

// rotEnv is a Vault dev server holding zone eu's Transit key and a bolt
// store shared by every keyring of a test, as processes share a database
// and a Vault key.
type rotEnv struct {
	srv   *vaulttest.Server
	store *boltstore.Store
}

func newRotEnv(t *testing.T) *rotEnv {
	t.Helper()
	srv, root := startVault(t)
	createKey(t, root, rotKey, true)
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "keys.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	return &rotEnv{srv: srv, store: store}
}

// custodian opens a new token-auth custodian on the zone's Transit key.
func (e *rotEnv) custodian(t testing.TB) *vault.Custodian {
	t.Helper()
	return openToken(t, e.srv.Addr, e.srv.Token, rotKey)
}

// keyring returns a keyring over the env's store with c as the zone's
// custodian and no Policy (an operator's tool).
func (e *rotEnv) keyring(t testing.TB, c kms.Custodian) *keystore.Keyring {
	t.Helper()
	k, err := keystore.New(keystore.Config{Store: e.store, Custodians: map[string]kms.Custodian{rotZone: c}})
	require.NoError(t, err)
	t.Cleanup(func() { k.Close() })
	return k
}

// cold returns a keyring with cold caches and its own custodian, as a
// process started after a rotation would.
func (e *rotEnv) cold(t testing.TB) *keystore.Keyring {
	t.Helper()
	return e.keyring(t, e.custodian(t))
}

// zoneKeyRows returns the zone's stored zone-key rows.
func (e *rotEnv) zoneKeyRows(t testing.TB) []keystore.ZoneKeyRow {
	t.Helper()
	rows, err := e.store.ZoneKeys(t.Context(), rotZone)
	require.NoError(t, err)
	return rows
}

// kekVersions maps each zone-key version to the KEK version that wraps it,
// as ZoneKeyStatus reports them.
func kekVersions(t testing.TB, k *keystore.Keyring) map[uint32]uint32 {
	t.Helper()
	status, err := k.ZoneKeyStatus(t.Context(), rotZone)
	require.NoError(t, err)
	out := make(map[uint32]uint32, len(status))
	for _, s := range status {
		out[s.Version] = s.KEKVersion
	}
	return out
}

// sealedRecord is a message sealed under a DEK of the zone.
type sealedRecord struct {
	id   envelope.KeyID
	bind envelope.Binding
	msg  string
	ct   []byte
}

// sealRecords creates a DEK for each of n new subjects through k and seals
// a message under it.
func sealRecords(t testing.TB, k *keystore.Keyring, prefix string, n int) []sealedRecord {
	t.Helper()
	recs := make([]sealedRecord, 0, n)
	for i := range n {
		subject := fmt.Sprintf("%s-%03d", prefix, i)
		d, err := k.DataKey(t.Context(), rotZone, subject)
		require.NoError(t, err, "DataKey(%q)", subject)
		b := envelope.Binding{Path: "Email", Subject: subject}
		msg := "message of " + subject
		ct, err := d.Seal([]byte(msg), b)
		require.NoError(t, err)
		recs = append(recs, sealedRecord{id: d.ID(), bind: b, msg: msg, ct: ct})
	}
	return recs
}

// requireOpens checks that k opens every record.
func requireOpens(t testing.TB, k *keystore.Keyring, recs []sealedRecord, when string) {
	t.Helper()
	for _, r := range recs {
		d, err := k.Key(t.Context(), r.id)
		require.NoError(t, err, "%s: Key(%s)", when, r.id)
		pt, err := d.Open(r.ct, r.bind)
		require.NoError(t, err, "%s: opening the record of DEK %s", when, r.id)
		require.Equal(t, r.msg, string(pt), when)
	}
}

// setupZoneKeys makes zone-key versions 1 to versions, each wrapped under
// KEK version 1, with DEKs created before and after each zone-key
// rotation, and returns their records.
func setupZoneKeys(t testing.TB, k *keystore.Keyring, versions int) []sealedRecord {
	t.Helper()
	recs := sealRecords(t, k, "s1", 3)
	for v := 2; v <= versions; v++ {
		res, err := k.RotateZoneKey(t.Context(), rotZone, keystore.ZoneKeyRotation{})
		require.NoError(t, err)
		require.Equal(t, uint32(v), res.Version)
		require.True(t, res.Created)
		require.Equal(t, len(recs), res.Rewrapped)
		require.Zero(t, res.Remaining)
		recs = append(recs, sealRecords(t, k, fmt.Sprintf("s%d", v), 2)...)
	}
	want := map[uint32]uint32{}
	for v := 1; v <= versions; v++ {
		want[uint32(v)] = 1
	}
	require.Equal(t, want, kekVersions(t, k), "every zone-key version is wrapped under KEK v1")
	return recs
}

// spyCustodian counts the calls that reach a Vault custodian and, once
// Rewrap has been called failAfter times (if not 0), fails every further
// Rewrap as an unreachable Vault would.
type spyCustodian struct {
	*vault.Custodian
	failAfter               int64
	wraps, unwraps, rewraps atomic.Int64
}

func (s *spyCustodian) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	s.wraps.Add(1)
	return s.Custodian.Wrap(ctx, key, b)
}

func (s *spyCustodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	s.unwraps.Add(1)
	return s.Custodian.Unwrap(ctx, w, b)
}

func (s *spyCustodian) Rewrap(ctx context.Context, w kms.Wrapped, b kms.Binding) (kms.Wrapped, error) {
	if n := s.rewraps.Add(1); s.failAfter > 0 && n > s.failAfter {
		return kms.Wrapped{}, fmt.Errorf("%w: vault: rewrap %v: connection refused (injected by the test)", kms.ErrUnavailable, b)
	}
	return s.Custodian.Rewrap(ctx, w, b)
}

var _ kms.KeyManager = (*spyCustodian)(nil)

// TestRotationKEKThroughVault rotates the KEK of a zone with several
// zone-key versions: Vault rewraps every zone-key row server-side, and a
// process started afterwards opens every DEK.
func TestRotationKEKThroughVault(t *testing.T) {
	e := newRotEnv(t)
	ctx := t.Context()
	spy := &spyCustodian{Custodian: e.custodian(t)}
	k := e.keyring(t, spy)
	recs := setupZoneKeys(t, k, 3)
	before := e.zoneKeyRows(t)
	require.Len(t, before, 3)

	wraps, unwraps := spy.wraps.Load(), spy.unwraps.Load()
	res, err := k.RotateKEK(ctx, rotZone)
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: rotZone, KEKVersion: 2, Rewrapped: 3}, res)
	require.Equal(t, int64(3), spy.rewraps.Load(), "one Vault rewrap per zone-key row")
	require.Equal(t, wraps, spy.wraps.Load(), "no zone key was wrapped afresh")
	require.Equal(t, unwraps, spy.unwraps.Load(), "no zone key was unwrapped in this process")

	require.Equal(t, map[uint32]uint32{1: 2, 2: 2, 3: 2}, kekVersions(t, k))
	after := e.zoneKeyRows(t)
	require.Len(t, after, len(before))
	for i, row := range after {
		old := before[i]
		require.Equal(t, old.Version, row.Version)
		require.Equal(t, old.ID, row.ID, "the zone key keeps its id")
		require.Equal(t, old.Created, row.Created)
		require.True(t, strings.HasPrefix(string(old.Wrapped), "vault:v1:"), "zone key v%d before", row.Version)
		require.True(t, strings.HasPrefix(string(row.Wrapped), "vault:v2:"), "zone key v%d after", row.Version)
	}
	minLive, primary, err := spy.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary}, "rotation retires nothing")

	requireOpens(t, k, recs, "rotating keyring")
	requireOpens(t, e.cold(t), recs, "cold keyring")

	// Nothing is left to do.
	res, err = e.cold(t).RewrapZoneKeys(ctx, rotZone)
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: rotZone, KEKVersion: 2, Skipped: 3}, res)

	// New DEKs, and new zone-key versions, come under the new KEK.
	more := sealRecords(t, k, "after", 2)
	zr, err := k.RotateZoneKey(ctx, rotZone, keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, uint32(4), zr.Version)
	require.Equal(t, map[uint32]uint32{1: 2, 2: 2, 3: 2, 4: 2}, kekVersions(t, k))
	requireOpens(t, e.cold(t), append(recs, more...), "cold keyring after a zone-key rotation")
}

// TestRotationRewrapInterruptedThenResumed loses Vault in the middle of a
// KEK rotation: the rows rewrapped so far stay rewrapped, retiring the old
// KEK version is refused until RewrapZoneKeys has finished the job, and
// after the retirement Vault refuses the old ciphertexts while every DEK
// still opens.
func TestRotationRewrapInterruptedThenResumed(t *testing.T) {
	e := newRotEnv(t)
	ctx := t.Context()
	c := e.custodian(t)
	recs := setupZoneKeys(t, e.keyring(t, c), 3)
	before := e.zoneKeyRows(t)

	flaky := &spyCustodian{Custodian: e.custodian(t), failAfter: 1}
	res, err := e.keyring(t, flaky).RotateKEK(ctx, rotZone)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.Equal(t, keystore.KEKRotation{Zone: rotZone, KEKVersion: 2, Rewrapped: 1}, res, "counts the rows done before the failure")
	require.Equal(t, int64(2), flaky.rewraps.Load(), "the rotation stops at the first failed rewrap")

	k := e.keyring(t, c)
	versions := kekVersions(t, k)
	var moved, left []uint32
	for v, kek := range versions {
		switch kek {
		case 2:
			moved = append(moved, v)
		case 1:
			left = append(left, v)
		default:
			t.Fatalf("zone key v%d under KEK v%d", v, kek)
		}
	}
	require.Len(t, moved, 1, "KEK versions after the interrupted rotation: %v", versions)
	require.Len(t, left, 2, "KEK versions after the interrupted rotation: %v", versions)
	minLive, primary, err := c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary}, "the KEK stays rotated")
	requireOpens(t, e.cold(t), recs, "cold keyring, half-rotated")

	// Retiring v1 would strand the rows not yet rewrapped.
	err = k.RetireKEKBelow(ctx, rotZone, 2)
	var inUse *keystore.KEKInUseError
	require.ErrorAs(t, err, &inUse)
	require.Equal(t, rotZone, inUse.Zone)
	require.Equal(t, uint32(2), inUse.Below)
	require.ElementsMatch(t, left, inUse.ZoneKeyVersions)
	require.Equal(t, uint32(1), inUse.OldestKEKVersion)
	minLive, _, err = c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(1), minLive, "a refused retirement changes nothing at Vault")

	// Resume with a working custodian.
	res, err = k.RewrapZoneKeys(ctx, rotZone)
	require.NoError(t, err)
	require.Equal(t, keystore.KEKRotation{Zone: rotZone, KEKVersion: 2, Rewrapped: 2, Skipped: 1}, res)
	require.Equal(t, map[uint32]uint32{1: 2, 2: 2, 3: 2}, kekVersions(t, k))

	require.NoError(t, k.RetireKEKBelow(ctx, rotZone, 2))
	minLive, primary, err = c.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{2, 2}, [2]uint32{minLive, primary})

	// Vault now refuses the zone keys as they were wrapped before the
	// rotation; the stored rows, rewrapped, still open everything.
	for _, old := range before {
		require.Equal(t, uint32(1), old.KEKVersion)
		_, err := c.Unwrap(ctx, kms.Wrapped{Ciphertext: old.Wrapped, KEKVersion: old.KEKVersion},
			kms.Binding{Zone: rotZone, KeyID: old.ID, Version: old.Version})
		require.ErrorIs(t, err, kms.ErrUnknownKey, "zone key v%d under retired KEK v1", old.Version)
	}
	requireOpens(t, e.cold(t), recs, "cold keyring after the retirement")
	requireOpens(t, e.cold(t), append(recs, sealRecords(t, k, "new", 2)...), "cold keyring, new DEKs")
}

// TestRotationRacingThroughVault runs two KEK rotations of the same zone
// at once, from two keyrings with their own custodians of the same Vault
// key, several times over: both succeed (or one loses compare-and-swaps
// often enough to give up, and RewrapZoneKeys finishes), and every row ends
// under the primary version.
func TestRotationRacingThroughVault(t *testing.T) {
	e := newRotEnv(t)
	ctx := t.Context()
	recs := setupZoneKeys(t, e.keyring(t, e.custodian(t)), 5)
	kA, kB := e.keyring(t, e.custodian(t)), e.keyring(t, e.custodian(t))
	c := e.custodian(t)

	const rounds = 3
	for round := 1; round <= rounds; round++ {
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results [2]keystore.KEKRotation
			errs    [2]error
		)
		for i, k := range []*keystore.Keyring{kA, kB} {
			wg.Go(func() {
				<-start
				results[i], errs[i] = k.RotateKEK(ctx, rotZone)
			})
		}
		close(start)
		wg.Wait()

		t.Logf("round %d: A %+v (err %v), B %+v (err %v)", round, results[0], errs[0], results[1], errs[1])
		conflicts := 0
		for i, err := range errs {
			if err != nil {
				require.ErrorIs(t, err, keystore.ErrConflict, "round %d, keyring %d", round, i)
				conflicts++
			}
		}
		if conflicts > 0 {
			t.Logf("round %d: %d rotation(s) gave up on a conflict; RewrapZoneKeys finishes", round, conflicts)
			_, err := e.cold(t).RewrapZoneKeys(ctx, rotZone)
			require.NoError(t, err)
		}

		// Two rotations per round: Vault serialises them.
		minLive, primary, err := c.KEKVersions(ctx)
		require.NoError(t, err)
		require.Equal(t, uint32(1), minLive)
		require.Equal(t, uint32(1+2*round), primary, "round %d", round)
		require.ElementsMatch(t, []uint32{primary - 1, primary}, []uint32{results[0].KEKVersion, results[1].KEKVersion},
			"round %d: each rotation made its own version", round)
		if conflicts == 0 {
			require.GreaterOrEqual(t, results[0].Rewrapped+results[1].Rewrapped, 5, "round %d: every row was rewrapped at least once", round)
		}
		for v, kek := range kekVersions(t, kA) {
			require.Equal(t, primary, kek, "round %d: zone key v%d", round, v)
		}
		requireOpens(t, e.cold(t), recs, fmt.Sprintf("round %d: cold keyring", round))
		requireOpens(t, kA, recs, fmt.Sprintf("round %d: keyring A", round))
		requireOpens(t, kB, recs, fmt.Sprintf("round %d: keyring B", round))
	}

	// The race left nothing to do, and nothing under a retired version.
	res, err := e.cold(t).RewrapZoneKeys(ctx, rotZone)
	require.NoError(t, err)
	require.Zero(t, res.Rewrapped)
	require.NoError(t, kA.RetireKEKBelow(ctx, rotZone, 1+2*rounds))
	requireOpens(t, e.cold(t), recs, "cold keyring after retiring all but the primary version")
}

// TestCostThroughVault measures, and logs, what a Key call costs through a
// Vault custodian: cold (the zone key unwrapped by Vault), a DEK miss with
// the zone key cached (a store read and a local unwrap), and a cache hit.
// The numbers are informative only; under -race they are inflated.
func TestCostThroughVault(t *testing.T) {
	if testing.Short() {
		t.Skip("measures costs; skipped with -short")
	}
	const (
		nCold = 20
		nMiss = 200
		nHit  = 10000
	)
	e := newRotEnv(t)
	ctx := t.Context()
	c := e.custodian(t)
	recs := sealRecords(t, e.keyring(t, c), "cost", nMiss)

	// Cold: a new keyring per Key call, sharing one custodian (and so its
	// Vault token and connections), as a process's first decrypt would be
	// once the custodian is up. One warm-up call checks the Transit key.
	requireOpens(t, e.keyring(t, c), recs[:1], "warm-up")
	var cold time.Duration
	for range nCold {
		k := e.keyring(t, c)
		t0 := time.Now()
		_, err := k.Key(ctx, recs[0].id)
		cold += time.Since(t0)
		require.NoError(t, err)
	}

	// DEK miss: the zone key is cached after the first call.
	k := e.keyring(t, c)
	_, err := k.Key(ctx, recs[0].id)
	require.NoError(t, err)
	var miss time.Duration
	for _, r := range recs[1:] {
		t0 := time.Now()
		_, err := k.Key(ctx, r.id)
		miss += time.Since(t0)
		require.NoError(t, err)
	}

	// Cache hit.
	id := recs[0].id
	t0 := time.Now()
	for range nHit {
		_, err := k.Key(ctx, id)
		require.NoError(t, err)
	}
	hit := time.Since(t0)

	t.Logf("Key() through Vault, average of %d: cold keyring (store reads + Vault unwrap of the zone key + DEK unwrap): %v", nCold, cold/nCold)
	t.Logf("Key() through Vault, average of %d: DEK miss, zone key cached (store read + local DEK unwrap): %v", nMiss-1, miss/(nMiss-1))
	t.Logf("Key() through Vault, average of %d: cache hit: %v", nHit, hit/nHit)
}
