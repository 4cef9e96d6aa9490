package keystoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// lifecycleStore returns s as a keystore.LifecycleStore, and skips t if it
// is not one.
func lifecycleStore(t *testing.T, s keystore.Store) keystore.LifecycleStore {
	t.Helper()
	ls, ok := s.(keystore.LifecycleStore)
	if !ok {
		t.Skipf("%T does not implement keystore.LifecycleStore", s)
	}
	return ls
}

// pendingDEK returns a pending DEK row: moved into zone, wrapped by its
// KEK.
func pendingDEK(t testing.TB, zone, subject string, gen uint32) keystore.DEKRow {
	t.Helper()
	return keystore.DEKRow{
		ID:         envelope.NewKeyID(),
		Zone:       zone,
		Subject:    subject,
		Generation: gen,
		KEKVersion: 1 + gen%7,
		Wrapped:    randomBytes(t, 90),
		Created:    created(),
	}
}

// pendingIn returns rows as MoveDEKs stores them in zone to: same ids,
// subjects and creation times, generations from gen on, pending.
func pendingIn(t testing.TB, to string, gen uint32, rows ...keystore.DEKRow) []keystore.DEKRow {
	t.Helper()
	out := make([]keystore.DEKRow, len(rows))
	for i, r := range rows {
		out[i] = keystore.DEKRow{
			ID: r.ID, Zone: to, Subject: r.Subject, Generation: gen + uint32(i),
			KEKVersion: 3, Wrapped: randomBytes(t, 90), Created: r.Created,
		}
	}
	return out
}

func ids(rows []keystore.DEKRow) []envelope.KeyID {
	out := make([]envelope.KeyID, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

// requireInstant checks that got is want to the microsecond.
func requireInstant(t *testing.T, want, got time.Time, msg string) {
	t.Helper()
	if want.IsZero() {
		require.True(t, got.IsZero(), "%s: want the zero time, got %v", msg, got)
		return
	}
	d := got.Sub(want)
	require.True(t, d > -time.Microsecond && d < time.Microsecond, "%s: want %v, got %v", msg, want, got)
}

func requireTombstone(t *testing.T, want, got keystore.Tombstone, msgAndArgs ...any) {
	t.Helper()
	msg := describe(msgAndArgs)
	require.Equal(t, want.Zone, got.Zone, "%sZone", msg)
	require.Equal(t, want.Subject, got.Subject, "%sSubject", msg)
	require.Equal(t, want.Kind, got.Kind, "%sKind", msg)
	require.Equal(t, want.To, got.To, "%sTo", msg)
	require.Equal(t, want.Generation, got.Generation, "%sGeneration", msg)
	requireInstant(t, want.Created, got.Created, msg+"Created")
}

func requireEpoch(t *testing.T, want, got keystore.EpochRow, msgAndArgs ...any) {
	t.Helper()
	msg := describe(msgAndArgs)
	require.Equal(t, want.Zone, got.Zone, "%sZone", msg)
	require.Equal(t, want.Number, got.Number, "%sNumber", msg)
	require.Equal(t, want.KEKVersion, got.KEKVersion, "%sKEKVersion", msg)
	require.Equal(t, want.ZoneKeyVersion, got.ZoneKeyVersion, "%sZoneKeyVersion", msg)
	require.Equal(t, want.Owner, got.Owner, "%sOwner", msg)
	requireInstant(t, want.Lease, got.Lease, msg+"Lease")
	requireInstant(t, want.Started, got.Started, msg+"Started")
	requireInstant(t, want.Finished, got.Finished, msg+"Finished")
}

func requireNoTombstone(t *testing.T, ls keystore.LifecycleStore, zone, subject string) {
	t.Helper()
	_, err := ls.Tombstone(t.Context(), zone, subject)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "Tombstone(%q, %q)", zone, subject)
}

func requireNotShredded(t *testing.T, ls keystore.LifecycleStore, id envelope.KeyID) {
	t.Helper()
	_, err := ls.ShreddedDEK(t.Context(), id)
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "ShreddedDEK(%s)", id)
}

// requireSubjectDEKs checks that SubjectDEKs lists exactly want, by
// ascending generation.
func requireSubjectDEKs(t *testing.T, ls keystore.LifecycleStore, zone, subject string, want []keystore.DEKRow, msg string) {
	t.Helper()
	got, err := ls.SubjectDEKs(t.Context(), zone, subject)
	require.NoError(t, err, "%s: SubjectDEKs(%q, %q)", msg, zone, subject)
	require.Len(t, got, len(want), "%s: SubjectDEKs(%q, %q)", msg, zone, subject)
	for i := range want {
		requireDEK(t, want[i], got[i], "%s: SubjectDEKs(%q, %q)[%d]", msg, zone, subject, i)
	}
}

// requireStored checks that every row of want reads back unchanged, by id
// and as its subject's latest if latest is set.
func requireStored(t *testing.T, s keystore.Store, msg string, want ...keystore.DEKRow) {
	t.Helper()
	for _, w := range want {
		got, err := s.DEK(t.Context(), w.ID)
		require.NoError(t, err, "%s: DEK %s of (%q, %q)", msg, w.ID, w.Zone, w.Subject)
		requireDEK(t, w, got, "%s: DEK of (%q, %q) gen %d", msg, w.Zone, w.Subject, w.Generation)
	}
}

func requireLatest(t *testing.T, s keystore.Store, want keystore.DEKRow, msg string) {
	t.Helper()
	got, err := s.LatestDEK(t.Context(), want.Zone, want.Subject)
	require.NoError(t, err, "%s: LatestDEK(%q, %q)", msg, want.Zone, want.Subject)
	requireDEK(t, want, got, "%s: LatestDEK(%q, %q)", msg, want.Zone, want.Subject)
}

// requireScan checks that a scan of zone returns exactly want.
func requireScan(t *testing.T, rs keystore.RotationStore, zone string, want []keystore.DEKRow, msg string) {
	t.Helper()
	got := scanAll(t, rs, zone, 2, len(want)+1, nil)
	requireDEKSet(t, want, got, fmt.Sprintf("%s: ScanDEKs(%q)", msg, zone))
}

