package zonekey_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/kms"
)

type account struct {
	ID     string   `zonekey:"subject"`
	Region string   `zonekey:"zone"`
	Email  string   `zonekey:"encrypt"`
	Phones []string `zonekey:"encrypt"`
	Plan   string
}

func newAccount(id, region string) *account {
	return &account{ID: id, Region: region, Email: id + "@example.com", Phones: []string{"+1 202 555 0100"}, Plan: "pro"}
}

func open(t *testing.T, dir string) *zonekey.Client {
	t.Helper()
	c, err := zonekey.Open(context.Background(), zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu", "us")})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := open(t, dir)
	a, b := newAccount("a-1", "eu"), newAccount("a-2", "us")
	require.NoError(t, c.Encrypt(ctx, a))
	require.NoError(t, c.Encrypt(ctx, b))
	require.True(t, envelope.IsText(a.Email))
	require.Equal(t, "pro", a.Plan)

	// The KEK files and the keystore are where the Config says, with
	// owner-only permissions.
	for _, name := range []string{"eu.kek", "us.kek", "keystore.db"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Zero(t, fi.Mode().Perm()&0o077, "%s is mode %v", name, fi.Mode())
	}

	// Reopened on the same directory, a new Client reads the records.
	require.NoError(t, c.Close())
	c2 := open(t, dir)
	require.NoError(t, c2.Decrypt(ctx, a))
	require.NoError(t, c2.Decrypt(ctx, b))
	require.Equal(t, newAccount("a-1", "eu"), a)
	require.Equal(t, newAccount("a-2", "us"), b)
}

func TestClientOptions(t *testing.T) {
	ctx := context.Background()
	c := open(t, t.TempDir())
	type note struct {
		Body string `zonekey:"encrypt"`
	}
	n := &note{Body: "hello"}
	require.ErrorIs(t, c.Encrypt(ctx, n), zonekey.ErrInvalidValue)
	require.NoError(t, c.Encrypt(ctx, n, zonekey.WithZone("eu"), zonekey.WithSubject("s-1")))
	require.ErrorIs(t, c.Decrypt(ctx, n, zonekey.WithSubject("s-2")), zonekey.ErrTampered)
	require.NoError(t, c.Decrypt(ctx, n, zonekey.WithSubject("s-1")))
	require.Equal(t, "hello", n.Body)

	legacy := newAccount("a-1", "eu")
	require.ErrorIs(t, c.Decrypt(ctx, legacy), zonekey.ErrNotEncrypted)
	require.NoError(t, c.Decrypt(ctx, legacy, zonekey.AllowPlaintext()))
	require.Equal(t, newAccount("a-1", "eu"), legacy)
}

// TestSharedStoreThroughSymlink: a directory reached through a symbolic
// link is the same embedded store, shared like the directory itself.
func TestSharedStoreThroughSymlink(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	real := filepath.Join(base, "real")
	require.NoError(t, os.Mkdir(real, 0o700))
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	a := open(t, real)
	b, err := zonekey.Open(ctx, zonekey.Config{Dir: link, Zones: zonekey.LocalZones(real, "eu")})
	require.NoError(t, err, "the same store, not a second lock on it")
	defer b.Close()
	rec := newAccount("a-1", "eu")
	require.NoError(t, a.Encrypt(ctx, rec))
	require.NoError(t, b.Decrypt(ctx, rec))
	require.Equal(t, newAccount("a-1", "eu"), rec)
}

func TestOpenBadConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.kek")
	anyRegion := []string{zonekey.AnyRegion}
	tests := []struct {
		name string
		cfg  zonekey.Config
		want error
	}{
		{"no zones", zonekey.Config{Dir: dir}, zonekey.ErrUnknownZone},
		{"empty Dir", zonekey.Config{Zones: zonekey.LocalZones(dir, "eu")}, zonekey.ErrInvalidConfig},
		{"zone without regions", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"eu": {KEK: "local://" + missing + "?create=1"}}}, zonekey.ErrInvalidConfig},
		{"restricted zone without attestation", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"eu": {KEK: "local://" + missing + "?create=1", Regions: []string{"europe-west1"}}}}, zonekey.ErrInvalidConfig},
		{"invalid zone name", zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "EU")}, zonekey.ErrUnknownZone},
		{"empty zone name", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"": {KEK: "local://" + missing + "?create=1", Regions: anyRegion}}}, zonekey.ErrUnknownZone},
		{"unknown KEK scheme", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"eu": {KEK: "nosuchkms://key", Regions: anyRegion}}}, zonekey.ErrKMSConfig},
		{"empty KEK URL", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"eu": {Regions: anyRegion}}}, zonekey.ErrKMSConfig},
		{"KEK file missing without create=1", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{"eu": {KEK: "local://" + missing, Regions: anyRegion}}}, zonekey.ErrKMSConfig},
		{"one good zone, one bad", zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{
			"eu": zonekey.LocalZones(dir, "eu")["eu"],
			"us": {KEK: "local://" + missing, Regions: anyRegion},
		}}, zonekey.ErrKMSConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := zonekey.Open(ctx, tc.cfg)
			require.ErrorIs(t, err, tc.want)
			require.Nil(t, c)
			_, err = os.Stat(missing)
			require.ErrorIs(t, err, os.ErrNotExist, "a failed Open must not create the missing KEK file")
		})
	}
	// A Config that fails before opening anything leaves no files.
	empty := t.TempDir()
	_, err := zonekey.Open(ctx, zonekey.Config{Zones: zonekey.LocalZones(empty, "eu")})
	require.ErrorIs(t, err, zonekey.ErrInvalidConfig)
	entries, err := os.ReadDir(empty)
	require.NoError(t, err)
	require.Empty(t, entries)

	// Settings Open can check without opening anything are checked before
	// anything is created: no KEK file, no keystore, no audit file.
	for name, cfg := range map[string]zonekey.Config{
		"a good zone and one of an unknown scheme": {Zones: map[string]zonekey.ZoneConfig{
			"eu": zonekey.LocalZones(empty, "eu")["eu"], "us": {KEK: "nosuchkms://key", Regions: anyRegion}}},
		"an audit file in a missing directory": {Zones: zonekey.LocalZones(empty, "eu"), AuditFile: filepath.Join(empty, "no", "audit.jsonl")},
		"Dir and StoreURL":                     {Zones: zonekey.LocalZones(empty, "eu"), StoreURL: "postgres://127.0.0.1/none"},
		"a negative cache size":                {Zones: zonekey.LocalZones(empty, "eu"), DEKCacheSize: -5},
		"a negative TTL":                       {Zones: zonekey.LocalZones(empty, "eu"), DEKTTL: -time.Second},
	} {
		cfg.Dir = filepath.Join(empty, "keystore")
		_, err := zonekey.Open(ctx, cfg)
		require.Error(t, err, name)
		require.True(t, errors.Is(err, zonekey.ErrKMSConfig) || errors.Is(err, zonekey.ErrAudit) || errors.Is(err, zonekey.ErrInvalidConfig), "%s: %v", name, err)
		entries, err := os.ReadDir(empty)
		require.NoError(t, err)
		require.Empty(t, entries, "%s: nothing created", name)
	}

	// A failed Open releases what it opened: the keystore can be opened
	// again at once.
	_, err = zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: map[string]zonekey.ZoneConfig{
		"eu": zonekey.LocalZones(dir, "eu")["eu"], "us": {KEK: "local://" + missing, Regions: anyRegion}}})
	require.ErrorIs(t, err, zonekey.ErrKMSConfig)
	open(t, dir)
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	c := open(t, t.TempDir())
	a := newAccount("a-1", "eu")
	require.NoError(t, c.Encrypt(ctx, a))
	sealed := *a
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close twice")

	b := newAccount("a-2", "eu")
	require.ErrorIs(t, c.Encrypt(ctx, b), zonekey.ErrClosed)
	require.Equal(t, newAccount("a-2", "eu"), b)
	require.ErrorIs(t, c.Decrypt(ctx, a), zonekey.ErrClosed)
	require.Equal(t, sealed, *a)
	require.ErrorIs(t, c.Decrypt(ctx, &account{ID: "a-3"}), zonekey.ErrClosed, "even with nothing to decrypt")

	var zero zonekey.Client
	require.ErrorIs(t, zero.Encrypt(ctx, newAccount("a-1", "eu")), zonekey.ErrClosed)
	// Every method of a zero Client fails with ErrClosed, none panics.
	for name, call := range map[string]func() error{
		"Decrypt":   func() error { return zero.Decrypt(ctx, newAccount("a-1", "eu")) },
		"Shred":     func() error { _, err := zero.Shred(ctx, "eu", "a-1"); return err },
		"Reinstate": func() error { return zero.Reinstate(ctx, "eu", "a-1") },
		"Move":      func() error { _, err := zero.MoveSubject(ctx, "a-1", "eu", "us"); return err },
		"Terms":     func() error { _, err := zero.IndexTerms(ctx, "eu", nil, "X", "v"); return err },
	} {
		require.ErrorIs(t, call(), zonekey.ErrClosed, name)
	}
	require.NoError(t, zero.Close())
}

