// Package boltstore is the embedded keystore.Store: one bbolt file on local
// disk, for development, single-process services and the quickstart. It
// implements keystore.RotationStore, keystore.BatchRotationStore and
// keystore.LifecycleStore too.
//
// A bbolt file is opened by one process at a time (it takes an exclusive
// file lock); services that run several instances share a keyring through
// the PostgreSQL store instead. Every create is committed with fsync before
// it returns, so a key is durable before anything is encrypted under it.
// Every method is one bbolt transaction: it writes all of its effect or
// nothing.
//
// # File layout
//
// The file holds these buckets (lp(s) is a string prefixed by its length in
// 16 bits, numbers are big-endian):
//
//	meta        "schema" -> the schema version, one byte (3)
//	zonekeys    lp(zone) version(4)               -> zone-key row (JSON)
//	zonekeyids  zone-key id                       -> lp(zone) version(4)
//	deks        DEK id(16)                        -> DEK row (JSON)
//	subjects    lp(zone) lp(subject) generation(4) -> DEK id(16)
//	shredded    DEK id(16)                        -> lp(zone) lp(subject)
//	tombstones  lp(zone) lp(subject)              -> tombstone (JSON)
//	epochs      lp(zone) number(4)                -> epoch row (JSON)
//
// The subjects bucket is the index of a zone's DEKs (ScanDEKs, SubjectDEKs)
// and of a subject's latest one; shredded maps the id of every shredded DEK
// to its subject, whose tombstone ShreddedDEK returns.
//
// Schema version 2 had no shredded, tombstones and epochs buckets, and no
// KEK version in DEK rows (which reads as 0, what every row of version 2
// has). Open upgrades a version-2 file in place: it adds the buckets and
// records version 3, rewriting no row. A build that knows only version 2
// refuses the upgraded file.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

var (
	bucketMeta       = []byte("meta")
	bucketZoneKeys   = []byte("zonekeys")   // lp(zone) ver(4) -> zoneKeyJSON
	bucketZoneKeyIDs = []byte("zonekeyids") // id -> lp(zone) ver(4)
	bucketDEKs       = []byte("deks")       // id(16) -> dekJSON
	bucketSubjects   = []byte("subjects")   // lp(zone) lp(subject) gen(4) -> id(16)
	bucketShredded   = []byte("shredded")   // id(16) -> lp(zone) lp(subject)
	bucketTombstones = []byte("tombstones") // lp(zone) lp(subject) -> tombstoneJSON
	bucketEpochs     = []byte("epochs")     // lp(zone) number(4) -> epochJSON

	allBuckets = [][]byte{bucketMeta, bucketZoneKeys, bucketZoneKeyIDs, bucketDEKs, bucketSubjects, bucketShredded, bucketTombstones, bucketEpochs}

	keySchema = []byte("schema")
	// schemaVersion 3 adds the shredded, tombstones and epochs buckets and
	// the KEK version of pending DEK rows. Version 2 stores zones, subjects
	// and zone-key ids as bytes: version 1 stored them as JSON strings,
	// which replace invalid UTF-8.
	schemaVersion = []byte{3}
	// schemaVersion2 is upgraded in place by Open.
	schemaVersion2 = []byte{2}
)

// Options configures Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock held by another
	// process. Default 2s.
	LockTimeout time.Duration
}

// Store is a keystore.Store in a bbolt file.
type Store struct {
	db     *bolt.DB
	path   string
	closed atomic.Bool
}

var (
	_ keystore.Store              = (*Store)(nil)
	_ keystore.RotationStore      = (*Store)(nil)
	_ keystore.BatchRotationStore = (*Store)(nil)
	_ keystore.LifecycleStore     = (*Store)(nil)
)

