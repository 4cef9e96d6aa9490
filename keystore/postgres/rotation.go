package postgres

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// MaxScanPage bounds the rows of one ScanDEKs page: a larger limit returns
// pages of at most MaxScanPage rows, and a cursor for the rest.
const MaxScanPage = 10000

// ZoneKeys implements keystore.RotationStore with one query on the primary
// key, WHERE zone = $1 ORDER BY version.
func (s *Store) ZoneKeys(ctx context.Context, zone string) ([]keystore.ZoneKeyRow, error) {
	out := []keystore.ZoneKeyRow{}
	err := s.do(ctx, fmt.Sprintf("reading the keys of zone %q", zone), func(ctx context.Context, q querier, _ bool) error {
		rows, err := queryRows(ctx, q, scanZoneKey, s.sqlZoneKeys, bs(zone))
		out = append(out[:0], rows...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdateZoneKeyWrap implements keystore.RotationStore with one UPDATE whose
// WHERE holds the previous wrap.
func (s *Store) UpdateZoneKeyWrap(ctx context.Context, zone string, version uint32, prev []byte, wrapped []byte, kekVersion uint32) error {
	op := fmt.Sprintf("rewrapping zone %q key v%d", zone, version)
	if err := s.check(ctx, op); err != nil {
		return err
	}
	if version == 0 || kekVersion == 0 || len(wrapped) == 0 {
		return fmt.Errorf("%w: postgres: a zone-key rewrap needs a version, a KEK version and a wrapped key", keystore.ErrInvalidValue)
	}
	args := []any{bs(zone), int64(version), nonNil(prev), wrapped, int64(kekVersion)}
	return s.compareAndSwap(ctx, op, s.sqlUpdateZoneKeyWrap, args, func(ctx context.Context, q querier) (bool, error) {
		var (
			got []byte
			kek int64
		)
		if err := q.QueryRow(ctx, s.sqlZoneKeyWrap, bs(zone), int64(version)).Scan(&got, &kek); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return false, fmt.Errorf("%w: zone %q has no key v%d", keystore.ErrUnknownKey, zone, version)
			}
			return false, err
		}
		return bytes.Equal(got, wrapped) && kek == int64(kekVersion), nil
	}, func() error {
		return fmt.Errorf("%w: zone %q key v%d was rewrapped by another process", keystore.ErrConflict, zone, version)
	})
}

// UpdateDEKWrap implements keystore.RotationStore with one UPDATE whose
// WHERE holds the previous wrap. It adopts a pending row (prevZoneKeyVersion
// 0) the same way, setting its kek_version to 0.
func (s *Store) UpdateDEKWrap(ctx context.Context, id envelope.KeyID, prevZoneKeyVersion uint32, prevWrapped []byte, wrapped []byte, zoneKeyVersion uint32) error {
	op := "rewrapping DEK " + id.String()
	if err := s.check(ctx, op); err != nil {
		return err
	}
	if zoneKeyVersion == 0 || len(wrapped) == 0 {
		return fmt.Errorf("%w: postgres: a DEK rewrap needs a zone-key version and a wrapped key", keystore.ErrInvalidValue)
	}
	args := []any{id[:], int64(prevZoneKeyVersion), nonNil(prevWrapped), wrapped, int64(zoneKeyVersion)}
	return s.compareAndSwap(ctx, op, s.sqlUpdateDEKWrap, args, func(ctx context.Context, q querier) (bool, error) {
		var (
			got      []byte
			zkv, kek int64
		)
		if err := q.QueryRow(ctx, s.sqlDEKWrap, id[:]).Scan(&got, &zkv, &kek); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return false, fmt.Errorf("%w: DEK %s", keystore.ErrUnknownKey, id)
			}
			return false, err
		}
		return bytes.Equal(got, wrapped) && zkv == int64(zoneKeyVersion) && kek == 0, nil
	}, func() error {
		return fmt.Errorf("%w: DEK %s was rewrapped by another process", keystore.ErrConflict, id)
	})
}

