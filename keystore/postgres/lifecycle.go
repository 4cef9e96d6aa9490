package postgres

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// lifecycleSQL are the statements of the keystore.LifecycleStore methods.
type lifecycleSQL struct {
	sqlSubjectDEKs, sqlShredDEKs, sqlInsertShredded, sqlUpsertTombstone string
	sqlTombstone, sqlShreddedDEK, sqlIsShredded                         string
	sqlLockSubject, sqlMoveDEKs                                         string
	sqlTombstonesOf, sqlSubjectLock, sqlInsertDEKUnlessTombstone        string
	subjectLockSpace                                                    string
	sqlDeleteZoneKeysBelow                                              string
	sqlInsertEpoch, sqlEpoch, sqlLatestEpoch, sqlUpdateEpoch            string
}

const (
	tombstoneCols = "zone, subject, kind, to_zone, generation, created"
	epochCols     = "zone, number, kek_version, zone_key_version, owner, lease, started, finished"
)

func newLifecycleSQL(n names, dekCols string) lifecycleSQL {
	deks, zk := n.mustTable("deks"), n.mustTable("zone_keys")
	shredded, tombs, epochs := n.mustTable("shredded_deks"), n.mustTable("tombstones"), n.mustTable("epochs")
	return lifecycleSQL{
		sqlSubjectDEKs: "SELECT " + dekCols + " FROM " + deks + " WHERE zone = $1 AND subject = $2 ORDER BY generation",
		sqlShredDEKs:   "DELETE FROM " + deks + " WHERE zone = $1 AND subject = $2 RETURNING id, generation",
		sqlInsertShredded: "INSERT INTO " + shredded + " (id, zone, subject) SELECT u.id, $2, $3 FROM unnest($1::bytea[]) AS u(id)" +
			" ON CONFLICT (id) DO UPDATE SET zone = EXCLUDED.zone, subject = EXCLUDED.subject",
		// A tombstone keeps the highest generation of every removal.
		sqlUpsertTombstone: "INSERT INTO " + tombs + " AS t (" + tombstoneCols + ") VALUES ($1, $2, $3, $4, $5, $6)" +
			" ON CONFLICT (zone, subject) DO UPDATE SET kind = EXCLUDED.kind, to_zone = EXCLUDED.to_zone," +
			" generation = GREATEST(t.generation, EXCLUDED.generation), created = EXCLUDED.created RETURNING " + tombstoneCols,
		sqlTombstone: "SELECT " + tombstoneCols + " FROM " + tombs + " WHERE zone = $1 AND subject = $2",
		// The tombstones that can refuse a new DEK of (zone, subject):
		// the subject's and the zone's.
		sqlTombstonesOf: "SELECT " + tombstoneCols + " FROM " + tombs + " WHERE zone = $1 AND (subject = $2 OR subject = ''::bytea)",
		sqlSubjectLock:  "SELECT pg_advisory_xact_lock($1)",
		// keystore.Tombstone.Refuses in SQL: a zone-shredded zone (kind
		// 3, subject ''), or the subject's shred or move (kinds 1 and 2)
		// at or above the row's generation.
		sqlInsertDEKUnlessTombstone: "INSERT INTO " + deks + " (" + dekCols + ")" +
			" SELECT $1::bytea, $2::bytea, $3::bytea, $4::int8, $5::int8, $6::bytea, $7::timestamptz, $8::int8" +
			" WHERE NOT EXISTS (SELECT 1 FROM " + tombs + " AS t WHERE t.zone = $2::bytea AND" +
			" ((t.subject = ''::bytea AND t.kind = 3) OR (t.subject = $3::bytea AND t.kind IN (1, 2) AND t.generation >= $4::int8)))",
		// The lock keys of one store's subjects are apart from those of
		// another store (schema) in the same database.
		subjectLockSpace: "zonekey subject lock " + deks,
		sqlShreddedDEK: "SELECT t.zone, t.subject, t.kind, t.to_zone, t.generation, t.created FROM " + shredded + " AS s JOIN " + tombs +
			" AS t ON t.zone = s.zone AND t.subject = s.subject WHERE s.id = $1",
		sqlIsShredded:  "SELECT EXISTS (SELECT 1 FROM " + shredded + " WHERE id = $1)",
		sqlLockSubject: "SELECT id, generation FROM " + deks + " WHERE zone = $1 AND subject = $2 FOR UPDATE",
		sqlMoveDEKs: "UPDATE " + deks + " AS d SET zone = $1, generation = u.generation, zone_key_version = 0, kek_version = u.kek_version," +
			" wrapped = u.wrapped, created = u.created" +
			" FROM unnest($2::bytea[], $3::int8[], $4::int8[], $5::bytea[], $6::timestamptz[]) AS u(id, generation, kek_version, wrapped, created)" +
			" WHERE d.id = u.id AND d.zone = $7 AND d.subject = $8",
		// One statement, one snapshot: the check and the delete see the
		// same DEK rows.
		sqlDeleteZoneKeysBelow: "WITH blocked AS (SELECT EXISTS (SELECT 1 FROM " + deks + " WHERE zone = $1 AND zone_key_version < $2) AS b)," +
			" deleted AS (DELETE FROM " + zk + " WHERE zone = $1 AND version < $2 AND NOT (SELECT b FROM blocked) RETURNING 1)" +
			" SELECT (SELECT b FROM blocked), (SELECT count(*) FROM deleted)",
		sqlInsertEpoch: "INSERT INTO " + epochs + " (" + epochCols + ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
		sqlEpoch:       "SELECT " + epochCols + " FROM " + epochs + " WHERE zone = $1 AND number = $2",
		sqlLatestEpoch: "SELECT " + epochCols + " FROM " + epochs + " WHERE zone = $1 ORDER BY number DESC LIMIT 1",
		sqlUpdateEpoch: "UPDATE " + epochs + " SET kek_version = $9, zone_key_version = $10, owner = $11, lease = $12, started = $13, finished = $14" +
			" WHERE zone = $1 AND number = $2 AND kek_version = $3 AND zone_key_version = $4 AND owner = $5" +
			" AND lease IS NOT DISTINCT FROM $6::timestamptz AND started IS NOT DISTINCT FROM $7::timestamptz" +
			" AND finished IS NOT DISTINCT FROM $8::timestamptz",
	}
}

