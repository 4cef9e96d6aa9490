// Package keystoretest is the conformance suite every keystore.Store must
// pass.
//
// A store's tests implement [Harness] and call [RunConformanceTests]:
//
//	func TestConformance(t *testing.T) {
//		keystoretest.RunConformanceTests(t, harness{})
//	}
//
// The suite checks the contract of [keystore.Store] that the keyring relies
// on, including the parts its doc comment only implies:
//
//   - Errors are classified with errors.Is: [keystore.ErrUnknownKey] for a
//     missing row, [keystore.ErrExists] for a create that collides on either
//     of a row's unique keys, [keystore.ErrClosed] after Close, and the
//     context's error (context.Canceled) for a cancelled context.
//   - A create that fails writes nothing: a row that collides on one unique
//     key leaves no trace under its other one.
//   - Of 16 concurrent creates of the same row key exactly one succeeds, and
//     the others fail with ErrExists, not with a storage error.
//   - Zones and subjects are arbitrary byte strings: zone "eu" is not a
//     prefix match for "eu2", subject "a" not for "ab", and subjects may hold
//     NUL bytes, invalid UTF-8 and up to [keystore.MaxSubject] bytes. A SQL
//     store keeps them as bytea, or in an unambiguous encoding.
//   - Versions and generations are compared as unsigned 32-bit numbers over
//     their whole range (255 < 256, 1<<31 < 1<<32-1).
//   - Every field round-trips exactly. Created must keep at least
//     microsecond precision: an instant with whole microseconds comes back
//     Equal, one with nanoseconds within a microsecond. Its time.Location
//     may differ.
//   - DEKs returns each stored DEK at most once, whatever the order and
//     repetition of the ids asked for, and nothing (no error) for none.
//   - Rows returned and rows passed to a create are not aliased by the
//     store: changing them afterwards changes nothing stored.
//   - Rows persist across closing and reopening the store.
//
// The Rotation subtests check [keystore.RotationStore], which the keyring's
// rotations need and every store must implement:
//
//   - ZoneKeys lists exactly the zone's versions, ascending as unsigned
//     numbers, and nothing (no error) for a zone without keys.
//   - UpdateZoneKeyWrap and UpdateDEKWrap are compare-and-swaps: they change
//     only the wrap (Wrapped and its version) and only if the row still holds
//     the previous values; otherwise [keystore.ErrConflict] and the row is
//     unchanged. Of 16 concurrent updates from the same previous values
//     exactly one succeeds. A missing row is ErrUnknownKey (nothing is
//     created), and an update keeps the row's unique keys.
//   - ScanDEKs pages cover every DEK of the zone exactly once and none of
//     another zone, whatever the limit, also while the rows are updated
//     during the scan; limit ≤ 0 is [keystore.ErrInvalidValue]. A store may
//     end with an empty page, but a page never holds more than limit rows.
//   - UpdateDEKWraps, for a store that implements
//     [keystore.BatchRotationStore] (skipped otherwise), gives each update
//     of a batch the result UpdateDEKWrap would give it alone, applies the
//     successful ones whatever the others' results, and applies none when
//     the batch fails as a whole (a cancelled context, a closed store).
//
// The Lifecycle subtests check [keystore.LifecycleStore], which shredding,
// moving subjects and key epochs need; they are skipped for a store that
// does not implement it:
//
//   - Pending DEK rows (ZoneKeyVersion 0, a KEKVersion) are created, read,
//     listed and scanned like any other, and adopted with UpdateDEKWrap from
//     previous version 0, which clears the KEKVersion; a row with neither
//     or both versions is [keystore.ErrInvalidValue].
//   - ShredSubject deletes exactly the subject's rows (from DEK, DEKs,
//     LatestDEK, SubjectDEKs and ScanDEKs), ShreddedDEK then finds each id,
//     and the tombstone keeps the highest generation over every removal; a
//     subject without rows is ErrUnknownKey and nothing is written. Subjects
//     with NUL bytes and invalid UTF-8, and neighbours whose names are
//     prefixes of each other, are kept apart.
//   - MoveDEKs replaces the rows (same ids, pending, in the target zone) and
//     leaves a Moved tombstone; [keystore.ErrConflict] when the stored ids
//     differ from the rows', [keystore.ErrExists] when a generation is taken
//     in the target, ErrInvalidValue for malformed rows, and nothing is
//     written on any failure.
//   - ShredZone, DeleteZoneKeysBelow (ErrConflict while a DEK row, pending
//     ones included, needs an older zone key) and the epoch rows (ErrExists,
//     the latest by unsigned number, a compare-and-swap on every field with
//     times to the microsecond).
//   - Of 16 concurrent shreds, moves, epoch creates or epoch updates from the
//     same state exactly one succeeds; cancelled contexts and a closed store
//     write nothing.
//
// Subtests run one after another; each asks the harness for a fresh store.
package keystoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// Harness makes stores for the suite.
type Harness interface {
	// MakeStore returns a fresh, empty store. The suite closes it when the
	// subtest ends; the harness may register its own cleanup (removing
	// files, dropping a schema) with t.Cleanup.
	MakeStore(ctx context.Context, t *testing.T) keystore.Store
	// Reopen closes s, a store that MakeStore or Reopen returned, and opens
	// the same underlying storage again.
	Reopen(ctx context.Context, t *testing.T, s keystore.Store) keystore.Store
}

// RunConformanceTests runs the suite against the stores h makes. Each test
// is a subtest of t.
func RunConformanceTests(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		{"Empty", testEmpty},
		{"ZoneKey/CreateAndGet", testZoneKeyCreateAndGet},
		{"ZoneKey/LatestIsHighestVersion", testZoneKeyLatest},
		{"ZoneKey/Unknown", testZoneKeyUnknown},
		{"ZoneKey/Duplicate", testZoneKeyDuplicate},
		{"ZoneKey/ZonesIsolated", testZonesIsolated},
		{"DEK/CreateAndGet", testDEKCreateAndGet},
		{"DEK/Unknown", testDEKUnknown},
		{"DEK/Duplicate", testDEKDuplicate},
		{"DEK/NotDuplicate", testDEKNotDuplicate},
		{"DEKs", testDEKs},
		{"LatestDEK/HighestGeneration", testLatestDEKGeneration},
		{"LatestDEK/SubjectsIsolated", testSubjectsIsolated},
		{"RoundTrip", testRoundTrip},
		{"CreatedPrecision", testCreatedPrecision},
		{"NotAliased", testNotAliased},
		{"ConcurrentCreates/Same", testConcurrentSame},
		{"ConcurrentCreates/Distinct", testConcurrentDistinct},
		{"CancelledContext", testCancelled},
		{"Closed", testClosed},
		{"Reopen", testReopen},
		{"Rotation/ZoneKeys", testZoneKeys},
		{"Rotation/UpdateZoneKeyWrap", testUpdateZoneKeyWrap},
		{"Rotation/UpdateDEKWrap", testUpdateDEKWrap},
		{"Rotation/UpdateDEKWraps", testUpdateDEKWraps},
		{"Rotation/ConcurrentUpdates", testConcurrentUpdates},
		{"Rotation/ScanDEKs", testScanDEKs},
		{"Rotation/ScanWhileUpdating", testScanWhileUpdating},
		{"Rotation/ScanLimit", testScanLimit},
		{"Rotation/CancelledContext", testRotationCancelled},
		{"Rotation/Closed", testRotationClosed},
		{"Lifecycle/PendingRows", testPendingRows},
		{"Lifecycle/WrapVersions", testWrapVersions},
		{"Lifecycle/SubjectDEKs", testSubjectDEKs},
		{"Lifecycle/ShredSubject", testShredSubject},
		{"Lifecycle/ShredSubjectUnknown", testShredSubjectUnknown},
		{"Lifecycle/MoveDEKs", testMoveDEKs},
		{"Lifecycle/MoveDEKsRefused", testMoveDEKsRefused},
		{"Lifecycle/ShredZone", testShredZone},
		{"Lifecycle/CreateAfterTombstone", testCreateAfterTombstone},
		{"Lifecycle/DeleteZoneKeysBelow", testDeleteZoneKeysBelow},
		{"Lifecycle/Epochs", testEpochs},
		{"Lifecycle/EpochOrder", testEpochOrder},
		{"Lifecycle/UpdateEpoch", testUpdateEpoch},
		{"Lifecycle/Concurrent", testLifecycleConcurrent},
		{"Lifecycle/CancelledContext", testLifecycleCancelled},
		{"Lifecycle/Closed", testLifecycleClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, h) })
	}
}