// Open opens or creates the keystore file at path (mode 0600, its directory
// 0700 if created). A file of schema version 2 is upgraded to version 3 (see
// the package documentation); a file of any other version is refused with
// keystore.ErrStore.
func Open(path string, opts *Options) (*Store, error) {
	timeout := 2 * time.Second
	if opts != nil && opts.LockTimeout > 0 {
		timeout = opts.LockTimeout
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", keystore.ErrStore, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is locked by another process (the embedded store serves one process at a time; use the PostgreSQL store to share a keyring)", keystore.ErrStore, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: opening %s: %v", keystore.ErrStore, path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		// On a file of another version these are rolled back with the
		// refusal below.
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil, bytes.Equal(v, schemaVersion2):
			// A new file, or the upgrade from version 2: the new
			// buckets are made, and version-2 DEK rows read as they
			// are (KEK version 0).
			return meta.Put(keySchema, schemaVersion)
		case !bytes.Equal(v, schemaVersion):
			return fmt.Errorf("unsupported schema version %v (this build reads %v)", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: initialising %s: %v", keystore.ErrStore, path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path returns the file the store lives in.
func (s *Store) Path() string { return s.path }

// Close closes the file. Later calls fail with keystore.ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("%w: %v", keystore.ErrStore, err)
	}
	return nil
}

func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return keystore.ErrClosed
	}
	return ctx.Err()
}

func (s *Store) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return s.wrapErr(s.db.View(fn))
}

func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return s.wrapErr(s.db.Update(fn))
}

// wrapErr passes the keystore's sentinels through and wraps anything else
// from bbolt as ErrStore.
func (s *Store) wrapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keystore.ErrUnknownKey), errors.Is(err, keystore.ErrExists), errors.Is(err, keystore.ErrTampered),
		errors.Is(err, keystore.ErrStore), errors.Is(err, keystore.ErrInvalidValue), errors.Is(err, keystore.ErrConflict),
		errors.Is(err, keystore.ErrKeyShredded), errors.Is(err, keystore.ErrSubjectMoved):
		return err
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return keystore.ErrClosed
	default:
		return fmt.Errorf("%w: %s: %v", keystore.ErrStore, s.path, err)
	}
}

// maxName bounds zones and subjects: appendLP encodes their length in 16
// bits, and a longer one would make keys ambiguous.
const maxName = 1<<16 - 1

