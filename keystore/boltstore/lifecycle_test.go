package boltstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// v2DEKJSON is the DEK row encoding of schema version 2, kept to build
// version-2 files: it has no KEK version.
type v2DEKJSON struct {
	ID             string    `json:"id"`
	Zone           []byte    `json:"zone"`
	Subject        []byte    `json:"subject"`
	Generation     uint32    `json:"generation"`
	ZoneKeyVersion uint32    `json:"zone_key_version"`
	Wrapped        []byte    `json:"wrapped"`
	Created        time.Time `json:"created"`
}

// writeV2File writes a keystore file of schema version 2, as the build
// before version 3 wrote it: five buckets, and the rows given.
func writeV2File(t *testing.T, path string, zks []keystore.ZoneKeyRow, deks []keystore.DEKRow) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	err = db.Update(func(tx *bolt.Tx) error {
		b := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "zonekeys", "zonekeyids", "deks", "subjects"} {
			var err error
			if b[name], err = tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		if err := b["meta"].Put([]byte("schema"), []byte{2}); err != nil {
			return err
		}
		for _, zk := range zks {
			v, err := json.Marshal(zoneKeyJSON{Zone: []byte(zk.Zone), Version: zk.Version, ID: []byte(zk.ID), Wrapped: zk.Wrapped, KEKVersion: zk.KEKVersion, Created: zk.Created})
			if err != nil {
				return err
			}
			k := binary.BigEndian.AppendUint32(v2LP(nil, zk.Zone), zk.Version)
			if err := b["zonekeys"].Put(k, v); err != nil {
				return err
			}
			if err := b["zonekeyids"].Put([]byte(zk.ID), k); err != nil {
				return err
			}
		}
		for _, d := range deks {
			v, err := json.Marshal(v2DEKJSON{ID: d.ID.String(), Zone: []byte(d.Zone), Subject: []byte(d.Subject), Generation: d.Generation,
				ZoneKeyVersion: d.ZoneKeyVersion, Wrapped: d.Wrapped, Created: d.Created})
			if err != nil {
				return err
			}
			if err := b["deks"].Put(d.ID[:], v); err != nil {
				return err
			}
			k := binary.BigEndian.AppendUint32(v2LP(v2LP(nil, d.Zone), d.Subject), d.Generation)
			if err := b["subjects"].Put(k, d.ID[:]); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, db.Close())
}

// v2LP is the length-prefixed string of the version-2 keys.
func v2LP(dst []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint16(dst, uint16(len(s))), s...)
}

// rawSchema reads the schema version and bucket names of a closed file.
func rawSchema(t *testing.T, path string) (version []byte, buckets []string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		version = append([]byte(nil), tx.Bucket(bucketMeta).Get(keySchema)...)
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			buckets = append(buckets, string(name))
			return nil
		})
	}))
	return version, buckets
}

func TestUpgradeFromVersion2(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "keystore.db")
	created := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.UTC)
	zk := keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: "zk-eu-1", Wrapped: []byte("wrapped zone key"), KEKVersion: 2, Created: created}
	row := func(zone, subject string, gen uint32) keystore.DEKRow {
		return keystore.DEKRow{ID: envelope.NewKeyID(), Zone: zone, Subject: subject, Generation: gen, ZoneKeyVersion: 1,
			Wrapped: []byte("wrapped " + subject), Created: created.Add(time.Duration(gen) * time.Microsecond)}
	}
	alice1, alice2, odd, bob, usAlice := row("eu", "alice", 1), row("eu", "alice", 2), row("eu", "a\x00\xff", 1), row("eu", "bob", 1), row("us", "alice", 1)
	all := []keystore.DEKRow{alice1, alice2, odd, bob, usAlice}
	writeV2File(t, path, []keystore.ZoneKeyRow{zk}, all)

	s, err := Open(path, nil)
	require.NoError(t, err, "opening a version-2 file")
	// Every version-2 row reads as it was, with KEK version 0.
	for _, want := range all {
		got, err := s.DEK(ctx, want.ID)
		require.NoError(t, err)
		require.Equal(t, want.Subject, got.Subject)
		require.Equal(t, want.ZoneKeyVersion, got.ZoneKeyVersion)
		require.Zero(t, got.KEKVersion)
		require.False(t, got.Pending())
		require.Equal(t, want.Wrapped, got.Wrapped)
		require.True(t, want.Created.Equal(got.Created))
	}
	latest, err := s.LatestDEK(ctx, "eu", "alice")
	require.NoError(t, err)
	require.Equal(t, alice2.ID, latest.ID)
	gotZK, err := s.ZoneKey(ctx, "eu", 0)
	require.NoError(t, err)
	require.Equal(t, zk.ID, gotZK.ID)
	rows, next, err := s.ScanDEKs(ctx, "eu", "", 100)
	require.NoError(t, err)
	require.Empty(t, next)
	require.Len(t, rows, 4)

	// The lifecycle methods work on the upgraded file.
	tomb, ids, err := s.ShredSubject(ctx, "eu", "alice", created)
	require.NoError(t, err)
	require.ElementsMatch(t, []envelope.KeyID{alice1.ID, alice2.ID}, ids)
	require.Equal(t, uint32(2), tomb.Generation)
	moved := bob
	moved.Zone, moved.ZoneKeyVersion, moved.KEKVersion, moved.Wrapped = "us", 0, 3, []byte("for us")
	require.NoError(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{moved}, created))
	require.NoError(t, s.CreateEpoch(ctx, keystore.EpochRow{Zone: "eu", Number: 1, Owner: "me", Started: created}))
	require.NoError(t, s.Close())

	version, buckets := rawSchema(t, path)
	require.Equal(t, schemaVersion, version, "the upgrade records version 3")
	for _, b := range allBuckets {
		require.Contains(t, buckets, string(b))
	}

	// Opening the upgraded file again changes nothing.
	s, err = Open(path, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	_, err = s.ShreddedDEK(ctx, alice1.ID)
	require.NoError(t, err)
	got, err := s.DEK(ctx, bob.ID)
	require.NoError(t, err)
	require.True(t, got.Pending())
	require.Equal(t, "us", got.Zone)
	got, err = s.DEK(ctx, odd.ID)
	require.NoError(t, err)
	require.Equal(t, odd.Subject, got.Subject)
	e, err := s.LatestEpoch(ctx, "eu")
	require.NoError(t, err)
	require.Equal(t, "me", e.Owner)
}

