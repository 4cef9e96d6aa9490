package vault_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

const audience = "vault.zonekey.test"

// zoneVault is a Vault configured as docs/vault.md describes for zone "eu":
// JWT auth trusting a DevIssuer, a policy that allows Transit use of key
// eu-users only, and a role "eu" bound to callers attested in
// europe-west1 or europe-west4. Key us-users exists beside it.
type zoneVault struct {
	srv    *vaulttest.Server
	root   *api.Client
	issuer *attest.DevIssuer
}

func setupZoneVault(t *testing.T, tokenTTL string) *zoneVault {
	t.Helper()
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	createKey(t, root, "us-users", true)

	issuer, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(t, err)
	pems, err := issuer.PublicKeysPEM()
	require.NoError(t, err)

	require.NoError(t, root.Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}))
	_, err = root.Logical().Write("auth/jwt/config", map[string]any{
		"jwt_validation_pubkeys": pems,
		"bound_issuer":           issuer.Issuer(),
	})
	require.NoError(t, err)
	require.NoError(t, root.Sys().PutPolicy("eu-transit", `
path "transit/encrypt/eu-users" { capabilities = ["update"] }
path "transit/decrypt/eu-users" { capabilities = ["update"] }
path "transit/rewrap/eu-users"  { capabilities = ["update"] }
`))
	_, err = root.Logical().Write("auth/jwt/role/eu", map[string]any{
		"role_type":       "jwt",
		"bound_audiences": []string{audience},
		"user_claim":      "sub",
		"bound_claims":    map[string]any{"region": []string{"europe-west1", "europe-west4"}},
		"token_policies":  []string{"eu-transit"},
		"token_ttl":       tokenTTL,
		"token_max_ttl":   "10m",
	})
	require.NoError(t, err)
	return &zoneVault{srv: srv, root: root, issuer: issuer}
}

// token mints an attestation placing a workload in region.
func (z *zoneVault) token(t testing.TB, region string) string {
	t.Helper()
	tok, err := z.issuer.Token(audience, region, "projects/p/instances/"+region, 10*time.Minute)
	require.NoError(t, err)
	return tok
}

// caller returns a context carrying an attested caller. The Region field is
// what the SDK believes; Vault sees only the signed token.
func caller(ctx context.Context, claimedRegion, token string) context.Context {
	return kms.WithCaller(ctx, kms.Caller{Region: claimedRegion, Workload: "w", Issuer: "dev", Token: token})
}