func testPendingRows(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	lifecycleStore(t, s)
	p1, normal := pendingDEK(t, "eu", "alice", 1), dek(t, "eu", "alice", 2)
	p2, p3 := pendingDEK(t, "eu", "b\x00\xff", 1), pendingDEK(t, "eu2", "alice", math.MaxUint32)
	p3.KEKVersion = math.MaxUint32
	all := []keystore.DEKRow{p1, normal, p2, p3}
	for _, row := range all {
		createDEK(t, s, row)
	}
	require.True(t, p1.Pending() && p2.Pending() && p3.Pending() && !normal.Pending())

	check := func(s keystore.Store, when string) {
		t.Helper()
		requireStored(t, s, when, all...)
		got, err := s.DEKs(ctx, ids(all))
		require.NoError(t, err)
		requireDEKSet(t, all, got, when+": DEKs")
		for _, r := range got {
			require.Equal(t, r.ID != normal.ID, r.Pending(), "%s: DEK %s Pending", when, r.ID)
		}
		requireLatest(t, s, normal, when)
		requireLatest(t, s, p2, when)
		requireLatest(t, s, p3, when)
		ls := lifecycleStore(t, s)
		requireSubjectDEKs(t, ls, "eu", "alice", []keystore.DEKRow{p1, normal}, when)
		requireScan(t, rotationStore(t, s), "eu", []keystore.DEKRow{p1, normal, p2}, when)
		requireScan(t, rotationStore(t, s), "eu2", []keystore.DEKRow{p3}, when)
	}
	check(s, "pending rows")
	s = reopen(t, h, s)
	check(s, "pending rows after reopening")
	ls, rs := lifecycleStore(t, s), rotationStore(t, s)

	// Adoption is a compare-and-swap from version 0 and the custodian's
	// wrap.
	wrapped := randomBytes(t, 60)
	for _, tc := range []struct {
		name    string
		version uint32
		prev    []byte
	}{
		{"version 1", 1, p1.Wrapped},
		{"other wrap", 0, p2.Wrapped},
		{"prefix", 0, p1.Wrapped[:len(p1.Wrapped)-1]},
		{"nil", 0, nil},
	} {
		err := rs.UpdateDEKWrap(ctx, p1.ID, tc.version, tc.prev, randomBytes(t, 60), 4)
		require.ErrorIs(t, err, keystore.ErrConflict, "adoption with a %s previous value", tc.name)
		requireStored(t, s, "after a refused adoption ("+tc.name+")", p1)
	}
	for name, err := range map[string]error{
		"version 0":     rs.UpdateDEKWrap(ctx, p1.ID, 0, p1.Wrapped, randomBytes(t, 60), 0),
		"empty wrapped": rs.UpdateDEKWrap(ctx, p1.ID, 0, p1.Wrapped, []byte{}, 4),
	} {
		require.ErrorIs(t, err, keystore.ErrInvalidValue, name)
	}
	requireStored(t, s, "after invalid adoptions", p1)

	require.NoError(t, rs.UpdateDEKWrap(ctx, p1.ID, 0, bytes.Clone(p1.Wrapped), bytes.Clone(wrapped), 4))
	adopted := p1
	adopted.ZoneKeyVersion, adopted.KEKVersion, adopted.Wrapped = 4, 0, wrapped
	require.False(t, adopted.Pending())
	requireStored(t, s, "after adoption", adopted, normal, p2, p3)
	require.ErrorIs(t, rs.UpdateDEKWrap(ctx, p1.ID, 0, p1.Wrapped, randomBytes(t, 60), 5), keystore.ErrConflict, "a second adoption")
	requireSubjectDEKs(t, ls, "eu", "alice", []keystore.DEKRow{adopted, normal}, "after adoption")
	// The adopted row keeps its unique keys.
	require.ErrorIs(t, s.CreateDEK(ctx, dek(t, "eu", "alice", 1)), keystore.ErrExists)
	s = reopen(t, h, s)
	requireStored(t, s, "after adoption and reopening", adopted, normal, p2, p3)
}

// testWrapVersions checks that a DEK row has exactly one of ZoneKeyVersion
// and KEKVersion.
func testWrapVersions(t *testing.T, h Harness) {
	s := store(t, h)
	lifecycleStore(t, s)
	for _, tc := range []struct {
		name     string
		zkv, kek uint32
	}{
		{"Neither", 0, 0},
		{"Both", 1, 1},
		{"BothMax", math.MaxUint32, math.MaxUint32},
	} {
		row := dek(t, "eu", "alice-"+tc.name, 1)
		row.ZoneKeyVersion, row.KEKVersion = tc.zkv, tc.kek
		err := s.CreateDEK(t.Context(), row)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, tc.name)
		requireUnknownDEK(t, s, row.ID)
		requireUnknownLatest(t, s, row.Zone, row.Subject)
	}
}

func testSubjectDEKs(t *testing.T, h Harness) {
	s := store(t, h)
	ls := lifecycleStore(t, s)
	requireSubjectDEKs(t, ls, "eu", "alice", nil, "empty store")
	subjects := []string{"", "a", "ab", "a\x00", "a\x00b", "\x00", "a\xff", "\xff\xfe", "user%", "A"}
	gens := []uint32{2, 1, 256, 255, 1<<31 - 1, 1 << 31, math.MaxUint32}
	want := map[[2]string][]keystore.DEKRow{}
	for _, zone := range []string{"eu", "eu2", "e"} {
		for i, subject := range subjects {
			for _, g := range gens[:1+(i%len(gens))] {
				row := dek(t, zone, subject, g)
				if g%2 == 1 {
					row = pendingDEK(t, zone, subject, g)
				}
				createDEK(t, s, row)
				want[[2]string{zone, subject}] = append(want[[2]string{zone, subject}], row)
			}
		}
	}
	for key, rows := range want {
		rows = slices.Clone(rows)
		slices.SortFunc(rows, func(a, b keystore.DEKRow) int {
			switch {
			case a.Generation < b.Generation:
				return -1
			case a.Generation > b.Generation:
				return 1
			}
			return 0
		})
		requireSubjectDEKs(t, ls, key[0], key[1], rows, "by ascending generation")
	}
	for _, subject := range []string{"b", "a\x00c", "\x00a", "aa", "a\xfe"} {
		requireSubjectDEKs(t, ls, "eu", subject, nil, "subject without rows")
	}
	for _, zone := range []string{"u", "eu3", "", "eu\x00"} {
		requireSubjectDEKs(t, ls, zone, "a", nil, "zone without rows")
	}
}