func checkName(what, s string) error {
	if len(s) > maxName {
		return fmt.Errorf("%w: boltstore: %s of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, what, len(s), maxName)
	}
	return nil
}

// checkKey refuses a bucket key that bbolt cannot store.
func checkKey(what string, k []byte) error {
	if len(k) == 0 || len(k) > bolt.MaxKeySize {
		return fmt.Errorf("%w: boltstore: %s must make a key of 1 to %d bytes, not %d", keystore.ErrInvalidValue, what, bolt.MaxKeySize, len(k))
	}
	return nil
}

func appendLP(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func zoneKeyKey(zone string, version uint32) []byte {
	return binary.BigEndian.AppendUint32(appendLP(nil, zone), version)
}

func subjectPrefix(zone, subject string) []byte {
	return appendLP(appendLP(nil, zone), subject)
}

// lastWithPrefix returns the last key/value of b whose key is prefix
// followed by exactly 4 bytes.
func lastWithPrefix(b *bolt.Bucket, prefix []byte) (k, v []byte) {
	c := b.Cursor()
	seek := append(append([]byte(nil), prefix...), 0xff, 0xff, 0xff, 0xff)
	k, v = c.Seek(seek)
	switch {
	case k == nil:
		k, v = c.Last()
	case !bytes.Equal(k, seek):
		k, v = c.Prev()
	}
	if k == nil || len(k) != len(prefix)+4 || !bytes.HasPrefix(k, prefix) {
		return nil, nil
	}
	return k, v
}

// Rows are JSON. Zones, subjects and ids are arbitrary byte strings, and a
// JSON string would replace invalid UTF-8 in them (making a wrapped key
// unopenable, since its wrap binds the exact bytes), so they are encoded as
// []byte (base64).

type zoneKeyJSON struct {
	Zone       []byte    `json:"zone"`
	Version    uint32    `json:"version"`
	ID         []byte    `json:"id"`
	Wrapped    []byte    `json:"wrapped"`
	KEKVersion uint32    `json:"kek_version"`
	Created    time.Time `json:"created"`
}

type dekJSON struct {
	ID             string    `json:"id"`
	Zone           []byte    `json:"zone"`
	Subject        []byte    `json:"subject"`
	Generation     uint32    `json:"generation"`
	ZoneKeyVersion uint32    `json:"zone_key_version"`
	Wrapped        []byte    `json:"wrapped"`
	Created        time.Time `json:"created"`
	// KEKVersion is that of a pending row; absent (0) otherwise, and in
	// every row of schema version 2.
	KEKVersion uint32 `json:"kek_version,omitempty"`
}

func encodeZoneKey(r keystore.ZoneKeyRow) ([]byte, error) {
	v, err := json.Marshal(zoneKeyJSON{
		Zone: []byte(r.Zone), Version: r.Version, ID: []byte(r.ID),
		Wrapped: r.Wrapped, KEKVersion: r.KEKVersion, Created: r.Created,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: boltstore: encoding zone-key row: %v", keystore.ErrInvalidValue, err)
	}
	return v, nil
}

func decodeZoneKey(v []byte) (keystore.ZoneKeyRow, error) {
	var j zoneKeyJSON
	if err := json.Unmarshal(v, &j); err != nil {
		return keystore.ZoneKeyRow{}, fmt.Errorf("%w: corrupt zone-key row: %v", keystore.ErrStore, err)
	}
	return keystore.ZoneKeyRow{
		Zone: string(j.Zone), Version: j.Version, ID: string(j.ID),
		Wrapped: j.Wrapped, KEKVersion: j.KEKVersion, Created: j.Created,
	}, nil
}

func encodeDEK(r keystore.DEKRow) ([]byte, error) {
	v, err := json.Marshal(dekJSON{
		ID: r.ID.String(), Zone: []byte(r.Zone), Subject: []byte(r.Subject), Generation: r.Generation,
		ZoneKeyVersion: r.ZoneKeyVersion, Wrapped: r.Wrapped, Created: r.Created, KEKVersion: r.KEKVersion,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: boltstore: encoding DEK row: %v", keystore.ErrInvalidValue, err)
	}
	return v, nil
}

func decodeDEK(v []byte) (keystore.DEKRow, error) {
	var j dekJSON
	if err := json.Unmarshal(v, &j); err != nil {
		return keystore.DEKRow{}, fmt.Errorf("%w: corrupt DEK row: %v", keystore.ErrStore, err)
	}
	id, err := envelope.ParseKeyID(j.ID)
	if err != nil {
		return keystore.DEKRow{}, fmt.Errorf("%w: corrupt DEK row: %v", keystore.ErrStore, err)
	}
	return keystore.DEKRow{
		ID: id, Zone: string(j.Zone), Subject: string(j.Subject), Generation: j.Generation,
		ZoneKeyVersion: j.ZoneKeyVersion, Wrapped: j.Wrapped, Created: j.Created, KEKVersion: j.KEKVersion,
	}, nil
}

// CreateZoneKey implements keystore.Store.
func (s *Store) CreateZoneKey(ctx context.Context, row keystore.ZoneKeyRow) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if row.Version == 0 {
		return fmt.Errorf("%w: boltstore: zone key version must be at least 1", keystore.ErrInvalidValue)
	}
	if err := checkName("zone", row.Zone); err != nil {
		return err
	}
	k := zoneKeyKey(row.Zone, row.Version)
	if err := checkKey("zone", k); err != nil {
		return err
	}
	if err := checkKey("zone key id", []byte(row.ID)); err != nil {
		return err
	}
	v, err := encodeZoneKey(row)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		zk, ids := tx.Bucket(bucketZoneKeys), tx.Bucket(bucketZoneKeyIDs)
		if zk.Get(k) != nil {
			return fmt.Errorf("%w: zone %q key v%d", keystore.ErrExists, row.Zone, row.Version)
		}
		if ids.Get([]byte(row.ID)) != nil {
			return fmt.Errorf("%w: zone key id %s", keystore.ErrExists, row.ID)
		}
		if err := zk.Put(k, v); err != nil {
			return err
		}
		return ids.Put([]byte(row.ID), k)
	})
}

// ZoneKey implements keystore.Store.
func (s *Store) ZoneKey(ctx context.Context, zone string, version uint32) (keystore.ZoneKeyRow, error) {
	var row keystore.ZoneKeyRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketZoneKeys)
		var v []byte
		if version == 0 {
			_, v = lastWithPrefix(b, appendLP(nil, zone))
		} else {
			v = b.Get(zoneKeyKey(zone, version))
		}
		if v == nil {
			return fmt.Errorf("%w: zone %q has no key v%d", keystore.ErrUnknownKey, zone, version)
		}
		var err error
		row, err = decodeZoneKey(v)
		if err == nil && (row.Zone != zone || version != 0 && row.Version != version) {
			return fmt.Errorf("%w: corrupt zone-key row: stored under zone %q v%d, holds zone %q v%d", keystore.ErrStore, zone, version, row.Zone, row.Version)
		}
		return err
	})
	return row, err
}

