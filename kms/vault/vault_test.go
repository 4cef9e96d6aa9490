package vault_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/kmstest"
	"github.com/zonekey/zonekey/kms/vault"
)

// harness gives the conformance suite custodians of fresh derived keys on
// one dev server, opened by URL with token auth.
type harness struct {
	host      string // of the dev server
	root      *api.Client
	tokenFile string
	urls      map[kms.Custodian]string // each custodian's URL, for Reopen
}

func (h *harness) MakeCustodians(ctx context.Context) (kms.Custodian, kms.Custodian, error) {
	var cs [2]kms.Custodian
	for i := range cs {
		name := randomName("conf")
		if _, err := h.root.Logical().WriteWithContext(ctx, "transit/keys/"+name, map[string]any{
			"type": "aes256-gcm96", "derived": true,
		}); err != nil {
			return nil, nil, err
		}
		u := fmt.Sprintf("vault://%s/transit/keys/%s?token_file=%s", h.host, name, h.tokenFile)
		c, err := kms.Open(ctx, u)
		if err != nil {
			return nil, nil, err
		}
		cs[i] = c
		h.urls[c] = u
	}
	return cs[0], cs[1], nil
}

// Reopen opens c's URL again, as another process would.
func (h *harness) Reopen(ctx context.Context, c kms.Custodian) (kms.Custodian, error) {
	u, ok := h.urls[c]
	if !ok {
		return nil, fmt.Errorf("not a custodian of this harness: %v", c)
	}
	return kms.Open(ctx, u)
}

func (h *harness) Rotate(ctx context.Context, c kms.Custodian) (uint32, error) {
	return c.(*vault.Custodian).Rotate(ctx)
}

func (h *harness) Close() {}

var (
	_ kmstest.Rotator  = (*harness)(nil)
	_ kmstest.Reopener = (*harness)(nil)
)