// lockSubjects takes, for the rest of tx, the lock of each (zone, subject)
// (zones[i], subject) that CreateDEK, ShredSubject and MoveDEKs hold while
// they check or change the subject's DEK rows and tombstone: a transaction
// advisory lock, which READ COMMITTED needs here because a row lock cannot
// cover a tombstone that does not exist yet. The statements after it see
// everything committed before it was granted. Locks are taken in key order,
// so that two moves cannot deadlock.
func (s *Store) lockSubjects(ctx context.Context, tx pgx.Tx, subject string, zones ...string) error {
	keys := make([]int64, len(zones))
	for i, z := range zones {
		keys[i] = s.subjectLockKey(z, subject)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 && k == keys[i-1] {
			continue
		}
		if _, err := tx.Exec(ctx, s.sqlSubjectLock, k); err != nil {
			return err
		}
	}
	return nil
}

// subjectLockKey is the advisory lock key of (zone, subject) (see
// lockSubjects).
func (s *Store) subjectLockKey(zone, subject string) int64 {
	h := fnv.New64a()
	h.Write([]byte(s.subjectLockSpace))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(zone))))
	h.Write([]byte(zone))
	h.Write([]byte(subject))
	return int64(h.Sum64())
}

// rollbackTimeout bounds the rollback of a failed transaction, which runs
// after the caller's context may have ended.
const rollbackTimeout = 2 * time.Second

