package keystore_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"strings"
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

func auxKeys(t *testing.T, k *keystore.Keyring, zone string, p keystore.AuxPurpose, name string) []*keystore.AuxKey {
	t.Helper()
	keys, err := k.AuxKeys(t.Context(), zone, p, name)
	require.NoError(t, err, "AuxKeys(%q, %s, %q)", zone, p, name)
	require.NotEmpty(t, keys)
	return keys
}

func versions(keys []*keystore.AuxKey) []uint32 {
	var out []uint32
	for _, a := range keys {
		out = append(out, a.Version)
	}
	return out
}

func mac(a *keystore.AuxKey, msg string) []byte { return a.MAC(nil, []byte(msg)) }

// requireSameAux checks that a and b are the same key: same row, and the
// same key material.
func requireSameAux(t *testing.T, a, b *keystore.AuxKey) {
	t.Helper()
	require.Equal(t, a.ID, b.ID)
	require.Equal(t, a.Zone, b.Zone)
	require.Equal(t, a.Purpose, b.Purpose)
	require.Equal(t, a.Name, b.Name)
	require.Equal(t, a.Version, b.Version)
	switch a.Purpose {
	case keystore.AuxIndex:
		require.Equal(t, mac(a, "alice@example.com"), mac(b, "alice@example.com"))
	case keystore.AuxDeterministic:
		bind := envelope.Binding{Path: a.Name}
		x, err := a.Det().SealString("alice@example.com", bind)
		require.NoError(t, err)
		y, err := b.Det().SealString("alice@example.com", bind)
		require.NoError(t, err)
		require.Equal(t, x, y)
	}
}

func TestAuxKeys(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()

	idx := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")
	require.Len(t, idx, 1)
	a := idx[0]
	require.Equal(t, uint32(1), a.Version)
	require.Equal(t, "eu", a.Zone)
	require.Equal(t, keystore.AuxIndex, a.Purpose)
	require.Equal(t, "EmailIdx", a.Name)
	require.Nil(t, a.Det())
	require.Len(t, mac(a, "x"), 32)
	require.Equal(t, mac(a, "x"), mac(a, "x"))
	require.NotEqual(t, mac(a, "x"), mac(a, "y"))
	prefix := []byte("term:")
	require.Equal(t, append(append([]byte(nil), prefix...), mac(a, "x")...), a.MAC(prefix, []byte("x")), "MAC appends")

	cur, err := k.AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 0)
	require.NoError(t, err)
	requireSameAux(t, a, cur)
	v1, err := k.AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 1)
	require.NoError(t, err)
	requireSameAux(t, a, v1)
	_, err = k.AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 2)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	det := auxKeys(t, k, "eu", keystore.AuxDeterministic, "Email")[0]
	require.NotNil(t, det.Det())
	require.Equal(t, det.ID, det.Det().ID(), "a deterministic envelope names the key's row")
	require.Panics(t, func() { det.MAC(nil, []byte("x")) })

	// Every (zone, purpose, name) has a key of its own.
	others := []*keystore.AuxKey{
		auxKeys(t, k, "us", keystore.AuxIndex, "EmailIdx")[0],
		auxKeys(t, k, "eu", keystore.AuxIndex, "PhoneIdx")[0],
		auxKeys(t, k, "eu", keystore.AuxIndex, "Email")[0],
	}
	for _, o := range others {
		require.NotEqual(t, a.ID, o.ID)
		require.NotEqual(t, mac(a, "alice@example.com"), mac(o, "alice@example.com"), "%s %s", o.Zone, o.Name)
	}
	require.NotEqual(t, det.ID, others[2].ID, "index and deterministic keys of one name differ")

	// A second keyring with cold caches finds the same keys, by name and
	// by id.
	k2 := e.keyring(t)
	requireSameAux(t, a, auxKeys(t, k2, "eu", keystore.AuxIndex, "EmailIdx")[0])
	requireSameAux(t, det, auxKeys(t, k2, "eu", keystore.AuxDeterministic, "Email")[0])
	byID, err := e.keyring(t).AuxKeyByID(ctx, det.ID)
	require.NoError(t, err)
	requireSameAux(t, det, byID)
	byID, err = k2.AuxKeyByID(ctx, a.ID)
	require.NoError(t, err)
	requireSameAux(t, a, byID)
}