func (z *zoneVault) openJWT(t testing.TB, addr, key string) *vault.Custodian {
	t.Helper()
	c, err := vault.Open(t.Context(), vault.Config{Address: addr, Key: key, Auth: vault.AuthJWT, Role: "eu"})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestVaultEnforcesCustody is the custody test: with the SDK's own region
// check out of the picture, Vault itself refuses a caller attested outside
// the zone.
func TestVaultEnforcesCustody(t *testing.T) {
	z := setupZoneVault(t, "5m")
	ctx := t.Context()
	euTok, eu4Tok, usTok := z.token(t, "europe-west1"), z.token(t, "europe-west4"), z.token(t, "us-east1")
	eu, eu4 := caller(ctx, "europe-west1", euTok), caller(ctx, "europe-west4", eu4Tok)
	// The us caller even claims to be in Europe: only its evidence counts.
	us := caller(ctx, "europe-west1", usTok)

	c := z.openJWT(t, z.srv.Addr, "eu-users")
	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(eu, key, b)
	require.NoError(t, err, "an eu caller wraps under the eu key")

	got, err := c.Unwrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied, "Vault must refuse a caller attested in us-east1")
	require.Nil(t, got, "no plaintext for a refused caller")
	require.ErrorContains(t, err, "JWT login")
	_, err = c.Wrap(us, randomKey(t), b)
	require.ErrorIs(t, err, kms.ErrDenied)
	_, err = c.Rewrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)

	got, err = c.Unwrap(eu, w, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	got, err = c.Unwrap(eu4, w, b)
	require.NoError(t, err, "europe-west4 is in the zone too")
	require.Equal(t, key, got)
	w2, err := c.Rewrap(eu, w, b)
	require.NoError(t, err)
	got, err = c.Unwrap(eu, w2, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// The us caller stays refused after eu callers have logged in: tokens
	// are cached per attestation, never shared.
	got, err = c.Unwrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)

	// An eu caller cannot use another zone's key: the policy denies it.
	cus := z.openJWT(t, z.srv.Addr, "us-users")
	_, err = cus.Wrap(eu, randomKey(t), b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.NotContains(t, err.Error(), euTok, "errors never quote the attestation")

	// No attestation, a forged one, an expired one.
	_, err = c.Unwrap(ctx, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.ErrorContains(t, err, "no attestation")
	_, err = c.Unwrap(caller(ctx, "europe-west1", ""), w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	forger, err := attest.NewDevIssuer(z.issuer.Issuer())
	require.NoError(t, err)
	forged, err := forger.Token(audience, "europe-west1", "w", time.Minute)
	require.NoError(t, err)
	_, err = c.Unwrap(caller(ctx, "europe-west1", forged), w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	expired, err := z.issuer.Mint(map[string]any{
		"iss": z.issuer.Issuer(), "aud": audience, "sub": "w", "region": "europe-west1",
		"iat": time.Now().Add(-time.Hour).Unix(), "exp": time.Now().Add(-30 * time.Minute).Unix(),
	})
	require.NoError(t, err)
	_, err = c.Unwrap(caller(ctx, "europe-west1", expired), w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	otherAudience, err := z.issuer.Token("someone-else", "europe-west1", "w", time.Minute)
	require.NoError(t, err)
	_, err = c.Unwrap(caller(ctx, "europe-west1", otherAudience), w, b)
	require.ErrorIs(t, err, kms.ErrDenied)

	// A role that does not exist is a configuration error.
	bad, err := vault.Open(ctx, vault.Config{Address: z.srv.Addr, Key: "eu-users", Auth: vault.AuthJWT, Role: "nope"})
	require.NoError(t, err)
	defer bad.Close()
	_, err = bad.Unwrap(eu, w, b)
	require.ErrorIs(t, err, kms.ErrConfig)
}

// TestKeyringCustodyAtVault shows the same through a keyring whose own
// check lets every caller through: Vault's refusal reaches the keyring's
// caller as kms.ErrDenied.
func TestKeyringCustodyAtVault(t *testing.T) {
	z := setupZoneVault(t, "5m")
	ctx := t.Context()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "keys.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	verifier, err := attest.NewVerifier(z.issuer.IssuerConfig(audience))
	require.NoError(t, err)

	// newKeyring is a process in region whose keyring lets every region
	// use zone eu (AnyRegion), so only Vault decides. Each has its own
	// custodian and caches, as separate processes would.
	newKeyring := func(region string) *keystore.Keyring {
		c := z.openJWT(t, z.srv.Addr, "eu-users")
		k, err := keystore.New(keystore.Config{
			Store:      store,
			Custodians: map[string]kms.Custodian{"eu": c},
			Policy: &keystore.RegionPolicy{
				Regions:  map[string][]string{"eu": {keystore.AnyRegion}},
				Attestor: attest.NewAttestor(attest.StaticSource(z.token(t, region)), verifier),
			},
		})
		require.NoError(t, err)
		t.Cleanup(func() { k.Close() })
		return k
	}

	euRing := newKeyring("europe-west1")
	dek, err := euRing.DataKey(ctx, "eu", "alice")
	require.NoError(t, err, "an eu process creates the zone key and a DEK")

	usRing := newKeyring("us-east1")
	got, err := usRing.DataKey(ctx, "eu", "alice")
	require.ErrorIs(t, err, kms.ErrDenied, "a us process must not get an eu DEK")
	require.ErrorContains(t, err, "bound claim", "refused by Vault's role, not by the SDK")
	require.Nil(t, got)
	got, err = usRing.Key(ctx, dek.ID())
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)
	got, err = usRing.DataKey(ctx, "eu", "bob")
	require.ErrorIs(t, err, kms.ErrDenied, "nor a new DEK under the eu zone key")
	require.Nil(t, got)

	eu4Ring := newKeyring("europe-west4")
	got, err = eu4Ring.Key(ctx, dek.ID())
	require.NoError(t, err)
	require.Equal(t, dek.ID(), got.ID())

	// With no Policy the keyring presents no caller at all, so a JWT
	// custodian has no attestation to log in with and refuses too.
	c := z.openJWT(t, z.srv.Addr, "eu-users")
	noPolicy, err := keystore.New(keystore.Config{Store: store, Custodians: map[string]kms.Custodian{"eu": c}})
	require.NoError(t, err)
	t.Cleanup(func() { noPolicy.Close() })
	got, err = noPolicy.Key(caller(ctx, "us-east1", z.token(t, "us-east1")), dek.ID())
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)
	got, err = noPolicy.DataKey(caller(ctx, "us-east1", z.token(t, "us-east1")), "eu", "alice")
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)
}

// TestGCPZoneClaim checks the bound_claims that docs/vault.md gives for GCP
// instance identity tokens: a glob on the nested
// google.compute_engine.zone claim, reached by a JSON pointer.
func TestGCPZoneClaim(t *testing.T) {
	z := setupZoneVault(t, "5m")
	ctx := t.Context()
	_, err := z.root.Logical().Write("auth/jwt/role/eu-gcp", map[string]any{
		"role_type":         "jwt",
		"bound_audiences":   []string{audience},
		"user_claim":        "sub",
		"bound_claims_type": "glob",
		"bound_claims":      map[string]any{"/google/compute_engine/zone": []string{"europe-west1-*", "europe-west4-*"}},
		"token_policies":    []string{"eu-transit"},
		"token_ttl":         "5m",
	})
	require.NoError(t, err)
	gcpToken := func(zone string) string {
		tok, err := z.issuer.Mint(map[string]any{
			"iss": z.issuer.Issuer(), "aud": audience, "sub": "1234567890",
			"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
			"google": map[string]any{"compute_engine": map[string]any{
				"project_id": "p", "zone": zone, "instance_name": "vm",
			}},
		})
		require.NoError(t, err)
		return tok
	}
	c, err := vault.Open(ctx, vault.Config{Address: z.srv.Addr, Key: "eu-users", Auth: vault.AuthJWT, Role: "eu-gcp"})
	require.NoError(t, err)
	defer c.Close()
	b := binding("eu")
	w, err := c.Wrap(caller(ctx, "", gcpToken("europe-west1-b")), randomKey(t), b)
	require.NoError(t, err)
	_, err = c.Unwrap(caller(ctx, "", gcpToken("europe-west4-a")), w, b)
	require.NoError(t, err)
	for _, zone := range []string{"us-east1-b", "europe-west2-a", "europe-west1"} {
		_, err = c.Unwrap(caller(ctx, "", gcpToken(zone)), w, b)
		require.ErrorIs(t, err, kms.ErrDenied, zone)
	}
}

// TestTokenCache checks that a JWT login's token is reused, per
// attestation, and that a token revoked mid-run is replaced transparently.
func TestTokenCache(t *testing.T) {
	z := setupZoneVault(t, "5m")
	ctx := t.Context()
	p := newProxy(t, z.srv.Addr)
	c := z.openJWT(t, p.URL, "eu-users")
	eu := caller(ctx, "europe-west1", z.token(t, "europe-west1"))
	b := binding("eu")
	key := randomKey(t)
	w, err := c.Wrap(eu, key, b)
	require.NoError(t, err)
	for range 5 {
		_, err := c.Unwrap(eu, w, b)
		require.NoError(t, err)
	}
	require.Equal(t, 1, p.count("/auth/jwt/login"), "one login for one attestation")

	// Concurrent first calls with a new attestation share one login.
	eu2 := caller(ctx, "europe-west1", z.token(t, "europe-west1"))
	errc := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := c.Unwrap(eu2, w, b)
			errc <- err
		}()
	}
	for range 8 {
		require.NoError(t, <-errc)
	}
	require.Equal(t, 2, p.count("/auth/jwt/login"))

	// Revoke every token issued by JWT logins, as an operator would.
	_, err = z.root.Logical().Write("sys/leases/revoke-prefix/auth/jwt", nil)
	require.NoError(t, err)
	p.reset()
	got, err := c.Unwrap(eu, w, b)
	require.NoError(t, err, "a revoked token is replaced by a new login")
	require.Equal(t, key, got)
	require.Equal(t, 1, p.count("/auth/jwt/login"))
	require.Equal(t, 2, p.count("/decrypt/eu-users"), "the refused decrypt, then the retry")
	_, err = c.Unwrap(eu, w, b)
	require.NoError(t, err)
	require.Equal(t, 1, p.count("/auth/jwt/login"))
}

