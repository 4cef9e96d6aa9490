package attest

import (
	"context"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
)

func TestVerifyValid(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	gcp := newDev(t, gcpIssuer, clk)
	gcpCfg := gcp.IssuerConfig(testAudience)
	gcpCfg.Profile = GCPProfile
	v := newVerifier(t, clk, dev.IssuerConfig(testAudience), gcpCfg)
	now := clk.Now()

	tests := []struct {
		name  string
		token func(t *testing.T) string
		want  Location
	}{{
		name: "region claim",
		token: func(t *testing.T) string {
			tok, err := dev.Token(testAudience, "europe-west1", "spiffe://zonekey.test/billing", 5*time.Minute)
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "europe-west1", Issuer: testIssuer, Workload: "spiffe://zonekey.test/billing", Expiry: now.Add(5 * time.Minute)},
	}, {
		name: "aud as a list",
		token: func(t *testing.T) string {
			tok, err := dev.Mint(with(validClaims(now), "aud", []string{"other", testAudience}))
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "europe-west1", Issuer: testIssuer, Workload: "spiffe://zonekey.test/billing", Expiry: now.Add(5 * time.Minute)},
	}, {
		name: "nbf and iat within skew",
		token: func(t *testing.T) string {
			tok, err := dev.Mint(with(validClaims(now), "nbf", now.Add(50*time.Second).Unix(), "iat", now.Add(50*time.Second).Unix()))
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "europe-west1", Issuer: testIssuer, Workload: "spiffe://zonekey.test/billing", Expiry: now.Add(5 * time.Minute)},
	}, {
		name: "no nbf, no sub",
		token: func(t *testing.T) string {
			tok, err := dev.Mint(with(validClaims(now), "nbf", deleteClaim, "sub", deleteClaim, "region", "us"))
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "us", Issuer: testIssuer, Expiry: now.Add(5 * time.Minute)},
	}, {
		name: "gcp instance identity token",
		token: func(t *testing.T) string {
			tok, err := gcp.Mint(gcpClaims(now, "europe-west1-b"))
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "europe-west1", Zone: "europe-west1-b", Issuer: gcpIssuer, Workload: "4455667788990011223", Expiry: now.Add(time.Hour)},
	}, {
		name: "gcp token without instance id",
		token: func(t *testing.T) string {
			c := gcpClaims(now, "northamerica-northeast2-c")
			delete(c["google"].(map[string]any)["compute_engine"].(map[string]any), "instance_id")
			tok, err := gcp.Mint(c)
			require.NoError(t, err)
			return tok
		},
		want: Location{Region: "northamerica-northeast2", Zone: "northamerica-northeast2-c", Issuer: gcpIssuer, Workload: "112233445566778899000", Expiry: now.Add(time.Hour)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.token(t)
			loc, err := v.Verify(ctx, tok)
			require.NoError(t, err)
			require.Equal(t, tt.want, loc)
			// Again, from the cache.
			loc, err = v.Verify(ctx, tok)
			require.NoError(t, err)
			require.Equal(t, tt.want, loc)
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	now := clk.Now()
	dev := newDev(t, testIssuer, clk)
	gcp := newDev(t, gcpIssuer, clk)

	cfg := dev.IssuerConfig(testAudience)
	// Allow every family, so that the checks below are about keys, not
	// about the algorithm list.
	cfg.Algorithms = []string{"RS256", "PS256", "ES256", "ES384", "EdDSA"}
	cfg.MaxLifetime = time.Hour
	gcpCfg := gcp.IssuerConfig(testAudience)
	gcpCfg.Profile = GCPProfile
	// A second "Google" restricted to one project (a distinct issuer name,
	// as a Verifier holds one config per issuer).
	const gcpProdIssuer = "https://accounts.google.com/prod"
	gcpProd := newDev(t, gcpProdIssuer, clk)
	gcpProdCfg := gcpProd.IssuerConfig(testAudience)
	gcpProdCfg.Profile = GCPProfileForProjects("zonekey-eu", "zonekey-us")
	v := newVerifier(t, clk, cfg, gcpCfg, gcpProdCfg)

	// Same issuer name, other keys.
	impostor := newDev(t, testIssuer, clk)
	// Same issuer name and same kid, other key.
	twin := newDev(t, testIssuer, clk)
	twin.keys[0].kid = dev.KeyID()

	pubDER, err := x509.MarshalPKIXPublicKey(&dev.keys[0].priv.PublicKey)
	require.NoError(t, err)
	pubJWK, err := json.Marshal(dev.JWKS().Keys[0])
	require.NoError(t, err)
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)

	mint := func(d *DevIssuer, c map[string]any) func(t *testing.T) string {
		return func(t *testing.T) string {
			tok, err := d.Mint(c)
			require.NoError(t, err)
			return tok
		}
	}
	good := validClaims(now)
	kid := dev.KeyID()

	tests := []struct {
		name  string
		token func(t *testing.T) string
		want  string // in the error message
	}{
		{"empty", func(*testing.T) string { return "" }, "empty token"},
		{"garbage", func(*testing.T) string { return "not a token" }, "malformed"},
		{"too large", func(*testing.T) string { return strings.Repeat("a", maxTokenBytes+1) }, "limit"},
		{"expired", mint(dev, with(good, "iat", now.Add(-10*time.Minute).Unix(), "nbf", now.Add(-10*time.Minute).Unix(), "exp", now.Add(-time.Second).Unix())), "expired"},
		{"expires now", mint(dev, with(good, "exp", now.Unix())), "expired"},
		{"expired within skew", mint(dev, with(good, "iat", now.Add(-10*time.Minute).Unix(), "exp", now.Add(-30*time.Second).Unix())), "expired"},
		{"not yet valid", mint(dev, with(good, "nbf", now.Add(2*time.Minute).Unix())), "not valid before"},
		{"issued in the future", mint(dev, with(good, "iat", now.Add(2*time.Minute).Unix())), "issued in the future"},
		{"wrong audience", mint(dev, with(good, "aud", "vault")), "aud"},
		{"no audience", mint(dev, with(good, "aud", deleteClaim)), "aud"},
		{"wrong issuer", mint(dev, with(good, "iss", "https://evil.test")), "not trusted"},
		{"no issuer", mint(dev, with(good, "iss", deleteClaim)), "not trusted"},
		{"issuer not a string", mint(dev, with(good, "iss", 7)), "malformed claims"},
		{"token of the other issuer's key", mint(dev, with(good, "iss", gcpIssuer)), "not a key of issuer"},
		{"unknown kid", mint(impostor, good), "not a key of issuer"},
		{"bad signature", mint(twin, good), "signature does not verify"},
		{"tampered payload", func(t *testing.T) string {
			tok, err := dev.Mint(good)
			require.NoError(t, err)
			return replacePayload(t, tok, with(good, "region", "us-east1"))
		}, "signature does not verify"},
		{"alg none", func(t *testing.T) string { return unsigned(t, kid, good) }, "malformed"},
		{"HS256 with the public key DER", func(t *testing.T) string { return sign(t, jose.HS256, pubDER, kid, good) }, "malformed"},
		{"HS256 with the public JWK", func(t *testing.T) string { return sign(t, jose.HS256, pubJWK, kid, good) }, "malformed"},
		{"RS256 naming an EC key", func(t *testing.T) string { return sign(t, jose.RS256, rsaKey(t), kid, good) }, "cannot verify RS256"},
		{"ES384 naming a P-256 key", func(t *testing.T) string { return sign(t, jose.ES384, ecKey(t, elliptic.P384()), kid, good) }, "cannot verify ES384"},
		{"EdDSA naming an EC key", func(t *testing.T) string { return sign(t, jose.EdDSA, edPriv, kid, good) }, "cannot verify EdDSA"},
		{"ES512 not allowed", func(t *testing.T) string { return sign(t, jose.ES512, ecKey(t, elliptic.P521()), kid, good) }, "malformed"},
		{"RS256 not allowed for the gcp issuer", func(t *testing.T) string {
			return sign(t, jose.RS256, rsaKey(t), gcp.KeyID(), gcpClaims(now, "europe-west1-b"))
		}, "not allowed for issuer"},
		{"no kid", func(t *testing.T) string { return sign(t, jose.ES256, dev.keys[0].priv, "", good) }, "no kid"},
		{"missing exp", mint(dev, with(good, "exp", deleteClaim)), "no exp"},
		{"missing iat", mint(dev, with(good, "iat", deleteClaim)), "no iat"},
		{"exp not a number", mint(dev, with(good, "exp", "tomorrow")), "rejected"},
		{"lifetime too long", mint(dev, with(good, "exp", now.Add(2*time.Hour).Unix())), "lifetime"},
		{"missing region", mint(dev, with(good, "region", deleteClaim)), `no "region" claim`},
		{"region not a string", mint(dev, with(good, "region", 42)), "not a string"},
		{"region empty", mint(dev, with(good, "region", "")), "not a region name"},
		{"region malformed", mint(dev, with(good, "region", "EU West")), "not a region name"},
		{"gcp zone too short", mint(gcp, gcpClaims(now, "europe")), "not a GCP zone"},
		{"gcp zone empty", mint(gcp, gcpClaims(now, "")), "not a GCP zone"},
		{"gcp zone a number", mint(gcp, gcpClaims(now, 42)), "not a string"},
		{"gcp zone x-y", mint(gcp, gcpClaims(now, "x-y")), "not a GCP zone"},
		{"gcp zone is a region", mint(gcp, gcpClaims(now, "europe-west1")), "not a GCP zone"},
		{"gcp no google claim", mint(gcp, with(gcpClaims(now, "europe-west1-b"), "google", deleteClaim)), "no google claim"},
		{"gcp project not allowed", mint(gcpProd, with(gcpClaims(now, "europe-west1-b"), "iss", gcpProdIssuer)), "not an allowed project"},
		{"gcp google not an object", mint(gcp, with(gcpClaims(now, "europe-west1-b"), "google", "yes")), "no google claim"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.token(t)
			loc, err := v.Verify(ctx, tok)
			require.Error(t, err)
			require.ErrorIs(t, err, ErrAttestation)
			require.Contains(t, err.Error(), tt.want)
			require.Equal(t, Location{}, loc)
			if len(tok) > 20 {
				for _, part := range strings.Split(tok, ".") {
					if len(part) > 20 {
						require.NotContains(t, err.Error(), part, "the error echoes the token")
					}
				}
			}
		})
	}
}

func TestVerifyCachedPastExpiry(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	v := newVerifier(t, clk, dev.IssuerConfig(testAudience))
	tok, err := dev.Token(testAudience, "europe-west1", "w", time.Minute)
	require.NoError(t, err)

	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)
	clk.Advance(59 * time.Second)
	_, err = v.Verify(ctx, tok) // cached, still valid
	require.NoError(t, err)
	require.Len(t, v.cache, 1)

	clk.Advance(time.Second) // exactly exp
	_, err = v.Verify(ctx, tok)
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "expired")
	_, err = v.Verify(ctx, tok) // and not from a fresh verification either
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "expired")
}

