package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// DefaultSchema is the schema of the tables unless WithSchema or the
// zonekey_schema parameter names another.
const DefaultSchema = "zonekey"

// DefaultApplicationName is the application_name Open and ConfigurePool set
// when the connection string names none.
const DefaultApplicationName = "zonekey"

// MaxKeyBytes bounds the bytes of a DEK's zone plus subject, of a zone key's
// zone, and of a zone-key id: a unique-index entry must fit a third of a
// PostgreSQL page. Longer values are refused with keystore.ErrInvalidValue.
const MaxKeyBytes = 2048

// Connection-string parameters read by Open, removed before connecting.
const (
	paramSchema = "zonekey_schema"
	paramPrefix = "zonekey_table_prefix"
)

// Option configures Open and New.
type Option func(*options)

type options struct {
	schema, prefix string
}

// WithSchema sets the schema of the store's tables: a lowercase SQL
// identifier ([a-z_][a-z0-9_]*, at most 63 bytes, not starting with "pg_").
// It is created if missing. The default is DefaultSchema.
func WithSchema(name string) Option { return func(o *options) { o.schema = name } }

// WithTablePrefix sets a prefix for the names of the store's tables and
// constraints, so that several keystores can share a schema: a lowercase SQL
// identifier of at most MaxTablePrefix bytes, or "" (the default) for none.
func WithTablePrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

var (
	schemaPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	prefixPattern = regexp.MustCompile(`^([a-z_][a-z0-9_]*)?$`)
)

func (o *options) validate() error {
	switch {
	case !schemaPattern.MatchString(o.schema) || len(o.schema) > maxIdentifier:
		return fmt.Errorf("%w: postgres: schema name %q: want a lowercase SQL identifier ([a-z_][a-z0-9_]*) of at most %d bytes",
			keystore.ErrInvalidValue, o.schema, maxIdentifier)
	case strings.HasPrefix(o.schema, "pg_"):
		return fmt.Errorf("%w: postgres: schema name %q: names starting with pg_ are reserved", keystore.ErrInvalidValue, o.schema)
	case !prefixPattern.MatchString(o.prefix) || len(o.prefix) > MaxTablePrefix:
		return fmt.Errorf("%w: postgres: table prefix %q: want a lowercase SQL identifier ([a-z_][a-z0-9_]*) of at most %d bytes, or none",
			keystore.ErrInvalidValue, o.prefix, MaxTablePrefix)
	}
	return nil
}

// Store is a keystore.Store in a PostgreSQL schema. It is safe for
// concurrent use, and any number of Stores, in any number of processes, may
// share one schema.
type Store struct {
	pool    *pgxpool.Pool
	ownPool bool
	names   names
	closed  atomic.Bool

	// applied lists the migrations this store applied when it opened.
	applied []int64

	sqlInsertZoneKey, sqlZoneKey, sqlLatestZoneKey, sqlZoneKeyByID string
	sqlInsertDEK, sqlDEK, sqlDEKs, sqlLatestDEK                    string

	sqlZoneKeys, sqlUpdateZoneKeyWrap, sqlZoneKeyWrap           string
	sqlScanDEKs, sqlScanDEKsAfter, sqlUpdateDEKWrap, sqlDEKWrap string

	lifecycleSQL
}

var (
	_ keystore.Store              = (*Store)(nil)
	_ keystore.RotationStore      = (*Store)(nil)
	_ keystore.BatchRotationStore = (*Store)(nil)
	_ keystore.LifecycleStore     = (*Store)(nil)
)

