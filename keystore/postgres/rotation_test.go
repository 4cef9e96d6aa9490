package postgres_test

import (
	"encoding/base64"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
)

// TestScanCursors: a cursor is bound to its zone, and ScanDEKs refuses
// anything it could not have returned.
func TestScanCursors(t *testing.T) {
	s := openStore(t, freshSchema(t), appName())
	for i := range 5 {
		require.NoError(t, s.CreateDEK(t.Context(), newDEK("eu", fmt.Sprintf("s%d", i), 1)))
		require.NoError(t, s.CreateDEK(t.Context(), newDEK("eu2", fmt.Sprintf("s%d", i), 1)))
	}
	rows, next, err := s.ScanDEKs(t.Context(), "eu", "", 2)
	require.NoError(t, err)
	require.Len(t, rows, 2)
	require.NotEmpty(t, next)
	raw, err := base64.RawURLEncoding.DecodeString(next)
	require.NoError(t, err)

	for name, cursor := range map[string]string{
		"not base64":      "!!",
		"padded":          next + "==",
		"truncated":       base64.RawURLEncoding.EncodeToString(raw[:5]),
		"empty position":  base64.RawURLEncoding.EncodeToString([]byte{2, 'e', 'u'}),
		"generation 0":    base64.RawURLEncoding.EncodeToString([]byte{2, 'e', 'u', 0, 0, 0, 0, 's'}),
		"overlong length": base64.RawURLEncoding.EncodeToString(append([]byte{0x82, 0}, raw[1:]...)),
		"long subject":    base64.RawURLEncoding.EncodeToString(append([]byte{2, 'e', 'u', 0, 0, 0, 1}, strings.Repeat("x", postgres.MaxKeyBytes)...)),
	} {
		_, _, err := s.ScanDEKs(t.Context(), "eu", cursor, 2)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, name)
	}
	for _, zone := range []string{"eu2", "e", "", "EU"} {
		_, _, err := s.ScanDEKs(t.Context(), zone, next, 2)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, "a cursor of zone eu for zone %q", zone)
	}

	// The cursor resumes after the last row, and the last page says so.
	rest, end, err := s.ScanDEKs(t.Context(), "eu", next, math.MaxInt)
	require.NoError(t, err)
	require.Empty(t, end)
	require.Len(t, rest, 3)
	require.Equal(t, []string{"s2", "s3", "s4"}, []string{rest[0].Subject, rest[1].Subject, rest[2].Subject})
}

// TestScanPageBound: a page holds at most MaxScanPage rows, whatever the
// limit.
func TestScanPageBound(t *testing.T) {
	schema := freshSchema(t)
	s := openStore(t, schema, appName())
	n := postgres.MaxScanPage + 3
	_, err := admin.Exec(t.Context(), "INSERT INTO "+table(schema, "deks")+
		` (id, zone, subject, generation, zone_key_version, wrapped, created)
		SELECT uuid_send(gen_random_uuid()), 'eu', convert_to(lpad(i::text, 6, '0'), 'UTF8'), 1, 1, '\x00', now()
		FROM generate_series(1, $1) AS i`, n)
	require.NoError(t, err)
	rows, next, err := s.ScanDEKs(t.Context(), "eu", "", math.MaxInt)
	require.NoError(t, err)
	require.Len(t, rows, postgres.MaxScanPage)
	require.NotEmpty(t, next)
	rows, next, err = s.ScanDEKs(t.Context(), "eu", next, math.MaxInt)
	require.NoError(t, err)
	require.Empty(t, next)
	require.Len(t, rows, 3)
	require.Equal(t, fmt.Sprintf("%06d", n), rows[2].Subject)
}

