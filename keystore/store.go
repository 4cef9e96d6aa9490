package keystore

import (
	"context"
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
	ZoneKeyVersion uint32         // version of the zone key that wraps it
	Wrapped        []byte         // nonce || AES-256-GCM ciphertext of the DEK
	Created        time.Time      // creation time (UTC)
}

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
	// wrapped and zoneKeyVersion if its stored ZoneKeyVersion equals
	// prevZoneKeyVersion and its Wrapped equals prevWrapped; otherwise it
	// fails with ErrConflict. A missing row is ErrUnknownKey;
	// zoneKeyVersion 0, or an empty wrapped, is ErrInvalidValue.
	UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevZoneKeyVersion uint32, prevWrapped []byte, wrapped []byte, zoneKeyVersion uint32) error
}