func TestAuxKeyRows(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	a := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]

	// The key is a DEK row of a reserved subject, generation = version.
	row, err := e.store.DEK(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, "\x00zonekey\x00index\x00EmailIdx\x001", row.Subject)
	require.Equal(t, keystore.AuxSubject(keystore.AuxIndex, "EmailIdx", 1), row.Subject)
	require.Equal(t, uint32(1), row.Generation)
	require.Equal(t, "eu", row.Zone)
	require.True(t, keystore.IsReserved(row.Subject))

	// Users cannot reach the reserved namespace, and the keyring does not
	// hand these rows out as DEKs.
	for _, s := range []string{keystore.ReservedPrefix, row.Subject, keystore.ReservedPrefix + "anything"} {
		_, err := k.DataKey(ctx, "eu", s)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, "%q", s)
	}
	for _, s := range []string{"\x00zonekey", "\x00", "zonekey\x00index\x00EmailIdx\x001"} {
		dataKey(t, k, "eu", s) // only the exact prefix is reserved
	}
	_, err = k.Key(ctx, a.ID)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	k2 := e.keyring(t)
	require.NoError(t, k2.Prefetch(ctx, []envelope.KeyID{a.ID}))
	_, err = k2.Key(ctx, a.ID)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "Prefetch does not cache it as a DEK")
	d := dataKey(t, k, "eu", "alice")
	_, err = k.AuxKeyByID(ctx, d.ID())
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "a subject's DEK is not an aux key")
	_, err = k.AuxKeyByID(ctx, envelope.NewKeyID())
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
}

func TestParseAuxSubject(t *testing.T) {
	for _, tc := range []struct {
		p keystore.AuxPurpose
		n string
		v uint32
	}{
		{keystore.AuxIndex, "EmailIdx", 1},
		{keystore.AuxDeterministic, "Contact.Email", 4294967295},
		{keystore.AuxIndex, "email (lower)", 12},
	} {
		p, n, v, ok := keystore.ParseAuxSubject(keystore.AuxSubject(tc.p, tc.n, tc.v))
		require.True(t, ok)
		require.Equal(t, tc.p, p)
		require.Equal(t, tc.n, n)
		require.Equal(t, tc.v, v)
	}
	for _, s := range []string{
		"", "alice", keystore.ReservedPrefix, keystore.ReservedPrefix + "index\x00EmailIdx",
		keystore.ReservedPrefix + "index\x00EmailIdx\x000", keystore.ReservedPrefix + "index\x00EmailIdx\x0001",
		keystore.ReservedPrefix + "index\x00EmailIdx\x004294967296", keystore.ReservedPrefix + "index\x00\x001",
		keystore.ReservedPrefix + "other\x00EmailIdx\x001", keystore.ReservedPrefix + "retired\x00index\x00EmailIdx",
		keystore.ReservedPrefix + "index\x00a\x00b\x001",
	} {
		_, _, _, ok := keystore.ParseAuxSubject(s)
		require.False(t, ok, "%q", s)
	}
}

func TestAuxKeyInvalid(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	for _, tc := range []struct {
		p keystore.AuxPurpose
		n string
	}{
		{"mac", "EmailIdx"},
		{"", "EmailIdx"},
		{keystore.AuxIndex, ""},
		{keystore.AuxIndex, "a\x00b"},
		{keystore.AuxIndex, "\xff"},
		{keystore.AuxIndex, strings.Repeat("n", keystore.MaxAuxName+1)},
	} {
		_, err := k.AuxKeys(ctx, "eu", tc.p, tc.n)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, "%q %q", tc.p, tc.n)
		_, err = k.RotateAuxKey(ctx, "eu", tc.p, tc.n)
		require.ErrorIs(t, err, keystore.ErrInvalidValue)
	}
	_, err := k.AuxKeys(ctx, "mars", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
	require.Zero(t, e.store.createDEKs.Load(), "nothing was created")
	auxKeys(t, k, "eu", keystore.AuxIndex, strings.Repeat("n", keystore.MaxAuxName))
}