func TestConformance(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		srv, root := startVault(t)
		return &harness{host: hostPort(t, srv.Addr), root: root, tokenFile: writeToken(t, srv.Token), urls: map[kms.Custodian]string{}}, nil
	})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want vault.Config
	}{
		{"vault://vault.example:8200/transit/keys/eu-users?auth=jwt&role=eu",
			vault.Config{Address: "https://vault.example:8200", Mount: "transit", Key: "eu-users", Auth: vault.AuthJWT, Role: "eu"}},
		{"vault://vault.example/eu/transit/keys/eu-users?auth=jwt&role=eu&jwt_mount=gcp/jwt",
			vault.Config{Address: "https://vault.example:8200", Mount: "eu/transit", Key: "eu-users", Auth: vault.AuthJWT, Role: "eu", JWTMount: "gcp/jwt"}},
		{"vault://127.0.0.1:8200/transit/keys/k",
			vault.Config{Address: "http://127.0.0.1:8200", Mount: "transit", Key: "k"}},
		{"vault://[::1]:8200/transit/keys/k?tls=1",
			vault.Config{Address: "https://[::1]:8200", Mount: "transit", Key: "k"}},
		{"vault://localhost:8201/transit/keys/k?token_file=/run/token",
			vault.Config{Address: "http://localhost:8201", Mount: "transit", Key: "k", TokenFile: "/run/token"}},
		{"vault://10.0.0.1:8200/transit/keys/k?tls=0",
			vault.Config{Address: "http://10.0.0.1:8200", AllowHTTP: true, Mount: "transit", Key: "k"}},
		{"vault://10.0.0.1:8200/transit/keys/k?insecure_http=1",
			vault.Config{Address: "http://10.0.0.1:8200", AllowHTTP: true, Mount: "transit", Key: "k"}},
		{"vault:///transit/keys/eu",
			vault.Config{Mount: "transit", Key: "eu"}},
		{"vault:///transit/keys/eu?tls=0",
			vault.Config{Mount: "transit", Key: "eu", AllowHTTP: true}},
		{"vault://v.example:8200/keys/keys/keys?ca_cert=/etc/ca.pem&namespace=team/eu&create=1&timeout=3s&max_attempts=5",
			vault.Config{Address: "https://v.example:8200", Mount: "keys", Key: "keys", CACert: "/etc/ca.pem", Namespace: "team/eu",
				Create: true, Timeout: 3 * time.Second, MaxAttempts: 5}},
	} {
		t.Run(tc.url, func(t *testing.T) {
			got, err := vault.ParseURL(tc.url)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}

	for _, bad := range []string{
		"local:///transit/keys/k",
		"vault:transit/keys/k",
		"vault://h:8200/transit/k",
		"vault://h:8200/keys/k",
		"vault://h:8200/transit/keys/",
		"vault://h:8200/transit/keys/k/extra",
		"vault://h:8200//keys/k",
		"vault://h:8200/tran$it/keys/k",
		"vault://h:8200/transit/keys/..",
		"vault://h:8200/transit/keys/a%2Fb",
		"vault://user:pw@h:8200/transit/keys/k",
		"vault://h:8200/transit/keys/k#frag",
		"vault://h:8200/transit/keys/k?auth=ldap",
		"vault://h:8200/transit/keys/k?unknown=1",
		"vault://h:8200/transit/keys/k?auth=jwt&auth=token",
		"vault://h:8200/transit/keys/k?tls=maybe",
		"vault://h:8200/transit/keys/k?tls=1&insecure_http=1",
		"vault:///transit/keys/k?tls=1",
		"vault://h:/transit/keys/k",
		"vault://h:8200/transit/keys/k?timeout=-1s",
		"vault://h:8200/transit/keys/k?max_attempts=0",
		"vault://h:8200/transit/keys/k?max_attempts=11",
		"vault://h:8200/transit/keys/k?token_file=",
		"vault://h:99999/transit/keys/k",
		"vault://h:0/transit/keys/k",
		"vault://hvs.SECRET@h:8200/transit/keys/k",
		"vault://hvs.SECRET@h:8200/transit/keys/k\x7f",
	} {
		t.Run(bad, func(t *testing.T) {
			_, err := vault.ParseURL(bad)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.NotContains(t, err.Error(), "SECRET", "user information may be a token: never in an error")
			_, err = kms.Open(t.Context(), bad)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.NotContains(t, err.Error(), "SECRET")
		})
	}
}

// TestOpenConfig covers the choices Open makes without contacting Vault:
// addresses, plain http, tokens and the environment.
func TestOpenConfig(t *testing.T) {
	ctx := t.Context()
	t.Setenv(vault.EnvAddr, "")
	t.Setenv(vault.EnvToken, "")
	t.Setenv(vault.EnvCACert, "")
	t.Setenv("VAULT_NAMESPACE", "")

	open := func(u string) (kms.Custodian, error) {
		c, err := kms.Open(ctx, u)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}

	// No address anywhere.
	_, err := open("vault:///transit/keys/k?auth=jwt&role=eu")
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorContains(t, err, vault.EnvAddr)

	// VAULT_ADDR is used when the URL has no host, its plain http only to
	// loopback or with tls=0.
	t.Setenv(vault.EnvAddr, "https://vault.example:8200")
	c, err := open("vault:///transit/keys/k?auth=jwt&role=eu")
	require.NoError(t, err)
	require.Contains(t, c.(fmt.Stringer).String(), "https://vault.example:8200")
	t.Setenv(vault.EnvAddr, "http://vault.example:8200")
	_, err = open("vault:///transit/keys/k?auth=jwt&role=eu")
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorContains(t, err, "plain http")
	_, err = open("vault:///transit/keys/k?auth=jwt&role=eu&tls=0")
	require.NoError(t, err)
	t.Setenv(vault.EnvAddr, "http://127.0.0.1:8200")
	_, err = open("vault:///transit/keys/k?auth=jwt&role=eu")
	require.NoError(t, err)
	t.Setenv(vault.EnvAddr, "")

	// Plain http in a Config.
	_, err = vault.Open(ctx, vault.Config{Address: "http://vault.example:8200", Key: "k", Auth: vault.AuthJWT, Role: "eu"})
	require.ErrorIs(t, err, kms.ErrConfig)
	for _, addr := range []string{"ftp://h:1", "https://h:8200/v1", "https://", "https://u@h:8200", "https://h:70000", "https://h:0",
		"https://hvs.SECRET@h:8200", "https://hvs.SECRET@h:8200/\x7f"} {
		_, err = vault.Open(ctx, vault.Config{Address: addr, Key: "k", Auth: vault.AuthJWT, Role: "eu"})
		require.ErrorIs(t, err, kms.ErrConfig, addr)
		require.NotContains(t, err.Error(), "SECRET", addr)
	}

	// Token auth needs a token: from the config, a file or VAULT_TOKEN.
	_, err = open("vault://127.0.0.1:8200/transit/keys/k")
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorContains(t, err, vault.EnvToken)
	t.Setenv(vault.EnvToken, "hvs.from-env")
	_, err = open("vault://127.0.0.1:8200/transit/keys/k")
	require.NoError(t, err)
	_, err = open("vault://127.0.0.1:8200/transit/keys/k?token_file=" + filepath.Join(t.TempDir(), "missing"))
	require.ErrorIs(t, err, kms.ErrConfig)
	empty := writeToken(t, "")
	_, err = open("vault://127.0.0.1:8200/transit/keys/k?token_file=" + empty)
	require.ErrorIs(t, err, kms.ErrConfig)
	_, err = vault.Open(ctx, vault.Config{Address: "http://127.0.0.1:8200", Key: "k", Token: "a b"})
	require.ErrorIs(t, err, kms.ErrConfig)
	require.NotContains(t, err.Error(), "a b", "errors never quote a token")

	// JWT auth takes no token and needs a role; create needs token auth.
	for _, u := range []string{
		"vault://127.0.0.1:8200/transit/keys/k?auth=jwt",
		"vault://127.0.0.1:8200/transit/keys/k?auth=jwt&role=eu&token_file=/x",
		"vault://127.0.0.1:8200/transit/keys/k?auth=jwt&role=eu&create=1",
		"vault://127.0.0.1:8200/transit/keys/k?role=eu",
	} {
		_, err = open(u)
		require.ErrorIs(t, err, kms.ErrConfig, u)
	}

	// CA certificates must be a PEM file.
	_, err = open("vault://vault.example:8200/transit/keys/k?auth=jwt&role=eu&ca_cert=" + empty)
	require.ErrorIs(t, err, kms.ErrConfig)
	t.Setenv(vault.EnvCACert, empty)
	_, err = open("vault://vault.example:8200/transit/keys/k?auth=jwt&role=eu")
	require.ErrorIs(t, err, kms.ErrConfig)
}

func TestClosed(t *testing.T) {
	c, err := vault.Open(t.Context(), vault.Config{Address: "http://127.0.0.1:1", Token: "t", Key: "k"})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	b := binding("eu")
	_, err = c.Wrap(t.Context(), randomKey(t), b)
	require.ErrorIs(t, err, errs.Closed)
	_, err = c.Rotate(t.Context())
	require.ErrorIs(t, err, errs.Closed)
	_, _, err = c.KEKVersions(t.Context())
	require.ErrorIs(t, err, errs.Closed)
	require.ErrorIs(t, c.RetireBelow(t.Context(), 1), errs.Closed)
	require.ErrorIs(t, c.DestroyBelow(t.Context(), 1), errs.Closed)
	_, err = c.WrapBatch(t.Context(), []vault.WrapRequest{{Key: randomKey(t), Binding: b}})
	require.ErrorIs(t, err, errs.Closed)
	require.ErrorIs(t, c.Destroy(t.Context()), errs.Closed)
}

// TestKeyChecks shows that a key that would ignore bindings is refused,
// whether the token may read the key's settings or only use it.
func TestKeyChecks(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	derived, plain, missing := randomName("derived"), randomName("plain"), randomName("missing")
	createKey(t, root, derived, true)
	createKey(t, root, plain, false)
	for _, k := range []string{derived, plain} {
		_, err := root.Logical().Write("transit/keys/"+k+"/rotate", nil)
		require.NoError(t, err)
	}
	exportable := randomName("exportable")
	_, err := root.Logical().Write("transit/keys/"+exportable, map[string]any{"derived": true, "exportable": true})
	require.NoError(t, err)

	// A token that may use the keys but not read their settings.
	require.NoError(t, root.Sys().PutPolicy("use-only", `
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
`))
	secret, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"use-only"}, NoParent: true})
	require.NoError(t, err)
	useOnly := secret.Auth.ClientToken

	for _, tc := range []struct {
		name  string
		token string
	}{{"root", srv.Token}, {"use-only", useOnly}} {
		t.Run(tc.name, func(t *testing.T) {
			b := binding("eu")
			c := openToken(t, srv.Addr, tc.token, derived)
			w, err := c.Wrap(ctx, randomKey(t), b)
			require.NoError(t, err)
			require.Equal(t, uint32(2), w.KEKVersion)

			c = openToken(t, srv.Addr, tc.token, plain)
			_, err = c.Wrap(ctx, randomKey(t), b)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.ErrorContains(t, err, "not derived")

			c = openToken(t, srv.Addr, tc.token, missing)
			_, err = c.Wrap(ctx, randomKey(t), b)
			require.ErrorIs(t, err, kms.ErrUnknownKey)

			// Version 1 retired: the probe cannot use a decrypt.
			for _, k := range []string{derived, plain} {
				_, err := root.Logical().Write("transit/keys/"+k+"/config", map[string]any{"min_decryption_version": 2})
				require.NoError(t, err)
			}
			c = openToken(t, srv.Addr, tc.token, derived)
			_, err = c.Wrap(ctx, randomKey(t), b)
			require.NoError(t, err)
			c = openToken(t, srv.Addr, tc.token, plain)
			_, err = c.Wrap(ctx, randomKey(t), b)
			require.ErrorIs(t, err, kms.ErrConfig)
			for _, k := range []string{derived, plain} {
				_, err := root.Logical().Write("transit/keys/"+k+"/config", map[string]any{"min_decryption_version": 1})
				require.NoError(t, err)
			}
		})
	}
	// An exportable key is refused when its settings can be read.
	c := openToken(t, srv.Addr, srv.Token, exportable)
	_, err = c.Wrap(ctx, randomKey(t), binding("eu"))
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorContains(t, err, "exportable")

	// The missing key was not created by any of this.
	s, err := root.Logical().Read("transit/keys/" + missing)
	require.NoError(t, err)
	require.Nil(t, s)
}

