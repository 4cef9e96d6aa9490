package postgres

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/jackc/pgx/v5"

	"github.com/zonekey/zonekey/keystore"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// objectNames are the names, before the table prefix, of the tables and
// named constraints that the migrations and the store use. A migration that
// names anything else fails to render, so the prefix limit below stays
// right.
var objectNames = []string{
	"zone_keys", "zone_keys_pkey", "zone_keys_id_key",
	"deks", "deks_pkey", "deks_subject_key", "deks_wrap_check",
	"shredded_deks", "shredded_deks_pkey",
	"tombstones", "tombstones_pkey",
	"epochs", "epochs_pkey",
	"schema_migrations", "schema_migrations_pkey",
}

// maxIdentifier is PostgreSQL's identifier length (NAMEDATALEN-1); longer
// names are silently truncated by the server, so they are refused here.
const maxIdentifier = 63

// MaxTablePrefix is the longest table prefix, 41 bytes: the prefixed names
// of the store's tables and constraints must fit PostgreSQL's 63-byte
// identifiers.
const MaxTablePrefix = maxIdentifier - len("schema_migrations_pkey")

// migration is one embedded schema migration, migrations/NNNN_name.sql.
type migration struct {
	version int64
	name    string // file name
	tmpl    *template.Template
}

// migrations are the embedded migrations, by version 1, 2, ...
var migrations = mustLoadMigrations()

// schemaVersion is the newest schema version this build knows.
var schemaVersion = int64(len(migrations))

var migrationName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

func mustLoadMigrations() []migration {
	ms, err := loadMigrations(migrationFiles)
	if err != nil {
		panic("keystore/postgres: " + err.Error())
	}
	return ms
}

// loadMigrations parses the migration files of fsys: names NNNN_name.sql,
// numbered 1, 2, ... without gaps.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	paths, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	slices.Sort(paths)
	var ms []migration
	for i, p := range paths {
		name := strings.TrimPrefix(p, "migrations/")
		m := migrationName.FindStringSubmatch(name)
		if m == nil {
			return nil, fmt.Errorf("migration file %s: want a name NNNN_name.sql", name)
		}
		v, _ := strconv.ParseInt(m[1], 10, 64)
		if v != int64(i+1) {
			return nil, fmt.Errorf("migration file %s: version %d, want %d (versions start at 1 without gaps)", name, v, i+1)
		}
		text, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, err
		}
		// The functions are placeholders here; render binds them to a
		// schema and prefix.
		tmpl, err := template.New(name).Option("missingkey=error").Funcs(template.FuncMap{
			"table": func(string) (string, error) { return "", nil },
			"name":  func(string) (string, error) { return "", nil },
		}).Parse(string(text))
		if err != nil {
			return nil, fmt.Errorf("migration file %s: %v", name, err)
		}
		ms = append(ms, migration{version: v, name: name, tmpl: tmpl})
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("no migration files")
	}
	return ms, nil
}

// names makes the quoted names of a store's schema objects.
type names struct {
	schema, prefix string
}

// local returns the prefixed, quoted, unqualified name of an object.
func (n names) local(name string) (string, error) {
	if !slices.Contains(objectNames, name) {
		return "", fmt.Errorf("object name %q is not listed in objectNames", name)
	}
	if len(n.prefix)+len(name) > maxIdentifier {
		return "", fmt.Errorf("prefixed name %s%s is longer than %d bytes", n.prefix, name, maxIdentifier)
	}
	return pgx.Identifier{n.prefix + name}.Sanitize(), nil
}

// table returns the prefixed, quoted, schema-qualified name of a table.
func (n names) table(name string) (string, error) {
	if _, err := n.local(name); err != nil {
		return "", err
	}
	return pgx.Identifier{n.schema, n.prefix + name}.Sanitize(), nil
}

// mustTable is table for the fixed names of the store's own statements.
func (n names) mustTable(name string) string {
	t, err := n.table(name)
	if err != nil {
		panic("keystore/postgres: " + err.Error())
	}
	return t
}

// render returns the SQL of m for the schema and prefix of n.
func (n names) render(m migration) (string, error) {
	t, err := m.tmpl.Clone()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = t.Funcs(template.FuncMap{"table": n.table, "name": n.local}).Execute(&b, nil)
	if err != nil {
		return "", fmt.Errorf("migration %s: %v", m.name, err)
	}
	return b.String(), nil
}

// lockKey is the pg_advisory_xact_lock key of a schema's migrations: every
// build and every instance derives the same key from the schema name.
func lockKey(schema string) int64 {
	sum := sha256.Sum256([]byte("zonekey/keystore/postgres/migrate\x00" + schema))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// migrate brings the store's schema to schemaVersion in one transaction
// under the schema's advisory lock, and returns the versions it applied.
func (s *Store) migrate(ctx context.Context) (applied []int64, err error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	// Held until commit: instances opening at once apply the migrations
	// one after another, and each later one reads what the earlier
	// committed (read committed takes a fresh snapshot per statement).
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(s.names.schema)); err != nil {
		return nil, err
	}
	migrationsTable := s.names.mustTable("schema_migrations")
	var schemaExists, tableExists bool
	err = tx.QueryRow(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1), to_regclass($2) IS NOT NULL",
		s.names.schema, migrationsTable).Scan(&schemaExists, &tableExists)
	if err != nil {
		return nil, err
	}
	// DDL only when something is missing, so that a role without CREATE
	// can open a migrated schema.
	if !schemaExists {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{s.names.schema}.Sanitize()); err != nil {
			return nil, err
		}
	}
	if !tableExists {
		pkey, _ := s.names.local("schema_migrations_pkey")
		_, err := tx.Exec(ctx, "CREATE TABLE "+migrationsTable+` (
	version int8        NOT NULL CONSTRAINT `+pkey+` PRIMARY KEY,
	name    text        NOT NULL,
	applied timestamptz NOT NULL DEFAULT now()
)`)
		if err != nil {
			return nil, err
		}
	}
	var current int64
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+migrationsTable).Scan(&current); err != nil {
		return nil, err
	}
	if current > schemaVersion {
		return nil, fmt.Errorf("%w: postgres: schema %q is at version %d, newer than this build knows (%d): upgrade this program",
			keystore.ErrStore, s.names.schema, current, schemaVersion)
	}
	for _, m := range migrations[current:] {
		sql, err := s.names.render(m)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("migration %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+migrationsTable+" (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return nil, err
		}
		applied = append(applied, m.version)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return applied, nil
}