// UpdateDEKWraps implements keystore.BatchRotationStore: the updates are
// sent as one pipelined batch in one transaction, then the rows of those
// that updated nothing are read to tell a missing row from a conflict, or,
// after a lost connection, from an update the first attempt committed.
func (s *Store) UpdateDEKWraps(ctx context.Context, updates []keystore.DEKWrapUpdate) ([]error, error) {
	op := fmt.Sprintf("rewrapping %d DEKs", len(updates))
	if err := s.check(ctx, op); err != nil {
		return nil, err
	}
	results := make([]error, len(updates))
	var valid []int
	for i, u := range updates {
		if u.ZoneKeyVersion == 0 || len(u.Wrapped) == 0 {
			results[i] = fmt.Errorf("%w: postgres: a DEK rewrap needs a zone-key version and a wrapped key", keystore.ErrInvalidValue)
			continue
		}
		valid = append(valid, i)
	}
	if len(valid) == 0 {
		return results, nil
	}
	err := s.inTx(ctx, op, func(ctx context.Context, tx pgx.Tx, retry bool) error {
		b := &pgx.Batch{}
		for _, i := range valid {
			u := updates[i]
			b.Queue(s.sqlUpdateDEKWrap, u.ID[:], int64(u.PrevZoneKeyVersion), nonNil(u.PrevWrapped), u.Wrapped, int64(u.ZoneKeyVersion))
		}
		br := tx.SendBatch(ctx, b)
		var missed []int
		for _, i := range valid {
			tag, err := br.Exec()
			if err != nil {
				br.Close()
				return err
			}
			results[i] = nil
			if tag.RowsAffected() == 0 {
				missed = append(missed, i)
			}
		}
		if err := br.Close(); err != nil {
			return err
		}
		for _, i := range missed {
			u := updates[i]
			var (
				got      []byte
				zkv, kek int64
			)
			err := tx.QueryRow(ctx, s.sqlDEKWrap, u.ID[:]).Scan(&got, &zkv, &kek)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				results[i] = fmt.Errorf("%w: DEK %s", keystore.ErrUnknownKey, u.ID)
			case err != nil:
				return err
			case retry && bytes.Equal(got, u.Wrapped) && zkv == int64(u.ZoneKeyVersion) && kek == 0:
				// committed by the attempt whose connection was lost
			default:
				results[i] = fmt.Errorf("%w: DEK %s was rewrapped by another process", keystore.ErrConflict, u.ID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// compareAndSwap runs a rewrap: an UPDATE whose WHERE holds the row's key
// and its previous wrap. When it updates no row, swapped reads the row: it
// fails with ErrUnknownKey if there is none, and reports whether the row
// already holds the new wrap. Otherwise the update is a conflict, unless it
// is a retry after a lost connection and the row holds the new wrap: the
// first attempt committed it before the connection was lost, and the update
// has succeeded.
func (s *Store) compareAndSwap(ctx context.Context, op, update string, args []any, swapped func(ctx context.Context, q querier) (bool, error), conflict func() error) error {
	return s.do(ctx, op, func(ctx context.Context, q querier, retry bool) error {
		tag, err := q.Exec(ctx, update, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() > 0 {
			return nil
		}
		done, err := swapped(ctx, q)
		switch {
		case err != nil:
			return err
		case retry && done:
			return nil
		default:
			return conflict()
		}
	})
}

// ScanDEKs implements keystore.RotationStore. It walks the unique index on
// (zone, subject, generation), which rewraps do not change, by keyset
// paging: each page is one query for the rows after the cursor's (subject,
// generation). The cursor is the unpadded base64url of the zone and the
// last row's position; pages hold at most MaxScanPage rows.
func (s *Store) ScanDEKs(ctx context.Context, zone string, cursor string, limit int) ([]keystore.DEKRow, string, error) {
	op := fmt.Sprintf("scanning the DEKs of zone %q", zone)
	if err := s.check(ctx, op); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		return nil, "", fmt.Errorf("%w: postgres: scan limit %d, want at least 1", keystore.ErrInvalidValue, limit)
	}
	var (
		after    []byte
		afterGen uint32
	)
	if cursor != "" {
		var ok bool
		if after, afterGen, ok = decodeCursor(zone, cursor); !ok {
			return nil, "", fmt.Errorf("%w: postgres: %q is not a scan cursor of zone %q", keystore.ErrInvalidValue, cursor, zone)
		}
	}
	page := min(limit, MaxScanPage)
	var out []keystore.DEKRow
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var err error
		// One row more than the page tells whether there is a next one.
		if after == nil {
			out, err = queryRows(ctx, q, scanDEK, s.sqlScanDEKs, bs(zone), int64(page+1))
		} else {
			out, err = queryRows(ctx, q, scanDEK, s.sqlScanDEKsAfter, bs(zone), after, int64(afterGen), int64(page+1))
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	if len(out) <= page {
		return out, "", nil
	}
	out = out[:page]
	last := out[page-1]
	return out, encodeCursor(zone, last.Subject, last.Generation), nil
}

// A scan cursor is the unpadded base64url of
//
//	uvarint(len(zone)) || zone || generation (4 bytes, big-endian) || subject
//
// of the last row of a page: it is bound to its zone, and ScanDEKs refuses
// it for another.
var cursorEncoding = base64.RawURLEncoding.Strict()

func encodeCursor(zone, subject string, generation uint32) string {
	b := make([]byte, 0, binary.MaxVarintLen64+len(zone)+4+len(subject))
	b = binary.AppendUvarint(b, uint64(len(zone)))
	b = append(b, zone...)
	b = binary.BigEndian.AppendUint32(b, generation)
	b = append(b, subject...)
	return cursorEncoding.EncodeToString(b)
}

// decodeCursor returns the subject (never nil) and generation of a cursor
// of zone that encodeCursor could have made.
func decodeCursor(zone, cursor string) (subject []byte, generation uint32, ok bool) {
	b, err := cursorEncoding.DecodeString(cursor)
	if err != nil {
		return nil, 0, false
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n != uint64(len(zone)) || len(b)-k < len(zone)+4 || string(b[k:k+len(zone)]) != zone {
		return nil, 0, false
	}
	b = b[k+len(zone):]
	generation, subject = binary.BigEndian.Uint32(b), nonNil(b[4:])
	// Refuse what no stored row gives, and other spellings of a cursor
	// (an overlong uvarint).
	if generation == 0 || len(zone)+len(subject) > MaxKeyBytes || encodeCursor(zone, string(subject), generation) != cursor {
		return nil, 0, false
	}
	return subject, generation, true
}