// Open connects to the database that dsn names, migrates the store's schema
// if needed (see the package documentation), and returns the store. dsn is a
// connection string of pgxpool.ParseConfig, URL or keyword/value form, which
// may carry the parameters zonekey_schema and zonekey_table_prefix; opts take
// precedence over them. The store owns its pool: Close closes it.
//
// Errors wrap keystore.ErrInvalidValue for a malformed dsn or option,
// keystore.ErrStore when the database cannot be reached or migrated (or is
// migrated past this build), or the context's error.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors redact the password.
		return nil, fmt.Errorf("%w: postgres: %v", keystore.ErrInvalidValue, err)
	}
	o := options{schema: DefaultSchema}
	params := cfg.ConnConfig.RuntimeParams
	for k, v := range params {
		switch {
		case k == paramSchema:
			o.schema = v
		case k == paramPrefix:
			o.prefix = v
		case strings.HasPrefix(k, "zonekey_"):
			return nil, fmt.Errorf("%w: postgres: unknown connection parameter %q (known: %s, %s)",
				keystore.ErrInvalidValue, k, paramSchema, paramPrefix)
		default:
			continue
		}
		delete(params, k)
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres: %v", keystore.ErrStore, err)
	}
	s, err := newStore(ctx, pool, true, o)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// New returns a store over a pool the caller owns and keeps: Close does not
// close it. It migrates the store's schema if needed, like Open. Build the
// pool from a config passed through ConfigurePool, so that cancelled calls
// are cancelled at the server.
func New(ctx context.Context, pool *pgxpool.Pool, opts ...Option) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: postgres: nil pool", keystore.ErrInvalidValue)
	}
	o := options{schema: DefaultSchema}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return newStore(ctx, pool, false, o)
}

// ConfigurePool applies the settings the store relies on to a pool config,
// before pgxpool.NewWithConfig: a context that ends makes pgx send a cancel
// request to the server (and close the connection after a second if the
// server does not answer), so that a cancelled create does not commit later;
// and application_name is set to DefaultApplicationName unless cfg names one.
// Open applies it to the pool it makes.
func ConfigurePool(cfg *pgxpool.Config) {
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: time.Second}
	}
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = DefaultApplicationName
	}
}

func newStore(ctx context.Context, pool *pgxpool.Pool, own bool, o options) (*Store, error) {
	n := names(o)
	zk, deks := n.mustTable("zone_keys"), n.mustTable("deks")
	const zkCols = "zone, version, id, wrapped, kek_version, created"
	const dekCols = "id, zone, subject, generation, zone_key_version, wrapped, created, kek_version"
	s := &Store{
		pool:    pool,
		ownPool: own,
		names:   n,

		sqlInsertZoneKey: "INSERT INTO " + zk + " (" + zkCols + ") VALUES ($1, $2, $3, $4, $5, $6)",
		sqlZoneKey:       "SELECT " + zkCols + " FROM " + zk + " WHERE zone = $1 AND version = $2",
		sqlLatestZoneKey: "SELECT " + zkCols + " FROM " + zk + " WHERE zone = $1 ORDER BY version DESC LIMIT 1",
		sqlZoneKeyByID:   "SELECT " + zkCols + " FROM " + zk + " WHERE id = $1",
		sqlInsertDEK:     "INSERT INTO " + deks + " (" + dekCols + ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
		sqlDEK:           "SELECT " + dekCols + " FROM " + deks + " WHERE id = $1",
		sqlDEKs:          "SELECT " + dekCols + " FROM " + deks + " WHERE id = ANY($1)",
		sqlLatestDEK:     "SELECT " + dekCols + " FROM " + deks + " WHERE zone = $1 AND subject = $2 ORDER BY generation DESC LIMIT 1",

		sqlZoneKeys:          "SELECT " + zkCols + " FROM " + zk + " WHERE zone = $1 ORDER BY version",
		sqlUpdateZoneKeyWrap: "UPDATE " + zk + " SET wrapped = $4, kek_version = $5 WHERE zone = $1 AND version = $2 AND wrapped = $3",
		sqlZoneKeyWrap:       "SELECT wrapped, kek_version FROM " + zk + " WHERE zone = $1 AND version = $2",
		// The scans walk the unique index on (zone, subject, generation),
		// which rewraps do not change.
		sqlScanDEKs: "SELECT " + dekCols + " FROM " + deks + " WHERE zone = $1 ORDER BY subject, generation LIMIT $2",
		sqlScanDEKsAfter: "SELECT " + dekCols + " FROM " + deks +
			" WHERE zone = $1 AND (subject, generation) > ($2, $3) ORDER BY subject, generation LIMIT $4",
		sqlUpdateDEKWrap: "UPDATE " + deks + " SET wrapped = $4, zone_key_version = $5, kek_version = 0 WHERE id = $1 AND zone_key_version = $2 AND wrapped = $3",
		sqlDEKWrap:       "SELECT wrapped, zone_key_version, kek_version FROM " + deks + " WHERE id = $1",

		lifecycleSQL: newLifecycleSQL(n, dekCols),
	}
	applied, err := s.migrate(ctx)
	if err != nil {
		return nil, s.fail(ctx, fmt.Sprintf("opening schema %q", o.schema), err)
	}
	s.applied = applied
	return s, nil
}