// store asks h for a fresh store and closes it when t ends.
func store(t *testing.T, h Harness) keystore.Store {
	t.Helper()
	s := h.MakeStore(t.Context(), t)
	require.NotNil(t, s, "MakeStore returned nil")
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// reopen asks h to reopen s and closes the new store when t ends.
func reopen(t *testing.T, h Harness, s keystore.Store) keystore.Store {
	t.Helper()
	s2 := h.Reopen(t.Context(), t, s)
	require.NotNil(t, s2, "Reopen returned nil")
	t.Cleanup(func() { _ = s2.Close() })
	return s2
}

// baseTime has whole microseconds, the precision every store must keep.
var baseTime = time.Date(2025, 6, 1, 12, 34, 56, 123456000, time.UTC)

var seq struct {
	sync.Mutex
	n int
}

// created returns a distinct time with whole microseconds for each row.
func created() time.Time {
	seq.Lock()
	defer seq.Unlock()
	seq.n++
	return baseTime.Add(time.Duration(seq.n) * 1001 * time.Microsecond)
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// zoneKey returns a zone-key row with a random id and wrapped key.
func zoneKey(t testing.TB, zone string, version uint32) keystore.ZoneKeyRow {
	t.Helper()
	return keystore.ZoneKeyRow{
		Zone:       zone,
		Version:    version,
		ID:         hex.EncodeToString(randomBytes(t, 16)),
		Wrapped:    randomBytes(t, 61),
		KEKVersion: 1 + version%7,
		Created:    created(),
	}
}

// dek returns a DEK row with a random id and wrapped key.
func dek(t testing.TB, zone, subject string, gen uint32) keystore.DEKRow {
	t.Helper()
	return keystore.DEKRow{
		ID:             envelope.NewKeyID(),
		Zone:           zone,
		Subject:        subject,
		Generation:     gen,
		ZoneKeyVersion: 1 + gen%5,
		Wrapped:        randomBytes(t, envelope.NonceSize+envelope.KeySize+envelope.TagSize),
		Created:        created(),
	}
}

func createZoneKey(t *testing.T, s keystore.Store, row keystore.ZoneKeyRow) {
	t.Helper()
	require.NoError(t, s.CreateZoneKey(t.Context(), row), "CreateZoneKey(zone %q v%d)", row.Zone, row.Version)
}

func createDEK(t *testing.T, s keystore.Store, row keystore.DEKRow) {
	t.Helper()
	require.NoError(t, s.CreateDEK(t.Context(), row), "CreateDEK(zone %q subject %q gen %d)", row.Zone, row.Subject, row.Generation)
}

// requireZoneKey checks that got is want, field by field.
func requireZoneKey(t *testing.T, want, got keystore.ZoneKeyRow, msgAndArgs ...any) {
	t.Helper()
	msg := describe(msgAndArgs)
	require.Equal(t, want.Zone, got.Zone, "%sZone", msg)
	require.Equal(t, want.Version, got.Version, "%sVersion", msg)
	require.Equal(t, want.ID, got.ID, "%sID", msg)
	require.True(t, bytes.Equal(want.Wrapped, got.Wrapped), "%sWrapped: want %x, got %x", msg, want.Wrapped, got.Wrapped)
	require.Equal(t, want.KEKVersion, got.KEKVersion, "%sKEKVersion", msg)
	require.True(t, want.Created.Equal(got.Created), "%sCreated: want %v, got %v", msg, want.Created, got.Created)
}

// requireDEK checks that got is want, field by field.
func requireDEK(t *testing.T, want, got keystore.DEKRow, msgAndArgs ...any) {
	t.Helper()
	msg := describe(msgAndArgs)
	require.Equal(t, want.ID, got.ID, "%sID", msg)
	require.Equal(t, want.Zone, got.Zone, "%sZone", msg)
	require.Equal(t, want.Subject, got.Subject, "%sSubject", msg)
	require.Equal(t, want.Generation, got.Generation, "%sGeneration", msg)
	require.Equal(t, want.ZoneKeyVersion, got.ZoneKeyVersion, "%sZoneKeyVersion", msg)
	require.Equal(t, want.KEKVersion, got.KEKVersion, "%sKEKVersion", msg)
	require.True(t, bytes.Equal(want.Wrapped, got.Wrapped), "%sWrapped: want %x, got %x", msg, want.Wrapped, got.Wrapped)
	require.True(t, want.Created.Equal(got.Created), "%sCreated: want %v, got %v", msg, want.Created, got.Created)
}

func describe(msgAndArgs []any) string {
	if len(msgAndArgs) == 0 {
		return ""
	}
	if f, ok := msgAndArgs[0].(string); ok {
		return fmt.Sprintf(f, msgAndArgs[1:]...) + ": "
	}
	return fmt.Sprint(msgAndArgs...) + ": "
}

// requireDEKSet checks that got holds exactly the rows of want, in any order.
func requireDEKSet(t *testing.T, want, got []keystore.DEKRow, msg string) {
	t.Helper()
	byID := func(a, b keystore.DEKRow) int { return bytes.Compare(a.ID[:], b.ID[:]) }
	want, got = slices.Clone(want), slices.Clone(got)
	slices.SortFunc(want, byID)
	slices.SortFunc(got, byID)
	ids := func(rows []keystore.DEKRow) []string {
		var s []string
		for _, r := range rows {
			s = append(s, r.ID.String())
		}
		return s
	}
	require.Equal(t, ids(want), ids(got), "%s: the ids returned", msg)
	for i := range want {
		requireDEK(t, want[i], got[i], "%s: DEK %s", msg, want[i].ID)
	}
}

func requireUnknownZoneKey(t *testing.T, s keystore.Store, zone string, version uint32) {
	t.Helper()
	_, err := s.ZoneKey(t.Context(), zone, version)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "ZoneKey(%q, %d)", zone, version)
}

func requireUnknownDEK(t *testing.T, s keystore.Store, id envelope.KeyID) {
	t.Helper()
	_, err := s.DEK(t.Context(), id)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "DEK(%s)", id)
}

func requireUnknownLatest(t *testing.T, s keystore.Store, zone, subject string) {
	t.Helper()
	_, err := s.LatestDEK(t.Context(), zone, subject)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "LatestDEK(%q, %q)", zone, subject)
}

func testEmpty(t *testing.T, h Harness) {
	s := store(t, h)
	requireUnknownZoneKey(t, s, "eu", 0)
	requireUnknownZoneKey(t, s, "eu", 1)
	requireUnknownDEK(t, s, envelope.NewKeyID())
	requireUnknownLatest(t, s, "eu", "alice")
	requireUnknownLatest(t, s, "eu", "")
	rows, err := s.DEKs(t.Context(), []envelope.KeyID{envelope.NewKeyID()})
	require.NoError(t, err)
	require.Empty(t, rows)
}

func testZoneKeyCreateAndGet(t *testing.T, h Harness) {
	s := store(t, h)
	var rows []keystore.ZoneKeyRow
	for v := uint32(1); v <= 3; v++ {
		row := zoneKey(t, "eu", v)
		createZoneKey(t, s, row)
		rows = append(rows, row)

		got, err := s.ZoneKey(t.Context(), "eu", 0)
		require.NoError(t, err, "latest after creating v%d", v)
		requireZoneKey(t, row, got, "latest after creating v%d", v)
	}
	for _, want := range rows {
		got, err := s.ZoneKey(t.Context(), "eu", want.Version)
		require.NoError(t, err, "ZoneKey v%d", want.Version)
		requireZoneKey(t, want, got, "ZoneKey v%d", want.Version)
	}
}

func testZoneKeyLatest(t *testing.T, h Harness) {
	// Created out of order, around byte and sign boundaries: a store that
	// orders versions as text or as signed numbers picks the wrong one.
	versions := []uint32{2, 1, 9, 10, 255, 256, 65535, 65536, 1 << 24, 1<<31 - 1, 1 << 31, math.MaxUint32 - 1, math.MaxUint32}
	s := store(t, h)
	created := map[uint32]keystore.ZoneKeyRow{}
	order := []int{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12}
	highest := uint32(0)
	for _, i := range order {
		v := versions[i]
		row := zoneKey(t, "eu", v)
		createZoneKey(t, s, row)
		created[v] = row
		highest = max(highest, v)
		got, err := s.ZoneKey(t.Context(), "eu", 0)
		require.NoError(t, err)
		requireZoneKey(t, created[highest], got, "latest after creating v%d", v)
	}
	for v, want := range created {
		got, err := s.ZoneKey(t.Context(), "eu", v)
		require.NoError(t, err, "ZoneKey v%d", v)
		requireZoneKey(t, want, got, "ZoneKey v%d", v)
	}
}

func testZoneKeyUnknown(t *testing.T, h Harness) {
	s := store(t, h)
	createZoneKey(t, s, zoneKey(t, "eu", 1))
	createZoneKey(t, s, zoneKey(t, "eu", 3))
	for _, tc := range []struct {
		zone    string
		version uint32
	}{
		{"eu", 2},
		{"eu", 4},
		{"eu", math.MaxUint32},
		{"us", 0},
		{"us", 1},
		{"", 0},
		{"", 1},
	} {
		requireUnknownZoneKey(t, s, tc.zone, tc.version)
	}
}

