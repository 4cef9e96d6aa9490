package zonekey_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/fieldcrypt"
)

type patient struct {
	ID        string `zonekey:"subject"`
	Region    string `zonekey:"zone"`
	Diagnosis string `zonekey:"encrypt"`
}

// custodyClients opens, on one keystore directory, a client attested in
// each of the given regions, with zones eu (europe-west1, europe-west4) and
// us (us-east1), all auditing to one file.
func custodyClients(t *testing.T, regions ...string) (map[string]*zonekey.Client, string) {
	t.Helper()
	dir := t.TempDir()
	iss, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(t, err)
	v, err := attest.NewVerifier(iss.IssuerConfig("zonekey"))
	require.NoError(t, err)
	auditFile := filepath.Join(dir, "audit.jsonl")
	sink, err := audit.OpenFile(auditFile) // one chain for all the clients
	require.NoError(t, err)
	t.Cleanup(func() { sink.Close() })
	clients := map[string]*zonekey.Client{}
	for _, region := range regions {
		tok, err := iss.Token("zonekey", region, "svc@"+region, time.Hour)
		require.NoError(t, err)
		cfg := zonekey.Config{
			Dir: dir,
			Zones: map[string]zonekey.ZoneConfig{
				"eu": {KEK: zonekey.LocalKEK(filepath.Join(dir, "eu.kek")), Regions: []string{"europe-west1", "europe-west4"}},
				"us": {KEK: zonekey.LocalKEK(filepath.Join(dir, "us.kek")), Regions: []string{"us-east1"}},
			},
			Attestor: attest.NewAttestor(attest.StaticSource(tok), v),
			Audit:    sink,
		}
		c, err := zonekey.Open(t.Context(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		clients[region] = c
	}
	return clients, auditFile
}

func TestCustodyReadInsideAndOutsideTheZone(t *testing.T) {
	ctx := t.Context()
	clients, auditFile := custodyClients(t, "europe-west1", "us-east1")
	eu, us := clients["europe-west1"], clients["us-east1"]

	p := &patient{ID: "p-1", Region: "eu", Diagnosis: "asthma"}
	require.NoError(t, eu.Encrypt(ctx, p))
	stored := *p

	// The US process cannot read it, nor write new data of the zone.
	err := us.Decrypt(ctx, p)
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	var fe *fieldcrypt.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "Diagnosis", fe.Path)
	require.Equal(t, "eu", fe.Zone)
	require.NotContains(t, err.Error(), "asthma")
	require.Equal(t, stored, *p, "a refused decrypt leaves the record as it was")
	q := &patient{ID: "p-2", Region: "eu", Diagnosis: "flu"}
	require.ErrorIs(t, us.Encrypt(ctx, q), zonekey.ErrOutsideCustody)
	require.Equal(t, "flu", q.Diagnosis)

	// The EU process reads it.
	require.NoError(t, eu.Decrypt(ctx, p))
	require.Equal(t, "asthma", p.Diagnosis)

	// US data stays with the US.
	r := &patient{ID: "p-3", Region: "us", Diagnosis: "gout"}
	require.NoError(t, us.Encrypt(ctx, r))
	require.ErrorIs(t, eu.Decrypt(ctx, r), zonekey.ErrOutsideCustody)
	require.NoError(t, us.Decrypt(ctx, r))

	// Both decisions are in the audit log, whose chain verifies.
	data, err := os.ReadFile(auditFile)
	require.NoError(t, err)
	n, err := audit.Verify(bytes.NewReader(data))
	require.NoError(t, err)
	require.Positive(t, n)
	log := string(data)
	require.Contains(t, log, `"action":"access","decision":"deny"`)
	require.Contains(t, log, `"region":"us-east1"`)
	require.Contains(t, log, `"action":"dek.create","decision":"allow"`)
	require.Contains(t, log, `"region":"europe-west1"`)
	require.NotContains(t, log, "asthma")
}

func TestCustodyBadEvidence(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	iss, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(t, err)
	other, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(t, err)
	v, err := attest.NewVerifier(iss.IssuerConfig("zonekey"))
	require.NoError(t, err)
	forged, err := other.Token("zonekey", "europe-west1", "svc", time.Hour)
	require.NoError(t, err)
	c, err := zonekey.Open(ctx, zonekey.Config{
		Dir:      dir,
		Zones:    map[string]zonekey.ZoneConfig{"eu": {KEK: zonekey.LocalKEK(filepath.Join(dir, "eu.kek")), Regions: []string{"europe-west1"}}},
		Attestor: attest.NewAttestor(attest.StaticSource(forged), v),
	})
	require.NoError(t, err)
	defer c.Close()
	err = c.Encrypt(ctx, &patient{ID: "p-1", Region: "eu", Diagnosis: "x"})
	require.ErrorIs(t, err, zonekey.ErrAttestation)
	require.False(t, errors.Is(err, zonekey.ErrOutsideCustody))
}

func TestSharedEmbeddedStore(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	a, err := zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	require.NoError(t, err)
	b, err := zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	require.NoError(t, err, "two clients of one process share the keystore file")
	p := &patient{ID: "p-1", Region: "eu", Diagnosis: "x"}
	require.NoError(t, a.Encrypt(ctx, p))
	require.NoError(t, a.Close())
	require.NoError(t, b.Decrypt(ctx, p), "closing one client leaves the other's store open")
	require.NoError(t, b.Close())
	c, err := zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	require.NoError(t, err, "the file is released when the last client closes")
	require.NoError(t, c.Close())
}

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	iss, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(t, err)
	jwks := filepath.Join(dir, "jwks.json")
	require.NoError(t, iss.WriteJWKS(jwks))
	tok, err := iss.Token("zonekey", "europe-west4", "svc", time.Hour)
	require.NoError(t, err)
	tokenFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(tok), 0o600))

	good := `{
	  "dir": "` + dir + `",
	  "zones": {"eu": {"kek": "` + zonekey.LocalKEK(filepath.Join(dir, "eu.kek")) + `", "regions": ["europe-west1", "europe-west4"], "issuers": ["https://attest.zonekey.test"]}},
	  "attestation": {
	    "issuers": [{"issuer": "https://attest.zonekey.test", "audiences": ["zonekey"], "jwks_file": "` + jwks + `", "algorithms": ["ES256"], "profile": "region", "max_stale": "24h"}],
	    "source": {"token_file": "` + tokenFile + `"}
	  },
	  "audit": {"file": "` + filepath.Join(dir, "audit.jsonl") + `"},
	  "zone_key_ttl": "5m", "dek_ttl": "1m", "dek_cache_size": 100
	}`
	cfg, err := zonekey.ParseConfig([]byte(good))
	require.NoError(t, err)
	require.Equal(t, 5*time.Minute, cfg.ZoneKeyTTL)
	require.Equal(t, []string{"europe-west1", "europe-west4"}, cfg.Zones["eu"].Regions)
	c, err := zonekey.Open(t.Context(), cfg)
	require.NoError(t, err)
	p := &patient{ID: "p-1", Region: "eu", Diagnosis: "x"}
	require.NoError(t, c.Encrypt(t.Context(), p))
	require.NoError(t, c.Decrypt(t.Context(), p))
	require.NoError(t, c.Close())
	require.Equal(t, []string{"https://attest.zonekey.test"}, cfg.Zones["eu"].Issuers)

	// A zone that counts only another issuer's evidence refuses this one.
	other, err := zonekey.ParseConfig([]byte(strings.Replace(good, `"issuers": ["https://attest.zonekey.test"]`, `"issuers": ["https://other.zonekey.test"]`, 1)))
	require.NoError(t, err)
	c, err = zonekey.Open(t.Context(), other)
	require.NoError(t, err)
	require.ErrorIs(t, c.Encrypt(t.Context(), &patient{ID: "p-2", Region: "eu", Diagnosis: "x"}), zonekey.ErrAttestation)
	require.NoError(t, c.Close())

	for _, tc := range []struct{ name, edit string }{
		{"unknown field", strings.Replace(good, `"dir"`, `"dri"`, 1)},
		{"trailing data", good + `{}`},
		{"bad duration", strings.Replace(good, `"5m"`, `"5 minutes"`, 1)},
		{"bad max_stale", strings.Replace(good, `"max_stale": "24h"`, `"max_stale": "a day"`, 1)},
		{"unknown profile", strings.Replace(good, `"profile": "region"`, `"profile": "aws"`, 1)},
		{"no source", strings.Replace(good, `"token_file": "`+tokenFile+`"`, ``, 1)},
		{"two sources", strings.Replace(good, `"token_file":`, `"token": "x", "token_file":`, 1)},
		{"symmetric algorithm", strings.Replace(good, `["ES256"]`, `["HS256"]`, 1)},
		{"not JSON", `zones: eu`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := zonekey.ParseConfig([]byte(tc.edit))
			require.ErrorIs(t, err, zonekey.ErrInvalidConfig)
		})
	}
	_, err = zonekey.LoadConfig(filepath.Join(dir, "missing.json"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