// CreateDEK implements keystore.Store.
func (s *Store) CreateDEK(ctx context.Context, row keystore.DEKRow) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	sk, err := checkDEK(row)
	if err != nil {
		return err
	}
	v, err := encodeDEK(row)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		// In the insert's transaction: a shred or move of the subject
		// (one transaction too) is wholly before or after it.
		if err := tombstoneRefuses(tx, row); err != nil {
			return err
		}
		deks, subs := tx.Bucket(bucketDEKs), tx.Bucket(bucketSubjects)
		if subs.Get(sk) != nil {
			return fmt.Errorf("%w: zone %q subject generation %d", keystore.ErrExists, row.Zone, row.Generation)
		}
		if deks.Get(row.ID[:]) != nil {
			return fmt.Errorf("%w: DEK %s", keystore.ErrExists, row.ID)
		}
		if err := deks.Put(row.ID[:], v); err != nil {
			return err
		}
		return subs.Put(sk, row.ID[:])
	})
}

// checkDEK refuses a DEK row the store cannot hold, and returns its key in
// the subjects bucket.
func checkDEK(row keystore.DEKRow) ([]byte, error) {
	if row.Generation == 0 {
		return nil, fmt.Errorf("%w: boltstore: DEK generation must be at least 1", keystore.ErrInvalidValue)
	}
	if (row.ZoneKeyVersion == 0) == (row.KEKVersion == 0) {
		return nil, fmt.Errorf("%w: boltstore: a DEK row has either a zone-key version or, pending, a KEK version (got %d and %d)",
			keystore.ErrInvalidValue, row.ZoneKeyVersion, row.KEKVersion)
	}
	if err := checkName("zone", row.Zone); err != nil {
		return nil, err
	}
	if err := checkName("subject", row.Subject); err != nil {
		return nil, err
	}
	sk := binary.BigEndian.AppendUint32(subjectPrefix(row.Zone, row.Subject), row.Generation)
	if err := checkKey("zone and subject", sk); err != nil {
		return nil, err
	}
	return sk, nil
}

// DEK implements keystore.Store.
func (s *Store) DEK(ctx context.Context, id envelope.KeyID) (keystore.DEKRow, error) {
	var row keystore.DEKRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDEKs).Get(id[:])
		if v == nil {
			return fmt.Errorf("%w: DEK %s", keystore.ErrUnknownKey, id)
		}
		var err error
		row, err = decodeDEK(v)
		if err == nil && row.ID != id {
			return fmt.Errorf("%w: corrupt DEK row: stored under id %s, holds DEK %s", keystore.ErrStore, id, row.ID)
		}
		return err
	})
	return row, err
}

// DEKs implements keystore.Store.
func (s *Store) DEKs(ctx context.Context, ids []envelope.KeyID) ([]keystore.DEKRow, error) {
	var rows []keystore.DEKRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDEKs)
		seen := make(map[envelope.KeyID]struct{}, len(ids))
		for _, id := range ids {
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			v := b.Get(id[:])
			if v == nil {
				continue
			}
			row, err := decodeDEK(v)
			if err == nil && row.ID != id {
				err = fmt.Errorf("%w: corrupt DEK row: stored under id %s, holds DEK %s", keystore.ErrStore, id, row.ID)
			}
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
		return nil
	})
	return rows, err
}