func testShredSubject(t *testing.T, h Harness) {
	for _, subject := range []string{"alice", "a", "a\x00b", "\xff\xfe", strings.Repeat("s", keystore.MaxSubject)} {
		t.Run(fmt.Sprintf("%q", subject[:min(len(subject), 8)]), func(t *testing.T) {
			ctx := t.Context()
			s := store(t, h)
			ls := lifecycleStore(t, s)
			target := []keystore.DEKRow{dek(t, "eu", subject, 1), dek(t, "eu", subject, 2), pendingDEK(t, "eu", subject, 3)}
			neighbours := []keystore.DEKRow{
				dek(t, "eu", subject+"x", 1),
				dek(t, "eu", subject+"\x00", 4),
				dek(t, "eu", "", 1),
				dek(t, "eu2", subject, 1),
				dek(t, "e", subject, 5),
			}
			if len(subject) > 1 {
				neighbours = append(neighbours, dek(t, "eu", subject[:len(subject)-1], 2))
			}
			for _, row := range append(slices.Clone(target), neighbours...) {
				createDEK(t, s, row)
			}
			var inEU []keystore.DEKRow
			for _, n := range neighbours {
				if n.Zone == "eu" {
					inEU = append(inEU, n)
				}
			}

			at := created()
			tomb, gotIDs, err := ls.ShredSubject(ctx, "eu", subject, at)
			require.NoError(t, err)
			require.ElementsMatch(t, ids(target), gotIDs, "the ids ShredSubject returns")
			want := keystore.Tombstone{Zone: "eu", Subject: subject, Kind: keystore.Shredded, Generation: 3, Created: at}
			requireTombstone(t, want, tomb, "returned tombstone")

			check := func(s keystore.Store, when string) {
				t.Helper()
				ls, rs := lifecycleStore(t, s), rotationStore(t, s)
				for _, row := range target {
					requireUnknownDEK(t, s, row.ID)
					got, err := ls.ShreddedDEK(ctx, row.ID)
					require.NoError(t, err, "%s: ShreddedDEK of a shredded id", when)
					requireTombstone(t, want, got, "%s: ShreddedDEK", when)
				}
				requireUnknownLatest(t, s, "eu", subject)
				requireSubjectDEKs(t, ls, "eu", subject, nil, when)
				got, err := s.DEKs(ctx, append(ids(target), ids(neighbours)...))
				require.NoError(t, err)
				requireDEKSet(t, neighbours, got, when+": DEKs")
				requireScan(t, rs, "eu", inEU, when)
				gotT, err := ls.Tombstone(ctx, "eu", subject)
				require.NoError(t, err, when)
				requireTombstone(t, want, gotT, "%s: Tombstone", when)
				// The neighbours are untouched.
				requireStored(t, s, when, neighbours...)
				for _, n := range neighbours {
					requireLatest(t, s, n, when)
					requireNoTombstone(t, ls, n.Zone, n.Subject)
					requireNotShredded(t, ls, n.ID)
				}
			}
			check(s, "after the shred")

			// A second shred finds nothing and changes nothing.
			_, _, err = ls.ShredSubject(ctx, "eu", subject, created())
			require.ErrorIs(t, err, keystore.ErrUnknownKey, "shredding a shredded subject")
			check(s, "after a second shred")
			s = reopen(t, h, s)
			check(s, "after reopening")
			ls = lifecycleStore(t, s)

			// A DEK made afterwards, of a higher generation, and shredded
			// again: the tombstone takes its generation and time, and the
			// first ids now report the new tombstone.
			again := dek(t, "eu", subject, 7)
			createDEK(t, s, again)
			at2 := created()
			tomb2, gotIDs, err := ls.ShredSubject(ctx, "eu", subject, at2)
			require.NoError(t, err)
			require.Equal(t, []envelope.KeyID{again.ID}, gotIDs)
			want2 := keystore.Tombstone{Zone: "eu", Subject: subject, Kind: keystore.Shredded, Generation: 7, Created: at2}
			requireTombstone(t, want2, tomb2, "second tombstone")
			for _, id := range append(ids(target), again.ID) {
				got, err := ls.ShreddedDEK(ctx, id)
				require.NoError(t, err)
				requireTombstone(t, want2, got, "ShreddedDEK after the second shred")
			}

			// A lower generation shredded later keeps the highest. (It
			// comes by a move: CreateDEK refuses generations up to the
			// tombstone's.)
			low := dek(t, "eu3", subject, 1)
			createDEK(t, s, low)
			require.NoError(t, ls.MoveDEKs(ctx, "eu3", pendingIn(t, "eu", 2, low), created()))
			at3 := created()
			tomb3, _, err := ls.ShredSubject(ctx, "eu", subject, at3)
			require.NoError(t, err)
			want3 := keystore.Tombstone{Zone: "eu", Subject: subject, Kind: keystore.Shredded, Generation: 7, Created: at3}
			requireTombstone(t, want3, tomb3, "third tombstone")
			got, err := ls.Tombstone(ctx, "eu", subject)
			require.NoError(t, err)
			requireTombstone(t, want3, got, "stored third tombstone")
			requireStored(t, s, "after three shreds", neighbours...)
		})
	}
}

func testShredSubjectUnknown(t *testing.T, h Harness) {
	s := store(t, h)
	ls := lifecycleStore(t, s)
	rows := []keystore.DEKRow{dek(t, "eu", "alice", 1), dek(t, "eu", "alice\x00", 1), dek(t, "eu2", "bob", 1), dek(t, "eu", "", 1)}
	for _, row := range rows {
		createDEK(t, s, row)
	}
	for _, tc := range []struct{ zone, subject string }{
		{"eu", "bob"},
		{"eu", "alic"},
		{"eu", "alicea"},
		{"eu", "alice\x00\x00"},
		{"e", "alice"},
		{"eu2", "alice"},
		{"us", ""},
		{"", "alice"},
	} {
		_, _, err := ls.ShredSubject(t.Context(), tc.zone, tc.subject, created())
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "ShredSubject(%q, %q)", tc.zone, tc.subject)
		requireNoTombstone(t, ls, tc.zone, tc.subject)
	}
	requireStored(t, s, "after refused shreds", rows...)
	for _, row := range rows {
		requireLatest(t, s, row, "after refused shreds")
		requireNotShredded(t, ls, row.ID)
	}
	requireNotShredded(t, ls, envelope.NewKeyID())
}

func testMoveDEKs(t *testing.T, h Harness) {
	for _, subject := range []string{"alice", "a\x00\xff"} {
		t.Run(fmt.Sprintf("%q", subject), func(t *testing.T) {
			ctx := t.Context()
			s := store(t, h)
			ls := lifecycleStore(t, s)
			from := []keystore.DEKRow{dek(t, "eu", subject, 1), dek(t, "eu", subject, 2), pendingDEK(t, "eu", subject, 3)}
			inTarget := dek(t, "us", subject, 1)
			bob, euAlice2 := dek(t, "eu", "bob", 1), dek(t, "eu2", subject, 1)
			for _, row := range append(slices.Clone(from), inTarget, bob, euAlice2) {
				createDEK(t, s, row)
			}
			moved := pendingIn(t, "us", 2, from...)
			at := created()
			require.NoError(t, ls.MoveDEKs(ctx, "eu", slices.Clone(moved), at))
			want := keystore.Tombstone{Zone: "eu", Subject: subject, Kind: keystore.Moved, To: "us", Generation: 3, Created: at}

			check := func(s keystore.Store, when string) {
				t.Helper()
				ls, rs := lifecycleStore(t, s), rotationStore(t, s)
				requireStored(t, s, when, moved...)
				got, err := s.DEKs(ctx, ids(from))
				require.NoError(t, err)
				requireDEKSet(t, moved, got, when+": DEKs of the moved ids")
				for _, r := range got {
					require.True(t, r.Pending(), "%s: moved DEK %s is pending", when, r.ID)
				}
				requireSubjectDEKs(t, ls, "eu", subject, nil, when)
				requireSubjectDEKs(t, ls, "us", subject, append([]keystore.DEKRow{inTarget}, moved...), when)
				requireUnknownLatest(t, s, "eu", subject)
				requireLatest(t, s, moved[2], when)
				requireScan(t, rs, "eu", []keystore.DEKRow{bob}, when)
				requireScan(t, rs, "us", append([]keystore.DEKRow{inTarget}, moved...), when)
				requireStored(t, s, when, inTarget, bob, euAlice2)
				gotT, err := ls.Tombstone(ctx, "eu", subject)
				require.NoError(t, err, when)
				requireTombstone(t, want, gotT, "%s: Tombstone of the source", when)
				requireNoTombstone(t, ls, "us", subject)
				requireNoTombstone(t, ls, "eu2", subject)
				for _, id := range ids(from) {
					requireNotShredded(t, ls, id)
				}
			}
			check(s, "after the move")
			s = reopen(t, h, s)
			check(s, "after reopening")
			ls, rs := lifecycleStore(t, s), rotationStore(t, s)

			// The indexes moved with the rows: the source's generations
			// are free, the target's taken.
			require.ErrorIs(t, s.CreateDEK(ctx, dek(t, "us", subject, 3)), keystore.ErrExists)
			taken := dek(t, "eu", "carol", 1)
			taken.ID = from[0].ID
			require.ErrorIs(t, s.CreateDEK(ctx, taken), keystore.ErrExists, "the id is still taken")
			// A moved row is adopted in its new zone.
			adopted := moved[0]
			adopted.ZoneKeyVersion, adopted.KEKVersion, adopted.Wrapped = 9, 0, randomBytes(t, 60)
			require.NoError(t, rs.UpdateDEKWrap(ctx, moved[0].ID, 0, moved[0].Wrapped, adopted.Wrapped, 9))
			requireStored(t, s, "after adopting a moved DEK", adopted)
			// Shredding in the target finds the moved rows.
			_, gotIDs, err := ls.ShredSubject(ctx, "us", subject, created())
			require.NoError(t, err)
			require.ElementsMatch(t, append(ids(from), inTarget.ID), gotIDs)
			got, err := ls.ShreddedDEK(ctx, from[1].ID)
			require.NoError(t, err)
			require.Equal(t, "us", got.Zone)
			gotT, err := ls.Tombstone(ctx, "eu", subject)
			require.NoError(t, err)
			requireTombstone(t, want, gotT, "the source's tombstone after a shred in the target")
			// A subject that comes back to the source (by a move: CreateDEK
			// refuses generations up to the tombstone's) and leaves again
			// gets its tombstone's kind and generation merged.
			away := dek(t, "eu3", subject, 1)
			createDEK(t, s, away)
			back := pendingIn(t, "eu", 1, away)
			require.NoError(t, ls.MoveDEKs(ctx, "eu3", back, created()))
			at2 := created()
			require.NoError(t, ls.MoveDEKs(ctx, "eu", pendingIn(t, "eu2", 2, back...), at2))
			gotT, err = ls.Tombstone(ctx, "eu", subject)
			require.NoError(t, err)
			requireTombstone(t, keystore.Tombstone{Zone: "eu", Subject: subject, Kind: keystore.Moved, To: "eu2", Generation: 3, Created: at2}, gotT, "after a second move")
		})
	}
}