// TestEncryptOnlyKeyCheck checks the driver's derived-key check with a
// token that may only encrypt: it tells a derived key from one that is
// not, and never creates a missing key, even when the token may create
// keys through encrypt.
func TestEncryptOnlyKeyCheck(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	derived, plain, missing := randomName("derived"), randomName("plain"), randomName("missing")
	createKey(t, root, derived, true)
	createKey(t, root, plain, false)
	encryptOnly := tokenWithPolicy(t, root, "encrypt-only", `
path "transit/encrypt/*" { capabilities = ["update"] }
`)
	mayCreate := tokenWithPolicy(t, root, "encrypt-create", `
path "transit/encrypt/*" { capabilities = ["create", "update"] }
`)
	for _, tc := range []struct {
		name    string
		token   string
		missing error // what a wrap under the missing key reports
	}{
		{"update", encryptOnly, kms.ErrDenied},   // encrypt of a missing key is a create: refused
		{"create", mayCreate, kms.ErrUnknownKey}, // the probe's create is refused as such
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := binding("eu")
			w, err := openToken(t, srv.Addr, tc.token, derived).Wrap(ctx, randomKey(t), b)
			require.NoError(t, err)
			require.Equal(t, uint32(1), w.KEKVersion)

			_, err = openToken(t, srv.Addr, tc.token, plain).Wrap(ctx, randomKey(t), b)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.ErrorContains(t, err, "not derived")

			_, err = openToken(t, srv.Addr, tc.token, missing).Wrap(ctx, randomKey(t), b)
			require.ErrorIs(t, err, tc.missing)
			requireNoKey(t, root, missing, "after the key check")
		})
	}
}

