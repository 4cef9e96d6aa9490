// Package postgres is the keystore.Store for services that run several
// instances: every instance opens the same PostgreSQL schema, and they share
// one keyring of zone keys and DEKs without ever losing a key.
//
// # Configuring
//
// Open a store from a connection string and pass it to zonekey.Config.Store
// (or keystore.Config.Store):
//
//	store, err := postgres.Open(ctx, "postgres://zonekey@db.internal:5432/app?sslmode=verify-full")
//	...
//	defer store.Close()
//	c, err := zonekey.Open(ctx, zonekey.Config{Store: store, Zones: zones})
//
// The connection string is anything pgxpool.ParseConfig accepts, URL or
// keyword/value form, pool settings (pool_max_conns, ...) included, plus two
// parameters of this package, which are taken out before connecting:
//
//	zonekey_schema        schema of the tables (default "zonekey")
//	zonekey_table_prefix  prefix of the table names (default none)
//
// [WithSchema] and [WithTablePrefix] set the same and take precedence. Both
// are lowercase SQL identifiers ([a-z_][a-z0-9_]*). Open sets
// application_name to "zonekey" unless the connection string names one.
//
// [New] uses a pool the caller built and keeps (Close does not close it);
// pass its config through [ConfigurePool] first.
//
// # Schema
//
// Five tables, in the store's schema, named with its table prefix:
//
//	zone_keys (zone bytea, version int8, id bytea, wrapped bytea, kek_version int8, created timestamptz)
//	    PRIMARY KEY (zone, version), UNIQUE (id)
//	deks (id bytea, zone bytea, subject bytea, generation int8, zone_key_version int8, wrapped bytea, created timestamptz,
//	      kek_version int8)
//	    PRIMARY KEY (id), UNIQUE (zone, subject, generation),
//	    CHECK exactly one of zone_key_version and kek_version is non-zero (deks_wrap_check)
//	shredded_deks (id bytea, zone bytea, subject bytea)
//	    PRIMARY KEY (id)
//	tombstones (zone bytea, subject bytea, kind int2, to_zone bytea, generation int8, created timestamptz)
//	    PRIMARY KEY (zone, subject)
//	epochs (zone bytea, number int8, kek_version int8, zone_key_version int8, owner bytea,
//	        lease timestamptz, started timestamptz, finished timestamptz)
//	    PRIMARY KEY (zone, number)
//
// A DEK row with kek_version non-zero is pending: moved in from another zone
// and wrapped by the zone's KEK, with zone_key_version 0, until a process of
// the zone adopts it (keystore.RotationStore.UpdateDEKWrap). shredded_deks
// maps the id of every shredded DEK to its subject, whose row in tombstones
// says when and why its keys left the zone (kind 1 shredded, 2 moved to
// to_zone, 3 the whole zone shredded, with an empty subject). An epoch's
// times are NULL for the zero time.
//
// Zones, subjects, zone-key ids and epoch owners are bytea: they are
// arbitrary byte strings (NUL bytes and invalid UTF-8 included), compared
// byte for byte, never through a collation. Versions, generations and epoch
// numbers are unsigned 32-bit numbers, kept in int8 with CHECK constraints
// on their range. Times keep microseconds; the store sends tombstone and
// epoch times truncated to the microsecond, and compares epoch times at that
// precision. The rows hold only wrapped key material: a copy of the tables
// opens nothing without the zones' custodians.
//
// A zone plus subject, and a zone-key id, are refused (ErrInvalidValue)
// beyond [MaxKeyBytes], so that every row fits in its unique index.
//
// # Migrations
//
// The schema is versioned. The migrations are SQL files embedded in this
// package (migrations/0001_init.sql, ...), applied in order by Open and New in
// one transaction that first takes pg_advisory_xact_lock on a key derived from
// the schema name, and recorded in the schema_migrations table (with the same
// prefix). Instances that start at once therefore wait for each other, and
// the schema is migrated exactly once; opening an up-to-date schema runs no
// DDL and needs no privilege beyond reading and inserting rows. A schema at a
// newer version than this build knows is refused with ErrStore: upgrade every
// instance before it opens a migrated schema.
//
// # Concurrency
//
// Every create is one INSERT, committed when it returns nil. Uniqueness is
// the database's: of two instances creating the first DEK of a subject (or a
// zone's first key) at once, one INSERT fails on the unique index and is
// reported as ErrExists, and the keyring then reads the winner's row (see
// package keystore). A failed create writes nothing, and no row is ever
// partly written.
//
// Errors: ErrUnknownKey for a missing row, ErrExists for a unique violation,
// ErrConflict for a rewrap of a row another process changed, ErrInvalidValue
// for a row the tables cannot hold, ErrClosed after Close, and the context's
// error when ctx ends first. Anything else (connection refused
// or lost, server shut down, timeouts of the server) is ErrStore, wrapping the
// driver's error.
//
// A statement whose connection is lost (the server restarted, or the backend
// was terminated) is retried once on a connection checked with a ping. A
// create retried this way that finds its key taken by its own row, which the
// first attempt committed before the connection was lost, succeeds; if the
// retry fails too the create returns ErrStore, and its row may then exist,
// complete, which the keyring treats as any other stored key.
//
// A call whose context ends is cancelled at the server too (Open and
// ConfigurePool make the pool send a cancel request rather than only closing
// the connection), so a create that returns the context's error has not
// written its row, short of a cancel that reaches the server after the
// commit. A cancelled call returns within about a second even if the server
// does not answer.
//
// # Rotation
//
// Store implements keystore.RotationStore, so the keyring's rotations
// (RotateKEK, RewrapZoneKeys, RetireKEKBelow, RotateZoneKey, ZoneKeyStatus)
// run on it. A rewrap is one UPDATE whose WHERE holds the row's key and its
// previous wrap: of two instances rewrapping a row at once, one updates it
// and the other gets ErrConflict. A rewrap retried after a lost connection
// that finds the row already at its new wrap (the first attempt committed)
// succeeds. ScanDEKs pages through a zone's DEKs by (subject, generation) on
// the unique index, which rewraps do not change, at most [MaxScanPage] rows a
// page. Store also implements keystore.BatchRotationStore: a page's rewraps
// go as one pipelined batch of those UPDATEs in one transaction.
//
// # Shredding, moving and epochs
//
// Store implements keystore.LifecycleStore too. Each method is one
// statement or one transaction, so it writes all of its effect or nothing:
//
//   - CreateDEK, ShredSubject and MoveDEKs first take a transaction
//     advisory lock of each (zone, subject) they touch (pg_advisory_xact_lock
//     on a key hashed from the store's table name, the zone and the
//     subject; in key order), so that CreateDEK's check of the tombstones
//     and its insert are one step with respect to a shred or move: a
//     tombstone that does not exist yet has no row to lock. CreateDEK sends
//     the lock and its conditional INSERT as one batch, which the server
//     runs as one implicit transaction: one round trip, as a plain INSERT.
//   - ShredSubject deletes the subject's rows with DELETE ... RETURNING,
//     records their ids in shredded_deks and upserts the tombstone, in one
//     transaction. Of two shreds of a subject at once, the second waits for
//     the first's row locks and then finds no row (ErrUnknownKey).
//   - MoveDEKs locks the subject's rows (SELECT ... FOR UPDATE), compares
//     their ids with the rows given (ErrConflict), rewrites them with one
//     UPDATE (a unique violation is a generation already taken in the
//     target: ErrExists) and upserts the tombstone, in one transaction.
//   - DeleteZoneKeysBelow checks the zone's DEK rows and deletes its older
//     zone keys in one statement, so in one snapshot. A DEK created under an
//     older zone key after it ran is not prevented: the keyring's epoch
//     waits for other processes to stop using the older keys first.
//   - UpdateEpoch is one UPDATE whose WHERE holds every field of the
//     previous row; CreateEpoch one INSERT.
//
// After a lost connection, a MoveDEKs, CreateEpoch or UpdateEpoch whose
// first attempt committed is recognised by its retry and succeeds; a
// ShredSubject whose first attempt committed returns ErrUnknownKey, as for
// a shred that lost a race, and its tombstone is stored.
//
// # Several instances: the cache bound
//
// The store keeps no cache; the keyring does (package keystore). A change made
// by one instance — a DEK shredded (its row deleted), a subject's DEK
// replaced, a zone-key version added — is seen by every other instance no
// later than the keyring's settings allow:
//
//   - keystore.Config.DEKTTL (zonekey.Config.DEKTTL; default 5 minutes)
//     bounds how long an instance still uses a DEK it has cached after its
//     row was deleted or replaced in the table;
//   - keystore.Config.ZoneKeyTTL (zonekey.Config.ZoneKeyTTL; default 10
//     minutes) bounds how long an instance keeps creating DEKs under a
//     zone-key version after another instance stored a newer one.
//
// Lower them where a shred must take effect sooner, at the cost of more
// store reads and custodian calls.
package postgres
