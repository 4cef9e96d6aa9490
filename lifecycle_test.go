package zonekey_test

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
)

// lifecycleEnv is a keystore and KEK directory that several clients (as
// processes) share.
type lifecycleEnv struct {
	dir      string
	storeURL string
}

func newLifecycleEnvs(t *testing.T) map[string]*lifecycleEnv {
	dsn := pgDSN()
	schema := fmt.Sprintf("zk_lifecycle_%d", time.Now().UnixNano())
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			conn.Close(context.Background())
		}
	})
	return map[string]*lifecycleEnv{
		"bbolt":    {dir: t.TempDir()},
		"postgres": {dir: t.TempDir(), storeURL: withSchema(dsn, schema)},
	}
}

// pgDSN is the PostgreSQL server of the tests: $ZONEKEY_POSTGRES_DSN, or the
// local one.
func pgDSN() string {
	return cmp.Or(os.Getenv("ZONEKEY_POSTGRES_DSN"), "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
}

// withSchema adds the keystore's schema to a PostgreSQL URL.
func withSchema(dsn, schema string) string {
	if strings.Contains(dsn, "?") {
		return dsn + "&zonekey_schema=" + schema
	}
	return dsn + "?zonekey_schema=" + schema
}

// client opens a client on the environment, as a new process would.
func (e *lifecycleEnv) client(t *testing.T, dekTTL time.Duration) *zonekey.Client {
	t.Helper()
	cfg := zonekey.Config{Zones: zonekey.LocalZones(e.dir, "eu", "us"), DEKTTL: dekTTL}
	if e.storeURL != "" {
		cfg.StoreURL = e.storeURL
	} else {
		cfg.Dir = e.dir
	}
	c, err := zonekey.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

type lifecycleUser struct {
	ID    string `zonekey:"subject"`
	Zone  string `zonekey:"zone"`
	Email string `zonekey:"encrypt"`
}

// TestShredAcrossProcesses: on each shipped store, a second process that
// holds the shredded subject's DEK in its cache stops decrypting once the
// cache bound (DEKTTL) has passed.
func TestShredAcrossProcesses(t *testing.T) {
	for name, e := range newLifecycleEnvs(t) {
		t.Run(name, func(t *testing.T) {
			const ttl = 200 * time.Millisecond
			a, b := e.client(t, ttl), e.client(t, ttl)
			u := lifecycleUser{ID: "alice", Zone: "eu", Email: "alice@example.eu"}
			require.NoError(t, a.Encrypt(t.Context(), &u))
			stored := u
			got := stored
			require.NoError(t, b.Decrypt(t.Context(), &got), "b caches alice's DEK")

			_, err := a.Shred(t.Context(), "eu", "alice")
			require.NoError(t, err)
			got = stored
			require.ErrorIs(t, a.Decrypt(t.Context(), &got), zonekey.ErrKeyShredded, "the shredding process, at once")
			time.Sleep(ttl + 50*time.Millisecond)
			got = stored
			require.ErrorIs(t, b.Decrypt(t.Context(), &got), zonekey.ErrKeyShredded, "another process, after DEKTTL")
			require.Equal(t, stored, got, "a failed decrypt leaves the record as it was")
		})
	}
}

// TestMoveOnEachStore: on each shipped store, a subject's records written
// in eu decrypt after its move to us, new data under eu is refused, and a
// re-run of the move is a no-op.
func TestMoveOnEachStore(t *testing.T) {
	for name, e := range newLifecycleEnvs(t) {
		t.Run(name, func(t *testing.T) {
			c := e.client(t, 0)
			u := lifecycleUser{ID: "bob", Zone: "eu", Email: "bob@example.eu"}
			require.NoError(t, c.Encrypt(t.Context(), &u))
			stored := u

			res, err := c.MoveSubject(t.Context(), "bob", "eu", "us")
			require.NoError(t, err)
			require.Len(t, res.DEKs, 1)
			got := stored
			require.NoError(t, e.client(t, 0).Decrypt(t.Context(), &got))
			require.Equal(t, "bob@example.eu", got.Email)
			err = c.Encrypt(t.Context(), &lifecycleUser{ID: "bob", Zone: "eu", Email: "x"})
			require.ErrorIs(t, err, zonekey.ErrSubjectMoved)
			require.NoError(t, c.Encrypt(t.Context(), &lifecycleUser{ID: "bob", Zone: "us", Email: "x"}))
			again, err := c.MoveSubject(t.Context(), "bob", "eu", "us")
			require.NoError(t, err)
			require.True(t, again.AlreadyMoved)
		})
	}
}