func testMoveDEKsRefused(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)
	alice := []keystore.DEKRow{dek(t, "eu", "alice", 1), pendingDEK(t, "eu", "alice", 2)}
	inTarget, bob := dek(t, "us", "alice", 1), dek(t, "eu", "bob", 1)
	for _, row := range append(slices.Clone(alice), inTarget, bob) {
		createDEK(t, s, row)
	}
	mod := func(rows []keystore.DEKRow, i int, f func(r *keystore.DEKRow)) []keystore.DEKRow {
		rows = slices.Clone(rows)
		f(&rows[i])
		return rows
	}
	good := pendingIn(t, "us", 2, alice...)
	stranger := pendingIn(t, "us", 4, dek(t, "eu", "alice", 9))
	asAlice := pendingIn(t, "us", 4, bob)
	asAlice[0].Subject = "alice"
	for _, tc := range []struct {
		name string
		from string
		rows []keystore.DEKRow
		want error
	}{
		{"Conflict/Subset", "eu", good[:1], keystore.ErrConflict},
		{"Conflict/Superset", "eu", append(slices.Clone(good), stranger...), keystore.ErrConflict},
		{"Conflict/OtherSubjectsRow", "eu", append(slices.Clone(good[:1]), asAlice...), keystore.ErrConflict},
		{"Conflict/NoStoredRows", "eu", pendingIn(t, "us", 1, dek(t, "eu", "carol", 1)), keystore.ErrConflict},
		{"Conflict/OtherSource", "eu2", good, keystore.ErrConflict},
		{"Conflict/PrefixSource", "e", good, keystore.ErrConflict},
		{"Exists/FirstRow", "eu", pendingIn(t, "us", 1, alice...), keystore.ErrExists},
		{"Exists/LastRow", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.Generation = 1 }), keystore.ErrExists},
		{"Invalid/Nil", "eu", nil, keystore.ErrInvalidValue},
		{"Invalid/Empty", "eu", []keystore.DEKRow{}, keystore.ErrInvalidValue},
		{"Invalid/SameZone", "eu", pendingIn(t, "eu", 5, alice...), keystore.ErrInvalidValue},
		{"Invalid/MixedZones", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.Zone = "us2" }), keystore.ErrInvalidValue},
		{"Invalid/MixedSubjects", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.Subject = "alice2" }), keystore.ErrInvalidValue},
		{"Invalid/NotPending", "eu", mod(good, 0, func(r *keystore.DEKRow) { r.ZoneKeyVersion, r.KEKVersion = 1, 0 }), keystore.ErrInvalidValue},
		{"Invalid/BothVersions", "eu", mod(good, 0, func(r *keystore.DEKRow) { r.ZoneKeyVersion = 1 }), keystore.ErrInvalidValue},
		{"Invalid/NoVersion", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.KEKVersion = 0 }), keystore.ErrInvalidValue},
		{"Invalid/Generation0", "eu", mod(good, 0, func(r *keystore.DEKRow) { r.Generation = 0 }), keystore.ErrInvalidValue},
		{"Invalid/DuplicateID", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.ID = good[0].ID }), keystore.ErrInvalidValue},
		{"Invalid/DuplicateGeneration", "eu", mod(good, 1, func(r *keystore.DEKRow) { r.Generation = good[0].Generation }), keystore.ErrInvalidValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ls.MoveDEKs(ctx, tc.from, tc.rows, created())
			require.ErrorIs(t, err, tc.want)
			// Nothing was written.
			requireSubjectDEKs(t, ls, "eu", "alice", alice, "after a refused move")
			requireSubjectDEKs(t, ls, "us", "alice", []keystore.DEKRow{inTarget}, "after a refused move")
			requireSubjectDEKs(t, ls, "us2", "alice", nil, "after a refused move")
			requireSubjectDEKs(t, ls, "eu", "alice2", nil, "after a refused move")
			requireStored(t, s, "after a refused move", append(slices.Clone(alice), inTarget, bob)...)
			requireLatest(t, s, alice[1], "after a refused move")
			requireLatest(t, s, bob, "after a refused move")
			for _, zone := range []string{"eu", "eu2", "e", "us"} {
				requireNoTombstone(t, ls, zone, "alice")
			}
		})
	}
	// The store still takes the move.
	require.NoError(t, ls.MoveDEKs(ctx, "eu", good, created()))
	requireStored(t, s, "after the move", good...)
}

func testShredZone(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)
	zk, d, rolling := zoneKey(t, "eu", 1), dek(t, "eu", "alice", 1), dek(t, "eu", "", 1)
	createZoneKey(t, s, zk)
	createDEK(t, s, d)
	createDEK(t, s, rolling)

	at := created()
	tomb, err := ls.ShredZone(ctx, "eu", at)
	require.NoError(t, err)
	want := keystore.Tombstone{Zone: "eu", Kind: keystore.ZoneShredded, Created: at}
	requireTombstone(t, want, tomb, "returned tombstone")
	check := func(s keystore.Store, want keystore.Tombstone, when string) {
		t.Helper()
		ls := lifecycleStore(t, s)
		got, err := ls.Tombstone(ctx, "eu", "")
		require.NoError(t, err, when)
		requireTombstone(t, want, got, "%s: Tombstone(eu, \"\")", when)
		for _, zone := range []string{"eu2", "e", "us"} {
			requireNoTombstone(t, ls, zone, "")
		}
		requireNoTombstone(t, ls, "eu", "alice")
		// No row is deleted.
		gotZK, err := s.ZoneKey(ctx, "eu", 0)
		require.NoError(t, err, when)
		requireZoneKey(t, zk, gotZK, "%s: zone key", when)
		requireStored(t, s, when, d, rolling)
		requireLatest(t, s, d, when)
		requireLatest(t, s, rolling, when)
		requireNotShredded(t, ls, d.ID)
	}
	check(s, want, "after the zone shred")

	// A second shred replaces the tombstone.
	at2 := created()
	tomb, err = ls.ShredZone(ctx, "eu", at2)
	require.NoError(t, err)
	want.Created = at2
	requireTombstone(t, want, tomb, "second tombstone")
	check(s, want, "after a second zone shred")
	s = reopen(t, h, s)
	check(s, want, "after reopening")

	// A zone without rows is shredded all the same.
	got, err := lifecycleStore(t, s).ShredZone(ctx, "empty\x00zone", at)
	require.NoError(t, err)
	requireTombstone(t, keystore.Tombstone{Zone: "empty\x00zone", Kind: keystore.ZoneShredded, Created: at}, got, "zone without rows")
}