func TestVerifyCacheBounded(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	v := newVerifier(t, clk, dev.IssuerConfig(testAudience))
	now := clk.Now()

	// Fill the cache: one entry already expired, the others expiring one
	// second apart, from a minute on.
	for i := range cacheSize {
		exp := now.Add(time.Minute + time.Duration(i)*time.Second)
		if i == 0 {
			exp = now.Add(-time.Second)
		}
		v.remember(sha256Sum(fmt.Sprint(i)), cacheEntry{loc: Location{Expiry: exp}}, now)
	}
	require.Len(t, v.cache, cacheSize)

	// A new entry first displaces the expired one, then the one expiring
	// soonest.
	for round, gone := range []string{"0", "1"} {
		tok, err := dev.Mint(with(validClaims(now), "sub", fmt.Sprint("round", round)))
		require.NoError(t, err)
		_, err = v.Verify(ctx, tok)
		require.NoError(t, err)
		require.Len(t, v.cache, cacheSize)
		require.NotContains(t, v.cache, sha256Sum(gone))
		require.Contains(t, v.cache, sha256Sum(tok))
	}
	require.Contains(t, v.cache, sha256Sum("2"))
}

func TestNewVerifierRejectsConfig(t *testing.T) {
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	base := dev.IssuerConfig(testAudience)
	symmetric := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "k", Algorithm: "HS256"}}}

	tests := []struct {
		name string
		cfg  func(c IssuerConfig) IssuerConfig
	}{
		{"no issuer", func(c IssuerConfig) IssuerConfig { c.Issuer = ""; return c }},
		{"no audience", func(c IssuerConfig) IssuerConfig { c.Audiences = nil; return c }},
		{"empty audience", func(c IssuerConfig) IssuerConfig { c.Audiences = []string{""}; return c }},
		{"HS256", func(c IssuerConfig) IssuerConfig { c.Algorithms = []string{"ES256", "HS256"}; return c }},
		{"none", func(c IssuerConfig) IssuerConfig { c.Algorithms = []string{"none"}; return c }},
		{"unknown alg", func(c IssuerConfig) IssuerConfig { c.Algorithms = []string{"ES257"}; return c }},
		{"no keys", func(c IssuerConfig) IssuerConfig { c.JWKS = nil; return c }},
		{"two key sources", func(c IssuerConfig) IssuerConfig { c.JWKSURL = "https://example.com/jwks"; return c }},
		{"symmetric JWKS", func(c IssuerConfig) IssuerConfig { c.JWKS = symmetric; return c }},
		{"plain http", func(c IssuerConfig) IssuerConfig { c.JWKS = nil; c.JWKSURL = "http://example.com/jwks"; return c }},
		{"missing JWKS file", func(c IssuerConfig) IssuerConfig { c.JWKS = nil; c.JWKSFile = t.TempDir() + "/none.json"; return c }},
		{"negative skew", func(c IssuerConfig) IssuerConfig { c.MaxSkew = -time.Second; return c }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVerifier(tt.cfg(base))
			require.ErrorIs(t, err, ErrAttestation)
		})
	}
	_, err := NewVerifier()
	require.ErrorIs(t, err, ErrAttestation)
	_, err = NewVerifier(base, base)
	require.ErrorIs(t, err, ErrAttestation)

	for _, u := range []string{"https://example.com/jwks", "http://127.0.0.1:1/jwks", "http://[::1]:1/jwks", "http://localhost:1/jwks"} {
		c := base
		c.JWKS, c.JWKSURL = nil, u
		_, err := NewVerifier(c)
		require.NoError(t, err, u)
	}

	c := base
	c.MaxSkew = time.Hour
	v, err := NewVerifier(c)
	require.NoError(t, err)
	require.Equal(t, maxSkew, v.issuers[testIssuer].skew)
}