func TestAuxKeyRotateAndRetire(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	other := e.keyring(t) // another process
	ctx := t.Context()
	const name = "EmailIdx"

	v1 := auxKeys(t, k, "eu", keystore.AuxIndex, name)[0]
	require.Equal(t, []uint32{1}, versions(auxKeys(t, other, "eu", keystore.AuxIndex, name)))

	v2, err := k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v2.Version)
	require.NotEqual(t, mac(v1, "x"), mac(v2, "x"))
	live := auxKeys(t, k, "eu", keystore.AuxIndex, name)
	require.Equal(t, []uint32{2, 1}, versions(live), "both versions are searched until the old one is retired")
	requireSameAux(t, v1, live[1])
	cur, err := k.AuxKey(ctx, "eu", keystore.AuxIndex, name, 0)
	require.NoError(t, err)
	requireSameAux(t, v2, cur)

	// The other process learns of the rotation within DEKTTL.
	require.Equal(t, []uint32{1}, versions(auxKeys(t, other, "eu", keystore.AuxIndex, name)))
	e.clock.Advance(keystore.DefaultDEKTTL)
	require.Equal(t, []uint32{2, 1}, versions(auxKeys(t, other, "eu", keystore.AuxIndex, name)))

	// The current version cannot be retired; older ones can, once.
	err = k.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, name, 2)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.Contains(t, err.Error(), "current version is 2")
	require.NoError(t, k.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, name, 1))
	require.NoError(t, k.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, name, 1), "retiring again does nothing")
	require.Equal(t, []uint32{2}, versions(auxKeys(t, k, "eu", keystore.AuxIndex, name)))
	e.clock.Advance(keystore.DefaultDEKTTL)
	require.Equal(t, []uint32{2}, versions(auxKeys(t, other, "eu", keystore.AuxIndex, name)))
	require.Equal(t, []uint32{2}, versions(auxKeys(t, e.keyring(t), "eu", keystore.AuxIndex, name)))

	// A retired version is still stored: found by version and by id.
	old, err := k.AuxKey(ctx, "eu", keystore.AuxIndex, name, 1)
	require.NoError(t, err)
	requireSameAux(t, v1, old)
	old, err = e.keyring(t).AuxKeyByID(ctx, v1.ID)
	require.NoError(t, err)
	requireSameAux(t, v1, old)

	// Two more rotations, then retiring through 3 leaves 4.
	_, err = k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
	require.NoError(t, err)
	v4, err := k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
	require.NoError(t, err)
	require.Equal(t, uint32(4), v4.Version)
	require.Equal(t, []uint32{4, 3, 2}, versions(auxKeys(t, e.keyring(t), "eu", keystore.AuxIndex, name)))
	require.NoError(t, k.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, name, 3))
	require.Equal(t, []uint32{4}, versions(auxKeys(t, e.keyring(t), "eu", keystore.AuxIndex, name)))

	st, err := k.AuxKeyStatus(ctx, "eu", keystore.AuxIndex, name)
	require.NoError(t, err)
	require.Equal(t, keystore.AuxKeyStatus{Live: []uint32{4}, RetiredThrough: 3}, st)
	st, err = k.AuxKeyStatus(ctx, "eu", keystore.AuxIndex, "Unused")
	require.NoError(t, err)
	require.Empty(t, st.Live, "status creates nothing")
	_, err = k.AuxKey(ctx, "eu", keystore.AuxIndex, "Unused", 1)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	// Rotating a key that has none yet makes version 1; so does retiring
	// nothing.
	first, err := k.RotateAuxKey(ctx, "us", keystore.AuxDeterministic, "Email")
	require.NoError(t, err)
	require.Equal(t, uint32(1), first.Version)
	require.ErrorIs(t, k.RetireAuxKeys(ctx, "us", keystore.AuxIndex, "Nothing", 1), keystore.ErrInvalidValue)
}