// Schema returns the schema of the store's tables.
func (s *Store) Schema() string { return s.names.schema }

// Close releases the store, and closes its pool if Open made it, after the
// calls in flight return. Later calls fail with keystore.ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.ownPool {
		s.pool.Close()
	}
	return nil
}

// querier is what an operation runs its statements on: a connection.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// do runs fn on a pooled connection. If the connection is lost under fn (the
// server restarted, the backend was terminated), fn runs once more, with
// retry set, on a connection that answered a ping. Errors are classified by
// fail.
func (s *Store) do(ctx context.Context, op string, fn func(ctx context.Context, q querier, retry bool) error) error {
	for attempt := 0; ; attempt++ {
		if err := s.check(ctx, op); err != nil {
			return err
		}
		c, err := s.acquire(ctx, attempt > 0)
		if err != nil {
			return s.fail(ctx, op, err)
		}
		err = fn(ctx, c, attempt > 0)
		lost := err != nil && c.Conn().IsClosed()
		c.Release() // a closed connection is dropped from the pool
		if lost && attempt == 0 && ctx.Err() == nil && !isDefinite(err) {
			continue
		}
		return s.fail(ctx, op, err)
	}
}

// check fails with ErrClosed after Close, or with the context's error when
// ctx has ended.
func (s *Store) check(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("postgres: %s: %w", op, keystore.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	return nil
}

// acquire takes a connection from the pool. After a lost connection (check)
// it pings the connection first and drops those that do not answer: the
// event that killed one pooled connection may have killed the others.
func (s *Store) acquire(ctx context.Context, check bool) (*pgxpool.Conn, error) {
	for i := 0; ; i++ {
		c, err := s.pool.Acquire(ctx)
		if err != nil || !check {
			return c, err
		}
		err = c.Ping(ctx)
		if err == nil {
			return c, nil
		}
		dead := c.Conn().IsClosed()
		c.Release()
		if !dead || ctx.Err() != nil || i >= int(s.pool.Stat().MaxConns()) {
			return nil, err
		}
	}
}

const (
	sqlstateUniqueViolation = "23505"
	sqlstateCheckViolation  = "23514"
	sqlstateOutOfRange      = "22003"
	sqlstateProgramLimit    = "54000" // e.g. an index row too large
)

// isDefinite reports whether err is an answer about the data (a row is
// missing, a key is taken, a value is refused, a row was changed), not a
// failure to get one.
func isDefinite(err error) bool {
	if errors.Is(err, keystore.ErrUnknownKey) || errors.Is(err, keystore.ErrExists) || errors.Is(err, keystore.ErrInvalidValue) ||
		errors.Is(err, keystore.ErrConflict) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case sqlstateUniqueViolation, sqlstateCheckViolation, sqlstateOutOfRange, sqlstateProgramLimit:
			return true
		}
	}
	return false
}