func testZoneKeyDuplicate(t *testing.T, h Harness) {
	tests := []struct {
		name string
		// dup derives the colliding row from the stored one.
		dup func(stored, fresh keystore.ZoneKeyRow) keystore.ZoneKeyRow
		// leftover checks that the failed create wrote nothing under
		// the key on which it did not collide.
		leftover func(t *testing.T, s keystore.Store, dup keystore.ZoneKeyRow)
	}{
		{
			name: "SameZoneAndVersion",
			dup: func(stored, fresh keystore.ZoneKeyRow) keystore.ZoneKeyRow {
				fresh.Zone, fresh.Version = stored.Zone, stored.Version
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.ZoneKeyRow) {
				// The id of the refused row is free.
				createZoneKey(t, s, keystore.ZoneKeyRow{Zone: "us", Version: 1, ID: dup.ID, Wrapped: dup.Wrapped, KEKVersion: 1, Created: created()})
			},
		},
		{
			name: "SameID",
			dup: func(stored, fresh keystore.ZoneKeyRow) keystore.ZoneKeyRow {
				fresh.ID = stored.ID
				fresh.Version = stored.Version + 1
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.ZoneKeyRow) {
				requireUnknownZoneKey(t, s, dup.Zone, dup.Version)
			},
		},
		{
			name: "SameIDOtherZone",
			dup: func(stored, fresh keystore.ZoneKeyRow) keystore.ZoneKeyRow {
				fresh.ID = stored.ID
				fresh.Zone = "us"
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.ZoneKeyRow) {
				requireUnknownZoneKey(t, s, "us", 0)
			},
		},
		{
			name: "Identical",
			dup: func(stored, _ keystore.ZoneKeyRow) keystore.ZoneKeyRow {
				return stored
			},
			leftover: func(*testing.T, keystore.Store, keystore.ZoneKeyRow) {},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := store(t, h)
			stored := zoneKey(t, "eu", 1)
			createZoneKey(t, s, stored)
			dup := tc.dup(stored, zoneKey(t, "eu", 1))
			err := s.CreateZoneKey(t.Context(), dup)
			require.ErrorIs(t, err, keystore.ErrExists, "creating a colliding zone key")

			// The stored row is untouched.
			got, err := s.ZoneKey(t.Context(), stored.Zone, stored.Version)
			require.NoError(t, err)
			requireZoneKey(t, stored, got, "the first row after the refused create")
			got, err = s.ZoneKey(t.Context(), stored.Zone, 0)
			require.NoError(t, err)
			requireZoneKey(t, stored, got, "latest after the refused create")
			tc.leftover(t, s, dup)
		})
	}
}

func testZonesIsolated(t *testing.T, h Harness) {
	s := store(t, h)
	// Zone names that are prefixes of each other, in both orders of
	// version magnitude.
	rows := map[string][]keystore.ZoneKeyRow{}
	for _, zc := range []struct {
		zone     string
		versions []uint32
	}{
		{"eu", []uint32{1, 2}},
		{"eu2", []uint32{5}},
		{"e", []uint32{9, 300}},
		{"eu-west", []uint32{1}},
		{"eu_", []uint32{7}},
		{"us", []uint32{1}},
	} {
		for _, v := range zc.versions {
			row := zoneKey(t, zc.zone, v)
			createZoneKey(t, s, row)
			rows[zc.zone] = append(rows[zc.zone], row)
		}
	}
	for zone, zr := range rows {
		got, err := s.ZoneKey(t.Context(), zone, 0)
		require.NoError(t, err, "latest of %q", zone)
		requireZoneKey(t, zr[len(zr)-1], got, "latest of %q", zone)
		for _, want := range zr {
			got, err := s.ZoneKey(t.Context(), zone, want.Version)
			require.NoError(t, err)
			requireZoneKey(t, want, got, "zone %q v%d", zone, want.Version)
		}
	}
	// Versions of one zone are not found under another.
	requireUnknownZoneKey(t, s, "eu", 5)
	requireUnknownZoneKey(t, s, "eu", 9)
	requireUnknownZoneKey(t, s, "eu2", 1)
	requireUnknownZoneKey(t, s, "e", 1)
	requireUnknownZoneKey(t, s, "u", 0)
	requireUnknownZoneKey(t, s, "eu-", 0)
	requireUnknownZoneKey(t, s, "eu2x", 0)
	requireUnknownZoneKey(t, s, "EU", 0)
}

func testDEKCreateAndGet(t *testing.T, h Harness) {
	s := store(t, h)
	var rows []keystore.DEKRow
	for _, subject := range []string{"alice", "bob", ""} {
		for gen := uint32(1); gen <= 2; gen++ {
			row := dek(t, "eu", subject, gen)
			createDEK(t, s, row)
			rows = append(rows, row)
		}
	}
	for _, want := range rows {
		got, err := s.DEK(t.Context(), want.ID)
		require.NoError(t, err, "DEK %s", want.ID)
		requireDEK(t, want, got, "DEK %s", want.ID)
	}
}

func testDEKUnknown(t *testing.T, h Harness) {
	s := store(t, h)
	row := dek(t, "eu", "alice", 1)
	createDEK(t, s, row)
	requireUnknownDEK(t, s, envelope.NewKeyID())
	requireUnknownDEK(t, s, envelope.KeyID{})
	// An id that differs from a stored one in its last byte.
	near := row.ID
	near[len(near)-1] ^= 1
	requireUnknownDEK(t, s, near)
	requireUnknownLatest(t, s, "eu", "bob")
	requireUnknownLatest(t, s, "us", "alice")
}

func testDEKDuplicate(t *testing.T, h Harness) {
	tests := []struct {
		name     string
		dup      func(stored, fresh keystore.DEKRow) keystore.DEKRow
		leftover func(t *testing.T, s keystore.Store, dup keystore.DEKRow)
	}{
		{
			name: "SameSubjectAndGeneration",
			dup: func(stored, fresh keystore.DEKRow) keystore.DEKRow {
				fresh.Zone, fresh.Subject, fresh.Generation = stored.Zone, stored.Subject, stored.Generation
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.DEKRow) {
				requireUnknownDEK(t, s, dup.ID)
				rows, err := s.DEKs(t.Context(), []envelope.KeyID{dup.ID})
				require.NoError(t, err)
				require.Empty(t, rows, "DEKs finds the refused row")
			},
		},
		{
			name: "SameID",
			dup: func(stored, fresh keystore.DEKRow) keystore.DEKRow {
				fresh.ID = stored.ID
				fresh.Subject = "mallory"
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.DEKRow) {
				requireUnknownLatest(t, s, dup.Zone, dup.Subject)
			},
		},
		{
			name: "SameIDNextGeneration",
			dup: func(stored, fresh keystore.DEKRow) keystore.DEKRow {
				fresh.ID = stored.ID
				fresh.Subject = stored.Subject
				fresh.Generation = stored.Generation + 1
				return fresh
			},
			leftover: func(t *testing.T, s keystore.Store, dup keystore.DEKRow) {
				// The subject's latest is still the first row
				// (checked by the caller); generation 2 is free.
				createDEK(t, s, dek(t, dup.Zone, dup.Subject, dup.Generation))
			},
		},
		{
			name: "Identical",
			dup: func(stored, _ keystore.DEKRow) keystore.DEKRow {
				return stored
			},
			leftover: func(*testing.T, keystore.Store, keystore.DEKRow) {},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := store(t, h)
			stored := dek(t, "eu", "alice", 1)
			createDEK(t, s, stored)
			dup := tc.dup(stored, dek(t, "eu", "alice", 1))
			err := s.CreateDEK(t.Context(), dup)
			require.ErrorIs(t, err, keystore.ErrExists, "creating a colliding DEK")

			got, err := s.DEK(t.Context(), stored.ID)
			require.NoError(t, err)
			requireDEK(t, stored, got, "the first row after the refused create")
			got, err = s.LatestDEK(t.Context(), stored.Zone, stored.Subject)
			require.NoError(t, err)
			requireDEK(t, stored, got, "latest after the refused create")
			tc.leftover(t, s, dup)
		})
	}
}

// testDEKNotDuplicate checks that the same generation in another subject or
// zone, and the same subject in another zone, are distinct row keys.
func testDEKNotDuplicate(t *testing.T, h Harness) {
	s := store(t, h)
	rows := []keystore.DEKRow{
		dek(t, "eu", "alice", 1),
		dek(t, "eu", "bob", 1),
		dek(t, "us", "alice", 1),
		dek(t, "eu", "", 1),
		dek(t, "us", "", 1),
	}
	for _, row := range rows {
		createDEK(t, s, row)
	}
	for _, want := range rows {
		got, err := s.LatestDEK(t.Context(), want.Zone, want.Subject)
		require.NoError(t, err)
		requireDEK(t, want, got, "latest of (%q, %q)", want.Zone, want.Subject)
	}
}

