package keystore

import (
	"context"
	"fmt"
	"time"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/internal/errs"
)

// ErrConflict is returned by the compare-and-swap updates of a
// RotationStore when the row no longer holds the values the caller read:
// another process rewrapped it in the meantime. Nothing was written. The
// caller re-reads the row and decides again; the keyring's rotations skip a
// row that is already at the version they were moving it to.
var ErrConflict = errs.Conflict

// ZoneKeyRow is a stored zone key: one version of a zone's key, wrapped by
// the zone's KEK at its custodian.
type ZoneKeyRow struct {
	Zone       string    // custody zone
	Version    uint32    // 1, 2, ... within the zone
	ID         string    // unique id of this zone key, bound into its wrap
	Wrapped    []byte    // the custodian's ciphertext
	KEKVersion uint32    // KEK version that produced Wrapped
	Created    time.Time // creation time (UTC)
}

// DEKRow is a stored data key: wrapped by a version of its zone's key.
type DEKRow struct {
	ID             envelope.KeyID // unique; the only reference a ciphertext holds
	Zone           string         // custody zone
	Subject        string         // data subject, or "" for a zone's rolling DEK
	Generation     uint32         // 1, 2, ... per (zone, subject)
	ZoneKeyVersion uint32         // version of the zone key that wraps it; 0 while pending adoption
	Wrapped        []byte         // nonce || AES-256-GCM ciphertext of the DEK, or the custodian's ciphertext while pending
	Created        time.Time      // creation time (UTC)
	// KEKVersion is 0 for a DEK wrapped by a zone key. A DEK moved into
	// the zone from another one is first wrapped directly by the zone's
	// KEK at its custodian (the process that moved it may not hold the
	// zone's key): ZoneKeyVersion is then 0, Wrapped is the custodian's
	// ciphertext and KEKVersion the KEK version that made it, until a
	// process of the zone adopts the DEK under its zone key
	// (UpdateDEKWrap). Exactly one of ZoneKeyVersion and KEKVersion is
	// non-zero.
	KEKVersion uint32
}

// Pending reports whether the DEK awaits adoption under its zone's key.
func (r DEKRow) Pending() bool { return r.ZoneKeyVersion == 0 && r.KEKVersion != 0 }

// Store persists zone-key and DEK rows. It holds only wrapped key material;
// a Store's content alone opens nothing.
//
// Every implementation must pass keystoretest.RunConformanceTests. Methods
// are safe for concurrent use and honour ctx. A create must be durable when
// it returns nil: the keyring hands out a key only after its row is stored.
//
// Zones, subjects and ids are arbitrary byte strings (a subject may hold NUL
// bytes and invalid UTF-8), kept and compared exactly: a wrap binds the exact
// bytes, so a store that alters them makes the key unopenable. Created is
// kept to at least the microsecond. A create that fails writes nothing.
//
// Errors: ErrUnknownKey for a missing row, ErrExists for a create that
// collides with an existing row, ErrClosed after Close, the context's error
// when ctx is done, ErrInvalidValue for a row the store cannot hold, and
// ErrStore (wrapping the cause) for storage failures.
type Store interface {
	// CreateZoneKey stores a new zone key. It fails with ErrExists if the
	// zone already has that version or a zone key has that ID.
	CreateZoneKey(ctx context.Context, row ZoneKeyRow) error
	// ZoneKey returns the given version of a zone's key; version 0 means
	// the latest (highest) version.
	ZoneKey(ctx context.Context, zone string, version uint32) (ZoneKeyRow, error)

	// CreateDEK stores a new DEK. It fails with ErrExists if its ID, or its
	// (zone, subject, generation), is already stored. The loser of a race
	// reads the winner's row with LatestDEK.
	CreateDEK(ctx context.Context, row DEKRow) error
	// DEK returns the DEK with the given id.
	DEK(ctx context.Context, id envelope.KeyID) (DEKRow, error)
	// DEKs returns the stored DEKs among ids, in no particular order, in
	// one round trip; ids that are not stored are left out.
	DEKs(ctx context.Context, ids []envelope.KeyID) ([]DEKRow, error)
	// LatestDEK returns the DEK of (zone, subject) with the highest
	// generation.
	LatestDEK(ctx context.Context, zone, subject string) (DEKRow, error)

	// Close releases the store. Later calls fail with ErrClosed.
	Close() error
}