// LatestDEK implements keystore.Store.
func (s *Store) LatestDEK(ctx context.Context, zone, subject string) (keystore.DEKRow, error) {
	var row keystore.DEKRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k, id := lastWithPrefix(tx.Bucket(bucketSubjects), subjectPrefix(zone, subject))
		if id == nil {
			return fmt.Errorf("%w: zone %q has no DEK for the subject", keystore.ErrUnknownKey, zone)
		}
		v := tx.Bucket(bucketDEKs).Get(id)
		if v == nil {
			return fmt.Errorf("%w: subject index names a missing DEK", keystore.ErrStore)
		}
		var err error
		row, err = decodeDEK(v)
		if err != nil {
			return err
		}
		gen := binary.BigEndian.Uint32(k[len(k)-4:])
		if !bytes.Equal(row.ID[:], id) || row.Zone != zone || row.Subject != subject || row.Generation != gen {
			return fmt.Errorf("%w: corrupt subject index: the entry of zone %q generation %d names DEK %s of another subject or generation", keystore.ErrStore, zone, gen, row.ID)
		}
		return nil
	})
	return row, err
}

// ZoneKeys implements keystore.RotationStore.
func (s *Store) ZoneKeys(ctx context.Context, zone string) ([]keystore.ZoneKeyRow, error) {
	if err := checkName("zone", zone); err != nil {
		return nil, err
	}
	rows := []keystore.ZoneKeyRow{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		prefix := appendLP(nil, zone)
		c := tx.Bucket(bucketZoneKeys).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(k) != len(prefix)+4 {
				return fmt.Errorf("%w: corrupt zone-key index: key of %d bytes under zone %q", keystore.ErrStore, len(k), zone)
			}
			row, err := decodeZoneKey(v)
			if err != nil {
				return err
			}
			if version := binary.BigEndian.Uint32(k[len(prefix):]); row.Zone != zone || row.Version != version {
				return fmt.Errorf("%w: corrupt zone-key row: stored under zone %q v%d, holds zone %q v%d", keystore.ErrStore, zone, version, row.Zone, row.Version)
			}
			rows = append(rows, row)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// UpdateZoneKeyWrap implements keystore.RotationStore.
func (s *Store) UpdateZoneKeyWrap(ctx context.Context, zone string, version uint32, prev []byte, wrapped []byte, kekVersion uint32) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if version == 0 || kekVersion == 0 || len(wrapped) == 0 {
		return fmt.Errorf("%w: boltstore: a zone-key rewrap needs a version, a KEK version and a wrapped key", keystore.ErrInvalidValue)
	}
	if err := checkName("zone", zone); err != nil {
		return err
	}
	k := zoneKeyKey(zone, version)
	return s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketZoneKeys)
		v := b.Get(k)
		if v == nil {
			return fmt.Errorf("%w: zone %q has no key v%d", keystore.ErrUnknownKey, zone, version)
		}
		row, err := decodeZoneKey(v)
		if err != nil {
			return err
		}
		if row.Zone != zone || row.Version != version {
			return fmt.Errorf("%w: corrupt zone-key row: stored under zone %q v%d, holds zone %q v%d", keystore.ErrStore, zone, version, row.Zone, row.Version)
		}
		if !bytes.Equal(row.Wrapped, prev) {
			return fmt.Errorf("%w: zone %q key v%d was rewrapped by another process", keystore.ErrConflict, zone, version)
		}
		row.Wrapped, row.KEKVersion = wrapped, kekVersion
		nv, err := encodeZoneKey(row)
		if err != nil {
			return err
		}
		return b.Put(k, nv)
	})
}

