package postgres_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/keystoretest"
	"github.com/zonekey/zonekey/keystore/postgres"
)

// The tests need a PostgreSQL server (14 or later) where the user may create
// schemas. Each test works in a fresh schema of its own, dropped when it
// ends, so packages and test runs never collide.
//
//	ZONEKEY_POSTGRES_DSN  connection string of the test database
//	                      (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable)
var testDSN = cmp.Or(os.Getenv("ZONEKEY_POSTGRES_DSN"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")

// admin is a pool for the tests' own statements: creating and dropping
// schemas, changing rows behind a store, terminating a store's backends.
var admin *pgxpool.Pool

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	pool, err := pgxpool.New(ctx, withParams(testDSN, map[string]string{"application_name": "zonekey-test-admin"}))
	if err == nil {
		err = pool.Ping(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "keystore/postgres: the tests need PostgreSQL (set ZONEKEY_POSTGRES_DSN; the default is %s): %v\n",
			"postgres://postgres@127.0.0.1:5432/test?sslmode=disable", err)
		os.Exit(1)
	}
	admin = pool
	code := m.Run()
	pool.Close()
	os.Exit(code)
}

// withParams adds connection parameters to a URL or keyword/value DSN.
func withParams(dsn string, params map[string]string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			panic(err)
		}
		q := u.Query()
		for k, v := range params {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	for k, v := range params {
		dsn += fmt.Sprintf(" %s='%s'", k, strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
	}
	return dsn
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

var notIdent = regexp.MustCompile(`[^a-z0-9]+`)

// freshSchema returns the name of a schema that does not exist yet, and
// drops it when t ends.
func freshSchema(t testing.TB) string {
	t.Helper()
	short := notIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(short) > 32 {
		short = short[len(short)-32:]
	}
	name := "zkt_" + randomHex(5) + "_" + strings.Trim(short, "_")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
		if err != nil {
			t.Errorf("dropping test schema %s: %v", name, err)
		}
	})
	return name
}

// appName returns an application_name that tells one store's backends
// from every other's.
func appName() string { return "zonekey-test-" + randomHex(6) }

// openStore opens a store on schema with application_name app, closed when
// t ends.
func openStore(t testing.TB, schema, app string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), withParams(testDSN, map[string]string{"application_name": app}),
		append([]postgres.Option{postgres.WithSchema(schema)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// table returns the quoted name of a table of the default prefix.
func table(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

// harness makes stores over fresh schemas; Reopen closes the store's pool
// and opens a new one on the same schema.
type harness struct{}

func (harness) MakeStore(ctx context.Context, t *testing.T) keystore.Store {
	t.Helper()
	return openStore(t, freshSchema(t), appName())
}

func (harness) Reopen(ctx context.Context, t *testing.T, s keystore.Store) keystore.Store {
	t.Helper()
	ps := s.(*postgres.Store)
	require.NoError(t, ps.Close())
	return openStore(t, ps.Schema(), appName())
}

func TestConformance(t *testing.T) {
	keystoretest.RunConformanceTests(t, harness{})
}

// newDEK returns a DEK row with a random id and wrapped key.
func newDEK(zone, subject string, gen uint32) keystore.DEKRow {
	w := make([]byte, envelope.NonceSize+envelope.KeySize+envelope.TagSize)
	rand.Read(w)
	return keystore.DEKRow{
		ID: envelope.NewKeyID(), Zone: zone, Subject: subject, Generation: gen, ZoneKeyVersion: 1,
		Wrapped: w, Created: time.Now().UTC().Truncate(time.Microsecond),
	}
}

// insertDEKRow inserts row into schema's deks table on q, behind the store.
func insertDEKRow(ctx context.Context, t testing.TB, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, schema string, row keystore.DEKRow) {
	t.Helper()
	_, err := q.Exec(ctx, "INSERT INTO "+table(schema, "deks")+
		" (id, zone, subject, generation, zone_key_version, wrapped, created) VALUES ($1, $2, $3, $4, $5, $6, $7)",
		row.ID[:], []byte(row.Zone), []byte(row.Subject), int64(row.Generation), int64(row.ZoneKeyVersion), row.Wrapped, row.Created)
	require.NoError(t, err)
}

// subjectRows counts the DEK rows of (zone, subject) in schema.
func subjectRows(t testing.TB, schema, zone, subject string) int {
	t.Helper()
	var n int
	err := admin.QueryRow(context.Background(), "SELECT count(*) FROM "+table(schema, "deks")+" WHERE zone = $1 AND subject = $2",
		[]byte(zone), []byte(subject)).Scan(&n)
	require.NoError(t, err)
	return n
}

func TestMigrateConcurrently(t *testing.T) {
	schema := freshSchema(t)
	const openers = 8
	stores := make([]*postgres.Store, openers)
	errs := make([]error, openers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range openers {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = postgres.Open(t.Context(), testDSN, postgres.WithSchema(schema))
		})
	}
	close(start)
	wg.Wait()
	applied := map[int64]int{}
	for i, s := range stores {
		require.NoError(t, errs[i], "Open %d", i)
		t.Cleanup(func() { _ = s.Close() })
		for _, v := range postgres.Applied(s) {
			applied[v]++
		}
	}
	// Each migration was applied by exactly one of the openers.
	want := map[int64]int{}
	for v := int64(1); v <= postgres.SchemaVersion; v++ {
		want[v] = 1
	}
	require.Equal(t, want, applied, "migrations applied, by version: how many openers applied each")
	var versions []int64
	rows, err := admin.Query(t.Context(), "SELECT version FROM "+table(schema, "schema_migrations")+" ORDER BY version")
	require.NoError(t, err)
	versions, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, versions, int(postgres.SchemaVersion))
	require.Equal(t, int64(1), versions[0])

	// Every store works on the one schema.
	d := newDEK("eu", "alice", 1)
	require.NoError(t, stores[0].CreateDEK(t.Context(), d))
	for _, s := range stores {
		got, err := s.LatestDEK(t.Context(), "eu", "alice")
		require.NoError(t, err)
		require.Equal(t, d.ID, got.ID)
	}
}

func TestMigrateIdempotent(t *testing.T) {
	schema := freshSchema(t)
	s := openStore(t, schema, appName())
	require.Len(t, postgres.Applied(s), int(postgres.SchemaVersion), "first open applies every migration")
	d := newDEK("eu", "alice", 1)
	require.NoError(t, s.CreateDEK(t.Context(), d))
	require.NoError(t, s.Close())
	for range 2 {
		s2 := openStore(t, schema, appName())
		require.Empty(t, postgres.Applied(s2), "reopening applies nothing")
		got, err := s2.DEK(t.Context(), d.ID)
		require.NoError(t, err)
		require.Equal(t, d.ID, got.ID)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	schema := freshSchema(t)
	openStore(t, schema, appName())
	_, err := admin.Exec(t.Context(), "INSERT INTO "+table(schema, "schema_migrations")+" (version, name) VALUES ($1, 'from the future')",
		postgres.SchemaVersion+1)
	require.NoError(t, err)
	s, err := postgres.Open(t.Context(), testDSN, postgres.WithSchema(schema))
	if s != nil {
		s.Close()
	}
	require.ErrorIs(t, err, keystore.ErrStore)
	require.ErrorContains(t, err, "newer than this build knows")
	require.ErrorContains(t, err, fmt.Sprintf("version %d", postgres.SchemaVersion+1))
}

func TestMigrations(t *testing.T) {
	require.Equal(t, 41, postgres.MaxTablePrefix, "the documented limit")
	// The embedded migrations render for the longest prefix allowed.
	prefix := strings.Repeat("p", postgres.MaxTablePrefix)
	sqls, err := postgres.RenderMigrations("s", prefix)
	require.NoError(t, err)
	require.Contains(t, sqls[0], `"s"."`+prefix+`deks"`)

	// And such a store opens and works.
	s := openStore(t, freshSchema(t), appName(), postgres.WithTablePrefix(prefix))
	require.NoError(t, s.CreateDEK(t.Context(), newDEK("eu", "a", 1)))

	for name, fsys := range map[string]fstest.MapFS{
		"Gap":        {"migrations/0001_a.sql": {Data: []byte("SELECT 1")}, "migrations/0003_c.sql": {Data: []byte("SELECT 1")}},
		"NotFromOne": {"migrations/0002_b.sql": {Data: []byte("SELECT 1")}},
		"BadName":    {"migrations/1_a.sql": {Data: []byte("SELECT 1")}},
		"None":       {},
		"BadSyntax":  {"migrations/0001_a.sql": {Data: []byte("{{table")}},
	} {
		_, err := postgres.LoadMigrations(fsys)
		require.Error(t, err, name)
	}
	ms, err := postgres.LoadMigrations(fstest.MapFS{"migrations/0001_a.sql": {Data: []byte(`CREATE TABLE {{table "other"}} ()`)}})
	require.NoError(t, err, "an unknown object name is caught when rendering")
	require.Len(t, ms, 1)
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		dsn  string
		opts []postgres.Option
	}{
		{"EmptySchema", testDSN, []postgres.Option{postgres.WithSchema("")}},
		{"UpperCase", testDSN, []postgres.Option{postgres.WithSchema("Keys")}},
		{"Quote", testDSN, []postgres.Option{postgres.WithSchema(`a"b`)}},
		{"Dash", testDSN, []postgres.Option{postgres.WithSchema("a-b")}},
		{"Digit", testDSN, []postgres.Option{postgres.WithSchema("1a")}},
		{"Reserved", testDSN, []postgres.Option{postgres.WithSchema("pg_keys")}},
		{"LongSchema", testDSN, []postgres.Option{postgres.WithSchema(strings.Repeat("a", 64))}},
		{"PrefixDot", testDSN, []postgres.Option{postgres.WithTablePrefix("a.b")}},
		{"LongPrefix", testDSN, []postgres.Option{postgres.WithTablePrefix(strings.Repeat("a", postgres.MaxTablePrefix+1))}},
		{"DSNSchema", withParams(testDSN, map[string]string{"zonekey_schema": "Bad"}), nil},
		{"DSNUnknownParameter", withParams(testDSN, map[string]string{"zonekey_shema": "keys"}), nil},
		{"MalformedDSN", "postgres://%zz", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := postgres.Open(t.Context(), tc.dsn, tc.opts...)
			if s != nil {
				s.Close()
			}
			require.ErrorIs(t, err, keystore.ErrInvalidValue)
		})
	}
	_, err := postgres.New(t.Context(), nil)
	require.ErrorIs(t, err, keystore.ErrInvalidValue)
}

func TestDSNParameters(t *testing.T) {
	schema := freshSchema(t)
	dsn := withParams(testDSN, map[string]string{"zonekey_schema": schema, "zonekey_table_prefix": "app_", "pool_max_conns": "2"})
	s, err := postgres.Open(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.Equal(t, schema, s.Schema())
	for _, name := range []string{"app_zone_keys", "app_deks", "app_schema_migrations"} {
		var ok bool
		require.NoError(t, admin.QueryRow(t.Context(), "SELECT to_regclass($1) IS NOT NULL", table(schema, name)).Scan(&ok))
		require.True(t, ok, "table %s.%s", schema, name)
	}
	// An option takes precedence over the parameter.
	other := freshSchema(t)
	s2, err := postgres.Open(t.Context(), dsn, postgres.WithSchema(other))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	require.Equal(t, other, s2.Schema())

	// Keyword/value form.
	kv := fmt.Sprintf("%s zonekey_schema=%s", kvDSN(t), schema)
	s3, err := postgres.Open(t.Context(), kv, postgres.WithTablePrefix("app_"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s3.Close() })
	d := newDEK("eu", "alice", 1)
	require.NoError(t, s.CreateDEK(t.Context(), d))
	got, err := s3.DEK(t.Context(), d.ID)
	require.NoError(t, err)
	require.Equal(t, d.Subject, got.Subject)
}

// kvDSN returns the test database as a keyword/value connection string.
func kvDSN(t *testing.T) string {
	cfg, err := pgconn.ParseConfig(testDSN)
	require.NoError(t, err)
	kv := fmt.Sprintf("host=%s port=%d dbname=%s user=%s", cfg.Host, cfg.Port, cfg.Database, cfg.User)
	if cfg.Password != "" {
		kv += " password=" + cfg.Password
	}
	if cfg.TLSConfig == nil {
		kv += " sslmode=disable"
	}
	return kv
}

func TestTablePrefixesIsolated(t *testing.T) {
	schema := freshSchema(t)
	a := openStore(t, schema, appName(), postgres.WithTablePrefix("a_"))
	b := openStore(t, schema, appName(), postgres.WithTablePrefix("b_"))
	d := newDEK("eu", "alice", 1)
	require.NoError(t, a.CreateDEK(t.Context(), d))
	_, err := b.DEK(t.Context(), d.ID)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	require.NoError(t, b.CreateDEK(t.Context(), d), "the same row in another prefix's tables")
}

func TestInvalidValues(t *testing.T) {
	schema := freshSchema(t)
	s := openStore(t, schema, appName())
	for name, row := range map[string]keystore.DEKRow{
		"GenerationZero": newDEK("eu", "alice", 0),
		"LongSubject":    newDEK("eu", strings.Repeat("x", postgres.MaxKeyBytes), 1),
	} {
		err := s.CreateDEK(t.Context(), row)
		require.ErrorIs(t, err, keystore.ErrInvalidValue, name)
	}
	require.ErrorIs(t, s.CreateZoneKey(t.Context(), keystore.ZoneKeyRow{Zone: "eu", Version: 0, ID: "x", Wrapped: []byte{1}}), keystore.ErrInvalidValue)
	require.ErrorIs(t, s.CreateZoneKey(t.Context(), keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: strings.Repeat("x", postgres.MaxKeyBytes+1)}), keystore.ErrInvalidValue)
	var n int
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT (SELECT count(*) FROM "+table(schema, "deks")+") + (SELECT count(*) FROM "+table(schema, "zone_keys")+")").Scan(&n))
	require.Zero(t, n, "refused rows were written")

	// The longest zone and subject allowed fit the unique index, as do a nil
	// wrapped key and empty strings.
	long := newDEK("eu", strings.Repeat("\xff", postgres.MaxKeyBytes-2), 1)
	require.NoError(t, s.CreateDEK(t.Context(), long))
	got, err := s.LatestDEK(t.Context(), "eu", long.Subject)
	require.NoError(t, err)
	require.Equal(t, long.ID, got.ID)
	require.NoError(t, s.CreateZoneKey(t.Context(), keystore.ZoneKeyRow{Zone: "", Version: 1, ID: "", Wrapped: nil}))
	zk, err := s.ZoneKey(t.Context(), "", 0)
	require.NoError(t, err)
	require.Empty(t, zk.Wrapped)
}

// queryCounter is a pgx.QueryTracer that records the SQL of every query the
// pool runs.
type queryCounter struct {
	mu  sync.Mutex
	sql []string
}

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.mu.Lock()
	c.sql = append(c.sql, data.SQL)
	c.mu.Unlock()
	return ctx
}