// RotationStore is the part of a Store that key rotation needs: listing a
// zone's rows and replacing their wraps with a compare-and-swap. The
// keyring's rotation methods (RotateKEK, RewrapZoneKeys, RetireKEKBelow,
// RotateZoneKey, ZoneKeyStatus) require the Store to implement it; the
// keyring's other methods do not. Package boltstore implements it, and
// keystoretest checks it.
//
// The updates change only the wrap of a row (Wrapped and the version that
// produced it) and never its identity (zone, version, id, subject,
// generation, creation time), so a row keeps its unique keys. They are
// atomic compare-and-swaps: in SQL, one UPDATE ... WHERE with the previous
// values, whose affected-row count tells a conflict from a success.
//
// Errors are those of Store, plus ErrConflict.
type RotationStore interface {
	// ZoneKeys returns every version of a zone's key, by ascending
	// version; an empty slice and no error for a zone that has none.
	ZoneKeys(ctx context.Context, zone string) ([]ZoneKeyRow, error)
	// UpdateZoneKeyWrap sets the Wrapped and KEKVersion of the zone's key
	// version to wrapped and kekVersion if its stored Wrapped equals prev;
	// otherwise it fails with ErrConflict. A missing row is
	// ErrUnknownKey; version or kekVersion 0, or an empty wrapped, is
	// ErrInvalidValue.
	UpdateZoneKeyWrap(ctx context.Context, zone string, version uint32, prev []byte, wrapped []byte, kekVersion uint32) error

	// ScanDEKs returns the DEKs of a zone, limit at most, in an order that
	// is stable for the life of the rows: a scan that runs while rows are
	// updated sees each row of the zone that existed when it started
	// exactly once (rows created during the scan may or may not appear),
	// and no row of another zone. cursor is "" for the first page and then
	// the next of the page before; next is "" after the last page. Only
	// next == "" means the scan is done: a page may hold fewer than limit
	// rows before the end. cursor is opaque to the caller; limit ≤ 0, or a
	// cursor the store cannot have returned, is ErrInvalidValue.
	ScanDEKs(ctx context.Context, zone string, cursor string, limit int) (rows []DEKRow, next string, err error)
	// UpdateDEKWrap sets the Wrapped and ZoneKeyVersion of the DEK id to
	// wrapped and zoneKeyVersion, and its KEKVersion to 0, if its stored
	// ZoneKeyVersion equals prevZoneKeyVersion and its Wrapped equals
	// prevWrapped; otherwise it fails with ErrConflict. A pending row
	// (prevZoneKeyVersion 0) is adopted this way. A missing row is
	// ErrUnknownKey; zoneKeyVersion 0, or an empty wrapped, is
	// ErrInvalidValue.
	UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevZoneKeyVersion uint32, prevWrapped []byte, wrapped []byte, zoneKeyVersion uint32) error
}

// DEKWrapUpdate is one rewrap of a batch (BatchRotationStore): the
// arguments of RotationStore.UpdateDEKWrap for the DEK ID.
type DEKWrapUpdate struct {
	ID                 envelope.KeyID
	PrevZoneKeyVersion uint32
	PrevWrapped        []byte
	Wrapped            []byte
	ZoneKeyVersion     uint32
}

// BatchRotationStore is a RotationStore that applies many DEK rewraps in
// one transaction. A zone-key rotation or an epoch over a large zone then
// commits (and, in the embedded store, syncs to disk) once per page of
// rows instead of once per row. The keyring uses it when the Store has
// it; packages boltstore and postgres implement it, and keystoretest
// checks it.
type BatchRotationStore interface {
	RotationStore
	// UpdateDEKWraps applies each update as UpdateDEKWrap would, all in
	// one transaction, and returns one result per update, in order: nil,
	// or the error UpdateDEKWrap would return for that update alone
	// (ErrConflict, ErrUnknownKey, ErrInvalidValue), which does not stop
	// the others. err is not nil only when the batch as a whole failed
	// (a store error, a cancelled ctx, ErrClosed), and then none of its
	// updates was applied.
	UpdateDEKWraps(ctx context.Context, updates []DEKWrapUpdate) (results []error, err error)
}