func TestAuxKeyConcurrentCreateAndRotate(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	const n = 8
	rings := make([]*keystore.Keyring, n)
	for i := range rings {
		rings[i] = e.keyring(t)
	}
	var wg sync.WaitGroup
	ids := make([]envelope.KeyID, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := rings[i].AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 0)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = a.ID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		require.Equal(t, ids[0], id, "concurrent first uses end with one key")
	}

	// Racing rotations from one version make one new version.
	rot := make([]*keystore.AuxKey, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := rings[i].RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
			if err != nil {
				t.Error(err)
				return
			}
			rot[i] = a
		}()
	}
	wg.Wait()
	for _, a := range rot {
		require.NotNil(t, a)
		// Each rotation saw version 1 or 2 as current, depending on when
		// it read: versions are created in order, without gaps.
		require.LessOrEqual(t, a.Version, uint32(n+1))
	}
	live := versions(auxKeys(t, e.keyring(t), "eu", keystore.AuxIndex, "EmailIdx"))
	for i, v := range live {
		require.Equal(t, uint32(len(live)-i), v, "no gaps: %v", live)
	}
}

func TestAuxKeyRelabelledRows(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	a := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	b := auxKeys(t, k, "eu", keystore.AuxIndex, "PhoneIdx")[0]
	bRow, err := e.store.DEK(ctx, b.ID)
	require.NoError(t, err)

	// The store answers the EmailIdx lookup with the PhoneIdx row, relabelled.
	e.store.setRewriteDEK(func(r keystore.DEKRow) keystore.DEKRow {
		if r.ID == a.ID {
			bRow.Subject, bRow.Generation = r.Subject, r.Generation
			return bRow
		}
		return r
	})
	_, err = e.keyring(t).AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrTampered)

	// A row of another zone under the right name.
	e.store.setRewriteDEK(func(r keystore.DEKRow) keystore.DEKRow {
		if r.ID == a.ID {
			r.Zone = "us"
		}
		return r
	})
	_, err = e.keyring(t).AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrTampered)
	_, err = e.keyring(t).AuxKeyByID(ctx, a.ID)
	require.Error(t, err, "relabelled to us, the row does not unwrap under us's zone key")

	// A forged retirement marker (a data row relabelled) is refused, not
	// obeyed.
	e.store.setRewriteDEK(nil)
	_, err = k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	d := dataKey(t, k, "eu", "mallory")
	dRow, err := e.store.DEK(ctx, d.ID())
	require.NoError(t, err)
	forged := &forgingStore{Store: e.store, marker: dRow}
	k3 := e.keyring(t, func(c *keystore.Config) { c.Store = forged })
	_, err = k3.AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrTampered)
}

// forgingStore answers every retirement-marker lookup with marker, given
// the marker's subject and generation 1.
type forgingStore struct {
	keystore.Store
	marker keystore.DEKRow
}

func (s *forgingStore) LatestDEK(ctx context.Context, zone, subject string) (keystore.DEKRow, error) {
	if strings.HasPrefix(subject, keystore.ReservedPrefix+"retired\x00") {
		r := s.marker
		r.Subject, r.Generation = subject, 1
		return r, nil
	}
	return s.Store.LatestDEK(ctx, zone, subject)
}