// TestTokenExpiry checks that a token is not used from the cache after its
// TTL, so a short token_ttl costs one login per TTL, not a refused request.
func TestTokenExpiry(t *testing.T) {
	z := setupZoneVault(t, "3s")
	ctx := t.Context()
	p := newProxy(t, z.srv.Addr)
	c := z.openJWT(t, p.URL, "eu-users")
	eu := caller(ctx, "europe-west1", z.token(t, "europe-west1"))
	b := binding("eu")
	w, err := c.Wrap(eu, randomKey(t), b)
	require.NoError(t, err)
	p.reset()
	time.Sleep(2500 * time.Millisecond)
	_, err = c.Unwrap(eu, w, b)
	require.NoError(t, err)
	require.Equal(t, 1, p.count("/auth/jwt/login"), "the cached token was dropped before it expired")
	require.Equal(t, 1, p.count("/decrypt/eu-users"), "without a refused request first")
}

// BenchmarkJWTUnwrap measures an unwrap with a cached Vault token (the
// steady state) and with a new attestation each time (a JWT login first).
func BenchmarkJWTUnwrap(b *testing.B) {
	srv := vaulttest.Start(b)
	srv.EnableTransit(b)
	root := srv.Client(b)
	createKey(b, root, "eu-users", true)
	issuer, err := attest.NewDevIssuer("https://attest.zonekey.test")
	require.NoError(b, err)
	pems, err := issuer.PublicKeysPEM()
	require.NoError(b, err)
	require.NoError(b, root.Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}))
	_, err = root.Logical().Write("auth/jwt/config", map[string]any{"jwt_validation_pubkeys": pems, "bound_issuer": issuer.Issuer()})
	require.NoError(b, err)
	require.NoError(b, root.Sys().PutPolicy("eu-transit", `
path "transit/encrypt/eu-users" { capabilities = ["update"] }
path "transit/decrypt/eu-users" { capabilities = ["update"] }
`))
	_, err = root.Logical().Write("auth/jwt/role/eu", map[string]any{
		"role_type": "jwt", "bound_audiences": []string{audience}, "user_claim": "sub",
		"bound_claims": map[string]any{"region": "europe-west1"}, "token_policies": []string{"eu-transit"}, "token_ttl": "5m",
	})
	require.NoError(b, err)
	c, err := vault.Open(context.Background(), vault.Config{Address: srv.Addr, Key: "eu-users", Auth: vault.AuthJWT, Role: "eu"})
	require.NoError(b, err)
	defer c.Close()
	mint := func() string {
		tok, err := issuer.Token(audience, "europe-west1", "w", time.Hour)
		require.NoError(b, err)
		return tok
	}
	ctx := caller(context.Background(), "europe-west1", mint())
	bind := binding("eu")
	w, err := c.Wrap(ctx, randomKey(b), bind)
	require.NoError(b, err)

	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Unwrap(ctx, w, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("login", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			ctx := caller(context.Background(), "europe-west1", mint())
			b.StartTimer()
			if _, err := c.Unwrap(ctx, w, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
}