// inTx runs fn in a transaction on a pooled connection and commits it if fn
// returns nil; otherwise it rolls it back. Like do, it runs fn once more on
// a fresh connection if the connection is lost: then retry is set, and the
// first attempt may have committed.
func (s *Store) inTx(ctx context.Context, op string, fn func(ctx context.Context, tx pgx.Tx, retry bool) error) error {
	return s.do(ctx, op, func(ctx context.Context, q querier, retry bool) (err error) {
		tx, err := q.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() {
			if err != nil {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
				defer cancel()
				_ = tx.Rollback(rctx)
			}
		}()
		if err = fn(ctx, tx, retry); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
}

// stamp is a time as the store sends it: to the microsecond, which is the
// precision of timestamptz and at which UpdateEpoch compares times.
func stamp(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

// nullTime is the argument of a nullable timestamptz column: NULL for the
// zero time.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return stamp(t)
}

func scanTombstone(r scanner) (keystore.Tombstone, error) {
	var (
		zone, subject, to []byte
		kind              int16
		gen               int64
		created           time.Time
	)
	if err := r.Scan(&zone, &subject, &kind, &to, &gen, &created); err != nil {
		return keystore.Tombstone{}, err
	}
	t := keystore.Tombstone{Zone: string(zone), Subject: string(subject), Kind: keystore.TombstoneKind(kind), To: string(to), Created: created.UTC()}
	var err error
	if t.Generation, err = toUint32("tombstone generation", gen); err != nil {
		return keystore.Tombstone{}, err
	}
	return t, nil
}

func scanEpoch(r scanner) (keystore.EpochRow, error) {
	var (
		zone, owner              []byte
		number, kek, zkv         int64
		lease, started, finished *time.Time
	)
	if err := r.Scan(&zone, &number, &kek, &zkv, &owner, &lease, &started, &finished); err != nil {
		return keystore.EpochRow{}, err
	}
	e := keystore.EpochRow{Zone: string(zone), Owner: string(owner)}
	var err error
	if e.Number, err = toUint32("epoch number", number); err != nil {
		return keystore.EpochRow{}, err
	}
	if e.KEKVersion, err = toUint32("KEK version", kek); err != nil {
		return keystore.EpochRow{}, err
	}
	if e.ZoneKeyVersion, err = toUint32("zone key version", zkv); err != nil {
		return keystore.EpochRow{}, err
	}
	for _, f := range []struct {
		dst *time.Time
		src *time.Time
	}{{&e.Lease, lease}, {&e.Started, started}, {&e.Finished, finished}} {
		if f.src != nil {
			*f.dst = f.src.UTC()
		}
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

// tombstoneArgs are the arguments of sqlUpsertTombstone.
func tombstoneArgs(t keystore.Tombstone) []any {
	return []any{bs(t.Zone), bs(t.Subject), int16(t.Kind), bs(t.To), int64(t.Generation), stamp(t.Created)}
}

// SubjectDEKs implements keystore.LifecycleStore with one query on the
// unique index of (zone, subject, generation).
func (s *Store) SubjectDEKs(ctx context.Context, zone, subject string) ([]keystore.DEKRow, error) {
	out := []keystore.DEKRow{}
	op := fmt.Sprintf("reading the DEKs of a subject of zone %q", zone)
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		rows, err := queryRows(ctx, q, scanDEK, s.sqlSubjectDEKs, bs(zone), bs(subject))
		out = append(out[:0], rows...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ShredSubject implements keystore.LifecycleStore in one transaction: a
// DELETE ... RETURNING of the subject's rows, an INSERT of their ids into
// shredded_deks and an upsert of the tombstone. Of two shreds of a subject
// at once, the second waits for the first's row locks and then finds no
// row: ErrUnknownKey. A shred retried after a lost connection whose first
// attempt committed also ends with ErrUnknownKey.
func (s *Store) ShredSubject(ctx context.Context, zone, subject string, at time.Time) (keystore.Tombstone, []envelope.KeyID, error) {
	var (
		t   keystore.Tombstone
		ids []envelope.KeyID
	)
	op := fmt.Sprintf("shredding a subject of zone %q", zone)
	err := s.inTx(ctx, op, func(ctx context.Context, tx pgx.Tx, _ bool) error {
		if err := s.lockSubjects(ctx, tx, subject, zone); err != nil {
			return err
		}
		type deleted struct {
			id  envelope.KeyID
			gen uint32
		}
		rows, err := queryRows(ctx, tx, func(r scanner) (deleted, error) {
			var (
				id  []byte
				gen int64
			)
			if err := r.Scan(&id, &gen); err != nil {
				return deleted{}, err
			}
			if len(id) != envelope.KeyIDSize {
				return deleted{}, fmt.Errorf("%w: postgres: corrupt row: DEK id of %d bytes", keystore.ErrStore, len(id))
			}
			g, err := toUint32("DEK generation", gen)
			return deleted{envelope.KeyID(id), g}, err
		}, s.sqlShredDEKs, bs(zone), bs(subject))
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return fmt.Errorf("%w: zone %q has no DEK for the subject", keystore.ErrUnknownKey, zone)
		}
		slices.SortFunc(rows, func(a, b deleted) int { return cmp.Compare(a.gen, b.gen) })
		ids = ids[:0]
		arg := make([][]byte, len(rows))
		var gen uint32
		for i, r := range rows {
			ids = append(ids, r.id)
			arg[i] = r.id[:]
			gen = max(gen, r.gen)
		}
		if _, err := tx.Exec(ctx, s.sqlInsertShredded, arg, bs(zone), bs(subject)); err != nil {
			return err
		}
		t, err = scanTombstone(tx.QueryRow(ctx, s.sqlUpsertTombstone,
			tombstoneArgs(keystore.Tombstone{Zone: zone, Subject: subject, Kind: keystore.Shredded, Generation: gen, Created: at})...))
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
	op := fmt.Sprintf("reading a tombstone of zone %q", zone)
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var err error
		t, err = scanTombstone(q.QueryRow(ctx, s.sqlTombstone, bs(zone), bs(subject)))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: zone %q has no tombstone for the subject", keystore.ErrUnknownKey, zone)
		}
		return err
	})
	return t, err
}

// ShreddedDEK implements keystore.LifecycleStore with one query joining
// shredded_deks to tombstones.
func (s *Store) ShreddedDEK(ctx context.Context, id envelope.KeyID) (keystore.Tombstone, error) {
	var t keystore.Tombstone
	err := s.do(ctx, "reading the tombstone of DEK "+id.String(), func(ctx context.Context, q querier, _ bool) error {
		var err error
		t, err = scanTombstone(q.QueryRow(ctx, s.sqlShreddedDEK, id[:]))
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var shredded bool
		if err := q.QueryRow(ctx, s.sqlIsShredded, id[:]).Scan(&shredded); err != nil {
			return err
		}
		if shredded {
			return fmt.Errorf("%w: postgres: shredded DEK %s names a subject without a tombstone", keystore.ErrStore, id)
		}
		return fmt.Errorf("%w: DEK %s was not shredded", keystore.ErrUnknownKey, id)
	})
	return t, err
}

// checkMove refuses the rows of a MoveDEKs the tables cannot take.
func checkMove(from string, rows []keystore.DEKRow) error {
	if len(rows) == 0 {
		return fmt.Errorf("%w: postgres: moving no DEK rows", keystore.ErrInvalidValue)
	}
	to, subject := rows[0].Zone, rows[0].Subject
	if to == from {
		return fmt.Errorf("%w: postgres: moving DEKs of zone %q into the same zone", keystore.ErrInvalidValue, from)
	}
	ids := make(map[envelope.KeyID]bool, len(rows))
	gens := make(map[uint32]bool, len(rows))
	for _, row := range rows {
		switch {
		case row.Zone != to || row.Subject != subject:
			return fmt.Errorf("%w: postgres: moved DEK rows of several target zones or subjects", keystore.ErrInvalidValue)
		case !row.Pending():
			return fmt.Errorf("%w: postgres: moved DEK %s is not pending (zone-key version %d, KEK version %d)",
				keystore.ErrInvalidValue, row.ID, row.ZoneKeyVersion, row.KEKVersion)
		case ids[row.ID]:
			return fmt.Errorf("%w: postgres: DEK %s moved twice", keystore.ErrInvalidValue, row.ID)
		case gens[row.Generation]:
			return fmt.Errorf("%w: postgres: two moved DEKs of generation %d", keystore.ErrInvalidValue, row.Generation)
		}
		ids[row.ID], gens[row.Generation] = true, true
		if err := checkDEK(row); err != nil {
			return err
		}
	}
	if len(from)+len(subject) > MaxKeyBytes {
		return fmt.Errorf("%w: postgres: zone and subject of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(from)+len(subject), MaxKeyBytes)
	}
	return nil
}

// MoveDEKs implements keystore.LifecycleStore in one transaction: it locks
// the subject's rows in from (SELECT ... FOR UPDATE), compares their ids
// with rows', rewrites them with one UPDATE (a unique violation there is a
// generation taken in the target: ErrExists) and upserts the tombstone. Of
// two moves of a subject at once, the second waits for the first's locks
// and then finds no row: ErrConflict. A move retried after a lost
// connection whose first attempt committed finds the rows moved, and
// succeeds.
func (s *Store) MoveDEKs(ctx context.Context, from string, rows []keystore.DEKRow, at time.Time) error {
	op := fmt.Sprintf("moving DEKs from zone %q", from)
	if err := s.check(ctx, op); err != nil {
		return err
	}
	if err := checkMove(from, rows); err != nil {
		return err
	}
	to, subject := rows[0].Zone, rows[0].Subject
	op = fmt.Sprintf("moving DEKs from zone %q to zone %q", from, to)
	var (
		ids     = make([][]byte, len(rows))
		gens    = make([]int64, len(rows))
		keks    = make([]int64, len(rows))
		wrapped = make([][]byte, len(rows))
		created = make([]time.Time, len(rows))
		moving  = make(map[envelope.KeyID]bool, len(rows))
	)
	for i, r := range rows {
		ids[i], gens[i], keks[i], wrapped[i], created[i] = r.ID[:], int64(r.Generation), int64(r.KEKVersion), nonNil(r.Wrapped), r.Created
		moving[r.ID] = true
	}
	return s.inTx(ctx, op, func(ctx context.Context, tx pgx.Tx, retry bool) error {
		if err := s.lockSubjects(ctx, tx, subject, from, to); err != nil {
			return err
		}
		type stored struct {
			id  envelope.KeyID
			gen uint32
		}
		have, err := queryRows(ctx, tx, func(r scanner) (stored, error) {
			var (
				id  []byte
				gen int64
			)
			if err := r.Scan(&id, &gen); err != nil {
				return stored{}, err
			}
			if len(id) != envelope.KeyIDSize {
				return stored{}, fmt.Errorf("%w: postgres: corrupt row: DEK id of %d bytes", keystore.ErrStore, len(id))
			}
			g, err := toUint32("DEK generation", gen)
			return stored{envelope.KeyID(id), g}, err
		}, s.sqlLockSubject, bs(from), bs(subject))
		if err != nil {
			return err
		}
		if len(have) == 0 && retry {
			// The first attempt may have committed the move.
			done, err := queryRows(ctx, tx, scanDEK, s.sqlDEKs, ids)
			if err != nil {
				return err
			}
			if len(done) == len(rows) && !slices.ContainsFunc(rows, func(r keystore.DEKRow) bool {
				return !slices.ContainsFunc(done, func(d keystore.DEKRow) bool { return sameDEK(d, r) })
			}) {
				return nil
			}
		}
		if len(have) != len(rows) || slices.ContainsFunc(have, func(h stored) bool { return !moving[h.id] }) {
			return fmt.Errorf("%w: the DEKs of a subject of zone %q changed: %d stored, %d to move", keystore.ErrConflict, from, len(have), len(rows))
		}
		tag, err := tx.Exec(ctx, s.sqlMoveDEKs, bs(to), ids, gens, keks, wrapped, created, bs(from), bs(subject))
		if err != nil {
			return err
		}
		if tag.RowsAffected() != int64(len(rows)) {
			return fmt.Errorf("%w: postgres: moved %d of %d locked DEK rows", keystore.ErrStore, tag.RowsAffected(), len(rows))
		}
		var gen uint32
		for _, h := range have {
			gen = max(gen, h.gen)
		}
		_, err = tx.Exec(ctx, s.sqlUpsertTombstone,
			tombstoneArgs(keystore.Tombstone{Zone: from, Subject: subject, Kind: keystore.Moved, To: to, Generation: gen, Created: at})...)
		return err
	})
}

// ShredZone implements keystore.LifecycleStore with one upsert.
func (s *Store) ShredZone(ctx context.Context, zone string, at time.Time) (keystore.Tombstone, error) {
	op := fmt.Sprintf("shredding zone %q", zone)
	if err := s.check(ctx, op); err != nil {
		return keystore.Tombstone{}, err
	}
	if len(zone) > MaxKeyBytes {
		return keystore.Tombstone{}, fmt.Errorf("%w: postgres: zone of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(zone), MaxKeyBytes)
	}
	var t keystore.Tombstone
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var err error
		t, err = scanTombstone(q.QueryRow(ctx, s.sqlUpsertTombstone,
			tombstoneArgs(keystore.Tombstone{Zone: zone, Kind: keystore.ZoneShredded, Created: at})...))
		return err
	})
	if err != nil {
		return keystore.Tombstone{}, err
	}
	return t, nil
}

// DeleteZoneKeysBelow implements keystore.LifecycleStore with one
// statement, which checks the zone's DEK rows and deletes the zone keys in
// one snapshot.
func (s *Store) DeleteZoneKeysBelow(ctx context.Context, zone string, v uint32) (int, error) {
	op := fmt.Sprintf("deleting the keys of zone %q below v%d", zone, v)
	if err := s.check(ctx, op); err != nil {
		return 0, err
	}
	if v == 0 {
		return 0, fmt.Errorf("%w: postgres: deleting zone keys below version 0", keystore.ErrInvalidValue)
	}
	var n int64
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var blocked bool
		if err := q.QueryRow(ctx, s.sqlDeleteZoneKeysBelow, bs(zone), int64(v)).Scan(&blocked, &n); err != nil {
			return err
		}
		if blocked {
			return fmt.Errorf("%w: a DEK of zone %q is wrapped under a zone key below v%d, or pending", keystore.ErrConflict, zone, v)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

func epochArgs(e keystore.EpochRow) []any {
	return []any{bs(e.Zone), int64(e.Number), int64(e.KEKVersion), int64(e.ZoneKeyVersion), bs(e.Owner),
		nullTime(e.Lease), nullTime(e.Started), nullTime(e.Finished)}
}

// CreateEpoch implements keystore.LifecycleStore with one INSERT.
func (s *Store) CreateEpoch(ctx context.Context, e keystore.EpochRow) error {
	switch {
	case e.Number == 0:
		return fmt.Errorf("%w: postgres: epoch number must be at least 1", keystore.ErrInvalidValue)
	case len(e.Zone) > MaxKeyBytes:
		return fmt.Errorf("%w: postgres: zone of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(e.Zone), MaxKeyBytes)
	}
	op := fmt.Sprintf("creating epoch %d of zone %q", e.Number, e.Zone)
	return s.create(ctx, op, s.sqlInsertEpoch, epochArgs(e), func(ctx context.Context, q querier) (bool, error) {
		got, err := scanEpoch(q.QueryRow(ctx, s.sqlEpoch, bs(e.Zone), int64(e.Number)))
		return err == nil && sameEpoch(got, e), err
	})
}

// LatestEpoch implements keystore.LifecycleStore.
func (s *Store) LatestEpoch(ctx context.Context, zone string) (keystore.EpochRow, error) {
	var e keystore.EpochRow
	err := s.do(ctx, fmt.Sprintf("reading the latest epoch of zone %q", zone), func(ctx context.Context, q querier, _ bool) error {
		var err error
		e, err = scanEpoch(q.QueryRow(ctx, s.sqlLatestEpoch, bs(zone)))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: zone %q has no key epoch", keystore.ErrUnknownKey, zone)
		}
		return err
	})
	return e, err
}

// Epoch implements keystore.LifecycleStore.
func (s *Store) Epoch(ctx context.Context, zone string, number uint32) (keystore.EpochRow, error) {
	var e keystore.EpochRow
	err := s.do(ctx, fmt.Sprintf("reading epoch %d of zone %q", number, zone), func(ctx context.Context, q querier, _ bool) error {
		var err error
		e, err = scanEpoch(q.QueryRow(ctx, s.sqlEpoch, bs(zone), int64(number)))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: zone %q has no key epoch %d", keystore.ErrUnknownKey, zone, number)
		}
		return err
	})
	return e, err
}

// UpdateEpoch implements keystore.LifecycleStore with one UPDATE whose
// WHERE holds every field of prev.
func (s *Store) UpdateEpoch(ctx context.Context, prev, next keystore.EpochRow) error {
	op := fmt.Sprintf("updating epoch %d of zone %q", prev.Number, prev.Zone)
	if err := s.check(ctx, op); err != nil {
		return err
	}
	if next.Zone != prev.Zone || next.Number != prev.Number {
		return fmt.Errorf("%w: postgres: an epoch update cannot change the zone or number (zone %q epoch %d to zone %q epoch %d)",
			keystore.ErrInvalidValue, prev.Zone, prev.Number, next.Zone, next.Number)
	}
	na := epochArgs(next)
	args := append(epochArgs(prev), na[2:]...)
	return s.compareAndSwap(ctx, op, s.sqlUpdateEpoch, args, func(ctx context.Context, q querier) (bool, error) {
		got, err := scanEpoch(q.QueryRow(ctx, s.sqlEpoch, bs(prev.Zone), int64(prev.Number)))
		if errors.Is(err, pgx.ErrNoRows) {
			return false, fmt.Errorf("%w: zone %q has no epoch %d", keystore.ErrUnknownKey, prev.Zone, prev.Number)
		}
		return err == nil && sameEpoch(got, next), err
	}, func() error {
		return fmt.Errorf("%w: zone %q epoch %d was changed by another process", keystore.ErrConflict, prev.Zone, prev.Number)
	})
}