func testDEKs(t *testing.T, h Harness) {
	s := store(t, h)
	var stored []keystore.DEKRow
	for i := range 300 {
		row := dek(t, []string{"eu", "us"}[i%2], fmt.Sprintf("subject-%d", i), 1+uint32(i%3))
		createDEK(t, s, row)
		stored = append(stored, row)
	}
	missing := func() envelope.KeyID { return envelope.NewKeyID() }
	ids := func(rows []keystore.DEKRow) []envelope.KeyID {
		var out []envelope.KeyID
		for _, r := range rows {
			out = append(out, r.ID)
		}
		return out
	}
	reversed := slices.Clone(ids(stored[:10]))
	slices.Reverse(reversed)
	tests := []struct {
		name string
		ids  []envelope.KeyID
		want []keystore.DEKRow
	}{
		{"Nil", nil, nil},
		{"Empty", []envelope.KeyID{}, nil},
		{"OneMissing", []envelope.KeyID{missing()}, nil},
		{"AllMissing", []envelope.KeyID{missing(), missing(), missing()}, nil},
		{"One", ids(stored[7:8]), stored[7:8]},
		{"Mixed", []envelope.KeyID{missing(), stored[3].ID, missing(), stored[1].ID, stored[2].ID, missing()}, []keystore.DEKRow{stored[1], stored[2], stored[3]}},
		{"Reversed", reversed, stored[:10]},
		{"Repeated", []envelope.KeyID{stored[5].ID, stored[5].ID, stored[6].ID, stored[5].ID}, []keystore.DEKRow{stored[5], stored[6]}},
		{"All", append(ids(stored), missing()), stored},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.DEKs(t.Context(), tc.ids)
			require.NoError(t, err)
			requireDEKSet(t, tc.want, got, "DEKs")
		})
	}
}

func testLatestDEKGeneration(t *testing.T, h Harness) {
	s := store(t, h)
	gens := []uint32{2, 1, 10, 9, 256, 255, 65536, 65535, 1 << 31, 1<<31 - 1, math.MaxUint32}
	var highest keystore.DEKRow
	for _, subject := range []string{"alice", ""} {
		highest = keystore.DEKRow{}
		for _, g := range gens {
			row := dek(t, "eu", subject, g)
			createDEK(t, s, row)
			if row.Generation > highest.Generation {
				highest = row
			}
			got, err := s.LatestDEK(t.Context(), "eu", subject)
			require.NoError(t, err)
			requireDEK(t, highest, got, "latest of subject %q after creating generation %d", subject, g)
		}
	}
}