func TestCreateKey(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	name := randomName("created")
	u := fmt.Sprintf("vault://%s/transit/keys/%s?create=1&token_file=%s", hostPort(t, srv.Addr), name, writeToken(t, srv.Token))
	c, err := kms.Open(ctx, u)
	require.NoError(t, err)
	defer c.Close()
	s, err := root.Logical().Read("transit/keys/" + name)
	require.NoError(t, err)
	require.Equal(t, true, s.Data["derived"])
	require.Equal(t, false, s.Data["exportable"])
	require.Equal(t, "aes256-gcm96", s.Data["type"])

	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	got, err := c.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// Opening again with create=1 keeps the existing key.
	c2, err := kms.Open(ctx, u)
	require.NoError(t, err)
	defer c2.Close()
	got, err = c2.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// An existing key that is not derived is refused.
	plain := randomName("plain")
	createKey(t, root, plain, false)
	_, err = vault.Open(ctx, vault.Config{Address: srv.Addr, Token: srv.Token, Key: plain, Create: true})
	require.ErrorIs(t, err, kms.ErrConfig)
}

func TestBatch(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	name := randomName("batch")
	createKey(t, root, name, true)
	c := openToken(t, srv.Addr, srv.Token, name)

	const n = 5
	reqs := make([]vault.WrapRequest, n)
	for i := range reqs {
		reqs[i] = vault.WrapRequest{Key: randomKey(t), Binding: kms.Binding{Zone: "eu", KeyID: fmt.Sprintf("zk-%d", i), Version: uint32(i + 1)}}
	}
	reqs[3].Key = nil               // refused before Vault
	reqs[4].Binding = kms.Binding{} // invalid binding
	wrapped, err := c.WrapBatch(ctx, reqs)
	require.NoError(t, err)
	require.Len(t, wrapped, n)
	for i := range 3 {
		require.NoError(t, wrapped[i].Err)
		require.Equal(t, uint32(1), wrapped[i].Wrapped.KEKVersion)
	}
	require.ErrorIs(t, wrapped[3].Err, errs.InvalidValue)
	require.ErrorIs(t, wrapped[4].Err, kms.ErrConfig)

	// Unwrap: good items, one under another binding, one altered at
	// Vault's side (a base64 character changed), one malformed.
	altered := append([]byte(nil), wrapped[2].Wrapped.Ciphertext...)
	altered[len("vault:v1:")+3] ^= 'A' ^ 'B'
	if altered[len("vault:v1:")+3] == wrapped[2].Wrapped.Ciphertext[len("vault:v1:")+3] {
		t.Fatal("alteration did not change the ciphertext")
	}
	ureqs := []vault.UnwrapRequest{
		{Wrapped: wrapped[0].Wrapped, Binding: reqs[0].Binding},
		{Wrapped: wrapped[1].Wrapped, Binding: reqs[1].Binding},
		{Wrapped: wrapped[1].Wrapped, Binding: reqs[0].Binding},
		{Wrapped: kms.Wrapped{Ciphertext: altered, KEKVersion: 1}, Binding: reqs[2].Binding},
		{Wrapped: kms.Wrapped{Ciphertext: []byte("vault:v1:AAAA"), KEKVersion: 1}, Binding: reqs[2].Binding},
	}
	got, err := c.UnwrapBatch(ctx, ureqs)
	require.NoError(t, err)
	require.Len(t, got, len(ureqs))
	require.NoError(t, got[0].Err)
	require.Equal(t, reqs[0].Key, got[0].Key)
	require.NoError(t, got[1].Err)
	require.Equal(t, reqs[1].Key, got[1].Key)
	for i := 2; i < len(ureqs); i++ {
		require.ErrorIs(t, got[i].Err, kms.ErrTampered, "item %d", i)
		require.Nil(t, got[i].Key)
	}

	// Every item failing at Vault (HTTP 400 for the batch) still gives
	// per-item results.
	got, err = c.UnwrapBatch(ctx, ureqs[2:4])
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.ErrorIs(t, got[0].Err, kms.ErrTampered)
	require.ErrorIs(t, got[1].Err, kms.ErrTampered)

	// Empty and oversized batches.
	got, err = c.UnwrapBatch(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
	_, err = c.WrapBatch(ctx, make([]vault.WrapRequest, vault.MaxBatch+1))
	require.ErrorIs(t, err, errs.InvalidValue)
}

// TestCiphertextStrict checks that variants of a ciphertext that Vault
// itself would accept are refused before they reach it.
func TestCiphertextStrict(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	name := randomName("strict")
	createKey(t, root, name, true)
	p := newProxy(t, srv.Addr)
	c := openToken(t, p.URL, srv.Token, name)
	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	ct := string(w.Ciphertext)
	body := strings.TrimPrefix(ct, "vault:v1:")
	p.reset()
	for _, variant := range []string{
		strings.Replace(ct, "vault:v1:", "vault:v0:", 1),  // Vault reads v0 as v1
		strings.Replace(ct, "vault:v1:", "vault:v01:", 1), // leading zero
		strings.Replace(ct, "vault:v1:", "vault:v+1:", 1), // sign
		"vault:v1:" + body[:20] + "\n" + body[20:],        // line break, skipped by base64
		"vault:v1:" + body + "\n",
		" " + ct,
	} {
		_, err := c.Unwrap(ctx, kms.Wrapped{Ciphertext: []byte(variant), KEKVersion: 1}, b)
		require.ErrorIs(t, err, kms.ErrTampered, "%q", variant)
	}
	require.Zero(t, p.count("/decrypt/"+name), "malformed ciphertexts reached Vault")

	// A different but valid ciphertext reaches Vault, which refuses it.
	_, err = c.Unwrap(ctx, kms.Wrapped{Ciphertext: []byte(strings.Replace(ct, body[:4], "AAAA", 1)), KEKVersion: 1}, b)
	require.ErrorIs(t, err, kms.ErrTampered)
	require.Equal(t, 1, p.count("/decrypt/"+name))
	got, err := c.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

func BenchmarkTransit(b *testing.B) {
	srv := vaulttest.Start(b)
	srv.EnableTransit(b)
	root := srv.Client(b)
	name := randomName("bench")
	createKey(b, root, name, true)
	c := openToken(b, srv.Addr, srv.Token, name)
	ctx := context.Background()
	bind := binding("eu")
	key := randomKey(b)
	w, err := c.Wrap(ctx, key, bind)
	require.NoError(b, err)

	b.Run("Wrap", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Wrap(ctx, key, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Unwrap", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Unwrap(ctx, w, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("UnwrapBatch16", func(b *testing.B) {
		reqs := make([]vault.UnwrapRequest, 16)
		for i := range reqs {
			reqs[i] = vault.UnwrapRequest{Wrapped: w, Binding: bind}
		}
		b.ReportAllocs()
		for b.Loop() {
			res, err := c.UnwrapBatch(ctx, reqs)
			if err != nil || res[15].Err != nil {
				b.Fatal(err, res[15].Err)
			}
		}
	})
}

// TestTLS: https is verified against ca_cert or VAULT_CACERT, and a server
// whose certificate does not verify is a configuration error, not retried.
func TestTLS(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	p, ca := newTLSProxy(t, srv.Addr)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, ca, 0o644))
	tokenFile := writeToken(t, srv.Token)
	ctx := t.Context()
	t.Setenv(vault.EnvCACert, "")
	b := binding("eu")
	key := randomKey(t)

	u := fmt.Sprintf("vault://%s/transit/keys/eu-users?tls=1&token_file=%s", hostPort(t, p.URL), tokenFile)
	c, err := kms.Open(ctx, u+"&ca_cert="+caFile)
	require.NoError(t, err)
	defer c.Close()
	w, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	got, err := c.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// The system's roots do not know the test CA.
	untrusting, err := kms.Open(ctx, u)
	require.NoError(t, err)
	defer untrusting.Close()
	p.reset()
	_, err = untrusting.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorContains(t, err, "TLS")
	require.Zero(t, p.count(""), "no request was sent")

	// VAULT_CACERT, as for the Vault CLI.
	t.Setenv(vault.EnvCACert, caFile)
	fromEnv, err := kms.Open(ctx, u)
	require.NoError(t, err)
	defer fromEnv.Close()
	got, err = fromEnv.Unwrap(ctx, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

// TestTokenCacheBound: the JWT token cache holds at most TokenCacheSize
// tokens, evicting the one due soonest.
func TestTokenCacheBound(t *testing.T) {
	z := setupZoneVault(t, "5m")
	ctx := t.Context()
	p := newProxy(t, z.srv.Addr)
	c, err := vault.Open(ctx, vault.Config{Address: p.URL, Key: "eu-users", Auth: vault.AuthJWT, Role: "eu", TokenCacheSize: 2})
	require.NoError(t, err)
	defer c.Close()
	b := binding("eu")
	var callers []context.Context
	for range 3 {
		callers = append(callers, caller(ctx, "europe-west1", z.token(t, "europe-west1")))
	}
	w, err := c.Wrap(callers[0], randomKey(t), b)
	require.NoError(t, err)
	unwrap := func(i int) {
		t.Helper()
		_, err := c.Unwrap(callers[i], w, b)
		require.NoError(t, err)
	}
	unwrap(1)
	unwrap(2) // evicts caller 0's token, logged in first
	require.Equal(t, 3, p.count("/auth/jwt/login"))
	unwrap(1)
	unwrap(2)
	require.Equal(t, 3, p.count("/auth/jwt/login"), "callers 1 and 2 are cached")
	unwrap(0)
	require.Equal(t, 4, p.count("/auth/jwt/login"), "caller 0 logs in again")
}