// TestRewrapCommittedButUnacknowledged: the connection is lost after the
// server committed a rewrap but before the client read the answer. The
// retry finds the row at the new wrap and reports success, not a conflict.
func TestRewrapCommittedButUnacknowledged(t *testing.T) {
	schema := freshSchema(t)
	p := startCutProxy(t)
	cfg, err := pgxpool.ParseConfig(testDSN)
	require.NoError(t, err)
	postgres.ConfigurePool(cfg)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.port
	cfg.ConnConfig.TLSConfig, cfg.ConnConfig.Fallbacks = nil, nil
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	defer pool.Close()
	s, err := postgres.New(t.Context(), pool, postgres.WithSchema(schema))
	require.NoError(t, err)
	defer s.Close()

	d := newDEK("eu", "alice", 1)
	require.NoError(t, s.CreateDEK(t.Context(), d))
	zk := keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: randomHex(16), Wrapped: []byte("w1"), KEKVersion: 1, Created: time.Now()}
	require.NoError(t, s.CreateZoneKey(t.Context(), zk))

	p.cutAfter("UPDATE 1")
	require.NoError(t, s.UpdateDEKWrap(t.Context(), d.ID, d.ZoneKeyVersion, d.Wrapped, []byte("w2"), d.ZoneKeyVersion+1),
		"the retry recognises the wrap the lost attempt committed")
	require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the DEK rewrap")
	got, err := s.DEK(t.Context(), d.ID)
	require.NoError(t, err)
	require.Equal(t, []byte("w2"), got.Wrapped)
	require.Equal(t, d.ZoneKeyVersion+1, got.ZoneKeyVersion)

	p.cutAfter("UPDATE 1")
	require.NoError(t, s.UpdateZoneKeyWrap(t.Context(), "eu", 1, zk.Wrapped, []byte("w2"), 2),
		"the retry recognises the wrap the lost attempt committed")
	require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the zone-key rewrap")
	gotZK, err := s.ZoneKey(t.Context(), "eu", 1)
	require.NoError(t, err)
	require.Equal(t, []byte("w2"), gotZK.Wrapped)
	require.Equal(t, uint32(2), gotZK.KEKVersion)

	// Without a lost connection, the same update is a conflict.
	err = s.UpdateZoneKeyWrap(t.Context(), "eu", 1, zk.Wrapped, []byte("w2"), 2)
	require.ErrorIs(t, err, keystore.ErrConflict)
	err = s.UpdateDEKWrap(t.Context(), d.ID, d.ZoneKeyVersion, d.Wrapped, []byte("w2"), d.ZoneKeyVersion+1)
	require.ErrorIs(t, err, keystore.ErrConflict)

	// A batch whose commit is lost: the retry finds its rewraps applied
	// and reports each as done, and the update that conflicted in the
	// lost attempt as a conflict again.
	a, b := newDEK("eu", "bob", 1), newDEK("eu", "carol", 1)
	require.NoError(t, s.CreateDEK(t.Context(), a))
	require.NoError(t, s.CreateDEK(t.Context(), b))
	updates := []keystore.DEKWrapUpdate{
		{ID: a.ID, PrevZoneKeyVersion: a.ZoneKeyVersion, PrevWrapped: a.Wrapped, Wrapped: []byte("a2"), ZoneKeyVersion: a.ZoneKeyVersion + 1},
		{ID: b.ID, PrevZoneKeyVersion: b.ZoneKeyVersion, PrevWrapped: []byte("stale"), Wrapped: []byte("b2"), ZoneKeyVersion: b.ZoneKeyVersion + 1},
		{ID: d.ID, PrevZoneKeyVersion: d.ZoneKeyVersion + 1, PrevWrapped: []byte("w2"), Wrapped: []byte("w3"), ZoneKeyVersion: d.ZoneKeyVersion + 2},
	}
	p.cutAfter("COMMIT")
	results, err := s.UpdateDEKWraps(t.Context(), updates)
	require.NoError(t, err, "the retry recognises the batch the lost attempt committed")
	require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the batch's commit")
	require.NoError(t, results[0])
	require.ErrorIs(t, results[1], keystore.ErrConflict)
	require.NoError(t, results[2])
	for _, want := range []struct {
		id      envelope.KeyID
		wrapped string
		version uint32
	}{{a.ID, "a2", a.ZoneKeyVersion + 1}, {b.ID, string(b.Wrapped), b.ZoneKeyVersion}, {d.ID, "w3", d.ZoneKeyVersion + 2}} {
		got, err := s.DEK(t.Context(), want.id)
		require.NoError(t, err)
		require.Equal(t, want.wrapped, string(got.Wrapped))
		require.Equal(t, want.version, got.ZoneKeyVersion)
	}
	// Without a lost connection, the same batch conflicts throughout.
	results, err = s.UpdateDEKWraps(t.Context(), updates)
	require.NoError(t, err)
	for i, r := range results {
		require.ErrorIs(t, r, keystore.ErrConflict, "update %d", i)
	}
}

// TestKeyringRotation rotates the KEK and the zone key of a keyring over the
// store, retires the old KEK, and opens everything sealed before with
// another instance.
func TestKeyringRotation(t *testing.T) {
	schema := freshSchema(t)
	s := openStore(t, schema, appName())
	kek := kekFile(t)
	kr := newKeyring(t, s, kek, nil)

	type sealed struct {
		id   envelope.KeyID
		bind envelope.Binding
		ct   []byte
	}
	var recs []sealed
	for i := range 40 {
		d, err := kr.DataKey(t.Context(), "eu", fmt.Sprintf("subject-%02d", i))
		require.NoError(t, err)
		b := envelope.Binding{Path: "Email", Subject: d.Subject}
		ct, err := d.Seal([]byte(d.Subject), b)
		require.NoError(t, err)
		recs = append(recs, sealed{d.ID(), b, ct})
	}

	kres, err := kr.RotateKEK(t.Context(), "eu")
	require.NoError(t, err)
	require.Equal(t, 1, kres.Rewrapped)
	zres, err := kr.RotateZoneKey(t.Context(), "eu", keystore.ZoneKeyRotation{BatchSize: 7})
	require.NoError(t, err)
	require.Equal(t, keystore.ZoneKeyRotationResult{Zone: "eu", Version: 2, Created: true, Scanned: 40, Rewrapped: 40}, zres)
	require.NoError(t, kr.RetireKEKBelow(t.Context(), "eu", kres.KEKVersion))

	status, err := kr.ZoneKeyStatus(t.Context(), "eu")
	require.NoError(t, err)
	require.Len(t, status, 2)
	require.Equal(t, []int{0, 40}, []int{status[0].DEKs, status[1].DEKs})
	require.Equal(t, kres.KEKVersion, status[1].KEKVersion)

	other := newKeyring(t, openStore(t, schema, appName()), kek, nil)
	for _, r := range recs {
		d, err := other.Key(t.Context(), r.id)
		require.NoError(t, err)
		msg, err := d.Open(r.ct, r.bind)
		require.NoError(t, err)
		require.Equal(t, r.bind.Subject, string(msg))
	}
}