func testSubjectsIsolated(t *testing.T, h Harness) {
	subjects := []string{
		"",
		"a",
		"ab",
		"b",
		"a\x00",
		"a\x00b",
		"\x00",
		"\x00\x00",
		"a\xff",            // invalid UTF-8
		"\xff\xfe",         // invalid UTF-8
		"\u00fc",           // ü, precomposed
		"u\u0308",          // ü, decomposed: a different subject
		"日本語",              // multi-byte UTF-8
		"A",                // case matters
		"a ",               // trailing space matters
		"user@example.com", // a typical id
		"user%",            // LIKE metacharacters
		"user_",            // LIKE metacharacters
		`a\`,               // escape character
		"a'b",              // quote
		strings.Repeat("x", keystore.MaxSubject),
		strings.Repeat("x", keystore.MaxSubject-1) + "y",
	}
	s := store(t, h)
	latest := map[[2]string]keystore.DEKRow{}
	for _, zone := range []string{"eu", "eu2", "e"} {
		for i, subject := range subjects {
			// Subjects get different numbers of generations, so
			// that a prefix match would pick a wrong one.
			for g := uint32(1); g <= uint32(1+i%3); g++ {
				row := dek(t, zone, subject, g)
				createDEK(t, s, row)
				latest[[2]string{zone, subject}] = row
			}
		}
	}
	for key, want := range latest {
		got, err := s.LatestDEK(t.Context(), key[0], key[1])
		require.NoError(t, err, "LatestDEK(%q, %q)", key[0], key[1])
		requireDEK(t, want, got, "LatestDEK(%q, %q)", key[0], key[1])
		got, err = s.DEK(t.Context(), want.ID)
		require.NoError(t, err)
		requireDEK(t, want, got, "DEK of (%q, %q)", key[0], key[1])
	}
	for _, subject := range []string{"c", "a\x00c", "\x00a", "aa", "u", "\u00fc\u00fc", "ab\x00", strings.Repeat("x", keystore.MaxSubject-1)} {
		requireUnknownLatest(t, s, "eu", subject)
	}
	for _, zone := range []string{"u", "eu3", "", "eu\x00"} {
		requireUnknownLatest(t, s, zone, "a")
	}
}

func testRoundTrip(t *testing.T, h Harness) {
	every := make([]byte, 512)
	for i := range every {
		every[i] = byte(i)
	}
	s := store(t, h)
	zk := keystore.ZoneKeyRow{
		Zone:       "eu-west_1",
		Version:    math.MaxUint32,
		ID:         "zk-" + hex.EncodeToString(randomBytes(t, 16)),
		Wrapped:    every,
		KEKVersion: math.MaxUint32,
		Created:    baseTime,
	}
	createZoneKey(t, s, zk)
	got, err := s.ZoneKey(t.Context(), zk.Zone, zk.Version)
	require.NoError(t, err)
	requireZoneKey(t, zk, got, "zone key with every byte value")

	deks := []keystore.DEKRow{
		{ID: envelope.NewKeyID(), Zone: "eu-west_1", Subject: "s\x00\xff", Generation: math.MaxUint32, ZoneKeyVersion: math.MaxUint32, Wrapped: every, Created: baseTime},
		{ID: envelope.KeyID{}, Zone: "eu", Subject: "zero id", Generation: 1, ZoneKeyVersion: 1, Wrapped: []byte{0}, Created: baseTime.Add(time.Microsecond)},
		{ID: envelope.KeyID{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, Zone: "eu", Subject: "", Generation: 7, ZoneKeyVersion: 3, Wrapped: randomBytes(t, 4096), Created: time.Date(2099, 12, 31, 23, 59, 59, 999999000, time.UTC)},
		{ID: envelope.NewKeyID(), Zone: "eu", Subject: "old", Generation: 1, ZoneKeyVersion: 1, Wrapped: randomBytes(t, 60), Created: time.Date(1970, 1, 1, 0, 0, 0, 1000, time.UTC)},
	}
	for _, want := range deks {
		createDEK(t, s, want)
		got, err := s.DEK(t.Context(), want.ID)
		require.NoError(t, err)
		requireDEK(t, want, got, "DEK %s", want.ID)
		got, err = s.LatestDEK(t.Context(), want.Zone, want.Subject)
		require.NoError(t, err)
		requireDEK(t, want, got, "LatestDEK of DEK %s", want.ID)
	}
}

// testCreatedPrecision checks that stores keep at least microseconds.
func testCreatedPrecision(t *testing.T, h Harness) {
	s := store(t, h)
	for _, tc := range []struct {
		name    string
		created time.Time
		exact   bool
	}{
		{"Seconds", time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), true},
		{"Microseconds", time.Date(2025, 1, 2, 3, 4, 5, 999999000, time.UTC), true},
		{"OneMicrosecond", time.Date(2025, 1, 2, 3, 4, 5, 1000, time.UTC), true},
		{"Nanoseconds", time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC), false},
		{"OtherLocation", time.Date(2025, 1, 2, 3, 4, 5, 678000, time.FixedZone("UTC+5:30", 5*3600+1800)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			zk := zoneKey(t, "eu-"+strings.ToLower(tc.name), 1)
			zk.Created = tc.created
			createZoneKey(t, s, zk)
			d := dek(t, "eu", tc.name, 1)
			d.Created = tc.created
			createDEK(t, s, d)

			gotZK, err := s.ZoneKey(t.Context(), zk.Zone, 1)
			require.NoError(t, err)
			gotDEK, err := s.DEK(t.Context(), d.ID)
			require.NoError(t, err)
			for what, got := range map[string]time.Time{"zone key": gotZK.Created, "DEK": gotDEK.Created} {
				if tc.exact {
					require.True(t, tc.created.Equal(got), "%s Created: stored %v, got %v", what, tc.created, got)
					continue
				}
				diff := got.Sub(tc.created)
				require.True(t, diff > -time.Microsecond && diff < time.Microsecond,
					"%s Created: stored %v, got %v: stores must keep at least microseconds", what, tc.created, got)
			}
		})
	}
}

// testNotAliased checks that the store keeps its own copy of what it is given
// and hands out copies.
func testNotAliased(t *testing.T, h Harness) {
	s := store(t, h)
	zk := zoneKey(t, "eu", 1)
	want := zk
	want.Wrapped = bytes.Clone(zk.Wrapped)
	createZoneKey(t, s, zk)
	zk.Wrapped[0] ^= 0xff
	got, err := s.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, want, got, "after changing the created row")
	got.Wrapped[1] ^= 0xff
	got, err = s.ZoneKey(t.Context(), "eu", 0)
	require.NoError(t, err)
	requireZoneKey(t, want, got, "after changing a returned row")

	d := dek(t, "eu", "alice", 1)
	wantDEK := d
	wantDEK.Wrapped = bytes.Clone(d.Wrapped)
	createDEK(t, s, d)
	d.Wrapped[0] ^= 0xff
	gotDEK, err := s.DEK(t.Context(), wantDEK.ID)
	require.NoError(t, err)
	requireDEK(t, wantDEK, gotDEK, "after changing the created row")
	gotDEK.Wrapped[1] ^= 0xff
	gotDEK, err = s.LatestDEK(t.Context(), "eu", "alice")
	require.NoError(t, err)
	requireDEK(t, wantDEK, gotDEK, "after changing a returned row")
	rows, err := s.DEKs(t.Context(), []envelope.KeyID{wantDEK.ID})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	rows[0].Wrapped[2] ^= 0xff
	rows, err = s.DEKs(t.Context(), []envelope.KeyID{wantDEK.ID})
	require.NoError(t, err)
	requireDEKSet(t, []keystore.DEKRow{wantDEK}, rows, "after changing a row DEKs returned")
}

const racers = 16

// race runs f in racers goroutines released at once and returns their
// errors.
func race(f func(i int) error) []error {
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			errs[i] = f(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// oneWinner checks that exactly one of errs is nil and the others report
// ErrExists, and returns the winner's index.
func oneWinner(t *testing.T, errs []error, what string) int {
	t.Helper()
	return oneWinnerOf(t, errs, keystore.ErrExists, what)
}

// oneWinnerOf checks that exactly one of errs is nil and the others report
// loser, and returns the winner's index.
func oneWinnerOf(t *testing.T, errs []error, loser error, what string) int {
	t.Helper()
	winner := -1
	for i, err := range errs {
		if err == nil {
			require.Equal(t, -1, winner, "%s: creates %d and %d both succeeded", what, winner, i)
			winner = i
			continue
		}
		require.ErrorIs(t, err, loser, "%s: call %d lost the race with another error", what, i)
	}
	require.NotEqual(t, -1, winner, "%s: no create succeeded", what)
	return winner
}

func testConcurrentSame(t *testing.T, h Harness) {
	s := store(t, h)
	for _, subject := range []string{"alice", ""} {
		rows := make([]keystore.DEKRow, racers)
		for i := range rows {
			rows[i] = dek(t, "eu", subject, 1)
		}
		errs := race(func(i int) error { return s.CreateDEK(t.Context(), rows[i]) })
		w := oneWinner(t, errs, fmt.Sprintf("DEK of subject %q", subject))
		got, err := s.LatestDEK(t.Context(), "eu", subject)
		require.NoError(t, err)
		requireDEK(t, rows[w], got, "latest DEK after the race: the winner's")
		for i, row := range rows {
			if i != w {
				requireUnknownDEK(t, s, row.ID)
			}
		}
	}

	zks := make([]keystore.ZoneKeyRow, racers)
	for i := range zks {
		zks[i] = zoneKey(t, "eu", 1)
	}
	errs := race(func(i int) error { return s.CreateZoneKey(t.Context(), zks[i]) })
	w := oneWinner(t, errs, "zone key")
	got, err := s.ZoneKey(t.Context(), "eu", 0)
	require.NoError(t, err)
	requireZoneKey(t, zks[w], got, "latest zone key after the race: the winner's")
	got, err = s.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, zks[w], got, "zone key v1 after the race: the winner's")
}

// testConcurrentDistinct checks that concurrent creates that do not collide
// all succeed, and concurrent reads see them.
func testConcurrentDistinct(t *testing.T, h Harness) {
	s := store(t, h)
	rows := make([]keystore.DEKRow, racers)
	for i := range rows {
		rows[i] = dek(t, "eu", fmt.Sprintf("subject-%d", i), 1)
	}
	zks := make([]keystore.ZoneKeyRow, racers)
	for i := range zks {
		zks[i] = zoneKey(t, fmt.Sprintf("zone-%d", i), 1)
	}
	errs := race(func(i int) error {
		if err := s.CreateZoneKey(t.Context(), zks[i]); err != nil {
			return err
		}
		if err := s.CreateDEK(t.Context(), rows[i]); err != nil {
			return err
		}
		got, err := s.LatestDEK(t.Context(), "eu", rows[i].Subject)
		if err != nil {
			return err
		}
		if got.ID != rows[i].ID {
			return fmt.Errorf("LatestDEK of %q returned DEK %s, want %s", rows[i].Subject, got.ID, rows[i].ID)
		}
		_, err = s.DEKs(t.Context(), []envelope.KeyID{rows[i].ID, rows[(i+1)%racers].ID})
		return err
	})
	for i, err := range errs {
		require.NoError(t, err, "goroutine %d", i)
	}
	got, err := s.DEKs(t.Context(), func() []envelope.KeyID {
		var ids []envelope.KeyID
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
		return ids
	}())
	require.NoError(t, err)
	requireDEKSet(t, rows, got, "DEKs after concurrent creates")
}

// calls lists one call of each Store method, for the cancelled-context and
// closed-store tests. Creates use fresh rows.
func calls(t *testing.T, known keystore.DEKRow) []struct {
	name string
	call func(ctx context.Context, s keystore.Store) error
} {
	zk := zoneKey(t, "eu", 2)
	d := dek(t, "eu", "bob", 1)
	return []struct {
		name string
		call func(ctx context.Context, s keystore.Store) error
	}{
		{"CreateZoneKey", func(ctx context.Context, s keystore.Store) error { return s.CreateZoneKey(ctx, zk) }},
		{"ZoneKey", func(ctx context.Context, s keystore.Store) error { _, err := s.ZoneKey(ctx, "eu", 1); return err }},
		{"ZoneKeyLatest", func(ctx context.Context, s keystore.Store) error { _, err := s.ZoneKey(ctx, "eu", 0); return err }},
		{"CreateDEK", func(ctx context.Context, s keystore.Store) error { return s.CreateDEK(ctx, d) }},
		{"DEK", func(ctx context.Context, s keystore.Store) error { _, err := s.DEK(ctx, known.ID); return err }},
		{"DEKs", func(ctx context.Context, s keystore.Store) error {
			_, err := s.DEKs(ctx, []envelope.KeyID{known.ID})
			return err
		}},
		{"LatestDEK", func(ctx context.Context, s keystore.Store) error {
			_, err := s.LatestDEK(ctx, known.Zone, known.Subject)
			return err
		}},
	}
}

func testCancelled(t *testing.T, h Harness) {
	s := store(t, h)
	createZoneKey(t, s, zoneKey(t, "eu", 1))
	known := dek(t, "eu", "alice", 1)
	createDEK(t, s, known)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, c := range calls(t, known) {
		err := c.call(ctx, s)
		require.ErrorIs(t, err, context.Canceled, "%s with a cancelled context", c.name)
	}
	// Nothing was written.
	requireUnknownZoneKey(t, s, "eu", 2)
	requireUnknownLatest(t, s, "eu", "bob")
	// The store still works.
	_, err := s.DEK(t.Context(), known.ID)
	require.NoError(t, err)
}

func testClosed(t *testing.T, h Harness) {
	s := store(t, h)
	createZoneKey(t, s, zoneKey(t, "eu", 1))
	known := dek(t, "eu", "alice", 1)
	createDEK(t, s, known)
	require.NoError(t, s.Close(), "Close")
	require.NoError(t, s.Close(), "second Close")
	for _, c := range calls(t, known) {
		err := c.call(t.Context(), s)
		require.ErrorIs(t, err, keystore.ErrClosed, "%s after Close", c.name)
	}
	// Nothing was written, and everything stored before is still there.
	s = reopen(t, h, s)
	requireUnknownZoneKey(t, s, "eu", 2)
	requireUnknownLatest(t, s, "eu", "bob")
	got, err := s.LatestDEK(t.Context(), "eu", "alice")
	require.NoError(t, err)
	requireDEK(t, known, got, "after Close and reopen")
}

func testReopen(t *testing.T, h Harness) {
	s := store(t, h)
	var zks []keystore.ZoneKeyRow
	for _, zone := range []string{"eu", "us"} {
		for v := uint32(1); v <= 2; v++ {
			row := zoneKey(t, zone, v)
			createZoneKey(t, s, row)
			zks = append(zks, row)
		}
	}
	var deks []keystore.DEKRow
	for _, subject := range []string{"alice", "bob", "", "a\x00b"} {
		for g := uint32(1); g <= 2; g++ {
			row := dek(t, "eu", subject, g)
			createDEK(t, s, row)
			deks = append(deks, row)
		}
	}

	check := func(s keystore.Store, when string) {
		t.Helper()
		for _, want := range zks {
			got, err := s.ZoneKey(t.Context(), want.Zone, want.Version)
			require.NoError(t, err, when)
			requireZoneKey(t, want, got, "%s: zone %q v%d", when, want.Zone, want.Version)
		}
		for _, want := range []keystore.ZoneKeyRow{zks[1], zks[3]} {
			got, err := s.ZoneKey(t.Context(), want.Zone, 0)
			require.NoError(t, err, when)
			requireZoneKey(t, want, got, "%s: latest of zone %q", when, want.Zone)
		}
		var ids []envelope.KeyID
		for i, want := range deks {
			ids = append(ids, want.ID)
			got, err := s.DEK(t.Context(), want.ID)
			require.NoError(t, err, when)
			requireDEK(t, want, got, "%s: DEK %s", when, want.ID)
			if want.Generation == 2 {
				got, err := s.LatestDEK(t.Context(), want.Zone, want.Subject)
				require.NoError(t, err, when)
				requireDEK(t, deks[i], got, "%s: latest of subject %q", when, want.Subject)
			}
		}
		got, err := s.DEKs(t.Context(), ids)
		require.NoError(t, err, when)
		requireDEKSet(t, deks, got, when+": DEKs")
	}
	check(s, "before reopening")
	s = reopen(t, h, s)
	check(s, "after reopening")
	// The reopened store takes new rows and still enforces uniqueness.
	require.ErrorIs(t, s.CreateZoneKey(t.Context(), zoneKey(t, "eu", 2)), keystore.ErrExists, "duplicate zone key after reopening")
	require.ErrorIs(t, s.CreateDEK(t.Context(), dek(t, "eu", "alice", 2)), keystore.ErrExists, "duplicate DEK after reopening")
	createDEK(t, s, dek(t, "eu", "alice", 3))
	s = reopen(t, h, s)
	got, err := s.LatestDEK(t.Context(), "eu", "alice")
	require.NoError(t, err)
	require.Equal(t, uint32(3), got.Generation, "latest after a second reopening")
}

// rotationStore returns s as a keystore.RotationStore, failing t if it is
// not one.
func rotationStore(t *testing.T, s keystore.Store) keystore.RotationStore {
	t.Helper()
	rs, ok := s.(keystore.RotationStore)
	require.True(t, ok, "%T does not implement keystore.RotationStore (ZoneKeys, UpdateZoneKeyWrap, ScanDEKs, UpdateDEKWrap), which the keyring's rotations need", s)
	return rs
}

func requireZoneKeys(t *testing.T, rs keystore.RotationStore, zone string, want []keystore.ZoneKeyRow, msg string) {
	t.Helper()
	got, err := rs.ZoneKeys(t.Context(), zone)
	require.NoError(t, err, "%s: ZoneKeys(%q)", msg, zone)
	require.Len(t, got, len(want), "%s: ZoneKeys(%q)", msg, zone)
	for i := range want {
		requireZoneKey(t, want[i], got[i], "%s: ZoneKeys(%q)[%d]", msg, zone, i)
	}
}

func testZoneKeys(t *testing.T, h Harness) {
	s := store(t, h)
	rs := rotationStore(t, s)
	requireZoneKeys(t, rs, "eu", nil, "empty store")

	// Zones that are prefixes of each other; versions created out of
	// order, around byte and sign boundaries.
	byZone := map[string][]uint32{
		"eu":      {2, 1, 256, 255, 1 << 31, 1<<31 - 1, math.MaxUint32, 10, 9},
		"eu2":     {5},
		"e":       {300, 9},
		"eu-west": {1},
		"eu_":     {7, 3},
	}
	rows := map[string][]keystore.ZoneKeyRow{}
	for zone, versions := range byZone {
		for _, v := range versions {
			row := zoneKey(t, zone, v)
			createZoneKey(t, s, row)
			rows[zone] = append(rows[zone], row)
		}
	}
	for zone, zr := range rows {
		slices.SortFunc(zr, func(a, b keystore.ZoneKeyRow) int {
			switch {
			case a.Version < b.Version:
				return -1
			case a.Version > b.Version:
				return 1
			}
			return 0
		})
		requireZoneKeys(t, rs, zone, zr, "ascending versions")
	}
	for _, zone := range []string{"u", "eu3", "", "eu\x00", "EU"} {
		requireZoneKeys(t, rs, zone, nil, "zone without keys")
	}
	s = reopen(t, h, s)
	requireZoneKeys(t, rotationStore(t, s), "e", rows["e"], "after reopening")
}

func testUpdateZoneKeyWrap(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	rs := rotationStore(t, s)
	v1, v2, other := zoneKey(t, "eu", 1), zoneKey(t, "eu", 2), zoneKey(t, "eu2", 1)
	for _, row := range []keystore.ZoneKeyRow{v1, v2, other} {
		createZoneKey(t, s, row)
	}
	requireUnchanged := func(msg string, rows ...keystore.ZoneKeyRow) {
		t.Helper()
		for _, want := range rows {
			got, err := s.ZoneKey(ctx, want.Zone, want.Version)
			require.NoError(t, err, msg)
			requireZoneKey(t, want, got, "%s: zone %q v%d", msg, want.Zone, want.Version)
		}
	}

	// A rewrap changes Wrapped and KEKVersion only.
	wrapped := randomBytes(t, 77)
	require.NoError(t, rs.UpdateZoneKeyWrap(ctx, "eu", 1, bytes.Clone(v1.Wrapped), bytes.Clone(wrapped), 9))
	want := v1
	want.Wrapped, want.KEKVersion = wrapped, 9
	requireUnchanged("after the update", want, v2, other)
	latest, err := s.ZoneKey(ctx, "eu", 0)
	require.NoError(t, err)
	requireZoneKey(t, v2, latest, "latest after the update")
	requireZoneKeys(t, rs, "eu", []keystore.ZoneKeyRow{want, v2}, "after the update")

	// Conflicts change nothing.
	for name, prev := range map[string][]byte{
		"stale":     v1.Wrapped,
		"prefix":    wrapped[:len(wrapped)-1],
		"longer":    append(bytes.Clone(wrapped), 0),
		"nil":       nil,
		"other row": v2.Wrapped,
	} {
		err := rs.UpdateZoneKeyWrap(ctx, "eu", 1, prev, randomBytes(t, 77), 10)
		require.ErrorIs(t, err, keystore.ErrConflict, "update with a %s previous value", name)
		requireUnchanged("after a conflict ("+name+")", want, v2, other)
	}

	// Missing rows are not created.
	for _, tc := range []struct {
		zone    string
		version uint32
	}{{"eu", 3}, {"us", 1}, {"e", 1}, {"eu2", 2}} {
		err := rs.UpdateZoneKeyWrap(ctx, tc.zone, tc.version, nil, randomBytes(t, 77), 2)
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "update of zone %q v%d", tc.zone, tc.version)
		requireUnknownZoneKey(t, s, tc.zone, tc.version)
	}

	// Invalid updates.
	for name, err := range map[string]error{
		"version 0":     rs.UpdateZoneKeyWrap(ctx, "eu", 0, want.Wrapped, randomBytes(t, 77), 2),
		"KEK version 0": rs.UpdateZoneKeyWrap(ctx, "eu", 1, want.Wrapped, randomBytes(t, 77), 0),
		"empty wrapped": rs.UpdateZoneKeyWrap(ctx, "eu", 1, want.Wrapped, nil, 2),
	} {
		require.ErrorIs(t, err, keystore.ErrInvalidValue, name)
	}
	requireUnchanged("after invalid updates", want, v2, other)

	// The store keeps its own copy, the row keeps its unique keys, and
	// the update persists.
	again := randomBytes(t, 80)
	want2 := want
	want2.Wrapped, want2.KEKVersion = bytes.Clone(again), 11
	require.NoError(t, rs.UpdateZoneKeyWrap(ctx, "eu", 1, want.Wrapped, again, 11))
	again[0] ^= 0xff
	requireUnchanged("after changing the slice passed", want2)
	require.ErrorIs(t, s.CreateZoneKey(ctx, zoneKey(t, "eu", 1)), keystore.ErrExists, "the version is still taken")
	dupID := zoneKey(t, "us", 1)
	dupID.ID = v1.ID
	require.ErrorIs(t, s.CreateZoneKey(ctx, dupID), keystore.ErrExists, "the id is still taken")
	s = reopen(t, h, s)
	got, err := s.ZoneKey(ctx, "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, want2, got, "after reopening")
}

func testUpdateDEKWraps(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	bs, ok := s.(keystore.BatchRotationStore)
	if !ok {
		t.Skipf("%T does not implement keystore.BatchRotationStore", s)
	}
	rows := []keystore.DEKRow{dek(t, "eu", "a", 1), dek(t, "eu", "b", 1), dek(t, "eu", "c", 1), dek(t, "us", "a", 1), dek(t, "eu", "d", 1)}
	for _, row := range rows {
		createDEK(t, s, row)
	}
	rewrapped := func(row keystore.DEKRow, wrapped []byte, v uint32) keystore.DEKRow {
		row.Wrapped, row.ZoneKeyVersion = wrapped, v
		return row
	}
	update := func(row keystore.DEKRow, wrapped []byte, v uint32) keystore.DEKWrapUpdate {
		return keystore.DEKWrapUpdate{ID: row.ID, PrevZoneKeyVersion: row.ZoneKeyVersion, PrevWrapped: bytes.Clone(row.Wrapped), Wrapped: bytes.Clone(wrapped), ZoneKeyVersion: v}
	}

	// An empty batch does nothing.
	results, err := bs.UpdateDEKWraps(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, results)

	// Each update gets its own result; the successful ones apply.
	w := [][]byte{randomBytes(t, 60), randomBytes(t, 60), randomBytes(t, 60), randomBytes(t, 60)}
	stale := update(rows[2], w[2], 5)
	stale.PrevWrapped = bytes.Clone(rows[1].Wrapped) // not c's: a conflict
	missing := envelope.NewKeyID()
	updates := []keystore.DEKWrapUpdate{
		update(rows[0], w[0], 5),
		update(rows[1], w[1], 5),
		stale,
		{ID: missing, PrevZoneKeyVersion: 1, Wrapped: randomBytes(t, 60), ZoneKeyVersion: 2},
		update(rows[3], w[3], 9), // another zone: a batch is not bound to one
		update(rows[4], nil, 5),  // invalid
	}
	results, err = bs.UpdateDEKWraps(ctx, updates)
	require.NoError(t, err)
	require.Len(t, results, len(updates))
	require.NoError(t, results[0])
	require.NoError(t, results[1])
	require.ErrorIs(t, results[2], keystore.ErrConflict)
	require.ErrorIs(t, results[3], keystore.ErrUnknownKey)
	require.NoError(t, results[4])
	require.ErrorIs(t, results[5], keystore.ErrInvalidValue)
	requireUnknownDEK(t, s, missing)
	want := []keystore.DEKRow{rewrapped(rows[0], w[0], 5), rewrapped(rows[1], w[1], 5), rows[2], rewrapped(rows[3], w[3], 9), rows[4]}
	for _, row := range want {
		got, err := s.DEK(ctx, row.ID)
		require.NoError(t, err)
		requireDEK(t, row, got, "DEK of (%q, %q) after the batch", row.Zone, row.Subject)
	}

	// The same batch again: the applied updates now conflict.
	results, err = bs.UpdateDEKWraps(ctx, updates[:2])
	require.NoError(t, err)
	require.ErrorIs(t, results[0], keystore.ErrConflict)
	require.ErrorIs(t, results[1], keystore.ErrConflict)

	// A pending row is adopted as by UpdateDEKWrap.
	if _, ok := s.(keystore.LifecycleStore); ok {
		pending := dek(t, "eu", "p", 1)
		pending.ZoneKeyVersion, pending.KEKVersion = 0, 3
		createDEK(t, s, pending)
		aw := randomBytes(t, 60)
		results, err = bs.UpdateDEKWraps(ctx, []keystore.DEKWrapUpdate{update(pending, aw, 6)})
		require.NoError(t, err)
		require.NoError(t, results[0])
		got, err := s.DEK(ctx, pending.ID)
		require.NoError(t, err)
		adopted := rewrapped(pending, aw, 6)
		adopted.KEKVersion = 0
		requireDEK(t, adopted, got, "the adopted pending row")
	}

	// A batch that fails as a whole applies nothing.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = bs.UpdateDEKWraps(cancelled, []keystore.DEKWrapUpdate{update(want[4], randomBytes(t, 60), 7)})
	require.ErrorIs(t, err, context.Canceled)
	got, err := s.DEK(ctx, rows[4].ID)
	require.NoError(t, err)
	requireDEK(t, rows[4], got, "after a cancelled batch")
	require.NoError(t, s.Close())
	_, err = bs.UpdateDEKWraps(ctx, []keystore.DEKWrapUpdate{update(want[4], randomBytes(t, 60), 7)})
	require.ErrorIs(t, err, keystore.ErrClosed)
}

func testUpdateDEKWrap(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	rs := rotationStore(t, s)
	alice, bob, usAlice := dek(t, "eu", "alice", 1), dek(t, "eu", "bob", 1), dek(t, "us", "alice", 1)
	for _, row := range []keystore.DEKRow{alice, bob, usAlice} {
		createDEK(t, s, row)
	}
	requireUnchanged := func(msg string, rows ...keystore.DEKRow) {
		t.Helper()
		for _, want := range rows {
			got, err := s.DEK(ctx, want.ID)
			require.NoError(t, err, msg)
			requireDEK(t, want, got, "%s: DEK of (%q, %q)", msg, want.Zone, want.Subject)
			got, err = s.LatestDEK(ctx, want.Zone, want.Subject)
			require.NoError(t, err, msg)
			requireDEK(t, want, got, "%s: latest of (%q, %q)", msg, want.Zone, want.Subject)
		}
	}

	// A rewrap changes Wrapped and ZoneKeyVersion only.
	wrapped := randomBytes(t, 60)
	require.NoError(t, rs.UpdateDEKWrap(ctx, alice.ID, alice.ZoneKeyVersion, bytes.Clone(alice.Wrapped), bytes.Clone(wrapped), alice.ZoneKeyVersion+7))
	want := alice
	want.Wrapped, want.ZoneKeyVersion = wrapped, alice.ZoneKeyVersion+7
	requireUnchanged("after the update", want, bob, usAlice)
	rows, err := s.DEKs(ctx, []envelope.KeyID{alice.ID, bob.ID})
	require.NoError(t, err)
	requireDEKSet(t, []keystore.DEKRow{want, bob}, rows, "DEKs after the update")

	// Conflicts change nothing: each of the previous values must match.
	for _, tc := range []struct {
		name    string
		version uint32
		prev    []byte
	}{
		{"stale", alice.ZoneKeyVersion, alice.Wrapped},
		{"wrong version", want.ZoneKeyVersion + 1, want.Wrapped},
		{"old version", alice.ZoneKeyVersion, want.Wrapped},
		{"wrong wrapped", want.ZoneKeyVersion, bob.Wrapped},
		{"prefix", want.ZoneKeyVersion, want.Wrapped[:len(want.Wrapped)-1]},
		{"nil", want.ZoneKeyVersion, nil},
	} {
		err := rs.UpdateDEKWrap(ctx, alice.ID, tc.version, tc.prev, randomBytes(t, 60), 99)
		require.ErrorIs(t, err, keystore.ErrConflict, "update with a %s previous value", tc.name)
		requireUnchanged("after a conflict ("+tc.name+")", want, bob, usAlice)
	}

	// A missing row is not created.
	missing := envelope.NewKeyID()
	require.ErrorIs(t, rs.UpdateDEKWrap(ctx, missing, 1, nil, randomBytes(t, 60), 2), keystore.ErrUnknownKey)
	requireUnknownDEK(t, s, missing)

	// Invalid updates.
	for name, err := range map[string]error{
		"version 0":     rs.UpdateDEKWrap(ctx, alice.ID, want.ZoneKeyVersion, want.Wrapped, randomBytes(t, 60), 0),
		"empty wrapped": rs.UpdateDEKWrap(ctx, alice.ID, want.ZoneKeyVersion, want.Wrapped, nil, 9),
	} {
		require.ErrorIs(t, err, keystore.ErrInvalidValue, name)
	}
	requireUnchanged("after invalid updates", want, bob, usAlice)

	// The store keeps its own copy, the row keeps its unique keys, and
	// the update persists.
	again := randomBytes(t, 60)
	want2 := want
	want2.Wrapped, want2.ZoneKeyVersion = bytes.Clone(again), want.ZoneKeyVersion+1
	require.NoError(t, rs.UpdateDEKWrap(ctx, alice.ID, want.ZoneKeyVersion, want.Wrapped, again, want2.ZoneKeyVersion))
	again[0] ^= 0xff
	requireUnchanged("after changing the slice passed", want2)
	require.ErrorIs(t, s.CreateDEK(ctx, dek(t, "eu", "alice", 1)), keystore.ErrExists, "the generation is still taken")
	dupID := dek(t, "eu", "carol", 1)
	dupID.ID = alice.ID
	require.ErrorIs(t, s.CreateDEK(ctx, dupID), keystore.ErrExists, "the id is still taken")
	s = reopen(t, h, s)
	got, err := s.DEK(ctx, alice.ID)
	require.NoError(t, err)
	requireDEK(t, want2, got, "after reopening")
}

// testConcurrentUpdates checks that updates from the same previous values
// are compare-and-swaps: exactly one wins.
func testConcurrentUpdates(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	rs := rotationStore(t, s)
	d := dek(t, "eu", "alice", 1)
	createDEK(t, s, d)
	zk := zoneKey(t, "eu", 1)
	createZoneKey(t, s, zk)

	wraps := make([][]byte, racers)
	for i := range wraps {
		wraps[i] = randomBytes(t, 60)
	}
	errs := race(func(i int) error {
		return rs.UpdateDEKWrap(ctx, d.ID, d.ZoneKeyVersion, d.Wrapped, wraps[i], d.ZoneKeyVersion+1+uint32(i))
	})
	w := oneWinnerOf(t, errs, keystore.ErrConflict, "DEK update")
	want := d
	want.Wrapped, want.ZoneKeyVersion = wraps[w], d.ZoneKeyVersion+1+uint32(w)
	got, err := s.DEK(ctx, d.ID)
	require.NoError(t, err)
	requireDEK(t, want, got, "DEK after the race: the winner's")

	errs = race(func(i int) error {
		return rs.UpdateZoneKeyWrap(ctx, "eu", 1, zk.Wrapped, wraps[i], 100+uint32(i))
	})
	w = oneWinnerOf(t, errs, keystore.ErrConflict, "zone-key update")
	wantZK := zk
	wantZK.Wrapped, wantZK.KEKVersion = wraps[w], 100+uint32(w)
	gotZK, err := s.ZoneKey(ctx, "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, wantZK, gotZK, "zone key after the race: the winner's")
}

// scanAll scans zone with limit and returns the rows in scan order, failing
// t if a page is too long or the scan does not end.
func scanAll(t *testing.T, rs keystore.RotationStore, zone string, limit, atMost int, afterPage func([]keystore.DEKRow)) []keystore.DEKRow {
	t.Helper()
	var all []keystore.DEKRow
	cursor := ""
	for page := 0; ; page++ {
		// Every page but an empty last one holds a row.
		require.LessOrEqual(t, page, atMost/limit+atMost+1, "ScanDEKs(%q, limit %d) does not end", zone, limit)
		rows, next, err := rs.ScanDEKs(t.Context(), zone, cursor, limit)
		require.NoError(t, err, "ScanDEKs(%q, page %d, limit %d)", zone, page, limit)
		require.LessOrEqual(t, len(rows), limit, "ScanDEKs(%q) returned more than limit rows", zone)
		if next != "" {
			require.NotEqual(t, cursor, next, "ScanDEKs(%q) returned its cursor as next", zone)
		}
		all = append(all, rows...)
		if afterPage != nil {
			afterPage(rows)
		}
		if next == "" {
			return all
		}
		cursor = next
	}
}

// requireOnce checks that rows hold each of want once and nothing else
// but, if extra is set, rows it accepts once each.
func requireOnce(t *testing.T, want map[envelope.KeyID]bool, rows []keystore.DEKRow, extra func(keystore.DEKRow) bool, msg string) {
	t.Helper()
	seen := map[envelope.KeyID]bool{}
	for _, r := range rows {
		require.False(t, seen[r.ID], "%s: DEK %s (zone %q, subject %q) returned twice", msg, r.ID, r.Zone, r.Subject)
		seen[r.ID] = true
		require.True(t, want[r.ID] || extra != nil && extra(r), "%s: unexpected DEK %s of zone %q", msg, r.ID, r.Zone)
	}
	for id := range want {
		require.True(t, seen[id], "%s: DEK %s not returned", msg, id)
	}
}

func testScanDEKs(t *testing.T, h Harness) {
	s := store(t, h)
	rs := rotationStore(t, s)
	subjects := []string{"", "a", "ab", "b", "a\x00", "a\x00b", "\x00", "\xff\xfe", "user%", strings.Repeat("x", keystore.MaxSubject)}
	byZone := map[string][]keystore.DEKRow{}
	for zi, zone := range []string{"eu", "eu2", "e", "eu_", "u"} {
		for i, subject := range subjects[:len(subjects)-zi] {
			for g := uint32(1); g <= uint32(1+(i+zi)%3); g++ {
				row := dek(t, zone, subject, g)
				createDEK(t, s, row)
				byZone[zone] = append(byZone[zone], row)
			}
		}
	}
	for zone, want := range byZone {
		for _, limit := range []int{1, 2, 7, len(want), len(want) + 1, 1000} {
			got := scanAll(t, rs, zone, limit, len(want), nil)
			requireDEKSet(t, want, got, fmt.Sprintf("ScanDEKs(%q, limit %d)", zone, limit))
			ids := map[envelope.KeyID]bool{}
			for _, r := range want {
				ids[r.ID] = true
			}
			requireOnce(t, ids, got, nil, fmt.Sprintf("ScanDEKs(%q, limit %d)", zone, limit))
		}
	}
	for _, zone := range []string{"us", "", "eu3", "eu\x00", "EU"} {
		rows, next, err := rs.ScanDEKs(t.Context(), zone, "", 10)
		require.NoError(t, err, "ScanDEKs(%q)", zone)
		require.Empty(t, rows, "ScanDEKs(%q)", zone)
		require.Empty(t, next, "ScanDEKs(%q) of a zone without DEKs", zone)
	}
}

// testScanWhileUpdating scans as a rotation does: rewrapping each page's
// rows, and rows not yet reached, while new DEKs are created.
func testScanWhileUpdating(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	rs := rotationStore(t, s)
	current := map[envelope.KeyID]keystore.DEKRow{}
	want := map[envelope.KeyID]bool{}
	var order []envelope.KeyID
	for i := range 60 {
		row := dek(t, "eu", fmt.Sprintf("subject-%02d", i), 1+uint32(i%2))
		createDEK(t, s, row)
		current[row.ID], want[row.ID] = row, true
		order = append(order, row.ID)
	}
	for i := range 5 {
		createDEK(t, s, dek(t, "eu2", fmt.Sprintf("subject-%02d", i), 1))
	}
	update := func(id envelope.KeyID) {
		row := current[id]
		next := row
		next.Wrapped, next.ZoneKeyVersion = randomBytes(t, 60), row.ZoneKeyVersion+1
		require.NoError(t, rs.UpdateDEKWrap(ctx, id, row.ZoneKeyVersion, row.Wrapped, next.Wrapped, next.ZoneKeyVersion))
		current[id] = next
	}
	created := map[envelope.KeyID]bool{}
	page := 0
	got := scanAll(t, rs, "eu", 7, 200, func(rows []keystore.DEKRow) {
		for _, r := range rows {
			update(r.ID)
		}
		// Rewrap rows ahead of the scan too, from both ends, and add
		// DEKs.
		update(order[page%len(order)])
		update(order[len(order)-1-page%len(order)])
		row := dek(t, "eu", fmt.Sprintf("new-%02d", page), 1)
		createDEK(t, s, row)
		created[row.ID] = true
		page++
	})
	requireOnce(t, want, got, func(r keystore.DEKRow) bool { return created[r.ID] }, "scan while updating")
}

func testScanLimit(t *testing.T, h Harness) {
	s := store(t, h)
	rs := rotationStore(t, s)
	createDEK(t, s, dek(t, "eu", "alice", 1))
	for _, limit := range []int{0, -1, math.MinInt} {
		_, _, err := rs.ScanDEKs(t.Context(), "eu", "", limit)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, "limit %d", limit)
	}
}

// rotationCalls lists one call of each RotationStore method on the rows
// known, for the cancelled-context and closed-store tests.
func rotationCalls(zk keystore.ZoneKeyRow, d keystore.DEKRow) []struct {
	name string
	call func(ctx context.Context, rs keystore.RotationStore) error
} {
	return []struct {
		name string
		call func(ctx context.Context, rs keystore.RotationStore) error
	}{
		{"ZoneKeys", func(ctx context.Context, rs keystore.RotationStore) error {
			_, err := rs.ZoneKeys(ctx, zk.Zone)
			return err
		}},
		{"UpdateZoneKeyWrap", func(ctx context.Context, rs keystore.RotationStore) error {
			return rs.UpdateZoneKeyWrap(ctx, zk.Zone, zk.Version, zk.Wrapped, []byte("new"), zk.KEKVersion+1)
		}},
		{"ScanDEKs", func(ctx context.Context, rs keystore.RotationStore) error {
			_, _, err := rs.ScanDEKs(ctx, d.Zone, "", 10)
			return err
		}},
		{"UpdateDEKWrap", func(ctx context.Context, rs keystore.RotationStore) error {
			return rs.UpdateDEKWrap(ctx, d.ID, d.ZoneKeyVersion, d.Wrapped, []byte("new"), d.ZoneKeyVersion+1)
		}},
	}
}

func testRotationCancelled(t *testing.T, h Harness) {
	s := store(t, h)
	rs := rotationStore(t, s)
	zk, d := zoneKey(t, "eu", 1), dek(t, "eu", "alice", 1)
	createZoneKey(t, s, zk)
	createDEK(t, s, d)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, c := range rotationCalls(zk, d) {
		require.ErrorIs(t, c.call(ctx, rs), context.Canceled, "%s with a cancelled context", c.name)
	}
	// Nothing was written, and the store still works.
	got, err := s.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, zk, got, "after cancelled updates")
	gotDEK, err := s.DEK(t.Context(), d.ID)
	require.NoError(t, err)
	requireDEK(t, d, gotDEK, "after cancelled updates")
	for _, c := range rotationCalls(zk, d) {
		require.NoError(t, c.call(t.Context(), rs), c.name)
	}
}

func testRotationClosed(t *testing.T, h Harness) {
	s := store(t, h)
	rs := rotationStore(t, s)
	zk, d := zoneKey(t, "eu", 1), dek(t, "eu", "alice", 1)
	createZoneKey(t, s, zk)
	createDEK(t, s, d)
	require.NoError(t, s.Close())
	for _, c := range rotationCalls(zk, d) {
		require.ErrorIs(t, c.call(t.Context(), rs), keystore.ErrClosed, "%s after Close", c.name)
	}
	s = reopen(t, h, s)
	got, err := s.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)
	requireZoneKey(t, zk, got, "after Close and reopen")
	gotDEK, err := s.DEK(t.Context(), d.ID)
	require.NoError(t, err)
	requireDEK(t, d, gotDEK, "after Close and reopen")
}
