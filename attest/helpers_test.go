package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
)

const (
	testIssuer   = "https://attest.zonekey.test"
	testAudience = "zonekey-test"
	gcpIssuer    = "https://accounts.google.com"
)

// t0 is the start of every fake clock.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is a clock tests advance by hand; safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t0.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// newDev returns a DevIssuer on clk.
func newDev(t testing.TB, issuer string, clk *fakeClock) *DevIssuer {
	t.Helper()
	d, err := NewDevIssuer(issuer)
	require.NoError(t, err)
	d.now = clk.Now
	return d
}

// newVerifier returns a Verifier on clk.
func newVerifier(t testing.TB, clk *fakeClock, cfgs ...IssuerConfig) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfgs...)
	require.NoError(t, err)
	v.now = clk.Now
	return v
}

// validClaims returns the claims of a good token at now.
func validClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":    testIssuer,
		"aud":    testAudience,
		"sub":    "spiffe://zonekey.test/billing",
		"iat":    now.Unix(),
		"nbf":    now.Unix(),
		"exp":    now.Add(5 * time.Minute).Unix(),
		"region": "europe-west1",
	}
}

// gcpClaims returns the claims of a GCP instance identity token (format=full)
// at now with the given zone claim.
func gcpClaims(now time.Time, zone any) map[string]any {
	return map[string]any{
		"iss":   gcpIssuer,
		"aud":   testAudience,
		"sub":   "112233445566778899000",
		"azp":   "112233445566778899000",
		"email": "vm@project.iam.gserviceaccount.com",
		"iat":   now.Unix(),
		"exp":   now.Add(time.Hour).Unix(),
		"google": map[string]any{
			"compute_engine": map[string]any{
				"instance_creation_timestamp": now.Add(-24 * time.Hour).Unix(),
				"instance_id":                 "4455667788990011223",
				"instance_name":               "billing-1",
				"project_id":                  "zonekey-prod",
				"project_number":              123456789012,
				"zone":                        zone,
			},
		},
	}
}

// with returns a copy of claims with key set to val, or deleted if val is
// the deleteClaim marker.
func with(claims map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(claims))
	for k, v := range claims {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == deleteClaim {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

type deleteMarker struct{}

var deleteClaim = deleteMarker{}

// sign makes a compact JWS of claims with any algorithm and key, with kid in
// the header unless it is empty.
func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	require.NoError(t, err)
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	require.NoError(t, err)
	return tok
}

// unsigned makes an "alg: none" token.
func unsigned(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	hdr, err := json.Marshal(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
	require.NoError(t, err)
	body, err := json.Marshal(claims)
	require.NoError(t, err)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(hdr) + "." + enc(body) + "."
}

// replacePayload swaps the payload of a compact token, keeping its header and
// signature.
func replacePayload(t testing.TB, tok string, claims map[string]any) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	body, err := json.Marshal(claims)
	require.NoError(t, err)
	parts[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(parts, ".")
}

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	require.NoError(t, err)
	return k
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return k
}

func sha256Sum(s string) [sha256.Size]byte { return sha256.Sum256([]byte(s)) }

func rsaKey1024(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	return k
}