// ScanDEKs implements keystore.RotationStore. It walks the subject index of
// the zone, which rewraps do not change; the cursor is the hex of the last
// index key returned.
func (s *Store) ScanDEKs(ctx context.Context, zone string, cursor string, limit int) ([]keystore.DEKRow, string, error) {
	if err := s.check(ctx); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		return nil, "", fmt.Errorf("%w: boltstore: scan limit %d, want at least 1", keystore.ErrInvalidValue, limit)
	}
	if err := checkName("zone", zone); err != nil {
		return nil, "", err
	}
	prefix := appendLP(nil, zone)
	var after []byte
	if cursor != "" {
		var err error
		after, err = hex.DecodeString(cursor)
		if err != nil || len(after) <= len(prefix) || !bytes.HasPrefix(after, prefix) {
			return nil, "", fmt.Errorf("%w: boltstore: %q is not a scan cursor of zone %q", keystore.ErrInvalidValue, cursor, zone)
		}
	}
	var rows []keystore.DEKRow
	var next string
	err := s.view(ctx, func(tx *bolt.Tx) error {
		c, deks := tx.Bucket(bucketSubjects).Cursor(), tx.Bucket(bucketDEKs)
		k, id := c.Seek(prefix)
		if after != nil {
			k, id = c.Seek(after)
			if bytes.Equal(k, after) {
				k, id = c.Next()
			}
		}
		var last []byte
		for ; k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			if len(rows) == limit {
				next = hex.EncodeToString(last)
				return nil
			}
			v := deks.Get(id)
			if v == nil {
				return fmt.Errorf("%w: subject index of zone %q names a missing DEK", keystore.ErrStore, zone)
			}
			row, err := decodeDEK(v)
			if err != nil {
				return err
			}
			if !bytes.Equal(row.ID[:], id) || row.Zone != zone {
				return fmt.Errorf("%w: corrupt subject index: an entry of zone %q names DEK %s of zone %q", keystore.ErrStore, zone, row.ID, row.Zone)
			}
			rows = append(rows, row)
			last = k
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return rows, next, nil
}

// UpdateDEKWrap implements keystore.RotationStore. It adopts a pending row
// (prevZoneKeyVersion 0) the same way, clearing its KEK version.
func (s *Store) UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevZoneKeyVersion uint32, prevWrapped []byte, wrapped []byte, zoneKeyVersion uint32) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	u := keystore.DEKWrapUpdate{ID: id, PrevZoneKeyVersion: prevZoneKeyVersion, PrevWrapped: prevWrapped, Wrapped: wrapped, ZoneKeyVersion: zoneKeyVersion}
	if err := checkRewrap(u); err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error { return rewrapDEK(tx.Bucket(bucketDEKs), u) })
}

// UpdateDEKWraps implements keystore.BatchRotationStore: the updates in one
// transaction, one disk sync.
func (s *Store) UpdateDEKWraps(ctx context.Context, updates []keystore.DEKWrapUpdate) ([]error, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	results := make([]error, len(updates))
	err := s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDEKs)
		for i, u := range updates {
			if results[i] = checkRewrap(u); results[i] != nil {
				continue
			}
			err := rewrapDEK(b, u)
			if errors.Is(err, keystore.ErrConflict) || errors.Is(err, keystore.ErrUnknownKey) {
				results[i] = err
				continue
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

func checkRewrap(u keystore.DEKWrapUpdate) error {
	if u.ZoneKeyVersion == 0 || len(u.Wrapped) == 0 {
		return fmt.Errorf("%w: boltstore: a DEK rewrap needs a zone-key version and a wrapped key", keystore.ErrInvalidValue)
	}
	return nil
}

// rewrapDEK applies u to the DEK bucket b.
func rewrapDEK(b *bolt.Bucket, u keystore.DEKWrapUpdate) error {
	id := u.ID
	v := b.Get(id[:])
	if v == nil {
		return fmt.Errorf("%w: DEK %s", keystore.ErrUnknownKey, id)
	}
	row, err := decodeDEK(v)
	if err != nil {
		return err
	}
	if row.ID != id {
		return fmt.Errorf("%w: corrupt DEK row: stored under id %s, holds DEK %s", keystore.ErrStore, id, row.ID)
	}
	if row.ZoneKeyVersion != u.PrevZoneKeyVersion || !bytes.Equal(row.Wrapped, u.PrevWrapped) {
		return fmt.Errorf("%w: DEK %s was rewrapped by another process", keystore.ErrConflict, id)
	}
	row.Wrapped, row.ZoneKeyVersion, row.KEKVersion = u.Wrapped, u.ZoneKeyVersion, 0
	nv, err := encodeDEK(row)
	if err != nil {
		return err
	}
	return b.Put(id[:], nv)
}