// testCreateAfterTombstone: CreateDEK refuses the rows a tombstone forbids
// (Tombstone.Refuses), stores nothing for them, and takes the others.
func testCreateAfterTombstone(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)
	moving := dek(t, "eu", "move", 1)
	for _, r := range []keystore.DEKRow{dek(t, "eu", "shred", 1), dek(t, "eu", "shred", 2), moving, dek(t, "gone", "x", 1)} {
		createDEK(t, s, r)
	}
	_, _, err := ls.ShredSubject(ctx, "eu", "shred", created())
	require.NoError(t, err)
	require.NoError(t, ls.MoveDEKs(ctx, "eu", pendingIn(t, "us", 1, moving), created()))
	_, err = ls.ShredZone(ctx, "gone", created())
	require.NoError(t, err)

	tests := []struct {
		row  keystore.DEKRow
		want error // nil: stored
	}{
		{dek(t, "eu", "shred", 1), keystore.ErrKeyShredded},
		{dek(t, "eu", "shred", 2), keystore.ErrKeyShredded},
		{dek(t, "eu", "shred", 3), nil}, // Reinstate's generation
		{dek(t, "eu", "move", 1), keystore.ErrSubjectMoved},
		{dek(t, "eu", "move", 2), nil},
		{dek(t, "eu", "shredx", 1), nil},
		{dek(t, "eu", "shre", 1), nil},
		{dek(t, "us", "shred", 1), nil},
		{dek(t, "eu", "", 1), nil},
		{dek(t, "gone", "x", 2), keystore.ErrKeyShredded},
		{dek(t, "gone", "new", 1), keystore.ErrKeyShredded},
		{dek(t, "gone", "", 1), keystore.ErrKeyShredded},
		{dek(t, "gon", "x", 1), nil},
		{pendingDEK(t, "gone", "y", 1), keystore.ErrKeyShredded},
	}
	for _, tc := range tests {
		err := s.CreateDEK(ctx, tc.row)
		what := fmt.Sprintf("CreateDEK(zone %q subject %q gen %d)", tc.row.Zone, tc.row.Subject, tc.row.Generation)
		if tc.want == nil {
			require.NoError(t, err, what)
			requireStored(t, s, what, tc.row)
			continue
		}
		require.ErrorIs(t, err, tc.want, what)
		require.NotErrorIs(t, err, keystore.ErrStore, what)
		requireUnknownDEK(t, s, tc.row.ID)
	}
}

func testDeleteZoneKeysBelow(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls, rs := lifecycleStore(t, s), rotationStore(t, s)
	eu := map[uint32]keystore.ZoneKeyRow{}
	for _, v := range []uint32{1, 2, 255, 256, 1 << 31, math.MaxUint32} {
		eu[v] = zoneKey(t, "eu", v)
		createZoneKey(t, s, eu[v])
	}
	others := []keystore.ZoneKeyRow{zoneKey(t, "eu2", 1), zoneKey(t, "e", 1), zoneKey(t, "eu2", 300)}
	for _, zk := range others {
		createZoneKey(t, s, zk)
	}
	d := dek(t, "eu", "alice", 1)
	d.ZoneKeyVersion = 256
	createDEK(t, s, d)
	// DEKs of other zones under low versions do not hold eu's keys.
	createDEK(t, s, dek(t, "eu2", "alice", 1))
	createDEK(t, s, pendingDEK(t, "e", "alice", 1))
	zoneKeys := func(versions ...uint32) []keystore.ZoneKeyRow {
		var out []keystore.ZoneKeyRow
		for _, v := range versions {
			out = append(out, eu[v])
		}
		return out
	}
	requireOthers := func(msg string) {
		t.Helper()
		for _, zk := range others {
			got, err := s.ZoneKey(ctx, zk.Zone, zk.Version)
			require.NoError(t, err, msg)
			requireZoneKey(t, zk, got, msg)
		}
	}

	_, err := ls.DeleteZoneKeysBelow(ctx, "eu", 0)
	require.ErrorIs(t, err, keystore.ErrInvalidValue, "v 0")
	n, err := ls.DeleteZoneKeysBelow(ctx, "eu", 256)
	require.NoError(t, err)
	require.Equal(t, 3, n, "deleted below v256")
	requireZoneKeys(t, rs, "eu", zoneKeys(256, 1<<31, math.MaxUint32), "after deleting below v256")
	requireUnknownZoneKey(t, s, "eu", 1)
	latest, err := s.ZoneKey(ctx, "eu", 0)
	require.NoError(t, err)
	requireZoneKey(t, eu[math.MaxUint32], latest, "latest after deleting")
	requireOthers("after deleting below v256")
	n, err = ls.DeleteZoneKeysBelow(ctx, "eu", 256)
	require.NoError(t, err)
	require.Zero(t, n, "deleting again")
	// A deleted zone key's id is free.
	reuse := zoneKey(t, "us", 1)
	reuse.ID = eu[1].ID
	createZoneKey(t, s, reuse)

	// A DEK under v256 holds it.
	for _, v := range []uint32{257, 1 << 31, math.MaxUint32} {
		_, err = ls.DeleteZoneKeysBelow(ctx, "eu", v)
		require.ErrorIs(t, err, keystore.ErrConflict, "deleting below v%d under a DEK of v256", v)
		requireZoneKeys(t, rs, "eu", zoneKeys(256, 1<<31, math.MaxUint32), "after a refused delete")
	}
	next := d
	next.ZoneKeyVersion, next.Wrapped = 1<<31, randomBytes(t, 60)
	require.NoError(t, rs.UpdateDEKWrap(ctx, d.ID, d.ZoneKeyVersion, d.Wrapped, next.Wrapped, next.ZoneKeyVersion))
	n, err = ls.DeleteZoneKeysBelow(ctx, "eu", 1<<31)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	requireZoneKeys(t, rs, "eu", zoneKeys(1<<31, math.MaxUint32), "after the rewrap and delete")

	// A pending DEK holds every version: it needs the zone's next one.
	p := pendingDEK(t, "eu", "bob", 1)
	createDEK(t, s, p)
	for _, v := range []uint32{1, 1 << 31} {
		_, err = ls.DeleteZoneKeysBelow(ctx, "eu", v)
		require.ErrorIs(t, err, keystore.ErrConflict, "deleting below v%d under a pending DEK", v)
	}
	require.NoError(t, rs.UpdateDEKWrap(ctx, p.ID, 0, p.Wrapped, randomBytes(t, 60), math.MaxUint32))
	_, err = ls.DeleteZoneKeysBelow(ctx, "eu", math.MaxUint32)
	require.ErrorIs(t, err, keystore.ErrConflict, "the first DEK is still under v1<<31")
	require.NoError(t, rs.UpdateDEKWrap(ctx, d.ID, next.ZoneKeyVersion, next.Wrapped, randomBytes(t, 60), math.MaxUint32))
	n, err = ls.DeleteZoneKeysBelow(ctx, "eu", math.MaxUint32)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	requireZoneKeys(t, rs, "eu", zoneKeys(math.MaxUint32), "after adopting and deleting")
	requireOthers("at the end")

	// A zone without keys deletes none.
	n, err = ls.DeleteZoneKeysBelow(ctx, "none", 5)
	require.NoError(t, err)
	require.Zero(t, n)
	s = reopen(t, h, s)
	requireZoneKeys(t, rotationStore(t, s), "eu", zoneKeys(math.MaxUint32), "after reopening")
}