// fail classifies an error of op: keystore's sentinels pass through, a
// unique violation is ErrExists, a refused value ErrInvalidValue; then, if
// ctx has ended, the context's error; after Close, ErrClosed; anything else
// is ErrStore, wrapping the driver's error.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, keystore.ErrUnknownKey), errors.Is(err, keystore.ErrExists), errors.Is(err, keystore.ErrInvalidValue),
		errors.Is(err, keystore.ErrConflict), errors.Is(err, keystore.ErrStore), errors.Is(err, keystore.ErrClosed),
		errors.Is(err, keystore.ErrKeyShredded), errors.Is(err, keystore.ErrSubjectMoved):
		return err
	case errors.As(err, &pgErr) && pgErr.Code == sqlstateUniqueViolation:
		return fmt.Errorf("postgres: %s: %w (constraint %s)", op, keystore.ErrExists, pgErr.ConstraintName)
	case errors.As(err, &pgErr) && (pgErr.Code == sqlstateCheckViolation || pgErr.Code == sqlstateOutOfRange || pgErr.Code == sqlstateProgramLimit):
		return fmt.Errorf("%w: postgres: %s: %v", keystore.ErrInvalidValue, op, pgErr)
	case ctx.Err() != nil:
		return fmt.Errorf("postgres: %s: %w (%v)", op, ctx.Err(), err)
	case s.closed.Load():
		return fmt.Errorf("postgres: %s: %w", op, keystore.ErrClosed)
	default:
		return fmt.Errorf("%w: postgres: %s: %w", keystore.ErrStore, op, err)
	}
}

// scanner is a pgx.Row or pgx.Rows.
type scanner interface{ Scan(dest ...any) error }

// queryRows runs a query and scans every row it returns with scan.
func queryRows[T any](ctx context.Context, q querier, scan func(scanner) (T, error), sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		row, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

func toUint32(what string, v int64) (uint32, error) {
	if v < 0 || v > math.MaxUint32 {
		return 0, fmt.Errorf("%w: postgres: corrupt row: %s %d is out of range", keystore.ErrStore, what, v)
	}
	return uint32(v), nil
}

func scanZoneKey(r scanner) (keystore.ZoneKeyRow, error) {
	var (
		zone, id, wrapped []byte
		version, kek      int64
		created           time.Time
	)
	if err := r.Scan(&zone, &version, &id, &wrapped, &kek, &created); err != nil {
		return keystore.ZoneKeyRow{}, err
	}
	row := keystore.ZoneKeyRow{Zone: string(zone), ID: string(id), Wrapped: wrapped, Created: created.UTC()}
	var err error
	if row.Version, err = toUint32("zone key version", version); err != nil {
		return keystore.ZoneKeyRow{}, err
	}
	if row.KEKVersion, err = toUint32("KEK version", kek); err != nil {
		return keystore.ZoneKeyRow{}, err
	}
	return row, nil
}

func scanDEK(r scanner) (keystore.DEKRow, error) {
	var (
		id, zone, subject, wrapped []byte
		gen, zkv, kek              int64
		created                    time.Time
	)
	if err := r.Scan(&id, &zone, &subject, &gen, &zkv, &wrapped, &created, &kek); err != nil {
		return keystore.DEKRow{}, err
	}
	if len(id) != envelope.KeyIDSize {
		return keystore.DEKRow{}, fmt.Errorf("%w: postgres: corrupt row: DEK id of %d bytes", keystore.ErrStore, len(id))
	}
	row := keystore.DEKRow{ID: envelope.KeyID(id), Zone: string(zone), Subject: string(subject), Wrapped: wrapped, Created: created.UTC()}
	var err error
	if row.Generation, err = toUint32("DEK generation", gen); err != nil {
		return keystore.DEKRow{}, err
	}
	if row.ZoneKeyVersion, err = toUint32("zone key version", zkv); err != nil {
		return keystore.DEKRow{}, err
	}
	if row.KEKVersion, err = toUint32("KEK version", kek); err != nil {
		return keystore.DEKRow{}, err
	}
	return row, nil
}

// sameInstant reports whether a stored time is t, kept to the microsecond.
func sameInstant(stored, t time.Time) bool {
	d := stored.Sub(t)
	return d > -time.Microsecond && d < time.Microsecond
}

// create runs an INSERT. On a retry after a lost connection, a unique
// violation may be the first attempt's own row, committed before the
// connection was lost: mine reads the row stored under the new row's id and
// reports whether it is the one being created, and then the create has
// succeeded.
func (s *Store) create(ctx context.Context, op, insert string, args []any, mine func(ctx context.Context, q querier) (bool, error)) error {
	return s.do(ctx, op, func(ctx context.Context, q querier, retry bool) error {
		_, err := q.Exec(ctx, insert, args...)
		var pgErr *pgconn.PgError
		if retry && errors.As(err, &pgErr) && pgErr.Code == sqlstateUniqueViolation {
			ok, err2 := mine(ctx, q)
			if err2 != nil && !errors.Is(err2, pgx.ErrNoRows) {
				return err2
			}
			if ok {
				return nil
			}
		}
		return err
	})
}

// CreateZoneKey implements keystore.Store.
func (s *Store) CreateZoneKey(ctx context.Context, row keystore.ZoneKeyRow) error {
	switch {
	case row.Version == 0:
		return fmt.Errorf("%w: postgres: zone key version must be at least 1", keystore.ErrInvalidValue)
	case len(row.Zone) > MaxKeyBytes:
		return fmt.Errorf("%w: postgres: zone of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(row.Zone), MaxKeyBytes)
	case len(row.ID) > MaxKeyBytes:
		return fmt.Errorf("%w: postgres: zone key id of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(row.ID), MaxKeyBytes)
	}
	op := fmt.Sprintf("creating zone %q key v%d", row.Zone, row.Version)
	args := []any{bs(row.Zone), int64(row.Version), bs(row.ID), nonNil(row.Wrapped), int64(row.KEKVersion), row.Created}
	return s.create(ctx, op, s.sqlInsertZoneKey, args, func(ctx context.Context, q querier) (bool, error) {
		got, err := scanZoneKey(q.QueryRow(ctx, s.sqlZoneKeyByID, bs(row.ID)))
		return err == nil && got.Zone == row.Zone && got.Version == row.Version && got.ID == row.ID &&
			bytes.Equal(got.Wrapped, row.Wrapped) && got.KEKVersion == row.KEKVersion && sameInstant(got.Created, row.Created), err
	})
}

// ZoneKey implements keystore.Store.
func (s *Store) ZoneKey(ctx context.Context, zone string, version uint32) (keystore.ZoneKeyRow, error) {
	var row keystore.ZoneKeyRow
	op := fmt.Sprintf("reading zone %q key v%d", zone, version)
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var r pgx.Row
		if version == 0 {
			r = q.QueryRow(ctx, s.sqlLatestZoneKey, bs(zone))
		} else {
			r = q.QueryRow(ctx, s.sqlZoneKey, bs(zone), int64(version))
		}
		var err error
		row, err = scanZoneKey(r)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: zone %q has no key v%d", keystore.ErrUnknownKey, zone, version)
		}
		return err
	})
	return row, err
}