// TombstoneKind says why a subject's DEK rows left a zone.
type TombstoneKind uint8

// Tombstone kinds.
const (
	// Shredded: the subject's DEKs were deleted (LifecycleStore.ShredSubject).
	Shredded TombstoneKind = 1
	// Moved: the subject's DEKs went to another zone (LifecycleStore.MoveDEKs).
	Moved TombstoneKind = 2
	// ZoneShredded: the whole zone's KEK was destroyed
	// (LifecycleStore.ShredZone); the tombstone's Subject is "".
	ZoneShredded TombstoneKind = 3
)

// String returns "shredded", "moved" or "zone-shredded".
func (k TombstoneKind) String() string {
	switch k {
	case Shredded:
		return "shredded"
	case Moved:
		return "moved"
	case ZoneShredded:
		return "zone-shredded"
	}
	return fmt.Sprintf("TombstoneKind(%d)", uint8(k))
}

// Tombstone records that a subject's DEK rows left a zone, and why. It holds
// no key material. It tells a shredded or moved subject from one that never
// had a key, and stops the keyring from silently giving a shredded subject a
// new DEK.
type Tombstone struct {
	Zone    string
	Subject string        // "" for a ZoneShredded tombstone
	Kind    TombstoneKind // of the latest removal
	To      string        // Moved: the zone the DEKs went to
	// Generation is the highest generation of the rows removed, over every
	// removal of the subject: a DEK made for the subject afterwards has a
	// higher one.
	Generation uint32
	Created    time.Time // time of the latest removal (UTC)
}

// Refuses returns the error with which a LifecycleStore's CreateDEK refuses
// row when t is a tombstone of row's zone, or nil if t allows the row: a
// ZoneShredded tombstone refuses every row of its zone (ErrKeyShredded);
// the tombstone of row's subject refuses a generation up to its own
// (ErrKeyShredded, or ErrSubjectMoved for Kind Moved), so that only
// Reinstate, which creates the generation after it, gives the subject a
// DEK again.
func (t Tombstone) Refuses(row DEKRow) error {
	switch {
	case t.Kind == 0 || t.Zone != row.Zone:
		return nil
	case t.Kind == ZoneShredded:
		return fmt.Errorf("%w: zone %q was shredded at %s", ErrKeyShredded, t.Zone, t.Created.Format(time.RFC3339))
	case t.Subject != row.Subject || row.Generation > t.Generation:
		return nil
	case t.Kind == Moved:
		return fmt.Errorf("%w: the subject's DEKs up to generation %d moved from zone %q to zone %q at %s",
			ErrSubjectMoved, t.Generation, t.Zone, t.To, t.Created.Format(time.RFC3339))
	}
	return fmt.Errorf("%w: the subject's DEKs of zone %q up to generation %d were shredded at %s",
		ErrKeyShredded, t.Zone, t.Generation, t.Created.Format(time.RFC3339))
}

// EpochRow is the store's record of a zone's key epoch
// (Keyring.Epoch): the state that lets an interrupted epoch be resumed and
// keeps two epochs of one zone from running at once.
type EpochRow struct {
	Zone   string
	Number uint32 // 1, 2, ... within the zone
	// KEKVersion is the first KEK version made for the epoch (0 until it
	// is made): every older version is destroyed when the epoch ends.
	KEKVersion uint32
	// ZoneKeyVersion is the zone-key version made under it (0 until made):
	// every living DEK is rewrapped under it, every older zone-key row
	// deleted.
	ZoneKeyVersion uint32
	Owner          string    // the process running the epoch
	Lease          time.Time // Owner holds the epoch until then
	Started        time.Time
	Finished       time.Time // zero while the epoch runs
}

