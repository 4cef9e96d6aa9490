package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// stamp is a time as the store keeps it: UTC, to the microsecond, which is
// also the precision at which UpdateEpoch compares times.
func stamp(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

// tombstoneKey is the key of (zone, subject) in the tombstones bucket, and
// the value of a DEK id in the shredded bucket.
func tombstoneKey(zone, subject string) []byte { return subjectPrefix(zone, subject) }

func epochKey(zone string, number uint32) []byte {
	return binary.BigEndian.AppendUint32(appendLP(nil, zone), number)
}

// cutLP splits a length-prefixed string off the front of b.
func cutLP(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b)-2 < n {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[2+n:], true
}

type tombstoneJSON struct {
	Zone       []byte    `json:"zone"`
	Subject    []byte    `json:"subject"`
	Kind       uint8     `json:"kind"`
	To         []byte    `json:"to,omitempty"`
	Generation uint32    `json:"generation"`
	Created    time.Time `json:"created"`
}

type epochJSON struct {
	Zone           []byte    `json:"zone"`
	Number         uint32    `json:"number"`
	KEKVersion     uint32    `json:"kek_version"`
	ZoneKeyVersion uint32    `json:"zone_key_version"`
	Owner          []byte    `json:"owner"`
	Lease          time.Time `json:"lease"`
	Started        time.Time `json:"started"`
	Finished       time.Time `json:"finished"`
}

func encodeTombstone(t keystore.Tombstone) ([]byte, error) {
	v, err := json.Marshal(tombstoneJSON{
		Zone: []byte(t.Zone), Subject: []byte(t.Subject), Kind: uint8(t.Kind), To: []byte(t.To),
		Generation: t.Generation, Created: t.Created,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: boltstore: encoding tombstone: %v", keystore.ErrInvalidValue, err)
	}
	return v, nil
}

// decodeTombstone decodes the tombstone stored under (zone, subject).
func decodeTombstone(v []byte, zone, subject string) (keystore.Tombstone, error) {
	var j tombstoneJSON
	if err := json.Unmarshal(v, &j); err != nil {
		return keystore.Tombstone{}, fmt.Errorf("%w: corrupt tombstone: %v", keystore.ErrStore, err)
	}
	t := keystore.Tombstone{
		Zone: string(j.Zone), Subject: string(j.Subject), Kind: keystore.TombstoneKind(j.Kind), To: string(j.To),
		Generation: j.Generation, Created: j.Created,
	}
	if t.Zone != zone || t.Subject != subject {
		return keystore.Tombstone{}, fmt.Errorf("%w: corrupt tombstone: stored under zone %q, holds zone %q", keystore.ErrStore, zone, t.Zone)
	}
	return t, nil
}

func encodeEpoch(e keystore.EpochRow) ([]byte, error) {
	v, err := json.Marshal(epochJSON{
		Zone: []byte(e.Zone), Number: e.Number, KEKVersion: e.KEKVersion, ZoneKeyVersion: e.ZoneKeyVersion,
		Owner: []byte(e.Owner), Lease: stamp(e.Lease), Started: stamp(e.Started), Finished: stamp(e.Finished),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: boltstore: encoding epoch row: %v", keystore.ErrInvalidValue, err)
	}
	return v, nil
}

// decodeEpoch decodes the epoch row stored under (zone, number).
func decodeEpoch(v []byte, zone string, number uint32) (keystore.EpochRow, error) {
	var j epochJSON
	if err := json.Unmarshal(v, &j); err != nil {
		return keystore.EpochRow{}, fmt.Errorf("%w: corrupt epoch row: %v", keystore.ErrStore, err)
	}
	e := keystore.EpochRow{
		Zone: string(j.Zone), Number: j.Number, KEKVersion: j.KEKVersion, ZoneKeyVersion: j.ZoneKeyVersion,
		Owner: string(j.Owner), Lease: stamp(j.Lease), Started: stamp(j.Started), Finished: stamp(j.Finished),
	}
	if e.Zone != zone || e.Number != number {
		return keystore.EpochRow{}, fmt.Errorf("%w: corrupt epoch row: stored under zone %q number %d, holds zone %q number %d",
			keystore.ErrStore, zone, number, e.Zone, e.Number)
	}
	return e, nil
}

// sameEpoch reports whether a and b are equal in every field, their times
// to the microsecond.
func sameEpoch(a, b keystore.EpochRow) bool {
	return a.Zone == b.Zone && a.Number == b.Number && a.KEKVersion == b.KEKVersion && a.ZoneKeyVersion == b.ZoneKeyVersion &&
		a.Owner == b.Owner && stamp(a.Lease).Equal(stamp(b.Lease)) && stamp(a.Started).Equal(stamp(b.Started)) &&
		stamp(a.Finished).Equal(stamp(b.Finished))
}

// subjectRows returns the DEK rows of (zone, subject) by ascending
// generation, and their keys in the subjects bucket.
func subjectRows(tx *bolt.Tx, zone, subject string) ([]keystore.DEKRow, [][]byte, error) {
	prefix := subjectPrefix(zone, subject)
	deks := tx.Bucket(bucketDEKs)
	var (
		rows []keystore.DEKRow
		keys [][]byte
	)
	c := tx.Bucket(bucketSubjects).Cursor()
	for k, id := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
		// The length prefixes make every key under prefix one of
		// (zone, subject), followed by its generation.
		if len(k) != len(prefix)+4 {
			return nil, nil, fmt.Errorf("%w: corrupt subject index: key of %d bytes under a subject of zone %q", keystore.ErrStore, len(k), zone)
		}
		v := deks.Get(id)
		if v == nil {
			return nil, nil, fmt.Errorf("%w: subject index of zone %q names a missing DEK", keystore.ErrStore, zone)
		}
		row, err := decodeDEK(v)
		if err != nil {
			return nil, nil, err
		}
		gen := binary.BigEndian.Uint32(k[len(prefix):])
		if !bytes.Equal(row.ID[:], id) || row.Zone != zone || row.Subject != subject || row.Generation != gen {
			return nil, nil, fmt.Errorf("%w: corrupt subject index: the entry of zone %q generation %d names DEK %s of another subject or generation",
				keystore.ErrStore, zone, gen, row.ID)
		}
		rows = append(rows, row)
		keys = append(keys, bytes.Clone(k))
	}
	return rows, keys, nil
}

// tombstoneRefuses returns the error of the tombstone of row's zone or of
// its subject there that forbids storing row (keystore.Tombstone.Refuses).
func tombstoneRefuses(tx *bolt.Tx, row keystore.DEKRow) error {
	b := tx.Bucket(bucketTombstones)
	for _, subject := range []string{"", row.Subject} {
		v := b.Get(tombstoneKey(row.Zone, subject))
		if v == nil {
			continue
		}
		t, err := decodeTombstone(v, row.Zone, subject)
		if err != nil {
			return err
		}
		if err := t.Refuses(row); err != nil {
			return err
		}
	}
	return nil
}

// putTombstone stores t as the tombstone of (t.Zone, t.Subject), its
// Generation raised to that of the tombstone it replaces, and returns it.
func putTombstone(tx *bolt.Tx, t keystore.Tombstone) (keystore.Tombstone, error) {
	b := tx.Bucket(bucketTombstones)
	k := tombstoneKey(t.Zone, t.Subject)
	if v := b.Get(k); v != nil {
		old, err := decodeTombstone(v, t.Zone, t.Subject)
		if err != nil {
			return keystore.Tombstone{}, err
		}
		t.Generation = max(t.Generation, old.Generation)
	}
	v, err := encodeTombstone(t)
	if err != nil {
		return keystore.Tombstone{}, err
	}
	return t, b.Put(k, v)
}

// SubjectDEKs implements keystore.LifecycleStore.
func (s *Store) SubjectDEKs(ctx context.Context, zone, subject string) ([]keystore.DEKRow, error) {
	rows := []keystore.DEKRow{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		r, _, err := subjectRows(tx, zone, subject)
		rows = append(rows, r...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// ShredSubject implements keystore.LifecycleStore.
func (s *Store) ShredSubject(ctx context.Context, zone, subject string, at time.Time) (keystore.Tombstone, []envelope.KeyID, error) {
	var (
		t   keystore.Tombstone
		ids []envelope.KeyID
	)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		rows, keys, err := subjectRows(tx, zone, subject)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return fmt.Errorf("%w: zone %q has no DEK for the subject", keystore.ErrUnknownKey, zone)
		}
		deks, subs, shredded := tx.Bucket(bucketDEKs), tx.Bucket(bucketSubjects), tx.Bucket(bucketShredded)
		ids = ids[:0]
		var gen uint32
		for i, row := range rows {
			if err := deks.Delete(row.ID[:]); err != nil {
				return err
			}
			if err := subs.Delete(keys[i]); err != nil {
				return err
			}
			if err := shredded.Put(row.ID[:], tombstoneKey(zone, subject)); err != nil {
				return err
			}
			gen = max(gen, row.Generation)
			ids = append(ids, row.ID)
		}
		t, err = putTombstone(tx, keystore.Tombstone{Zone: zone, Subject: subject, Kind: keystore.Shredded, Generation: gen, Created: stamp(at)})
		return err
	})
	if err != nil {
		return keystore.Tombstone{}, nil, err
	}
	return t, ids, nil
}

// Tombstone implements keystore.LifecycleStore.
func (s *Store) Tombstone(ctx context.Context, zone, subject string) (keystore.Tombstone, error) {
	var t keystore.Tombstone
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTombstones).Get(tombstoneKey(zone, subject))
		if v == nil {
			return fmt.Errorf("%w: zone %q has no tombstone for the subject", keystore.ErrUnknownKey, zone)
		}
		var err error
		t, err = decodeTombstone(v, zone, subject)
		return err
	})
	return t, err
}

