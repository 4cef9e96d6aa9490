package postgres_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
)

// migrateTo1 makes schema at version 1, as the build before version 2 did.
func migrateTo1(t *testing.T, schema string) {
	t.Helper()
	sqls, err := postgres.RenderMigrations(schema, "")
	require.NoError(t, err)
	tx, err := admin.Begin(t.Context())
	require.NoError(t, err)
	defer tx.Rollback(t.Context())
	for _, sql := range []string{
		"CREATE SCHEMA " + pgx.Identifier{schema}.Sanitize(),
		"CREATE TABLE " + table(schema, "schema_migrations") + " (version int8 PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())",
		sqls[0],
		"INSERT INTO " + table(schema, "schema_migrations") + " (version, name) VALUES (1, '0001_init.sql')",
	} {
		_, err := tx.Exec(t.Context(), sql)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(t.Context()))
}

// TestMigrateFromVersion1: a schema of version 1 is migrated to version 2
// with its rows, which read with KEK version 0, and the new tables work.
func TestMigrateFromVersion1(t *testing.T) {
	ctx := t.Context()
	schema := freshSchema(t)
	migrateTo1(t, schema)
	alice, bob := newDEK("eu", "alice", 1), newDEK("eu", "b\x00\xff", 1)
	// A row of version 1 that has no wrap version at all: the new check
	// does not hold it against the migration.
	legacy := newDEK("eu", "legacy", 1)
	legacy.ZoneKeyVersion = 0
	for _, row := range []keystore.DEKRow{alice, bob, legacy} {
		insertDEKRow(ctx, t, admin, schema, row)
	}

	s := openStore(t, schema, appName())
	require.Equal(t, []int64{2}, postgres.Applied(s), "the migrations applied to a version-1 schema")
	for _, want := range []keystore.DEKRow{alice, bob, legacy} {
		got, err := s.DEK(ctx, want.ID)
		require.NoError(t, err)
		require.Equal(t, want.Subject, got.Subject)
		require.Equal(t, want.ZoneKeyVersion, got.ZoneKeyVersion)
		require.Zero(t, got.KEKVersion)
	}
	tomb, ids, err := s.ShredSubject(ctx, "eu", "alice", time.Now())
	require.NoError(t, err)
	require.Equal(t, []envelope.KeyID{alice.ID}, ids)
	require.Equal(t, uint32(1), tomb.Generation)
	moved := bob
	moved.Zone, moved.ZoneKeyVersion, moved.KEKVersion = "us", 0, 4
	require.NoError(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{moved}, time.Now()))
	require.NoError(t, s.CreateEpoch(ctx, keystore.EpochRow{Zone: "eu", Number: 1, Owner: "me"}))

	// New and updated rows are checked by the database too.
	bad := newDEK("eu", "carol", 1)
	bad.ZoneKeyVersion = 0
	_, err = admin.Exec(ctx, "INSERT INTO "+table(schema, "deks")+
		" (id, zone, subject, generation, zone_key_version, kek_version, wrapped, created) VALUES ($1, 'eu', 'carol', 1, 0, 0, '\\x00', now())", bad.ID[:])
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23514", pgErr.Code, "check violation")
	_, err = admin.Exec(ctx, "UPDATE "+table(schema, "deks")+" SET zone_key_version = 3 WHERE id = $1", moved.ID[:])
	require.ErrorAs(t, err, &pgErr, "a row with both versions")
	require.Equal(t, "23514", pgErr.Code)

	// Reopening applies nothing more.
	s2 := openStore(t, schema, appName())
	require.Empty(t, postgres.Applied(s2))
	got, err := s2.DEK(ctx, bob.ID)
	require.NoError(t, err)
	require.True(t, got.Pending())
}

// TestLifecycleInvalidValues: values the tables cannot hold are refused
// before any statement runs.
func TestLifecycleInvalidValues(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, freshSchema(t), appName())
	long := string(make([]byte, postgres.MaxKeyBytes+1))
	_, err := s.ShredZone(ctx, long, time.Now())
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
	require.ErrorIs(t, s.CreateEpoch(ctx, keystore.EpochRow{Zone: long, Number: 1}), keystore.ErrInvalidValue)
	row := keystore.DEKRow{ID: envelope.NewKeyID(), Zone: "us", Subject: "a", Generation: 1, KEKVersion: 1}
	require.ErrorIs(t, s.MoveDEKs(ctx, long, []keystore.DEKRow{row}, time.Now()), keystore.ErrInvalidValue)
	row.Zone = long
	require.ErrorIs(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{row}, time.Now()), keystore.ErrInvalidValue)
	// Lookups of names no row can have find nothing.
	_, err = s.Tombstone(ctx, long, "a")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	_, err = s.LatestEpoch(ctx, long)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
}