// TestErrorsAreShared: the sentinels of zonekey are the very values the
// packages beneath return.
func TestErrorsAreShared(t *testing.T) {
	pairs := []struct {
		name      string
		top, pkgs error
	}{
		{"tampered/fieldcrypt", zonekey.ErrTampered, fieldcrypt.ErrTampered},
		{"tampered/envelope", zonekey.ErrTampered, envelope.ErrTampered},
		{"tampered/keystore", zonekey.ErrTampered, keystore.ErrTampered},
		{"tampered/kms", zonekey.ErrTampered, kms.ErrTampered},
		{"format/fieldcrypt", zonekey.ErrFormat, fieldcrypt.ErrFormat},
		{"format/envelope", zonekey.ErrFormat, envelope.ErrFormat},
		{"unsupported", zonekey.ErrUnsupportedField, fieldcrypt.ErrUnsupportedField},
		{"invalid", zonekey.ErrInvalidValue, fieldcrypt.ErrInvalidValue},
		{"not encrypted", zonekey.ErrNotEncrypted, fieldcrypt.ErrNotEncrypted},
		{"unknown key/fieldcrypt", zonekey.ErrUnknownKey, fieldcrypt.ErrUnknownKey},
		{"unknown key/keystore", zonekey.ErrUnknownKey, keystore.ErrUnknownKey},
		{"unknown key/envelope", zonekey.ErrUnknownKey, envelope.ErrUnknownKey},
		{"unknown zone/fieldcrypt", zonekey.ErrUnknownZone, fieldcrypt.ErrUnknownZone},
		{"unknown zone/keystore", zonekey.ErrUnknownZone, keystore.ErrUnknownZone},
		{"kms unavailable/fieldcrypt", zonekey.ErrKMSUnavailable, fieldcrypt.ErrKMSUnavailable},
		{"kms unavailable/keystore", zonekey.ErrKMSUnavailable, keystore.ErrKMSUnavailable},
		{"kms unavailable/kms", zonekey.ErrKMSUnavailable, kms.ErrUnavailable},
		{"kms config", zonekey.ErrKMSConfig, kms.ErrConfig},
		{"denied", zonekey.ErrDenied, kms.ErrDenied},
		{"closed", zonekey.ErrClosed, keystore.ErrClosed},
		{"store", zonekey.ErrStore, keystore.ErrStore},
	}
	for _, p := range pairs {
		require.True(t, p.top == p.pkgs, p.name)
		require.ErrorIs(t, p.pkgs, p.top, p.name)
	}
	// And they are distinct from one another.
	all := []error{zonekey.ErrOutsideCustody, zonekey.ErrAttestation, zonekey.ErrTampered, zonekey.ErrUnknownKey,
		zonekey.ErrKeyShredded, zonekey.ErrKMSUnavailable, zonekey.ErrUnsupportedField, zonekey.ErrFormat,
		zonekey.ErrUnknownZone, zonekey.ErrInvalidValue, zonekey.ErrNotEncrypted, zonekey.ErrClosed,
		zonekey.ErrStore, zonekey.ErrKMSConfig, zonekey.ErrDenied}
	for i, a := range all {
		for j, b := range all {
			require.Equal(t, i == j, a == b, "%v vs %v", a, b)
		}
	}
}

