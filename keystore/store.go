package keystore

import (
	"context"
	"time"

	"github.com/zonekey/zonekey/envelope"
)

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