// ShreddedDEK implements keystore.LifecycleStore.
func (s *Store) ShreddedDEK(ctx context.Context, id envelope.KeyID) (keystore.Tombstone, error) {
	var t keystore.Tombstone
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketShredded).Get(id[:])
		if v == nil {
			return fmt.Errorf("%w: DEK %s was not shredded", keystore.ErrUnknownKey, id)
		}
		zone, rest, ok := cutLP(v)
		subject, rest, ok2 := cutLP(rest)
		if !ok || !ok2 || len(rest) != 0 {
			return fmt.Errorf("%w: corrupt shredded index: the entry of DEK %s", keystore.ErrStore, id)
		}
		tv := tx.Bucket(bucketTombstones).Get(v)
		if tv == nil {
			return fmt.Errorf("%w: shredded DEK %s names a subject of zone %q without a tombstone", keystore.ErrStore, id, zone)
		}
		var err error
		t, err = decodeTombstone(tv, zone, subject)
		return err
	})
	return t, err
}

// checkMove refuses the rows of a MoveDEKs the store cannot take, and
// returns their keys in the subjects bucket.
func checkMove(from string, rows []keystore.DEKRow) ([][]byte, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("%w: boltstore: moving no DEK rows", keystore.ErrInvalidValue)
	}
	to, subject := rows[0].Zone, rows[0].Subject
	if to == from {
		return nil, fmt.Errorf("%w: boltstore: moving DEKs of zone %q into the same zone", keystore.ErrInvalidValue, from)
	}
	if err := checkName("zone", from); err != nil {
		return nil, err
	}
	keys := make([][]byte, 0, len(rows))
	ids := make(map[envelope.KeyID]bool, len(rows))
	gens := make(map[uint32]bool, len(rows))
	for _, row := range rows {
		switch {
		case row.Zone != to || row.Subject != subject:
			return nil, fmt.Errorf("%w: boltstore: moved DEK rows of several target zones or subjects", keystore.ErrInvalidValue)
		case !row.Pending():
			return nil, fmt.Errorf("%w: boltstore: moved DEK %s is not pending (zone-key version %d, KEK version %d)",
				keystore.ErrInvalidValue, row.ID, row.ZoneKeyVersion, row.KEKVersion)
		case ids[row.ID]:
			return nil, fmt.Errorf("%w: boltstore: DEK %s moved twice", keystore.ErrInvalidValue, row.ID)
		case gens[row.Generation]:
			return nil, fmt.Errorf("%w: boltstore: two moved DEKs of generation %d", keystore.ErrInvalidValue, row.Generation)
		}
		ids[row.ID], gens[row.Generation] = true, true
		k, err := checkDEK(row)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// MoveDEKs implements keystore.LifecycleStore.
func (s *Store) MoveDEKs(ctx context.Context, from string, rows []keystore.DEKRow, at time.Time) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	newKeys, err := checkMove(from, rows)
	if err != nil {
		return err
	}
	values := make([][]byte, len(rows))
	for i, row := range rows {
		if values[i], err = encodeDEK(row); err != nil {
			return err
		}
	}
	to, subject := rows[0].Zone, rows[0].Subject
	return s.update(ctx, func(tx *bolt.Tx) error {
		stored, oldKeys, err := subjectRows(tx, from, subject)
		if err != nil {
			return err
		}
		moving := make(map[envelope.KeyID]bool, len(rows))
		for _, row := range rows {
			moving[row.ID] = true
		}
		if len(stored) != len(rows) || slices.ContainsFunc(stored, func(r keystore.DEKRow) bool { return !moving[r.ID] }) {
			return fmt.Errorf("%w: the DEKs of a subject of zone %q changed: %d stored, %d to move", keystore.ErrConflict, from, len(stored), len(rows))
		}
		deks, subs := tx.Bucket(bucketDEKs), tx.Bucket(bucketSubjects)
		for i, k := range newKeys {
			if subs.Get(k) != nil {
				return fmt.Errorf("%w: zone %q subject generation %d", keystore.ErrExists, to, rows[i].Generation)
			}
		}
		var gen uint32
		for i, row := range stored {
			if err := subs.Delete(oldKeys[i]); err != nil {
				return err
			}
			gen = max(gen, row.Generation)
		}
		for i, row := range rows {
			if err := deks.Put(row.ID[:], values[i]); err != nil {
				return err
			}
			if err := subs.Put(newKeys[i], row.ID[:]); err != nil {
				return err
			}
		}
		_, err = putTombstone(tx, keystore.Tombstone{Zone: from, Subject: subject, Kind: keystore.Moved, To: to, Generation: gen, Created: stamp(at)})
		return err
	})
}

