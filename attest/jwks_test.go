package attest

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
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
	body   atomic.Pointer[[]byte]             // if non-nil, served as it is
	set    atomic.Pointer[jose.JSONWebKeySet] // if nil, the DevIssuer's live JWKS
	status atomic.Int64                       // if non-zero, answer this status
	// hold, if set, is waited on before answering; entered is signalled
	// (without blocking) when a request starts waiting.
	hold    atomic.Pointer[chan struct{}]
	entered chan struct{}
}

func newJWKSServer(t *testing.T, dev *DevIssuer) *jwksServer {
	s := &jwksServer{entered: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if h := s.hold.Load(); h != nil {
			select {
			case s.entered <- struct{}{}:
			default:
			}
			<-*h
		}
		if st := s.status.Load(); st != 0 {
			http.Error(w, "unavailable", int(st))
			return
		}
		if body := s.body.Load(); body != nil {
			w.Write(*body)
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
	require.Contains(t, err.Error(), "not in its keys loaded at", "says the key is gone, not merely that loads are limited")
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

// publishedVerifier returns a Verifier on clk that trusts dev and loads its
// keys from where dev publishes them, a file or a URL (kind "file" or
// "url"), and the function that publishes doc there instead: nil makes the
// source fail (the file is removed, the URL answers 503).
func publishedVerifier(t *testing.T, kind string, clk *fakeClock, dev *DevIssuer, mod ...func(*IssuerConfig)) (*Verifier, func(doc []byte)) {
	t.Helper()
	config := func(c IssuerConfig) IssuerConfig {
		for _, m := range mod {
			m(&c)
		}
		return c
	}
	switch kind {
	case "file":
		path := t.TempDir() + "/jwks.json"
		require.NoError(t, dev.WriteJWKS(path))
		c := dev.IssuerConfig(testAudience)
		c.JWKS, c.JWKSFile = nil, path
		return newVerifier(t, clk, config(c)), func(doc []byte) {
			if doc == nil {
				require.NoError(t, os.Remove(path))
				return
			}
			require.NoError(t, os.WriteFile(path, doc, 0o644))
		}
	case "url":
		srv := newJWKSServer(t, dev)
		return newVerifier(t, clk, config(urlConfig(dev, srv.URL))), func(doc []byte) {
			if doc == nil {
				srv.status.Store(http.StatusServiceUnavailable)
				return
			}
			srv.status.Store(0)
			srv.body.Store(&doc)
		}
	}
	t.Fatalf("unknown JWKS source %q", kind)
	return nil, nil
}

// jwksDoc is the JSON of set.
func jwksDoc(t testing.TB, set *jose.JSONWebKeySet) []byte {
	t.Helper()
	doc, err := json.Marshal(set)
	require.NoError(t, err)
	return doc
}

// A token verified before its issuer withdraws its key is refused from the
// moment the key set it was verified under is jwksMaxAge old, though it is
// cached and far from its exp: the cache hit looks its key up again in a
// set loaded anew. Up to that moment the hit is answered from the cache,
// without loading anything. The same holds when the kid is republished
// for another key, and when the issuer publishes no key at all.
func TestJWKSWithdrawnKeyStopsCachedToken(t *testing.T) {
	tests := []struct {
		name     string
		source   string
		withdraw func(t *testing.T, clk *fakeClock, dev *DevIssuer) []byte
		want     string
		wantErr  error
	}{
		{
			name:   "key replaced by another/file",
			source: "file",
			withdraw: func(t *testing.T, clk *fakeClock, dev *DevIssuer) []byte {
				return jwksDoc(t, newDev(t, testIssuer, clk).JWKS())
			},
			want: "is not a key of issuer",
		},
		{
			name:   "key replaced by another/url",
			source: "url",
			withdraw: func(t *testing.T, clk *fakeClock, dev *DevIssuer) []byte {
				return jwksDoc(t, newDev(t, testIssuer, clk).JWKS())
			},
			want: "is not a key of issuer",
		},
		{
			name:   "kid republished for another key",
			source: "url",
			withdraw: func(t *testing.T, clk *fakeClock, dev *DevIssuer) []byte {
				set := newDev(t, testIssuer, clk).JWKS()
				set.Keys[0].KeyID = dev.KeyID()
				return jwksDoc(t, set)
			},
			want: "signature does not verify",
		},
		{
			name:   "every key withdrawn",
			source: "file",
			withdraw: func(*testing.T, *fakeClock, *DevIssuer) []byte {
				return []byte(`{"keys":[]}`)
			},
			want:    "publishes no keys",
			wantErr: errNoUsableKeys,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			dev := newDev(t, testIssuer, clk)
			v, publish := publishedVerifier(t, tt.source, clk, dev)
			is := v.issuers[testIssuer]

			tok, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
			require.NoError(t, err)
			_, err = v.Verify(ctx, tok) // loads the set
			require.NoError(t, err)
			require.EqualValues(t, 1, is.fetches.Load())

			publish(tt.withdraw(t, clk, dev))
			clk.Advance(jwksMaxAge - time.Second)
			loc, err := v.Verify(ctx, tok)
			require.NoError(t, err, "within the bound, a cache hit")
			require.Equal(t, "europe-west1", loc.Region)
			require.EqualValues(t, 1, is.fetches.Load(), "a hit within the bound loads nothing")

			clk.Advance(time.Second)
			for range 2 { // and the token is not cached again
				loc, err = v.Verify(ctx, tok)
				require.ErrorIs(t, err, ErrAttestation)
				if tt.wantErr != nil {
					require.ErrorIs(t, err, tt.wantErr)
				}
				require.Contains(t, err.Error(), tt.want)
				require.Equal(t, Location{}, loc)
			}
			require.EqualValues(t, 2, is.fetches.Load())
			require.NotContains(t, v.cache, sha256Sum(tok))
		})
	}
}

// A cached token whose key stays published keeps verifying across any
// number of jwksMaxAge bounds, through the Verifier and through an
// Attestor, with one load of the key set per bound; when the issuer
// rotates but keeps the old key published; and while the issuer cannot be
// reached (the stale set keeps verifying, as it does for new tokens), with
// a load attempt at most once per refetchInterval.
func TestJWKSCachedTokenVerifiesAcrossMaxAge(t *testing.T) {
	tests := []struct {
		name        string
		change      func(t *testing.T, dev *DevIssuer, publish func([]byte))
		wantFetches int64
	}{
		{
			name:        "key still published",
			change:      func(*testing.T, *DevIssuer, func([]byte)) {},
			wantFetches: 4, // at 0, 1h, 2h and 3h
		},
		{
			name: "rotated, old key still published",
			change: func(t *testing.T, dev *DevIssuer, publish func([]byte)) {
				require.NoError(t, dev.Rotate())
				require.Len(t, dev.JWKS().Keys, 2)
				publish(jwksDoc(t, dev.JWKS()))
			},
			wantFetches: 4,
		},
		{
			name: "issuer unreachable",
			change: func(t *testing.T, dev *DevIssuer, publish func([]byte)) {
				publish(nil)
			},
			wantFetches: 1 + 13, // once per 10-minute step from 1h on
		},
	}
	for _, tt := range tests {
		for _, source := range []string{"file", "url"} {
			t.Run(tt.name+"/"+source, func(t *testing.T) {
				ctx := context.Background()
				clk := newClock()
				dev := newDev(t, testIssuer, clk)
				v, publish := publishedVerifier(t, source, clk, dev)
				tok, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
				require.NoError(t, err)
				a := NewAttestor(StaticSource(tok), v)
				_, _, err = a.Current(ctx)
				require.NoError(t, err)

				tt.change(t, dev, publish)
				for step := range 18 { // three hours
					clk.Advance(10 * time.Minute)
					for range 3 {
						loc, err := v.Verify(ctx, tok)
						require.NoError(t, err, "step %d", step)
						require.Equal(t, "europe-west1", loc.Region)
						loc, got, err := a.Current(ctx)
						require.NoError(t, err, "step %d", step)
						require.Equal(t, "europe-west1", loc.Region)
						require.Equal(t, tok, got)
					}
				}
				require.EqualValues(t, tt.wantFetches, v.issuers[testIssuer].fetches.Load())
			})
		}
	}
}

// A well-formed JWKS without any usable key (empty, or holding only key
// types this package does not use) is no failed load: it withdraws every
// key of the issuer, so neither new nor cached tokens verify, with an
// error wrapping ErrAttestation that says the issuer publishes no keys,
// until the issuer publishes keys again. A load that fails (the file is
// gone, the document is not a JWKS) keeps the stale keys verifying.
func TestJWKSWithoutUsableKeysWithdrawsAll(t *testing.T) {
	tests := []struct {
		name      string
		doc       []byte // nil: the file is removed
		withdraws bool
	}{
		{name: "empty set", doc: []byte(`{"keys":[]}`), withdraws: true},
		{
			name: "unsupported key types only",
			doc: []byte(`{"keys":[
				{"kty":"oct","kid":"hmac","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
				{"kty":"PQ","kid":"future","x":"AAAA"}]}`),
			withdraws: true,
		},
		{name: "file removed", doc: nil},
		{name: "not JSON", doc: []byte(`<html>503</html>`)},
		{name: "no keys array", doc: []byte(`{"error":"unavailable"}`)},
		{name: "null", doc: []byte(`null`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			dev := newDev(t, testIssuer, clk)
			v, publish := publishedVerifier(t, "file", clk, dev)
			newToken := func() string {
				tok, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
				require.NoError(t, err)
				return tok
			}
			cached, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
			require.NoError(t, err)
			_, err = v.Verify(ctx, cached)
			require.NoError(t, err)

			publish(tt.doc)
			clk.Advance(jwksMaxAge) // the next token makes the Verifier load the set again
			if !tt.withdraws {
				_, err = v.Verify(ctx, newToken())
				require.NoError(t, err, "a failed load keeps the stale keys")
				_, err = v.Verify(ctx, cached)
				require.NoError(t, err)
				return
			}
			refused := func(tok string) {
				t.Helper()
				loc, err := v.Verify(ctx, tok)
				require.ErrorIs(t, err, ErrAttestation)
				require.ErrorIs(t, err, errNoUsableKeys)
				require.Contains(t, err.Error(), fmt.Sprintf("issuer %q publishes no keys", testIssuer))
				require.Equal(t, Location{}, loc)
			}
			refused(newToken())
			refused(cached)
			clk.Advance(3 * time.Hour)
			refused(newToken())

			// Once the issuer publishes keys again, they verify from the
			// next load on.
			publish(jwksDoc(t, dev.JWKS()))
			clk.Advance(refetchInterval)
			_, err = v.Verify(ctx, newToken())
			require.NoError(t, err)
		})
	}
}

// TestJWKSMaxStale: with MaxStale set, keys whose JWKS cannot be loaded
// again keep verifying, cached tokens and new ones, until they are MaxStale
// old, are refused from then on, and verify again once a load succeeds.
// Without it they keep verifying (TestJWKSCachedTokenVerifiesAcrossMaxAge).
func TestJWKSMaxStale(t *testing.T) {
	for _, source := range []string{"file", "url"} {
		t.Run(source, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			dev := newDev(t, testIssuer, clk)
			v, publish := publishedVerifier(t, source, clk, dev, func(c *IssuerConfig) { c.MaxStale = 2 * time.Hour })
			cached, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
			require.NoError(t, err)
			_, err = v.Verify(ctx, cached)
			require.NoError(t, err)

			publish(nil)
			for step := 1; step < 12; step++ { // up to 1h50
				clk.Advance(10 * time.Minute)
				_, err := v.Verify(ctx, cached)
				require.NoError(t, err, "%s: the stale keys still verify", clk.Now())
			}
			clk.Advance(10 * time.Minute) // 2h
			fresh, err := dev.Token(testAudience, "europe-west1", "w2", time.Hour)
			require.NoError(t, err)
			for _, tok := range []string{cached, fresh} {
				_, err := v.Verify(ctx, tok)
				require.ErrorIs(t, err, ErrAttestation)
				require.ErrorContains(t, err, "MaxStale")
			}

			publish(jwksDoc(t, dev.JWKS()))
			clk.Advance(time.Minute)
			for _, tok := range []string{cached, fresh} {
				_, err := v.Verify(ctx, tok)
				require.NoError(t, err, "after a successful load")
			}
		})
	}
}

// TestJWKSStaleKeysServeDuringFetch: while one caller loads an issuer's
// key set again (the set is an hour old), others whose key is in the old set
// are answered from it at once instead of waiting for the load.
func TestJWKSStaleKeysServeDuringFetch(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))
	tok, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
	require.NoError(t, err)
	_, err = v.Verify(ctx, tok)
	require.NoError(t, err)

	clk.Advance(jwksMaxAge + time.Minute)
	hold := make(chan struct{})
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(hold) }) }) // before the server's Close
	srv.hold.Store(&hold)
	loading := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, tok) // rechecks its key: loads the set, held
		loading <- err
	}()
	<-srv.entered
	other, err := dev.Token(testAudience, "europe-west1", "w2", time.Hour)
	require.NoError(t, err)
	for _, tk := range []string{tok, other} {
		done := make(chan error, 1)
		go func() { _, err := v.Verify(ctx, tk); done <- err }()
		select {
		case err := <-done:
			require.NoError(t, err, "answered from the old set")
		case <-time.After(5 * time.Second):
			t.Fatal("a Verify waited for another caller's load")
		}
	}
	release.Do(func() { close(hold) })
	require.NoError(t, <-loading)
	require.EqualValues(t, 2, srv.hits.Load(), "one load at start, one now")
}