func (c *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// reset returns the queries recorded since the last reset.
func (c *queryCounter) reset() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.sql
	c.sql = nil
	return out
}

// TestDEKsIsOneQuery proves that a bulk load of DEKs, by the store and by the
// keyring's Prefetch, is one query, whatever the number of ids.
func TestDEKsIsOneQuery(t *testing.T) {
	schema := freshSchema(t)
	cfg, err := pgxpool.ParseConfig(testDSN)
	require.NoError(t, err)
	postgres.ConfigurePool(cfg)
	tracer := &queryCounter{}
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	defer pool.Close()
	s, err := postgres.New(t.Context(), pool, postgres.WithSchema(schema))
	require.NoError(t, err)
	defer s.Close()

	kek := kekFile(t)
	kr := newKeyring(t, s, kek, nil)
	var ids []envelope.KeyID
	for i := range 500 {
		d, err := kr.DataKey(t.Context(), "eu", fmt.Sprintf("subject-%d", i))
		require.NoError(t, err)
		ids = append(ids, d.ID())
	}
	ids = append(ids, envelope.NewKeyID(), ids[0])

	tracer.reset()
	rows, err := s.DEKs(t.Context(), ids)
	require.NoError(t, err)
	require.Len(t, rows, 500)
	queries := tracer.reset()
	require.Len(t, queries, 1, "Store.DEKs of %d ids ran these queries: %q", len(ids), queries)
	require.Contains(t, queries[0], "= ANY($1)")

	// A second keyring (a cold cache) prefetches them all with one DEKs
	// query; its Key calls then read nothing.
	kr2 := newKeyring(t, s, kek, nil)
	tracer.reset()
	require.NoError(t, kr2.Prefetch(t.Context(), ids))
	queries = tracer.reset()
	var deksQueries int
	for _, q := range queries {
		if strings.Contains(q, `"deks"`) {
			deksQueries++
		}
	}
	require.Equal(t, 1, deksQueries, "Prefetch of %d ids ran these queries: %q", len(ids), queries)
	for _, id := range ids[:500] {
		_, err := kr2.Key(t.Context(), id)
		require.NoError(t, err)
	}
	require.Empty(t, tracer.reset(), "Key after Prefetch")

	// The pool is the caller's: closing the store leaves it open.
	require.NoError(t, s.Close())
	_, err = s.DEKs(t.Context(), ids)
	require.ErrorIs(t, err, keystore.ErrClosed)
	require.NoError(t, pool.Ping(t.Context()))
}