// TestLifecycleCommittedButUnacknowledged: the connection is lost after the
// server committed a lifecycle change but before the client read the
// answer; the retry recognises the committed change.
func TestLifecycleCommittedButUnacknowledged(t *testing.T) {
	ctx := t.Context()
	schema := freshSchema(t)
	p := startCutProxy(t)
	cfg, err := pgxpool.ParseConfig(testDSN)
	require.NoError(t, err)
	postgres.ConfigurePool(cfg)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.port
	cfg.ConnConfig.TLSConfig, cfg.ConnConfig.Fallbacks = nil, nil
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	s, err := postgres.New(ctx, pool, postgres.WithSchema(schema))
	require.NoError(t, err)
	defer s.Close()

	pending := func(r keystore.DEKRow, gen uint32) keystore.DEKRow {
		r.Zone, r.Generation, r.ZoneKeyVersion, r.KEKVersion = "us", gen, 0, 2
		return r
	}

	t.Run("MoveDEKs", func(t *testing.T) {
		rows := []keystore.DEKRow{newDEK("eu", "alice", 1), newDEK("eu", "alice", 2)}
		for _, r := range rows {
			require.NoError(t, s.CreateDEK(ctx, r))
		}
		moved := []keystore.DEKRow{pending(rows[0], 1), pending(rows[1], 2)}
		p.cutAfter("COMMIT")
		require.NoError(t, s.MoveDEKs(ctx, "eu", moved, time.Now()), "the retry recognises the move the lost attempt committed")
		require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the commit")
		got, err := s.SubjectDEKs(ctx, "us", "alice")
		require.NoError(t, err)
		require.Len(t, got, 2)
		require.Zero(t, subjectRows(t, schema, "eu", "alice"))
	})

	t.Run("MoveDEKsOtherwise", func(t *testing.T) {
		// A retry that finds the rows moved elsewhere is a conflict.
		r := newDEK("eu", "bob", 1)
		require.NoError(t, s.CreateDEK(ctx, r))
		require.NoError(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{pending(r, 1)}, time.Now()))
		other := pending(r, 5)
		require.ErrorIs(t, s.MoveDEKs(ctx, "eu", []keystore.DEKRow{other}, time.Now()), keystore.ErrConflict)
	})

	t.Run("UpdateEpoch", func(t *testing.T) {
		e := keystore.EpochRow{Zone: "eu", Number: 1, Owner: "a", Started: time.Now()}
		require.NoError(t, s.CreateEpoch(ctx, e))
		next := e
		next.Owner, next.Lease = "b", time.Now().Add(time.Minute)
		p.cutAfter("UPDATE 1")
		require.NoError(t, s.UpdateEpoch(ctx, e, next), "the retry recognises the update the lost attempt committed")
		require.Equal(t, int32(1), p.cuts.Swap(0))
		got, err := s.LatestEpoch(ctx, "eu")
		require.NoError(t, err)
		require.Equal(t, "b", got.Owner)
	})

	t.Run("CreateEpoch", func(t *testing.T) {
		e := keystore.EpochRow{Zone: "eu", Number: 2, Owner: "c", Started: time.Now()}
		p.cutAfter("INSERT 0 1")
		require.NoError(t, s.CreateEpoch(ctx, e), "the retry recognises the row the lost attempt committed")
		require.Equal(t, int32(1), p.cuts.Swap(0))
	})

	t.Run("ShredSubject", func(t *testing.T) {
		// The retry of a committed shred finds no row: ErrUnknownKey, as
		// for a shred that lost a race, and the tombstone is there.
		r := newDEK("eu", "carol", 1)
		require.NoError(t, s.CreateDEK(ctx, r))
		p.cutAfter("COMMIT")
		_, _, err := s.ShredSubject(ctx, "eu", "carol", time.Now())
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
		require.Equal(t, int32(1), p.cuts.Swap(0))
		tomb, err := s.ShreddedDEK(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, keystore.Shredded, tomb.Kind)
	})
}