// CreateDEK implements keystore.Store, and the tombstone check of
// keystore.LifecycleStore, in one round trip: a batch, which PostgreSQL
// runs as one implicit transaction, takes the subject's lock
// (lockSubjects) and then inserts the row unless a tombstone refuses it
// (sqlInsertDEKUnlessTombstone, whose snapshot is taken after the lock).
// Only when nothing was inserted are the tombstones read, to say why.
func (s *Store) CreateDEK(ctx context.Context, row keystore.DEKRow) error {
	if err := checkDEK(row); err != nil {
		return err
	}
	op := fmt.Sprintf("creating DEK %s", row.ID)
	args := []any{row.ID[:], bs(row.Zone), bs(row.Subject), int64(row.Generation), int64(row.ZoneKeyVersion), nonNil(row.Wrapped), row.Created, int64(row.KEKVersion)}
	var dup bool // the retry's insert collided: perhaps with the first attempt's row
	err := s.do(ctx, op, func(ctx context.Context, q querier, retry bool) error {
		dup = false
		b := &pgx.Batch{}
		b.Queue(s.sqlSubjectLock, s.subjectLockKey(row.Zone, row.Subject))
		b.Queue(s.sqlInsertDEKUnlessTombstone, args...)
		br := q.SendBatch(ctx, b)
		_, err := br.Exec()
		var tag pgconn.CommandTag
		if err == nil {
			tag, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		var pgErr *pgconn.PgError
		dup = retry && errors.As(err, &pgErr) && pgErr.Code == sqlstateUniqueViolation
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		ts, err := queryRows(ctx, q, scanTombstone, s.sqlTombstonesOf, bs(row.Zone), bs(row.Subject))
		if err != nil {
			return err
		}
		for _, t := range ts {
			if err := t.Refuses(row); err != nil {
				return err
			}
		}
		return fmt.Errorf("%w: postgres: DEK %s was refused by a tombstone that no longer refuses it", keystore.ErrConflict, row.ID)
	})
	if dup {
		// The first attempt committed if the stored row is this one.
		var mine bool
		if s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
			got, err := scanDEK(q.QueryRow(ctx, s.sqlDEK, row.ID[:]))
			mine = err == nil && sameDEK(got, row)
			return err
		}) == nil && mine {
			return nil
		}
	}
	return err
}

