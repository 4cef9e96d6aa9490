package boltstore

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/keystoretest"
)

type harness struct{}

func (harness) MakeStore(_ context.Context, t *testing.T) keystore.Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "keystore.db"), nil)
	require.NoError(t, err)
	return s
}

func (harness) Reopen(_ context.Context, t *testing.T, s keystore.Store) keystore.Store {
	t.Helper()
	bs := s.(*Store)
	require.NoError(t, bs.Close())
	s2, err := Open(bs.Path(), nil)
	require.NoError(t, err)
	return s2
}

func TestConformance(t *testing.T) {
	keystoretest.RunConformanceTests(t, harness{})
}

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestLockedFile(t *testing.T) {
	s := openTemp(t)
	start := time.Now()
	s2, err := Open(s.Path(), &Options{LockTimeout: 50 * time.Millisecond})
	if s2 != nil {
		s2.Close()
	}
	require.ErrorIs(t, err, keystore.ErrStore)
	require.Contains(t, err.Error(), "locked")
	require.Contains(t, err.Error(), s.Path())
	require.Less(t, time.Since(start), time.Second, "Open must give up after LockTimeout")

	// Once the first store is closed the file opens.
	require.NoError(t, s.Close())
	s2, err = Open(s.Path(), &Options{LockTimeout: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, s2.Close())
}

func TestUnwritableLocation(t *testing.T) {
	t.Run("ParentIsAFile", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))
		for _, path := range []string{
			filepath.Join(file, "keystore.db"),
			filepath.Join(file, "sub", "keystore.db"),
		} {
			_, err := Open(path, nil)
			require.ErrorIs(t, err, keystore.ErrStore, "Open(%s)", path)
		}
	})
	t.Run("PathIsADirectory", func(t *testing.T) {
		_, err := Open(t.TempDir(), nil)
		require.ErrorIs(t, err, keystore.ErrStore)
	})
	t.Run("ReadOnlyDirectory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("permission bits do not bind root; ParentIsAFile covers the failure path")
		}
		dir := filepath.Join(t.TempDir(), "ro")
		require.NoError(t, os.Mkdir(dir, 0o500))
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		_, err := Open(filepath.Join(dir, "keystore.db"), nil)
		require.ErrorIs(t, err, keystore.ErrStore)
	})
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "sub")
	s, err := Open(filepath.Join(dir, "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	fi, err := os.Stat(s.Path())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "keystore file mode")
	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "mode of created directory %s", d)
	}
}

func TestNotABoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keystore.db")
	require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("not a bolt file\n", 512)), 0o600))
	_, err := Open(path, nil)
	require.ErrorIs(t, err, keystore.ErrStore)
}

// rawUpdate changes the file behind a closed store directly.
func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, db.Update(fn))
	require.NoError(t, db.Close())
}

func TestSchemaVersion(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version []byte
	}{
		{"Newer", []byte{schemaVersion[0] + 1}},
		{"Version1", []byte{1}}, // subjects as JSON strings: not readable as bytes
		{"Empty", []byte{}},
		{"Long", []byte{1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			require.NoError(t, s.Close())
			rawUpdate(t, s.Path(), func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keySchema, tc.version)
			})
			s2, err := Open(s.Path(), nil)
			if s2 != nil {
				s2.Close()
			}
			require.ErrorIs(t, err, keystore.ErrStore)
			require.Contains(t, err.Error(), "schema version")
			// Open released the file on the way out.
			rawUpdate(t, s.Path(), func(*bolt.Tx) error { return nil })
		})
	}
}

