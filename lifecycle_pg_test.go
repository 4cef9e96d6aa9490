package zonekey_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/kms"
)

// pgTool runs a PostgreSQL client program against the server of cfg.
func pgTool(t *testing.T, cfg *pgx.ConnConfig, name string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, append([]string{"-h", cfg.Host, "-p", fmt.Sprint(cfg.Port), "-U", cfg.User}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+cfg.Password)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
}

// TestEpochMakesShredFinalInPGDump is the backup proof with the PostgreSQL
// keystore: a pg_dump of the keystore's schema, taken while the subject had
// data, restored into another database after the shred and the epoch,
// opens nothing of the zone with the live custodian; the live keystore
// still opens the living subjects.
func TestEpochMakesShredFinalInPGDump(t *testing.T) {
	dsn := pgDSN()
	pgcfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	if _, err := exec.LookPath("pg_dump"); err != nil {
		t.Skip("pg_dump is not installed")
	}
	stamp := time.Now().UnixNano()
	schema := fmt.Sprintf("zk_backup_%d", stamp)
	restoreDB := fmt.Sprintf("zk_restore_%d", stamp)
	admin, err := pgx.Connect(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx := context.Background()
		admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		admin.Exec(ctx, "DROP DATABASE IF EXISTS "+restoreDB+" WITH (FORCE)")
		admin.Close(ctx)
	})
	withDB := func(db string) string {
		u, err := url.Parse(dsn)
		require.NoError(t, err)
		u.Path = "/" + db
		return withSchema(u.String(), schema)
	}
	keks := t.TempDir()
	open := func(db string) *zonekey.Client {
		c, err := zonekey.Open(t.Context(), zonekey.Config{StoreURL: withDB(db), Zones: zonekey.LocalZones(keks, "eu", "us")})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	live := open(pgcfg.Database)
	type user struct {
		ID    string `zonekey:"subject"`
		Zone  string `zonekey:"zone"`
		Email string `zonekey:"encrypt"`
	}
	users := map[string]*user{}
	for _, u := range []user{{"alice", "eu", "alice@example.eu"}, {"bob", "eu", "bob@example.eu"}, {"carol", "us", "carol@example.com"}} {
		rec := u
		require.NoError(t, live.Encrypt(t.Context(), &rec))
		users[u.ID] = &rec
	}
	decrypt := func(c *zonekey.Client, id string) (string, error) {
		rec := *users[id]
		err := c.Decrypt(t.Context(), &rec)
		return rec.Email, err
	}

	dump := filepath.Join(t.TempDir(), "keystore.sql")
	pgTool(t, pgcfg, "pg_dump", "-d", pgcfg.Database, "-n", schema, "-f", dump)

	_, err = live.Keyring().ShredSubject(t.Context(), "eu", "alice")
	require.NoError(t, err)
	_, err = decrypt(live, "alice")
	require.ErrorIs(t, err, zonekey.ErrKeyShredded)
	res, err := live.Keyring().Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)
	require.Equal(t, 1, res.Rewrapped, "bob's DEK")

	pgTool(t, pgcfg, "createdb", restoreDB)
	pgTool(t, pgcfg, "psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", restoreDB, "-f", dump)
	restored := open(restoreDB)
	for _, id := range []string{"alice", "bob"} {
		_, err := decrypt(restored, id)
		require.ErrorIs(t, err, kms.ErrUnknownKey, "%s from the restored backup", id)
	}
	email, err := decrypt(restored, "carol")
	require.NoError(t, err, "the other zone's keys in the backup are untouched")
	require.Equal(t, "carol@example.com", email)

	email, err = decrypt(open(pgcfg.Database), "bob")
	require.NoError(t, err, "a living subject from the live keystore")
	require.Equal(t, "bob@example.eu", email)
	_, err = decrypt(open(pgcfg.Database), "alice")
	require.ErrorIs(t, err, zonekey.ErrKeyShredded)
}