func testEpochs(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)
	_, err := ls.LatestEpoch(ctx, "eu")
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "LatestEpoch of an empty store")

	e1 := keystore.EpochRow{Zone: "eu", Number: 1, Owner: "host/pid-1\x00\xff", Lease: created(), Started: created()}
	require.NoError(t, ls.CreateEpoch(ctx, e1))
	got, err := ls.LatestEpoch(ctx, "eu")
	require.NoError(t, err)
	requireEpoch(t, e1, got, "latest after creating epoch 1")
	require.True(t, got.Finished.IsZero(), "Finished of a running epoch")

	dup := e1
	dup.Owner, dup.KEKVersion = "other", 3
	require.ErrorIs(t, ls.CreateEpoch(ctx, dup), keystore.ErrExists)
	require.ErrorIs(t, ls.CreateEpoch(ctx, keystore.EpochRow{Zone: "eu", Number: 0, Owner: "x"}), keystore.ErrInvalidValue, "number 0")
	got, err = ls.LatestEpoch(ctx, "eu")
	require.NoError(t, err)
	requireEpoch(t, e1, got, "latest after refused creates")

	// Every field round-trips.
	full := keystore.EpochRow{
		Zone: "eu", Number: 2, KEKVersion: math.MaxUint32, ZoneKeyVersion: math.MaxUint32, Owner: strings.Repeat("o", 300),
		Lease: created(), Started: created(), Finished: created(),
	}
	require.NoError(t, ls.CreateEpoch(ctx, full))
	for _, zone := range []string{"eu2", "e", "", "EU", "eu\x00"} {
		_, err := ls.LatestEpoch(ctx, zone)
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "LatestEpoch(%q)", zone)
	}
	// Another zone's epochs are its own.
	other := keystore.EpochRow{Zone: "eu2", Number: 1, Owner: "o2", Started: created()}
	require.NoError(t, ls.CreateEpoch(ctx, other))

	// Epoch reads one by number.
	for _, want := range []keystore.EpochRow{e1, full, other} {
		got, err := ls.Epoch(ctx, want.Zone, want.Number)
		require.NoError(t, err, "Epoch(%q, %d)", want.Zone, want.Number)
		requireEpoch(t, want, got, "Epoch by number")
	}
	for _, missing := range []struct {
		zone string
		n    uint32
	}{{"eu", 3}, {"eu", 0}, {"eu2", 2}, {"e", 1}, {"eu\x00", 1}} {
		_, err := ls.Epoch(ctx, missing.zone, missing.n)
		require.ErrorIs(t, err, keystore.ErrUnknownKey, "Epoch(%q, %d)", missing.zone, missing.n)
	}

	// Times keep microseconds; nanoseconds within one compare equal.
	ns := keystore.EpochRow{Zone: "ns", Number: 1, Owner: "o", Lease: baseTime.Add(789 * time.Nanosecond), Started: time.Date(2025, 1, 2, 3, 4, 5, 999999999, time.UTC)}
	require.NoError(t, ls.CreateEpoch(ctx, ns))
	gotNS, err := ls.LatestEpoch(ctx, "ns")
	require.NoError(t, err)
	requireEpoch(t, ns, gotNS, "epoch with nanoseconds")
	nextNS := ns
	nextNS.Owner = "p"
	require.NoError(t, ls.UpdateEpoch(ctx, ns, nextNS), "an update from the row with nanoseconds, equal to the microsecond")

	s = reopen(t, h, s)
	ls = lifecycleStore(t, s)
	got, err = ls.LatestEpoch(ctx, "eu")
	require.NoError(t, err)
	requireEpoch(t, full, got, "latest after reopening")
	got, err = ls.LatestEpoch(ctx, "eu2")
	require.NoError(t, err)
	requireEpoch(t, other, got, "other zone after reopening")
}

// testEpochOrder checks that the latest epoch is the highest number as an
// unsigned 32-bit number.
func testEpochOrder(t *testing.T, h Harness) {
	s := store(t, h)
	ls := lifecycleStore(t, s)
	var highest uint32
	for _, n := range []uint32{2, 1, 9, 10, 256, 255, 65536, 65535, 1<<31 - 1, 1 << 31, math.MaxUint32 - 1, math.MaxUint32} {
		e := keystore.EpochRow{Zone: "eu", Number: n, Owner: fmt.Sprint("owner-", n), Started: created()}
		require.NoError(t, ls.CreateEpoch(t.Context(), e))
		highest = max(highest, n)
		got, err := ls.LatestEpoch(t.Context(), "eu")
		require.NoError(t, err)
		require.Equal(t, highest, got.Number, "latest after creating epoch %d", n)
		require.Equal(t, fmt.Sprint("owner-", highest), got.Owner)
	}
}