// ShredZone implements keystore.LifecycleStore.
func (s *Store) ShredZone(ctx context.Context, zone string, at time.Time) (keystore.Tombstone, error) {
	if err := s.check(ctx); err != nil {
		return keystore.Tombstone{}, err
	}
	if err := checkName("zone", zone); err != nil {
		return keystore.Tombstone{}, err
	}
	if err := checkKey("zone", tombstoneKey(zone, "")); err != nil {
		return keystore.Tombstone{}, err
	}
	var t keystore.Tombstone
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		t, err = putTombstone(tx, keystore.Tombstone{Zone: zone, Kind: keystore.ZoneShredded, Created: stamp(at)})
		return err
	})
	if err != nil {
		return keystore.Tombstone{}, err
	}
	return t, nil
}

// DeleteZoneKeysBelow implements keystore.LifecycleStore. It reads every
// DEK row of the zone.
func (s *Store) DeleteZoneKeysBelow(ctx context.Context, zone string, v uint32) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if v == 0 {
		return 0, fmt.Errorf("%w: boltstore: deleting zone keys below version 0", keystore.ErrInvalidValue)
	}
	if err := checkName("zone", zone); err != nil {
		return 0, err
	}
	var n int
	err := s.update(ctx, func(tx *bolt.Tx) error {
		prefix := appendLP(nil, zone)
		deks := tx.Bucket(bucketDEKs)
		c := tx.Bucket(bucketSubjects).Cursor()
		for k, id := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, id = c.Next() {
			dv := deks.Get(id)
			if dv == nil {
				return fmt.Errorf("%w: subject index of zone %q names a missing DEK", keystore.ErrStore, zone)
			}
			row, err := decodeDEK(dv)
			if err != nil {
				return err
			}
			if row.Zone != zone {
				return fmt.Errorf("%w: corrupt subject index: an entry of zone %q names DEK %s of zone %q", keystore.ErrStore, zone, row.ID, row.Zone)
			}
			if row.ZoneKeyVersion < v {
				return fmt.Errorf("%w: DEK %s of zone %q is wrapped under zone key v%d (0: pending), below v%d", keystore.ErrConflict, row.ID, zone, row.ZoneKeyVersion, v)
			}
		}
		zk, zkIDs := tx.Bucket(bucketZoneKeys), tx.Bucket(bucketZoneKeyIDs)
		var keys, ids [][]byte
		zc := zk.Cursor()
		for k, kv := zc.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, kv = zc.Next() {
			if len(k) != len(prefix)+4 {
				return fmt.Errorf("%w: corrupt zone-key index: key of %d bytes under zone %q", keystore.ErrStore, len(k), zone)
			}
			version := binary.BigEndian.Uint32(k[len(prefix):])
			if version >= v {
				break
			}
			row, err := decodeZoneKey(kv)
			if err != nil {
				return err
			}
			if row.Zone != zone || row.Version != version {
				return fmt.Errorf("%w: corrupt zone-key row: stored under zone %q v%d, holds zone %q v%d", keystore.ErrStore, zone, version, row.Zone, row.Version)
			}
			keys = append(keys, bytes.Clone(k))
			// The id is free again, unless the index says it is another
			// row's.
			if bytes.Equal(zkIDs.Get([]byte(row.ID)), k) {
				ids = append(ids, []byte(row.ID))
			}
		}
		for _, k := range keys {
			if err := zk.Delete(k); err != nil {
				return err
			}
		}
		for _, id := range ids {
			if err := zkIDs.Delete(id); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// CreateEpoch implements keystore.LifecycleStore.
func (s *Store) CreateEpoch(ctx context.Context, e keystore.EpochRow) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if e.Number == 0 {
		return fmt.Errorf("%w: boltstore: epoch number must be at least 1", keystore.ErrInvalidValue)
	}
	if err := checkName("zone", e.Zone); err != nil {
		return err
	}
	k := epochKey(e.Zone, e.Number)
	if err := checkKey("zone", k); err != nil {
		return err
	}
	v, err := encodeEpoch(e)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEpochs)
		if b.Get(k) != nil {
			return fmt.Errorf("%w: zone %q epoch %d", keystore.ErrExists, e.Zone, e.Number)
		}
		return b.Put(k, v)
	})
}