func TestDevIssuer(t *testing.T) {
	clk := newClock()
	d := newDev(t, testIssuer, clk)
	kid := d.KeyID()
	require.NoError(t, d.Rotate())
	require.NotEqual(t, kid, d.KeyID())

	set := d.JWKS()
	require.Len(t, set.Keys, 2)
	for _, k := range set.Keys {
		require.True(t, k.IsPublic(), "JWKS holds a private key")
		require.Equal(t, "ES256", k.Algorithm)
	}

	path := t.TempDir() + "/jwks.json"
	require.NoError(t, d.WriteJWKS(path))
	back, err := loadJWKSFile(path)
	require.NoError(t, err)
	require.Len(t, back.Keys, 2)
	for _, k := range back.Keys {
		require.True(t, k.IsPublic())
	}

	pems, err := d.PublicKeysPEM()
	require.NoError(t, err)
	require.Len(t, pems, 2)
	require.True(t, strings.HasPrefix(pems[0], "-----BEGIN PUBLIC KEY-----"))

	_, err = NewDevIssuer("")
	require.Error(t, err)
}

func TestGCPProfileForProjects(t *testing.T) {
	claims := gcpClaims(t0, "europe-west1-b") // project zonekey-prod
	loc, err := GCPProfileForProjects("other", "zonekey-prod").Locate(claims)
	require.NoError(t, err)
	require.Equal(t, Location{Region: "europe-west1", Zone: "europe-west1-b", Workload: "4455667788990011223"}, loc)

	_, err = GCPProfileForProjects("other").Locate(claims)
	require.ErrorContains(t, err, "not an allowed project")
	_, err = GCPProfileForProjects().Locate(claims)
	require.Error(t, err)
	_, err = GCPProfileForProjects("zonekey-prod").Locate(gcpClaims(t0, "europe"))
	require.ErrorContains(t, err, "not a GCP zone")
	delete(claims["google"].(map[string]any)["compute_engine"].(map[string]any), "project_id")
	_, err = GCPProfileForProjects("").Locate(claims)
	require.Error(t, err, "a missing project must not match an empty allowed name")
}