// LifecycleStore is the part of a Store that shredding, moving subjects and
// key epochs need. The keyring's methods ShredSubject, Reinstate,
// MoveSubject, Epoch and ShredZone require the Store to implement it (and
// RotationStore); the keyring's other methods use it, when present, only to
// tell a shredded key from an unknown one. Package boltstore and package
// postgres implement it, and keystoretest checks it.
//
// Every method is one transaction: it writes all of its effect or nothing.
// Times are kept to at least the microsecond, and compared at that
// precision. Errors are those of Store and RotationStore.
type LifecycleStore interface {
	// ShredSubject deletes every DEK row of (zone, subject), records each
	// deleted id as shredded (ShreddedDEK finds it from then on), and
	// stores the subject's tombstone, replacing an earlier one: Kind
	// Shredded, To "", Generation the highest of the earlier tombstone's
	// and the deleted rows', Created at. It returns the tombstone and the
	// deleted ids. A subject with no DEK row is ErrUnknownKey, and nothing
	// is written.
	//
	// Its CreateDEK also refuses a row that a tombstone of the row's zone
	// forbids (Tombstone.Refuses), with the error Refuses returns, checked
	// in the transaction that would insert the row and serialised with
	// ShredSubject and MoveDEKs of the same subject: a create racing a
	// shred or a move either lands before it (and is shredded or moved
	// with the rest) or is refused after it.
	ShredSubject(ctx context.Context, zone, subject string, at time.Time) (Tombstone, []envelope.KeyID, error)
	// SubjectDEKs returns every DEK row of (zone, subject), by ascending
	// generation; an empty slice and no error for a subject with none.
	SubjectDEKs(ctx context.Context, zone, subject string) ([]DEKRow, error)
	// Tombstone returns the tombstone of (zone, subject), or ErrUnknownKey.
	Tombstone(ctx context.Context, zone, subject string) (Tombstone, error)
	// ShreddedDEK returns the tombstone of the subject whose DEK id was
	// shredded (its current tombstone: it may have been shredded again
	// since), or ErrUnknownKey if id was never shredded.
	ShreddedDEK(ctx context.Context, id envelope.KeyID) (Tombstone, error)
	// MoveDEKs moves every DEK row of (from, subject) into another zone.
	// rows are the rows as they will be stored, one per stored row of
	// (from, subject), matched by ID: each has the stored row's Subject
	// and Created, the target zone (the same for all, not from), a
	// generation of its own in the target, and is pending (ZoneKeyVersion
	// 0, KEKVersion and Wrapped from the target's custodian). If the
	// stored rows of (from, subject) are not exactly rows' ids, the
	// result is ErrConflict; a (zone, subject, generation) already stored
	// in the target is ErrExists; an empty rows, or rows of mixed
	// subjects or target zones, or a target equal to from, is
	// ErrInvalidValue. In all these cases nothing is written. On success
	// the stored rows are replaced (same ids) and (from, subject) gets a
	// tombstone as in ShredSubject but of Kind Moved, To the target zone.
	MoveDEKs(ctx context.Context, from string, rows []DEKRow, at time.Time) error
	// ShredZone stores the tombstone (zone, "") of Kind ZoneShredded,
	// Created at, replacing an earlier one. It deletes no row.
	ShredZone(ctx context.Context, zone string, at time.Time) (Tombstone, error)

	// DeleteZoneKeysBelow deletes the zone-key rows of zone with a version
	// below v and returns how many it deleted. If a DEK row of the zone
	// has a ZoneKeyVersion below v (pending rows included), it fails with
	// ErrConflict and deletes nothing. v 0 is ErrInvalidValue.
	DeleteZoneKeysBelow(ctx context.Context, zone string, v uint32) (int, error)

	// CreateEpoch stores a new epoch row; ErrExists if the zone has one of
	// that Number.
	CreateEpoch(ctx context.Context, e EpochRow) error
	// LatestEpoch returns the zone's epoch row of the highest Number, or
	// ErrUnknownKey if it has none.
	LatestEpoch(ctx context.Context, zone string) (EpochRow, error)
	// Epoch returns the zone's epoch row of the given Number, or
	// ErrUnknownKey if it has none.
	Epoch(ctx context.Context, zone string, number uint32) (EpochRow, error)
	// UpdateEpoch replaces the stored row of (prev.Zone, prev.Number) by
	// next if it equals prev in every field; otherwise ErrConflict. A
	// next of another zone or number is ErrInvalidValue; a missing row
	// ErrUnknownKey.
	UpdateEpoch(ctx context.Context, prev, next EpochRow) error
}