func TestCorruptRows(t *testing.T) {
	ctx := t.Context()
	zk := keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: "zk1", Wrapped: []byte{1, 2, 3}, KEKVersion: 1, Created: time.Now().UTC()}
	row := func(subject string) keystore.DEKRow {
		return keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: subject, Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{4, 5, 6}, Created: time.Now().UTC()}
	}
	alice, bob := row("alice"), row("bob")
	other, _ := encodeDEK(bob)
	otherZK, _ := encodeZoneKey(keystore.ZoneKeyRow{Zone: "us", Version: 1, ID: "zk2"})

	for _, tc := range []struct {
		name    string
		corrupt func(tx *bolt.Tx) error
		read    func(s *Store) error
	}{
		{"DEKGarbage", putDEK(alice.ID, []byte("\x00garbage")), readDEK(alice.ID)},
		{"DEKTruncated", putDEK(alice.ID, []byte(`{"id":"`)), readDEK(alice.ID)},
		{"DEKNull", putDEK(alice.ID, []byte(`null`)), readDEK(alice.ID)},
		{"DEKBadID", putDEK(alice.ID, []byte(`{"id":"zz"}`)), readDEK(alice.ID)},
		{"DEKWrongTypes", putDEK(alice.ID, []byte(`{"id":1,"generation":"x"}`)), readDEK(alice.ID)},
		{"DEKOfOtherID", putDEK(alice.ID, other), readDEK(alice.ID)},
		{"DEKsGarbage", putDEK(alice.ID, []byte("{")), func(s *Store) error {
			_, err := s.DEKs(ctx, []envelope.KeyID{bob.ID, alice.ID})
			return err
		}},
		{"LatestGarbage", putDEK(alice.ID, []byte("[]")), readLatest("alice")},
		{"LatestIndexOfOtherSubject", putDEK(alice.ID, other), readLatest("alice")},
		{"LatestIndexMissingDEK", func(tx *bolt.Tx) error { return tx.Bucket(bucketDEKs).Delete(alice.ID[:]) }, readLatest("alice")},
		{"ZoneKeyGarbage", putZoneKey([]byte("\xff")), readZoneKey(1)},
		{"ZoneKeyLatestGarbage", putZoneKey([]byte("\xff")), readZoneKey(0)},
		{"ZoneKeyOfOtherZone", putZoneKey(otherZK), readZoneKey(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			require.NoError(t, s.CreateZoneKey(ctx, zk))
			require.NoError(t, s.CreateDEK(ctx, alice))
			require.NoError(t, s.CreateDEK(ctx, bob))
			require.NoError(t, s.Close())
			rawUpdate(t, s.Path(), tc.corrupt)
			s, err := Open(s.Path(), nil)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })

			var readErr error
			require.NotPanics(t, func() { readErr = tc.read(s) })
			require.ErrorIs(t, readErr, keystore.ErrStore)
			require.False(t, errors.Is(readErr, keystore.ErrUnknownKey), "a corrupt row is not a missing one: %v", readErr)
			// The intact row still reads.
			got, err := s.DEK(ctx, bob.ID)
			require.NoError(t, err)
			require.Equal(t, bob.ID, got.ID)
		})
	}
}

func putDEK(id envelope.KeyID, v []byte) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket(bucketDEKs).Put(id[:], v) }
}

func putZoneKey(v []byte) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket(bucketZoneKeys).Put(zoneKeyKey("eu", 1), v) }
}

func readDEK(id envelope.KeyID) func(s *Store) error {
	return func(s *Store) error {
		_, err := s.DEK(context.Background(), id)
		return err
	}
}

func readLatest(subject string) func(s *Store) error {
	return func(s *Store) error {
		_, err := s.LatestDEK(context.Background(), "eu", subject)
		return err
	}
}

func readZoneKey(version uint32) func(s *Store) error {
	return func(s *Store) error {
		_, err := s.ZoneKey(context.Background(), "eu", version)
		return err
	}
}

func TestInvalidRows(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	long := strings.Repeat("x", maxName+1)
	// A length that wraps around 16 bits to that of a short name must not
	// alias it.
	wraps := "ab" + strings.Repeat("x", 1<<16)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"ZoneKeyVersion0", s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: "eu", Version: 0, ID: "a"})},
		{"ZoneKeyLongZone", s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: long, Version: 1, ID: "b"})},
		{"ZoneKeyLongID", s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: strings.Repeat("i", bolt.MaxKeySize+1)})},
		{"DEKGeneration0", s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "a", Generation: 0, ZoneKeyVersion: 1})},
		{"DEKLongZone", s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: long, Subject: "a", Generation: 1, ZoneKeyVersion: 1})},
		{"DEKLongSubject", s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: wraps, Generation: 1, ZoneKeyVersion: 1})},
		{"DEKNoVersion", s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "ab", Generation: 1})},
		{"DEKBothVersions", s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "ab", Generation: 1, ZoneKeyVersion: 1, KEKVersion: 1})},
	} {
		require.ErrorIs(t, tc.err, keystore.ErrInvalidValue, tc.name)
	}
	_, err := s.ZoneKey(ctx, "eu", 0)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "a refused zone key was stored")
	_, err = s.LatestDEK(ctx, "eu", "ab")
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "a refused DEK was stored")
	_, err = s.LatestDEK(ctx, "eu", wraps)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	// The longest subject that fits a bbolt key is accepted, one more byte
	// is refused.
	longest := strings.Repeat("x", bolt.MaxKeySize-len(subjectPrefix("eu", ""))-4)
	err = s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: longest + "x", Generation: 1, ZoneKeyVersion: 1})
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.NoError(t, s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: longest, Generation: 1, ZoneKeyVersion: 1}))
	_, err = s.LatestDEK(ctx, "eu", longest)
	require.NoError(t, err)
	err = s.CreateZoneKey(ctx, keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: ""})
	require.ErrorIs(t, err, keystore.ErrInvalidValue, "empty zone key id")
}

