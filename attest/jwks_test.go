package attest

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jwksServer serves a key set over loopback HTTP and counts requests.
type jwksServer struct {
	*httptest.Server
	hits   atomic.Int64
	set    atomic.Pointer[jose.JSONWebKeySet] // if nil, the DevIssuer's live JWKS
	status atomic.Int64                       // if non-zero, answer this status
}

func newJWKSServer(t *testing.T, dev *DevIssuer) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if st := s.status.Load(); st != 0 {
			http.Error(w, "unavailable", int(st))
			return
		}
		if set := s.set.Load(); set != nil {
			json.NewEncoder(w).Encode(set)
			return
		}
		dev.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func urlConfig(dev *DevIssuer, u string) IssuerConfig {
	c := dev.IssuerConfig(testAudience)
	c.JWKS, c.JWKSURL = nil, u
	return c
}

func TestJWKSRotation(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL+"/jwks"))
	is := v.issuers[testIssuer]

	tok1, err := dev.Token(testAudience, "europe-west1", "w1", 10*time.Minute)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok1) // first use fetches
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.hits.Load())

	// The issuer rotates. A token under the new kid makes the Verifier
	// fetch the set again, once, when the rate limit allows.
	require.NoError(t, dev.Rotate())
	clk.Advance(refetchInterval)
	tok2, err := dev.Token(testAudience, "europe-west1", "w2", 10*time.Minute)
	require.NoError(t, err)
	loc, err := v.Verify(ctx, tok2)
	require.NoError(t, err)
	require.Equal(t, "w2", loc.Workload)
	require.EqualValues(t, 2, srv.hits.Load())
	require.EqualValues(t, 2, is.fetches.Load())

	// Old tokens still verify (their key is still published), without a
	// fetch.
	tok1b, err := dev.Mint(with(validClaims(clk.Now()), "sub", "w1b"))
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok1b)
	require.NoError(t, err)
	require.EqualValues(t, 2, srv.hits.Load())
}

func TestJWKSRefetchRateLimited(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))

	tok, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.hits.Load())

	// A flood of tokens naming made-up kids, concurrently.
	attacker := ecKey(t, elliptic.P256())
	flood := func(round int) {
		var wg sync.WaitGroup
		for i := range 64 {
			tok := sign(t, jose.ES256, attacker, fmt.Sprintf("forged-%d-%d", round, i), validClaims(clk.Now()))
			wg.Go(func() {
				_, err := v.Verify(ctx, tok)
				assert.ErrorIs(t, err, ErrAttestation)
			})
		}
		wg.Wait()
	}
	flood(0)
	require.EqualValues(t, 1, srv.hits.Load(), "unknown kids within the interval must not refetch")

	clk.Advance(refetchInterval - time.Second)
	flood(1)
	require.EqualValues(t, 1, srv.hits.Load())

	clk.Advance(time.Second)
	flood(2)
	require.EqualValues(t, 2, srv.hits.Load(), "one refetch per interval")

	// The known key still verifies throughout, from the set in memory.
	tok2, err := dev.Mint(with(validClaims(clk.Now()), "sub", "other"))
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok2)
	require.NoError(t, err)
	require.EqualValues(t, 2, srv.hits.Load())
}

func TestJWKSWithdrawnKeyDropsCache(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))

	tok1, err := dev.Token(testAudience, "europe-west1", "w1", time.Hour)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok1)
	require.NoError(t, err)

	// The issuer rotates and withdraws the old key.
	require.NoError(t, dev.Rotate())
	set := dev.JWKS()
	set.Keys = set.Keys[1:]
	srv.set.Store(set)

	clk.Advance(refetchInterval)
	tok2, err := dev.Token(testAudience, "europe-west1", "w2", time.Hour)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok2)
	require.NoError(t, err)

	_, err = v.Verify(ctx, tok1)
	require.ErrorIs(t, err, ErrAttestation, "a token under a withdrawn key stays cached")
	require.Contains(t, err.Error(), "not a key of issuer")
}

func TestJWKSUnavailable(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	srv.status.Store(http.StatusServiceUnavailable)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))

	tok, err := dev.Token(testAudience, "europe-west1", "w", 3*time.Hour)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok)
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "503")

	// Until a set was loaded, retries are allowed once per second.
	_, err = v.Verify(ctx, tok)
	require.ErrorIs(t, err, ErrAttestation)
	require.EqualValues(t, 1, srv.hits.Load())
	srv.status.Store(0)
	clk.Advance(retryInterval)
	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)
	require.EqualValues(t, 2, srv.hits.Load())

	// Past the set's max age, a cache miss refetches; if the issuer is
	// down, the known keys keep verifying.
	srv.status.Store(http.StatusInternalServerError)
	clk.Advance(jwksMaxAge)
	tok2, err := dev.Mint(with(validClaims(clk.Now()), "sub", "later"))
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok2)
	require.NoError(t, err)
	require.EqualValues(t, 3, srv.hits.Load())
}

func TestJWKSFile(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	path := t.TempDir() + "/jwks.json"
	require.NoError(t, dev.WriteJWKS(path))
	c := dev.IssuerConfig(testAudience)
	c.JWKS, c.JWKSFile = nil, path
	v := newVerifier(t, clk, c)

	tok, err := dev.Token(testAudience, "us-east1", "w", time.Minute)
	require.NoError(t, err)
	loc, err := v.Verify(ctx, tok)
	require.NoError(t, err)
	require.Equal(t, "us-east1", loc.Region)

	// Rotation by rewriting the file.
	require.NoError(t, dev.Rotate())
	require.NoError(t, dev.WriteJWKS(path))
	clk.Advance(refetchInterval)
	tok, err = dev.Token(testAudience, "us-east1", "w", time.Minute)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)
}

func TestJWKSParseSkipsUnusableKeys(t *testing.T) {
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	good, err := json.Marshal(dev.JWKS().Keys[0])
	require.NoError(t, err)
	enc, err := json.Marshal(jose.JSONWebKey{Key: &ecKey(t, elliptic.P256()).PublicKey, KeyID: "enc", Use: "enc"})
	require.NoError(t, err)
	doc := `{"keys":[
		{"kty":"oct","kid":"hmac","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
		{"kty":"PQ","kid":"future","x":"AAAA"},
		` + string(enc) + `,
		` + string(good) + `]}`
	set, err := parseJWKS([]byte(doc))
	require.NoError(t, err)
	ks, err := newKeySet(set, clk.Now())
	require.NoError(t, err)
	require.Len(t, ks.keys, 1)
	require.Contains(t, ks.keys, dev.KeyID())

	// A small RSA key is not usable.
	small := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &rsaKey1024(t).PublicKey, KeyID: "small"}}}
	_, err = newKeySet(small, clk.Now())
	require.Error(t, err)
}

func TestJWKSCancelledFetchDoesNotCount(t *testing.T) {
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))
	tok, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	require.NoError(t, err)

	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = v.Verify(cctx, tok)
	require.ErrorIs(t, err, ErrAttestation)
	require.ErrorIs(t, err, context.Canceled)
	_, err = v.Verify(context.Background(), tok) // no wait for the retry interval
	require.NoError(t, err)
}