func TestAuxKeyCustody(t *testing.T) {
	e := newCustodyEnv(t)
	k := e.keyring(t)
	ctx := t.Context()
	a := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	det := auxKeys(t, k, "eu", keystore.AuxDeterministic, "Email")[0]

	// Out of the zone: refused on every call, cached keys included, and
	// before any store read on a cold keyring.
	e.as("us-east1")
	reads := e.store.latest.Load() + e.store.dek.Load()
	for _, kr := range []*keystore.Keyring{k, e.keyring(t)} {
		_, err := kr.AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
		require.ErrorIs(t, err, keystore.ErrOutsideCustody)
		_, err = kr.AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 1)
		require.ErrorIs(t, err, keystore.ErrOutsideCustody)
		_, err = kr.RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
		require.ErrorIs(t, err, keystore.ErrOutsideCustody)
		require.ErrorIs(t, kr.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx", 1), keystore.ErrOutsideCustody)
	}
	require.Equal(t, reads, e.store.latest.Load()+e.store.dek.Load(), "no store read for a refused caller")
	_, err := k.AuxKeyByID(ctx, det.ID) // cached
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	_, err = e.keyring(t).AuxKeyByID(ctx, det.ID)
	require.ErrorIs(t, err, keystore.ErrOutsideCustody)
	denials := e.audit.of(audit.Access, audit.Deny)
	require.NotEmpty(t, denials)
	for _, ev := range denials {
		require.Equal(t, "eu", ev.Zone)
		require.Equal(t, "us-east1", ev.Region)
	}

	// Its own zone is served.
	u := auxKeys(t, k, "us", keystore.AuxIndex, "EmailIdx")[0]
	require.NotEqual(t, mac(a, "alice@example.com"), mac(u, "alice@example.com"))

	// Expired evidence is refused too.
	e.as("expired")
	_, err = k.AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrAttestation)

	// Creation, unwrap and rotation are audited with the reserved subject.
	e.as("europe-west1")
	_, err = e.keyring(t).RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	rot := e.audit.of(audit.Rotate, audit.Allow)
	require.Len(t, rot, 1)
	require.Equal(t, keystore.AuxSubject(keystore.AuxIndex, "EmailIdx", 2), rot[0].Subject)
	require.Equal(t, "europe-west1", rot[0].Region)
	var created int
	for _, ev := range e.audit.of(audit.DEKCreate, audit.Allow) {
		if keystore.IsReserved(ev.Subject) {
			created++
		}
	}
	require.Equal(t, 4, created) // eu index, eu det, us index, eu index v2
}

func TestAuxKeyCache(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	a := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	reads := e.store.latest.Load()
	for range 100 {
		auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")
		_, err := k.AuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx", 0)
		require.NoError(t, err)
		_, err = k.AuxKeyByID(ctx, a.ID)
		require.NoError(t, err)
	}
	require.Equal(t, reads, e.store.latest.Load(), "cached within DEKTTL")

	// After DEKTTL the live set is checked again: the retirement marker and
	// the version after the newest, two reads; the known key is not read
	// or unwrapped again... until it expires too, which it does at the same
	// time, so it is read once more.
	e.clock.Advance(keystore.DefaultDEKTTL + time.Second)
	auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")
	require.Equal(t, reads+3, e.store.latest.Load())

	// Close drops them.
	require.NoError(t, k.Close())
	_, err := k.AuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.ErrorIs(t, err, keystore.ErrClosed)
	_, err = k.AuxKeyByID(ctx, a.ID)
	require.ErrorIs(t, err, keystore.ErrClosed)
}

func TestAuxKeyConcurrentUse(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	a := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	want := mac(a, "alice@example.com")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				keys, err := k.AuxKeys(context.Background(), "eu", keystore.AuxIndex, "EmailIdx")
				if err != nil {
					t.Error(err)
					return
				}
				if got := keys[0].MAC(nil, []byte("alice@example.com")); !bytes.Equal(got, want) {
					t.Error("MAC differs under concurrency")
					return
				}
			}
		}()
	}
	wg.Wait()
}

// gcm returns AES-256-GCM with a random nonce prefix, as the keyring wraps
// DEK rows.
func gcm(t *testing.T, key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	a, err := cipher.NewGCMWithRandomNonce(b)
	require.NoError(t, err)
	return a
}