// TestUpgradeRefusedRollsBack: a file of an unknown version is refused
// without the new buckets being added.
func TestUpgradeRefusedRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keystore.db")
	writeV2File(t, path, nil, nil)
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte{9}) })
	_, err := Open(path, nil)
	require.ErrorIs(t, err, keystore.ErrStore)
	version, buckets := rawSchema(t, path)
	require.Equal(t, []byte{9}, version)
	require.NotContains(t, buckets, string(bucketTombstones))
}

func TestLifecycleCorruptRows(t *testing.T) {
	ctx := t.Context()
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	alice := keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "alice", Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{4, 5, 6}}
	bob := keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "bob", Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{7}}
	epoch := keystore.EpochRow{Zone: "eu", Number: 1, Owner: "me"}
	putTomb := func(v []byte) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error { return tx.Bucket(bucketTombstones).Put(tombstoneKey("eu", "bob"), v) }
	}
	otherTomb, _ := encodeTombstone(keystore.Tombstone{Zone: "us", Subject: "bob", Kind: keystore.Shredded})
	otherEpoch, _ := encodeEpoch(keystore.EpochRow{Zone: "us", Number: 1})
	missingAlice := func(tx *bolt.Tx) error { return tx.Bucket(bucketDEKs).Delete(alice.ID[:]) }
	moveAlice := func(s *Store) error {
		m := alice
		m.Zone, m.ZoneKeyVersion, m.KEKVersion = "us", 0, 1
		return s.MoveDEKs(ctx, "eu", []keystore.DEKRow{m}, at)
	}
	for _, tc := range []struct {
		name    string
		corrupt func(tx *bolt.Tx) error
		call    func(s *Store) error
	}{
		{"SubjectDEKsMissingDEK", missingAlice, func(s *Store) error { _, err := s.SubjectDEKs(ctx, "eu", "alice"); return err }},
		{"SubjectDEKsGarbage", putDEK(alice.ID, []byte("{")), func(s *Store) error { _, err := s.SubjectDEKs(ctx, "eu", "alice"); return err }},
		{"ShredMissingDEK", missingAlice, func(s *Store) error { _, _, err := s.ShredSubject(ctx, "eu", "alice", at); return err }},
		{"ShredOverGarbageTombstone", putTomb([]byte("{")), func(s *Store) error { _, _, err := s.ShredSubject(ctx, "eu", "bob", at); return err }},
		{"TombstoneGarbage", putTomb([]byte("\x00")), func(s *Store) error { _, err := s.Tombstone(ctx, "eu", "bob"); return err }},
		{"TombstoneOfOtherZone", putTomb(otherTomb), func(s *Store) error { _, err := s.Tombstone(ctx, "eu", "bob"); return err }},
		{"ShreddedWithoutTombstone", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketShredded).Put(bob.ID[:], tombstoneKey("eu", "bob"))
		}, func(s *Store) error { _, err := s.ShreddedDEK(ctx, bob.ID); return err }},
		{"ShreddedGarbage", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketShredded).Put(bob.ID[:], []byte{0, 9, 'x'})
		}, func(s *Store) error { _, err := s.ShreddedDEK(ctx, bob.ID); return err }},
		{"MoveMissingDEK", missingAlice, moveAlice},
		{"MoveOverGarbageTombstone", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketTombstones).Put(tombstoneKey("eu", "alice"), []byte("[]"))
		}, moveAlice},
		{"ShredZoneOverGarbage", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketTombstones).Put(tombstoneKey("eu", ""), []byte("{"))
		}, func(s *Store) error { _, err := s.ShredZone(ctx, "eu", at); return err }},
		{"DeleteZoneKeysMissingDEK", missingAlice, func(s *Store) error { _, err := s.DeleteZoneKeysBelow(ctx, "eu", 1); return err }},
		{"DeleteZoneKeysGarbageDEK", putDEK(alice.ID, []byte("{")), func(s *Store) error { _, err := s.DeleteZoneKeysBelow(ctx, "eu", 1); return err }},
		{"DeleteZoneKeysGarbageZoneKey", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketZoneKeys).Put(zoneKeyKey("z", 1), []byte("{"))
		}, func(s *Store) error { _, err := s.DeleteZoneKeysBelow(ctx, "z", 2); return err }},
		{"LatestEpochGarbage", putEpoch([]byte("{")), func(s *Store) error { _, err := s.LatestEpoch(ctx, "eu"); return err }},
		{"LatestEpochOfOtherZone", putEpoch(otherEpoch), func(s *Store) error { _, err := s.LatestEpoch(ctx, "eu"); return err }},
		{"UpdateEpochGarbage", putEpoch([]byte("{")), func(s *Store) error {
			next := epoch
			next.Owner = "you"
			return s.UpdateEpoch(ctx, epoch, next)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			require.NoError(t, s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: "zk1", Wrapped: []byte{1}, KEKVersion: 1}))
			require.NoError(t, s.CreateDEK(ctx, alice))
			require.NoError(t, s.CreateDEK(ctx, bob))
			require.NoError(t, s.CreateEpoch(ctx, epoch))
			require.NoError(t, s.Close())
			rawUpdate(t, s.Path(), tc.corrupt)
			s, err := Open(s.Path(), nil)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			var callErr error
			require.NotPanics(t, func() { callErr = tc.call(s) })
			require.ErrorIs(t, callErr, keystore.ErrStore)
			// A failed call wrote nothing: bob's row is intact.
			got, err := s.DEK(ctx, bob.ID)
			require.NoError(t, err)
			require.Equal(t, "eu", got.Zone)
		})
	}
}