// TestFieldErrorThroughClient: errors from the Client carry the field path
// and zone, and never the plaintext.
func TestFieldErrorThroughClient(t *testing.T) {
	ctx := context.Background()
	c := open(t, t.TempDir())
	a, b := newAccount("a-1", "eu"), newAccount("a-2", "eu")
	require.NoError(t, c.Encrypt(ctx, a))
	require.NoError(t, c.Encrypt(ctx, b))
	b.Phones[0] = a.Phones[0]
	err := c.Decrypt(ctx, b)
	require.ErrorIs(t, err, zonekey.ErrTampered)
	var fe *fieldcrypt.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "Phones[]", fe.Path)
	require.Equal(t, "eu", fe.Zone)
	require.NotContains(t, err.Error(), "202 555")
	require.NotContains(t, err.Error(), "@example.com")

	type bad struct {
		When int `zonekey:"encrypt"`
	}
	err = c.Encrypt(ctx, &bad{}, zonekey.WithZone("eu"))
	require.ErrorIs(t, err, zonekey.ErrUnsupportedField)
	var pe *fieldcrypt.PlanError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "When", pe.Path)
}

func TestOpenPostgresStoreURL(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	schema := fmt.Sprintf("zk_facade_%d", time.Now().UnixNano())
	url := "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&zonekey_schema=" + schema
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), url[:strings.Index(url, "&zonekey_schema")])
		if err == nil {
			conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			conn.Close(context.Background())
		}
	})
	cfg := zonekey.Config{StoreURL: url, Zones: zonekey.LocalZones(dir, "eu")}
	c, err := zonekey.Open(ctx, cfg)
	require.NoError(t, err)
	a := newAccount("a-1", "eu")
	require.NoError(t, c.Encrypt(ctx, a))
	require.NoError(t, c.Close())
	c, err = zonekey.Open(ctx, cfg)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Decrypt(ctx, a), "a second client reads the keyring from PostgreSQL")

	_, err = zonekey.Open(ctx, zonekey.Config{StoreURL: "mysql://x", Zones: zonekey.LocalZones(dir, "eu")})
	require.ErrorIs(t, err, zonekey.ErrInvalidConfig)
}