// Index and deterministic keys are DEK rows: a zone-key rotation rewraps
// them with every other DEK row of the zone, and what was computed under
// them before (terms, deterministic envelopes) stays valid: no re-index.
func TestAuxKeysSurviveZoneKeyRotation(t *testing.T) {
	e := newEnv(t, false)
	bolt := func(c *keystore.Config) { c.Store = e.store.Store } // a RotationStore
	k := e.keyring(t, bolt)
	ctx := t.Context()
	idx := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	det := auxKeys(t, k, "eu", keystore.AuxDeterministic, "Email")[0]
	dataKey(t, k, "eu", "alice")
	bind := envelope.Binding{Path: "Email"}
	ct, err := det.Det().SealString("alice@example.com", bind)
	require.NoError(t, err)
	term := mac(idx, "alice@example.com")

	res, err := k.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.Version)
	require.Equal(t, 3, res.Rewrapped, "the index key, the deterministic key and alice's DEK")
	for _, id := range []envelope.KeyID{idx.ID, det.ID} {
		row, err := e.store.DEK(ctx, id)
		require.NoError(t, err)
		require.Equal(t, uint32(2), row.ZoneKeyVersion)
		require.True(t, keystore.IsReserved(row.Subject))
	}

	// A keyring with cold caches unwraps them under the new zone key.
	k2 := e.keyring(t, bolt)
	idx2 := auxKeys(t, k2, "eu", keystore.AuxIndex, "EmailIdx")
	require.Equal(t, []uint32{1}, versions(idx2), "the index key keeps its version")
	require.Equal(t, idx.ID, idx2[0].ID)
	require.Equal(t, term, mac(idx2[0], "alice@example.com"), "terms stay valid")
	det2, err := k2.AuxKeyByID(ctx, det.ID)
	require.NoError(t, err)
	pt, err := det2.Det().OpenString(ct, bind)
	require.NoError(t, err)
	require.Equal(t, "alice@example.com", pt)
	again, err := det2.Det().SealString("alice@example.com", bind)
	require.NoError(t, err)
	require.Equal(t, ct, again, "equal values still give equal envelopes")
}

// The derivation is the documented one: HKDF-SHA256 of the row's 32-byte
// secret, no salt, info per purpose; the index key is used with
// HMAC-SHA256, the deterministic key with AES-SIV.
func TestAuxKeyDerivation(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	idx := auxKeys(t, k, "eu", keystore.AuxIndex, "EmailIdx")[0]
	det := auxKeys(t, k, "eu", keystore.AuxDeterministic, "Email")[0]
	cust := e.cust["eu"]
	zk1, err := e.store.ZoneKey(ctx, "eu", 1)
	require.NoError(t, err)
	zsecret, err := cust.Unwrap(ctx, kms.Wrapped{Ciphertext: zk1.Wrapped, KEKVersion: zk1.KEKVersion}, kms.Binding{Zone: "eu", KeyID: zk1.ID, Version: 1})
	require.NoError(t, err)
	secretOf := func(id envelope.KeyID) []byte {
		row, err := e.store.DEK(ctx, id)
		require.NoError(t, err)
		s, err := gcm(t, zsecret).Open(nil, nil, row.Wrapped, keystore.DEKAD(row))
		require.NoError(t, err)
		require.Len(t, s, 32)
		return s
	}

	macKey, err := hkdf.Key(sha256.New, secretOf(idx.ID), nil, "zonekey/aux/v1/index", 32)
	require.NoError(t, err)
	h := hmac.New(sha256.New, macKey)
	h.Write([]byte("alice@example.com"))
	require.Equal(t, h.Sum(nil), mac(idx, "alice@example.com"))

	detKey, err := hkdf.Key(sha256.New, secretOf(det.ID), nil, "zonekey/aux/v1/det", 64)
	require.NoError(t, err)
	ref, err := envelope.NewDetKey(det.ID, detKey)
	require.NoError(t, err)
	bind := envelope.Binding{Path: "Email"}
	want, err := ref.SealString("alice@example.com", bind)
	require.NoError(t, err)
	got, err := det.Det().SealString("alice@example.com", bind)
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// TestAuxKeyLiveVersionLimit: a key may have 64 live versions, and works
// with all of them; a rotation past that is refused, clearly, and retiring
// the old versions (which must still work at the limit) allows the next.
func TestAuxKeyLiveVersionLimit(t *testing.T) {
	e := newEnv(t, false)
	k := e.keyring(t)
	ctx := t.Context()
	const name = "EmailIdx"
	auxKeys(t, k, "eu", keystore.AuxIndex, name) // version 1
	for v := 2; v <= 64; v++ {
		a, err := k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
		require.NoError(t, err, "version %d", v)
		require.Equal(t, uint32(v), a.Version)
	}
	require.Len(t, auxKeys(t, k, "eu", keystore.AuxIndex, name), 64, "64 live versions are usable")
	_, err := k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.ErrorContains(t, err, "retire the old ones")
	require.NoError(t, k.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, name, 63), "retiring works at the limit")
	require.Equal(t, []uint32{64}, versions(auxKeys(t, k, "eu", keystore.AuxIndex, name)))
	a, err := k.RotateAuxKey(ctx, "eu", keystore.AuxIndex, name)
	require.NoError(t, err)
	require.Equal(t, uint32(65), a.Version)
}