func putEpoch(v []byte) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket(bucketEpochs).Put(epochKey("eu", 1), v) }
}

func TestLifecycleInvalidValues(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	at := time.Now()
	long := strings.Repeat("x", maxName+1)
	pending := func(zone, subject string) keystore.DEKRow {
		return keystore.DEKRow{ID: envelope.NewKeyID(), Zone: zone, Subject: subject, Generation: 1, KEKVersion: 1, Wrapped: []byte{1}}
	}
	_, err := s.ShredZone(ctx, long, at)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.ErrorIs(t, s.CreateEpoch(ctx, keystore.EpochRow{Zone: long, Number: 1}), keystore.ErrInvalidValue)
	require.ErrorIs(t, s.UpdateEpoch(ctx, keystore.EpochRow{Zone: long, Number: 1}, keystore.EpochRow{Zone: long, Number: 1}), keystore.ErrInvalidValue)
	_, err = s.DeleteZoneKeysBelow(ctx, long, 1)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.ErrorIs(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{pending(long, "a")}, at), keystore.ErrInvalidValue)
	require.ErrorIs(t, s.MoveDEKs(ctx, long, []keystore.DEKRow{pending("us", "a")}, at), keystore.ErrInvalidValue)
	require.ErrorIs(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{pending("us", strings.Repeat("s", bolt.MaxKeySize))}, at), keystore.ErrInvalidValue)
	// Lookups of names no row can have find nothing.
	_, err = s.Tombstone(ctx, long, "a")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	_, _, err = s.ShredSubject(ctx, long, "a", at)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	rows, err := s.SubjectDEKs(ctx, "eu", long)
	require.NoError(t, err)
	require.Empty(t, rows)
	_, err = s.LatestEpoch(ctx, long)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
}

// TestDeleteZoneKeysFreesIDs: a deleted zone key's id leaves the id index,
// and only its own entry does.
func TestDeleteZoneKeysFreesIDs(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	for v := uint32(1); v <= 3; v++ {
		require.NoError(t, s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: "eu", Version: v, ID: "eu-" + string(rune('0'+v)), Wrapped: []byte{1}, KEKVersion: 1}))
	}
	n, err := s.DeleteZoneKeysBelow(ctx, "eu", 3)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.NoError(t, s.Close())
	db, err := bolt.Open(s.Path(), 0o600, &bolt.Options{ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		ids := tx.Bucket(bucketZoneKeyIDs)
		require.Nil(t, ids.Get([]byte("eu-1")))
		require.Nil(t, ids.Get([]byte("eu-2")))
		require.Equal(t, zoneKeyKey("eu", 3), ids.Get([]byte("eu-3")))
		require.Equal(t, 1, tx.Bucket(bucketZoneKeys).Stats().KeyN)
		return nil
	}))
}