// LatestEpoch implements keystore.LifecycleStore.
func (s *Store) LatestEpoch(ctx context.Context, zone string) (keystore.EpochRow, error) {
	var e keystore.EpochRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		k, v := lastWithPrefix(tx.Bucket(bucketEpochs), appendLP(nil, zone))
		if v == nil {
			return fmt.Errorf("%w: zone %q has no key epoch", keystore.ErrUnknownKey, zone)
		}
		var err error
		e, err = decodeEpoch(v, zone, binary.BigEndian.Uint32(k[len(k)-4:]))
		return err
	})
	return e, err
}

// Epoch implements keystore.LifecycleStore.
func (s *Store) Epoch(ctx context.Context, zone string, number uint32) (keystore.EpochRow, error) {
	var e keystore.EpochRow
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEpochs).Get(epochKey(zone, number))
		if v == nil {
			return fmt.Errorf("%w: zone %q has no key epoch %d", keystore.ErrUnknownKey, zone, number)
		}
		var err error
		e, err = decodeEpoch(v, zone, number)
		return err
	})
	return e, err
}

// UpdateEpoch implements keystore.LifecycleStore.
func (s *Store) UpdateEpoch(ctx context.Context, prev, next keystore.EpochRow) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if next.Zone != prev.Zone || next.Number != prev.Number {
		return fmt.Errorf("%w: boltstore: an epoch update cannot change the zone or number (zone %q epoch %d to zone %q epoch %d)",
			keystore.ErrInvalidValue, prev.Zone, prev.Number, next.Zone, next.Number)
	}
	if err := checkName("zone", prev.Zone); err != nil {
		return err
	}
	v, err := encodeEpoch(next)
	if err != nil {
		return err
	}
	k := epochKey(prev.Zone, prev.Number)
	return s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEpochs)
		old := b.Get(k)
		if old == nil {
			return fmt.Errorf("%w: zone %q has no epoch %d", keystore.ErrUnknownKey, prev.Zone, prev.Number)
		}
		stored, err := decodeEpoch(old, prev.Zone, prev.Number)
		if err != nil {
			return err
		}
		if !sameEpoch(stored, prev) {
			return fmt.Errorf("%w: zone %q epoch %d was changed by another process", keystore.ErrConflict, prev.Zone, prev.Number)
		}
		return b.Put(k, v)
	})
}