// pauseAfterLatestDEK holds, once armed, the first LatestDEK of subject
// after the store answered it, until release is closed.
type pauseAfterLatestDEK struct {
	*boltstore.Store
	mu               sync.Mutex
	subject          string
	reached, release chan struct{}
}

func (s *pauseAfterLatestDEK) arm(subject string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subject, s.reached, s.release = subject, make(chan struct{}), make(chan struct{})
}

func (s *pauseAfterLatestDEK) LatestDEK(ctx context.Context, zone, subject string) (keystore.DEKRow, error) {
	row, err := s.Store.LatestDEK(ctx, zone, subject)
	s.mu.Lock()
	hit := s.subject != "" && subject == s.subject
	reached, release := s.reached, s.release
	if hit {
		s.subject = ""
	}
	s.mu.Unlock()
	if hit {
		close(reached)
		<-release
	}
	return row, err
}

// TestAuxKeyLookupDuringChange: a lookup that read the store before a
// rotation, a retirement or a zone shred of the same process, and caches
// after it, does not bring back what the change dropped: the process sees
// the change at once once the call making it returns.
func TestAuxKeyLookupDuringChange(t *testing.T) {
	const name = "EmailIdx"
	for _, tc := range []struct {
		what   string
		pause  string // the store read the lookup is held after
		change func(t *testing.T, k *keystore.Keyring)
		check  func(t *testing.T, k *keystore.Keyring)
	}{
		{"retirement", keystore.ReservedPrefix + "retired\x00index\x00" + name,
			func(t *testing.T, k *keystore.Keyring) {
				require.NoError(t, k.RetireAuxKeys(t.Context(), "eu", keystore.AuxIndex, name, 1))
			},
			func(t *testing.T, k *keystore.Keyring) {
				keys, err := k.SharedAuxKeys(t.Context(), "eu", keystore.AuxIndex, name)
				require.NoError(t, err)
				require.Equal(t, []uint32{2}, versions(keys), "the retired version is not searched")
			}},
		{"rotation", keystore.AuxSubject(keystore.AuxIndex, name, 3),
			func(t *testing.T, k *keystore.Keyring) {
				a, err := k.RotateAuxKey(t.Context(), "eu", keystore.AuxIndex, name)
				require.NoError(t, err)
				require.Equal(t, uint32(3), a.Version)
			},
			func(t *testing.T, k *keystore.Keyring) {
				a, err := k.CurrentAuxKey(t.Context(), "eu", keystore.AuxIndex, name)
				require.NoError(t, err)
				require.Equal(t, uint32(3), a.Version, "the new version is current")
			}},
		{"zone shred", keystore.AuxSubject(keystore.AuxIndex, name, 3),
			func(t *testing.T, k *keystore.Keyring) {
				_, err := k.ShredZone(t.Context(), "eu", "eu")
				require.NoError(t, err)
			},
			func(t *testing.T, k *keystore.Keyring) {
				_, err := k.SharedAuxKeys(t.Context(), "eu", keystore.AuxIndex, name)
				require.Error(t, err, "no index key of a shredded zone")
			}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			e := newRotEnv(t)
			ps := &pauseAfterLatestDEK{Store: e.store}
			k := e.keyring(t, func(c *keystore.Config) { c.Store = ps })
			auxKeys(t, k, "eu", keystore.AuxIndex, name)
			_, err := k.RotateAuxKey(t.Context(), "eu", keystore.AuxIndex, name)
			require.NoError(t, err)
			e.clock.Advance(keystore.DefaultDEKTTL + time.Second) // the live set is read again

			ps.arm(tc.pause)
			done := make(chan error, 1)
			go func() {
				_, err := k.SharedAuxKeys(context.Background(), "eu", keystore.AuxIndex, name)
				done <- err
			}()
			<-ps.reached
			tc.change(t, k)
			close(ps.release)
			require.NoError(t, <-done, "the lookup that started before the change")
			tc.check(t, k)
		})
	}
}