func TestScanCursor(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	for _, zone := range []string{"eu", "eu2"} {
		for _, subject := range []string{"alice", "bob"} {
			require.NoError(t, s.CreateDEK(ctx, keystore.DEKRow{ID: envelope.NewKeyID(), Zone: zone, Subject: subject, Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{1}}))
		}
	}
	_, euNext, err := s.ScanDEKs(ctx, "eu", "", 1)
	require.NoError(t, err)
	require.NotEmpty(t, euNext)
	_, eu2Next, err := s.ScanDEKs(ctx, "eu2", "", 1)
	require.NoError(t, err)
	for name, cursor := range map[string]string{
		"not hex":           "zz",
		"odd length":        euNext[1:],
		"prefix only":       hex.EncodeToString(appendLP(nil, "eu")),
		"of another zone":   eu2Next,
		"of a shorter zone": hex.EncodeToString(appendLP(nil, "e")) + "00",
	} {
		_, _, err := s.ScanDEKs(ctx, "eu", cursor, 10)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, "cursor %s", name)
	}
	rows, next, err := s.ScanDEKs(ctx, "eu", euNext, 10)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Empty(t, next)

	long := strings.Repeat("x", maxName+1)
	_, _, err = s.ScanDEKs(ctx, long, "", 10)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	_, err = s.ZoneKeys(ctx, long)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.ErrorIs(t, s.UpdateZoneKeyWrap(ctx, long, 1, nil, []byte{1}, 1), keystore.ErrInvalidValue)
}

func TestRotationCorruptRows(t *testing.T) {
	ctx := t.Context()
	zk := keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: "zk1", Wrapped: []byte{1, 2, 3}, KEKVersion: 1, Created: time.Now().UTC()}
	alice := keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "eu", Subject: "alice", Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{4, 5, 6}}
	other, _ := encodeDEK(keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "us", Subject: "alice", Generation: 1})
	otherZK, _ := encodeZoneKey(keystore.ZoneKeyRow{Zone: "us", Version: 1, ID: "zk2"})
	for _, tc := range []struct {
		name    string
		corrupt func(tx *bolt.Tx) error
		call    func(s *Store) error
	}{
		{"ScanMissingDEK", func(tx *bolt.Tx) error { return tx.Bucket(bucketDEKs).Delete(alice.ID[:]) }, scan},
		{"ScanGarbage", putDEK(alice.ID, []byte("{")), scan},
		{"ScanDEKOfOtherZone", putDEK(alice.ID, other), scan},
		{"UpdateDEKGarbage", putDEK(alice.ID, []byte("{")), func(s *Store) error {
			return s.UpdateDEKWrap(ctx, alice.ID, 1, alice.Wrapped, []byte{7}, 2)
		}},
		{"UpdateDEKOfOtherID", putDEK(alice.ID, other), func(s *Store) error {
			return s.UpdateDEKWrap(ctx, alice.ID, 1, alice.Wrapped, []byte{7}, 2)
		}},
		{"ZoneKeysGarbage", putZoneKey([]byte("\xff")), func(s *Store) error { _, err := s.ZoneKeys(ctx, "eu"); return err }},
		{"ZoneKeysOfOtherZone", putZoneKey(otherZK), func(s *Store) error { _, err := s.ZoneKeys(ctx, "eu"); return err }},
		{"UpdateZoneKeyOfOtherZone", putZoneKey(otherZK), func(s *Store) error {
			return s.UpdateZoneKeyWrap(ctx, "eu", 1, zk.Wrapped, []byte{7}, 2)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			require.NoError(t, s.CreateZoneKey(ctx, zk))
			require.NoError(t, s.CreateDEK(ctx, alice))
			require.NoError(t, s.Close())
			rawUpdate(t, s.Path(), tc.corrupt)
			s, err := Open(s.Path(), nil)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			var callErr error
			require.NotPanics(t, func() { callErr = tc.call(s) })
			require.ErrorIs(t, callErr, keystore.ErrStore)
		})
	}
}

func scan(s *Store) error {
	_, _, err := s.ScanDEKs(context.Background(), "eu", "", 10)
	return err
}