func TestServerUnreachable(t *testing.T) {
	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	start := time.Now()
	s, err := postgres.Open(t.Context(), fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable&connect_timeout=5", addr.Port))
	if s != nil {
		s.Close()
	}
	require.ErrorIs(t, err, keystore.ErrStore)
	require.Less(t, time.Since(start), 5*time.Second)
	var opErr *net.OpError
	require.ErrorAs(t, err, &opErr, "ErrStore wraps the driver's error")
}

// backends returns the pids of the server backends of application app.
func backends(t testing.TB, app, extraCond string) []int32 {
	t.Helper()
	rows, err := admin.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = $1"+extraCond, app)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	return pids
}

// terminate ends the backends of application app and waits until they are
// gone, returning how many there were.
func terminate(t testing.TB, app, extraCond string) int {
	t.Helper()
	pids := backends(t, app, extraCond)
	for _, pid := range pids {
		var ok bool
		require.NoError(t, admin.QueryRow(context.Background(), "SELECT pg_terminate_backend($1, 5000)", pid).Scan(&ok))
	}
	return len(pids)
}

// waitForLockWait waits until a backend of application app waits for a lock.
func waitForLockWait(t testing.TB, app string) {
	t.Helper()
	require.Eventually(t, func() bool {
		return len(backends(t, app, " AND wait_event_type = 'Lock'")) > 0
	}, 10*time.Second, 5*time.Millisecond, "no backend of %s waits for a lock", app)
}

func TestConnectionLoss(t *testing.T) {
	t.Run("BetweenOperations", func(t *testing.T) {
		schema, app := freshSchema(t), appName()
		s := openStore(t, schema, app)
		// Fill the pool with several connections.
		var rows []keystore.DEKRow
		for i := range 8 {
			rows = append(rows, newDEK("eu", fmt.Sprintf("s%d", i), 1))
		}
		var wg sync.WaitGroup
		for _, r := range rows {
			wg.Go(func() { require.NoError(t, s.CreateDEK(t.Context(), r)) })
		}
		wg.Wait()
		for round := range 3 {
			n := terminate(t, app, "")
			require.Positive(t, n, "round %d: the store has no backends to terminate", round)
			// The next operations succeed on fresh connections.
			got, err := s.DEK(t.Context(), rows[round].ID)
			require.NoError(t, err, "round %d: first read after the backends were terminated", round)
			require.Equal(t, rows[round].ID, got.ID)
			d := newDEK("eu", fmt.Sprintf("after-%d", round), 1)
			require.NoError(t, s.CreateDEK(t.Context(), d), "round %d", round)
			ids := []envelope.KeyID{rows[0].ID, d.ID}
			all, err := s.DEKs(t.Context(), ids)
			require.NoError(t, err)
			require.Len(t, all, 2)
		}
	})

	// A create waits for a lock (another transaction inserted the same
	// subject's generation and has not committed) while its backend is
	// terminated.
	inFlight := func(t *testing.T, terminations int, commit bool) (s *postgres.Store, schema string, mine, theirs keystore.DEKRow, err error) {
		schema, app := freshSchema(t), appName()
		s = openStore(t, schema, app)
		require.NoError(t, s.CreateDEK(t.Context(), newDEK("eu", "warm-up", 1)))
		tx, err := admin.Begin(t.Context())
		require.NoError(t, err)
		defer tx.Rollback(context.Background())
		theirs = newDEK("eu", "carol", 1)
		insertDEKRow(t.Context(), t, tx, schema, theirs)

		mine = newDEK("eu", "carol", 1)
		done := make(chan error, 1)
		go func() { done <- s.CreateDEK(t.Context(), mine) }()
		for range terminations {
			waitForLockWait(t, app)
			require.Equal(t, 1, terminate(t, app, " AND wait_event_type = 'Lock'"))
		}
		if terminations < 2 {
			// The retry waits for the same lock again.
			waitForLockWait(t, app)
			select {
			case err := <-done:
				t.Fatalf("the create returned while the other transaction held the lock: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
		if commit {
			require.NoError(t, tx.Commit(t.Context()))
		} else {
			require.NoError(t, tx.Rollback(t.Context()))
		}
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the create did not return")
		}
		return s, schema, mine, theirs, err
	}

	t.Run("CreateInFlight/OtherRollsBack", func(t *testing.T) {
		s, schema, mine, _, err := inFlight(t, 1, false)
		require.NoError(t, err, "the create is retried on a new connection and stores its row")
		got, err := s.LatestDEK(t.Context(), "eu", "carol")
		require.NoError(t, err)
		require.Equal(t, mine.ID, got.ID)
		require.Equal(t, 1, subjectRows(t, schema, "eu", "carol"))
	})
	t.Run("CreateInFlight/OtherCommits", func(t *testing.T) {
		s, schema, mine, theirs, err := inFlight(t, 1, true)
		require.ErrorIs(t, err, keystore.ErrExists, "the retried create loses to the committed row")
		got, err := s.LatestDEK(t.Context(), "eu", "carol")
		require.NoError(t, err)
		require.Equal(t, theirs.ID, got.ID)
		_, err = s.DEK(t.Context(), mine.ID)
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
		require.Equal(t, 1, subjectRows(t, schema, "eu", "carol"))
	})
	t.Run("CreateInFlight/LostTwice", func(t *testing.T) {
		s, schema, mine, _, err := inFlight(t, 2, false)
		require.ErrorIs(t, err, keystore.ErrStore, "a create whose retry is lost too")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, "ErrStore wraps the server's error")
		require.Equal(t, "57P01", pgErr.Code, "admin_shutdown")
		// Nothing was written, and the store works.
		_, err = s.DEK(t.Context(), mine.ID)
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
		require.Zero(t, subjectRows(t, schema, "eu", "carol"))
		require.NoError(t, s.CreateDEK(t.Context(), mine))
		require.Equal(t, 1, subjectRows(t, schema, "eu", "carol"))
	})

	// The connection is lost after the server committed a create but
	// before the client read the answer: the retry finds its own row.
	t.Run("CommittedButUnacknowledged", func(t *testing.T) {
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
		// Prepare the INSERT on the connection.
		require.NoError(t, s.CreateDEK(t.Context(), newDEK("eu", "warm-up", 1)))

		p.cutAfter("INSERT 0 1")
		d := newDEK("eu", "dave", 1)
		require.NoError(t, s.CreateDEK(t.Context(), d), "the retry recognises the row the lost attempt committed")
		require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the DEK create")
		got, err := s.LatestDEK(t.Context(), "eu", "dave")
		require.NoError(t, err)
		require.Equal(t, d.ID, got.ID)
		require.Equal(t, 1, subjectRows(t, schema, "eu", "dave"))

		p.cutAfter("INSERT 0 1")
		zk := keystore.ZoneKeyRow{Zone: "eu", Version: 1, ID: randomHex(16), Wrapped: []byte("w"), KEKVersion: 1, Created: time.Now()}
		require.NoError(t, s.CreateZoneKey(t.Context(), zk), "the retry recognises the row the lost attempt committed")
		require.Equal(t, int32(1), p.cuts.Swap(0), "the proxy cut the connection of the zone-key create")
		gotZK, err := s.ZoneKey(t.Context(), "eu", 0)
		require.NoError(t, err)
		require.Equal(t, zk.ID, gotZK.ID)

	})
}

// cutProxy forwards TCP connections to the test server. Armed by cutAfter,
// it swallows the first server message chunk that holds a marker and closes
// that connection: the server has done the work, the client never hears.
type cutProxy struct {
	port   uint16
	marker atomic.Pointer[string]
	cuts   atomic.Int32
}

func startCutProxy(t *testing.T) *cutProxy {
	t.Helper()
	cfg, err := pgconn.ParseConfig(testDSN)
	require.NoError(t, err)
	network, upstream := "tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	if strings.HasPrefix(cfg.Host, "/") {
		network, upstream = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", cfg.Host, cfg.Port)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	p := &cutProxy{port: uint16(l.Addr().(*net.TCPAddr).Port)}
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial(network, upstream)
			if err != nil {
				client.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(server, client)
				server.Close()
			}()
			go func() {
				defer client.Close()
				defer server.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						if m := p.marker.Load(); m != nil && bytes.Contains(buf[:n], []byte(*m)) && p.marker.CompareAndSwap(m, nil) {
							p.cuts.Add(1)
							return
						}
						if _, err := client.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *cutProxy) cutAfter(marker string) { p.marker.Store(&marker) }

// TestContextDeadline: calls that wait for a lock another transaction holds
// return the context's error when their deadline passes, are cancelled at
// the server, and write nothing.
func TestContextDeadline(t *testing.T) {
	schema, app := freshSchema(t), appName()
	s := openStore(t, schema, app)
	known := newDEK("eu", "alice", 1)
	require.NoError(t, s.CreateDEK(t.Context(), known))

	t.Run("CreateWaitingForARow", func(t *testing.T) {
		tx, err := admin.Begin(t.Context())
		require.NoError(t, err)
		defer tx.Rollback(context.Background())
		insertDEKRow(t.Context(), t, tx, schema, newDEK("eu", "bob", 1))

		mine := newDEK("eu", "bob", 1)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		err = s.CreateDEK(ctx, mine)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, keystore.ErrStore)
		require.Less(t, time.Since(start), 3*time.Second)
		// The other transaction rolls back at once: had the cancelled
		// INSERT still been waiting at the server, it would now commit.
		require.NoError(t, tx.Rollback(t.Context()))
		time.Sleep(100 * time.Millisecond)
		require.Zero(t, subjectRows(t, schema, "eu", "bob"), "the cancelled create was written")
		_, err = s.DEK(t.Context(), mine.ID)
		require.ErrorIs(t, err, keystore.ErrUnknownKey)
	})

	t.Run("ReadWaitingForATableLock", func(t *testing.T) {
		tx, err := admin.Begin(t.Context())
		require.NoError(t, err)
		defer tx.Rollback(context.Background())
		_, err = tx.Exec(t.Context(), "LOCK TABLE "+table(schema, "deks")+" IN ACCESS EXCLUSIVE MODE")
		require.NoError(t, err)
		calls := map[string]func(ctx context.Context) error{
			"DEK":       func(ctx context.Context) error { _, err := s.DEK(ctx, known.ID); return err },
			"DEKs":      func(ctx context.Context) error { _, err := s.DEKs(ctx, []envelope.KeyID{known.ID}); return err },
			"LatestDEK": func(ctx context.Context) error { _, err := s.LatestDEK(ctx, "eu", "alice"); return err },
			"CreateDEK": func(ctx context.Context) error { return s.CreateDEK(ctx, newDEK("eu", "carol", 1)) },
		}
		for name, call := range calls {
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			err := call(ctx)
			cancel()
			require.ErrorIs(t, err, context.DeadlineExceeded, name)
		}
		require.NoError(t, tx.Rollback(t.Context()))
		time.Sleep(100 * time.Millisecond)
		require.Zero(t, subjectRows(t, schema, "eu", "carol"))
		got, err := s.DEK(t.Context(), known.ID)
		require.NoError(t, err, "the store works after the cancelled calls")
		require.Equal(t, known.ID, got.ID)
		require.Empty(t, backends(t, app, " AND state = 'active'"), "no call of the store is still running at the server")
	})
}