// checkDEK refuses a DEK row the table cannot hold.
func checkDEK(row keystore.DEKRow) error {
	switch {
	case row.Generation == 0:
		return fmt.Errorf("%w: postgres: DEK generation must be at least 1", keystore.ErrInvalidValue)
	case (row.ZoneKeyVersion == 0) == (row.KEKVersion == 0):
		return fmt.Errorf("%w: postgres: a DEK row has either a zone-key version or, pending, a KEK version (got %d and %d)",
			keystore.ErrInvalidValue, row.ZoneKeyVersion, row.KEKVersion)
	case len(row.Zone)+len(row.Subject) > MaxKeyBytes:
		return fmt.Errorf("%w: postgres: zone and subject of %d bytes, longer than the %d allowed", keystore.ErrInvalidValue, len(row.Zone)+len(row.Subject), MaxKeyBytes)
	}
	return nil
}

// sameDEK reports whether a stored DEK row is row, its creation time to the
// microsecond.
func sameDEK(got, row keystore.DEKRow) bool {
	return got.ID == row.ID && got.Zone == row.Zone && got.Subject == row.Subject && got.Generation == row.Generation &&
		got.ZoneKeyVersion == row.ZoneKeyVersion && got.KEKVersion == row.KEKVersion && bytes.Equal(got.Wrapped, row.Wrapped) &&
		sameInstant(got.Created, row.Created)
}

// DEK implements keystore.Store.
func (s *Store) DEK(ctx context.Context, id envelope.KeyID) (keystore.DEKRow, error) {
	var row keystore.DEKRow
	err := s.do(ctx, "reading DEK "+id.String(), func(ctx context.Context, q querier, _ bool) error {
		var err error
		row, err = scanDEK(q.QueryRow(ctx, s.sqlDEK, id[:]))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: DEK %s", keystore.ErrUnknownKey, id)
		}
		return err
	})
	return row, err
}

// DEKs implements keystore.Store with one query, WHERE id = ANY($1).
func (s *Store) DEKs(ctx context.Context, ids []envelope.KeyID) ([]keystore.DEKRow, error) {
	if len(ids) == 0 {
		if s.closed.Load() {
			return nil, fmt.Errorf("postgres: reading DEKs: %w", keystore.ErrClosed)
		}
		return nil, ctx.Err()
	}
	arg := make([][]byte, len(ids))
	for i := range ids {
		arg[i] = ids[i][:]
	}
	var out []keystore.DEKRow
	err := s.do(ctx, fmt.Sprintf("reading %d DEKs", len(ids)), func(ctx context.Context, q querier, _ bool) error {
		var err error
		out, err = queryRows(ctx, q, scanDEK, s.sqlDEKs, arg)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LatestDEK implements keystore.Store.
func (s *Store) LatestDEK(ctx context.Context, zone, subject string) (keystore.DEKRow, error) {
	var row keystore.DEKRow
	op := fmt.Sprintf("reading the latest DEK of a subject of zone %q", zone)
	err := s.do(ctx, op, func(ctx context.Context, q querier, _ bool) error {
		var err error
		row, err = scanDEK(q.QueryRow(ctx, s.sqlLatestDEK, bs(zone), bs(subject)))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: zone %q has no DEK for the subject", keystore.ErrUnknownKey, zone)
		}
		return err
	})
	return row, err
}

// bs converts a zone, subject or id to the bytes of its bytea column, never
// nil: pgx sends a nil slice as NULL.
func bs(s string) []byte {
	return nonNil([]byte(s))
}

// nonNil makes a nil byte slice an empty one: pgx sends nil as NULL, which
// the NOT NULL columns refuse.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