func testUpdateEpoch(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)
	e1 := keystore.EpochRow{Zone: "eu", Number: 1, Owner: "a", Lease: created(), Started: created()}
	e2 := keystore.EpochRow{Zone: "eu", Number: 2, Owner: "b", Lease: created(), Started: created()}
	require.NoError(t, ls.CreateEpoch(ctx, e1))
	require.NoError(t, ls.CreateEpoch(ctx, e2))
	requireLatestEpoch := func(want keystore.EpochRow, msg string) {
		t.Helper()
		got, err := ls.LatestEpoch(ctx, want.Zone)
		require.NoError(t, err, msg)
		requireEpoch(t, want, got, msg)
	}

	// Update the latest, field by field.
	cur := e2
	for _, change := range []func(e *keystore.EpochRow){
		func(e *keystore.EpochRow) { e.KEKVersion = 7 },
		func(e *keystore.EpochRow) { e.ZoneKeyVersion = 4 },
		func(e *keystore.EpochRow) { e.Lease = created() },
		func(e *keystore.EpochRow) { e.Owner = "c\x00" },
		func(e *keystore.EpochRow) { e.Started = created() },
		func(e *keystore.EpochRow) { e.Finished = created() },
		func(e *keystore.EpochRow) { e.Finished = time.Time{} },
	} {
		next := cur
		change(&next)
		require.NoError(t, ls.UpdateEpoch(ctx, cur, next))
		requireLatestEpoch(next, "after an update")
		cur = next
	}

	// A previous value that differs in any field is a conflict.
	for _, tc := range []struct {
		name   string
		change func(e *keystore.EpochRow)
	}{
		{"KEKVersion", func(e *keystore.EpochRow) { e.KEKVersion++ }},
		{"ZoneKeyVersion", func(e *keystore.EpochRow) { e.ZoneKeyVersion = 0 }},
		{"Owner", func(e *keystore.EpochRow) { e.Owner = "c" }},
		{"Lease", func(e *keystore.EpochRow) { e.Lease = e.Lease.Add(time.Microsecond) }},
		{"LeaseZero", func(e *keystore.EpochRow) { e.Lease = time.Time{} }},
		{"Started", func(e *keystore.EpochRow) { e.Started = e.Started.Add(-time.Microsecond) }},
		{"Finished", func(e *keystore.EpochRow) { e.Finished = created() }},
		{"Stale", func(e *keystore.EpochRow) { *e = e2 }},
	} {
		prev := cur
		tc.change(&prev)
		next := prev
		next.Owner = "mallory"
		require.ErrorIs(t, ls.UpdateEpoch(ctx, prev, next), keystore.ErrConflict, "previous value with another %s", tc.name)
		requireLatestEpoch(cur, "after a conflict ("+tc.name+")")
	}

	// The zone and number are the row's key.
	for name, change := range map[string]func(e *keystore.EpochRow){
		"zone":   func(e *keystore.EpochRow) { e.Zone = "eu2" },
		"number": func(e *keystore.EpochRow) { e.Number = 3 },
		"older":  func(e *keystore.EpochRow) { e.Number = 1 },
	} {
		next := cur
		change(&next)
		require.ErrorIs(t, ls.UpdateEpoch(ctx, cur, next), keystore.ErrInvalidValue, "an update to another %s", name)
		requireLatestEpoch(cur, "after an invalid update ("+name+")")
	}
	// A missing row is not created.
	for _, missing := range []keystore.EpochRow{{Zone: "eu", Number: 3}, {Zone: "us", Number: 1}, {Zone: "e", Number: 1}} {
		next := missing
		next.Owner = "x"
		require.ErrorIs(t, ls.UpdateEpoch(ctx, missing, next), keystore.ErrUnknownKey, "update of zone %q epoch %d", missing.Zone, missing.Number)
	}
	requireLatestEpoch(cur, "after updates of missing rows")
	_, err := ls.LatestEpoch(ctx, "us")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	// An older epoch is updated on its own.
	e1next := e1
	e1next.Finished = created()
	require.NoError(t, ls.UpdateEpoch(ctx, e1, e1next))
	requireLatestEpoch(cur, "after updating epoch 1")
	require.ErrorIs(t, ls.UpdateEpoch(ctx, e1, e1next), keystore.ErrConflict, "the same update again")
	s = reopen(t, h, s)
	ls = lifecycleStore(t, s)
	requireLatestEpoch(cur, "after reopening")
	// Epoch 1 kept its update: an update from it succeeds.
	e1last := e1next
	e1last.Owner = "z"
	require.NoError(t, ls.UpdateEpoch(ctx, e1next, e1last))
}

func testLifecycleConcurrent(t *testing.T, h Harness) {
	ctx := t.Context()
	s := store(t, h)
	ls := lifecycleStore(t, s)

	t.Run("ShredSubject", func(t *testing.T) {
		rows := []keystore.DEKRow{dek(t, "eu", "shred", 1), dek(t, "eu", "shred", 2), pendingDEK(t, "eu", "shred", 3)}
		for _, r := range rows {
			createDEK(t, s, r)
		}
		at := make([]time.Time, racers)
		for i := range at {
			at[i] = created()
		}
		results := make([][]envelope.KeyID, racers)
		tombs := make([]keystore.Tombstone, racers)
		errs := race(func(i int) error {
			var err error
			tombs[i], results[i], err = ls.ShredSubject(ctx, "eu", "shred", at[i])
			return err
		})
		w := oneWinnerOf(t, errs, keystore.ErrUnknownKey, "ShredSubject")
		require.ElementsMatch(t, ids(rows), results[w], "the winner shredded every row")
		want := keystore.Tombstone{Zone: "eu", Subject: "shred", Kind: keystore.Shredded, Generation: 3, Created: at[w]}
		requireTombstone(t, want, tombs[w], "the winner's tombstone")
		got, err := ls.Tombstone(ctx, "eu", "shred")
		require.NoError(t, err)
		requireTombstone(t, want, got, "the stored tombstone")
		requireSubjectDEKs(t, ls, "eu", "shred", nil, "after the race")
	})

	t.Run("MoveDEKs", func(t *testing.T) {
		rows := []keystore.DEKRow{dek(t, "eu", "move", 1), dek(t, "eu", "move", 2)}
		for _, r := range rows {
			createDEK(t, s, r)
		}
		moves := make([][]keystore.DEKRow, racers)
		for i := range moves {
			moves[i] = pendingIn(t, "us", 1, rows...)
		}
		errs := race(func(i int) error { return ls.MoveDEKs(ctx, "eu", moves[i], created()) })
		w := oneWinnerOf(t, errs, keystore.ErrConflict, "MoveDEKs")
		requireSubjectDEKs(t, ls, "us", "move", moves[w], "after the race: the winner's rows")
		requireSubjectDEKs(t, ls, "eu", "move", nil, "after the race")
	})

	// A create of the subject's generation 1 (a process that found no
	// DEK and no tombstone a moment ago) racing the shred of another
	// process's generation 1: the create collides with the row before the
	// shred, or is refused after it. It never lands behind the tombstone.
	t.Run("CreateOrShred", func(t *testing.T) {
		for round := range 8 {
			subject := fmt.Sprintf("late-%d", round)
			createDEK(t, s, dek(t, "eu", subject, 1))
			late := dek(t, "eu", subject, 1)
			errs := race(func(i int) error {
				switch i {
				case 0:
					return s.CreateDEK(ctx, late)
				case 1:
					_, _, err := ls.ShredSubject(ctx, "eu", subject, created())
					return err
				}
				return nil
			})
			require.NoError(t, errs[1], "the shred")
			if !errors.Is(errs[0], keystore.ErrExists) {
				require.ErrorIs(t, errs[0], keystore.ErrKeyShredded, "the create")
			}
			requireSubjectDEKs(t, ls, "eu", subject, nil, "after the race")
			requireUnknownDEK(t, s, late.ID)
		}
	})

	t.Run("ShredOrMove", func(t *testing.T) {
		rows := []keystore.DEKRow{dek(t, "eu", "either", 1), pendingDEK(t, "eu", "either", 2)}
		for _, r := range rows {
			createDEK(t, s, r)
		}
		moved := pendingIn(t, "us", 1, rows...)
		errs := race(func(i int) error {
			if i%2 == 0 {
				_, _, err := ls.ShredSubject(ctx, "eu", "either", created())
				return err
			}
			return ls.MoveDEKs(ctx, "eu", moved, created())
		})
		winner := -1
		for i, err := range errs {
			if err == nil {
				require.Equal(t, -1, winner, "calls %d and %d both succeeded", winner, i)
				winner = i
				continue
			}
			if i%2 == 0 {
				require.ErrorIs(t, err, keystore.ErrUnknownKey, "shred %d", i)
			} else {
				require.ErrorIs(t, err, keystore.ErrConflict, "move %d", i)
			}
		}
		require.NotEqual(t, -1, winner, "nothing succeeded")
		tomb, err := ls.Tombstone(ctx, "eu", "either")
		require.NoError(t, err)
		if winner%2 == 0 {
			require.Equal(t, keystore.Shredded, tomb.Kind)
			requireSubjectDEKs(t, ls, "us", "either", nil, "after a shred won")
			for _, r := range rows {
				_, err := ls.ShreddedDEK(ctx, r.ID)
				require.NoError(t, err)
			}
		} else {
			require.Equal(t, keystore.Moved, tomb.Kind)
			requireSubjectDEKs(t, ls, "us", "either", moved, "after a move won")
		}
	})

	t.Run("CreateEpoch", func(t *testing.T) {
		errs := race(func(i int) error {
			return ls.CreateEpoch(ctx, keystore.EpochRow{Zone: "race", Number: 1, Owner: fmt.Sprint("owner-", i), Started: baseTime})
		})
		w := oneWinner(t, errs, "CreateEpoch")
		got, err := ls.LatestEpoch(ctx, "race")
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint("owner-", w), got.Owner)
	})

	t.Run("UpdateEpoch", func(t *testing.T) {
		prev := keystore.EpochRow{Zone: "update", Number: 1, Owner: "first", Lease: created(), Started: created()}
		require.NoError(t, ls.CreateEpoch(ctx, prev))
		nexts := make([]keystore.EpochRow, racers)
		for i := range nexts {
			nexts[i] = prev
			nexts[i].Owner, nexts[i].Lease, nexts[i].KEKVersion = fmt.Sprint("owner-", i), created(), uint32(i+1)
		}
		errs := race(func(i int) error { return ls.UpdateEpoch(ctx, prev, nexts[i]) })
		w := oneWinnerOf(t, errs, keystore.ErrConflict, "UpdateEpoch")
		got, err := ls.LatestEpoch(ctx, "update")
		require.NoError(t, err)
		requireEpoch(t, nexts[w], got, "after the race: the winner's")
	})
}

// lifecycleFixture is the state the cancelled-context and closed-store
// tests start from.
type lifecycleFixture struct {
	zk      keystore.ZoneKeyRow
	rows    []keystore.DEKRow // of (eu, alice)
	moved   []keystore.DEKRow // rows, moved to us
	tomb    keystore.Tombstone
	epoch   keystore.EpochRow
	shredID envelope.KeyID // a shredded DEK of (eu, bob)
}

func setupLifecycle(t *testing.T, s keystore.Store) lifecycleFixture {
	ctx := t.Context()
	ls := lifecycleStore(t, s)
	f := lifecycleFixture{zk: zoneKey(t, "eu", 1), epoch: keystore.EpochRow{Zone: "eu", Number: 1, Owner: "o", Started: created()}}
	createZoneKey(t, s, f.zk)
	f.rows = []keystore.DEKRow{dek(t, "eu", "alice", 1), pendingDEK(t, "eu", "alice", 2)}
	for _, r := range f.rows {
		createDEK(t, s, r)
	}
	f.moved = pendingIn(t, "us", 1, f.rows...)
	bob := dek(t, "eu", "bob", 1)
	createDEK(t, s, bob)
	f.shredID = bob.ID
	var err error
	f.tomb, _, err = ls.ShredSubject(ctx, "eu", "bob", created())
	require.NoError(t, err)
	require.NoError(t, ls.CreateEpoch(ctx, f.epoch))
	return f
}

// lifecycleCall is one call of a LifecycleStore method.
type lifecycleCall struct {
	name string
	call func(ctx context.Context, ls keystore.LifecycleStore) error
}

// calls lists one call of each LifecycleStore method on the fixture's
// rows, for the cancelled-context and closed-store tests. In this order
// they all succeed on the fixture.
func (f lifecycleFixture) calls() []lifecycleCall {
	next := f.epoch
	next.Owner = "next"
	return []lifecycleCall{
		{"SubjectDEKs", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.SubjectDEKs(ctx, "eu", "alice")
			return err
		}},
		{"Tombstone", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.Tombstone(ctx, "eu", "bob")
			return err
		}},
		{"ShreddedDEK", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.ShreddedDEK(ctx, f.shredID)
			return err
		}},
		{"MoveDEKs", func(ctx context.Context, ls keystore.LifecycleStore) error {
			return ls.MoveDEKs(ctx, "eu", f.moved, created())
		}},
		{"ShredSubject", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, _, err := ls.ShredSubject(ctx, "us", "alice", created())
			return err
		}},
		{"DeleteZoneKeysBelow", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.DeleteZoneKeysBelow(ctx, "eu", 2)
			return err
		}},
		{"ShredZone", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.ShredZone(ctx, "eu", created())
			return err
		}},
		{"CreateEpoch", func(ctx context.Context, ls keystore.LifecycleStore) error {
			return ls.CreateEpoch(ctx, keystore.EpochRow{Zone: "eu", Number: 2, Owner: "new"})
		}},
		{"LatestEpoch", func(ctx context.Context, ls keystore.LifecycleStore) error {
			_, err := ls.LatestEpoch(ctx, "eu")
			return err
		}},
		{"UpdateEpoch", func(ctx context.Context, ls keystore.LifecycleStore) error { return ls.UpdateEpoch(ctx, f.epoch, next) }},
	}
}

// requireUntouched checks that s holds the state setupLifecycle made.
func (f lifecycleFixture) requireUntouched(t *testing.T, s keystore.Store, msg string) {
	t.Helper()
	ctx := t.Context()
	ls := lifecycleStore(t, s)
	requireSubjectDEKs(t, ls, "eu", "alice", f.rows, msg)
	requireSubjectDEKs(t, ls, "us", "alice", nil, msg)
	requireNoTombstone(t, ls, "eu", "alice")
	requireNoTombstone(t, ls, "eu", "")
	got, err := ls.Tombstone(ctx, "eu", "bob")
	require.NoError(t, err, msg)
	requireTombstone(t, f.tomb, got, msg)
	got, err = ls.ShreddedDEK(ctx, f.shredID)
	require.NoError(t, err, msg)
	requireTombstone(t, f.tomb, got, msg)
	e, err := ls.LatestEpoch(ctx, "eu")
	require.NoError(t, err, msg)
	requireEpoch(t, f.epoch, e, msg)
	zk, err := s.ZoneKey(ctx, "eu", 1)
	require.NoError(t, err, msg)
	requireZoneKey(t, f.zk, zk, msg)
}

func testLifecycleCancelled(t *testing.T, h Harness) {
	s := store(t, h)
	ls := lifecycleStore(t, s)
	f := setupLifecycle(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, c := range f.calls() {
		require.ErrorIs(t, c.call(ctx, ls), context.Canceled, "%s with a cancelled context", c.name)
	}
	f.requireUntouched(t, s, "after cancelled calls")
	// The store still works.
	for _, c := range f.calls() {
		require.NoError(t, c.call(t.Context(), ls), c.name)
	}
}

func testLifecycleClosed(t *testing.T, h Harness) {
	s := store(t, h)
	ls := lifecycleStore(t, s)
	f := setupLifecycle(t, s)
	require.NoError(t, s.Close())
	for _, c := range f.calls() {
		require.ErrorIs(t, c.call(t.Context(), ls), keystore.ErrClosed, "%s after Close", c.name)
	}
	s = reopen(t, h, s)
	f.requireUntouched(t, s, "after Close and reopen")
}
