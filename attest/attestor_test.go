package attest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingSource yields a settable token and counts the calls.
type countingSource struct {
	mu    sync.Mutex
	token string
	err   error
	calls atomic.Int64
}

func (s *countingSource) Token(context.Context) (string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token, s.err
}

func (s *countingSource) set(token string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token, s.err = token, err
}

func TestAttestorCaches(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 10*time.Minute)
	a, clk, src, tok := e.a, e.clk, e.src, e.tok

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				loc, got, err := a.Current(ctx)
				assert.NoError(t, err)
				assert.Equal(t, "europe-west1", loc.Region)
				assert.Equal(t, tok, got)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, src.calls.Load())
	require.EqualValues(t, 1, a.verifies.Load())

	// After the refresh interval the Source is asked again; the token is
	// the same, so it is not verified again.
	for i := range 5 {
		clk.Advance(DefaultRefreshInterval)
		_, _, err := a.Current(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 2+i, src.calls.Load())
	}
	require.EqualValues(t, 1, a.verifies.Load())
}

func TestAttestorPicksUpNewToken(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 10*time.Minute)
	a, clk, dev, src, tok1 := e.a, e.clk, e.dev, e.src, e.tok

	loc, got, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)
	require.Equal(t, tok1, got)

	tok2, err := dev.Token(testAudience, "europe-west4", "w", 10*time.Minute)
	require.NoError(t, err)
	src.set(tok2, nil)
	// Within the interval, the cached Location stands.
	clk.Advance(DefaultRefreshInterval / 2)
	loc, _, err = a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)

	clk.Advance(DefaultRefreshInterval / 2)
	loc, got, err = a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west4", loc.Region)
	require.Equal(t, tok2, got)
	require.EqualValues(t, 2, a.verifies.Load())
}

func TestAttestorRefusesExpired(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 30*time.Second)
	a, clk, src := e.a, e.clk, e.src
	var err error
	a.RefreshInterval = time.Hour // expiry alone must trigger the check

	_, _, err = a.Current(ctx)
	require.NoError(t, err)
	clk.Advance(30 * time.Second)
	loc, got, err := a.Current(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "expired")
	require.Equal(t, Location{}, loc)
	require.Empty(t, got)
	require.EqualValues(t, 2, src.calls.Load())

	// The failure is remembered for the interval: the Source is not
	// hammered.
	_, _, err = a.Current(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.EqualValues(t, 2, src.calls.Load())
}

func TestAttestorSourceErrors(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 10*time.Second)
	a, clk, dev, src := e.a, e.clk, e.dev, e.src
	var err error
	_, _, err = a.Current(ctx)
	require.NoError(t, err)

	// A failing Source does not invalidate evidence that is still valid.
	boom := errors.New("token file vanished")
	src.set("", boom)
	clk.Advance(2 * time.Second)
	loc, _, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)

	// Once it expires, the Source's error is the answer.
	clk.Advance(8 * time.Second)
	_, _, err = a.Current(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.ErrorIs(t, err, boom)

	// A cancelled caller's failure is not remembered for the others.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	clk.Advance(DefaultRefreshInterval)
	src.set("", context.Canceled)
	_, _, err = a.Current(cctx)
	require.ErrorIs(t, err, context.Canceled)
	good, err := dev.Token(testAudience, "europe-west1", "w", time.Minute)
	require.NoError(t, err)
	src.set(good, nil)
	_, _, err = a.Current(ctx)
	require.NoError(t, err)
}

func TestAttestorKeyRotation(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	srv := newJWKSServer(t, dev)
	v := newVerifier(t, clk, urlConfig(dev, srv.URL))
	tok1, err := dev.Token(testAudience, "europe-west1", "w1", 10*time.Minute)
	require.NoError(t, err)
	src := &countingSource{token: tok1}
	a := NewAttestor(src, v)
	loc, _, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "w1", loc.Workload)

	// The issuer rotates right after the first fetch: the new kid is not
	// let in before the refetch interval, and meanwhile the previous, still
	// valid evidence stands.
	require.NoError(t, dev.Rotate())
	tok2, err := dev.Token(testAudience, "europe-west1", "w2", 10*time.Minute)
	require.NoError(t, err)
	src.set(tok2, nil)
	for range 29 {
		clk.Advance(time.Second)
		loc, got, err := a.Current(ctx)
		require.NoError(t, err)
		require.Equal(t, "w1", loc.Workload)
		require.Equal(t, tok1, got)
	}
	clk.Advance(time.Second)
	loc, got, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "w2", loc.Workload)
	require.Equal(t, tok2, got)
	require.EqualValues(t, 2, srv.hits.Load())
}

func TestAttestorBadNewToken(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 5*time.Second)
	a, clk, dev, src, tok := e.a, e.clk, e.dev, e.src, e.tok
	var err error
	_, _, err = a.Current(ctx)
	require.NoError(t, err)

	bad, err := dev.Token("another-service", "europe-west1", "w", time.Hour)
	require.NoError(t, err)
	src.set(bad, nil)
	clk.Advance(DefaultRefreshInterval)
	_, got, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, tok, got)

	clk.Advance(5 * time.Second)
	_, got, err = a.Current(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "aud")
	require.Empty(t, got)
}

func TestAttestorWithFileSource(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dev := newDev(t, testIssuer, clk)
	v := newVerifier(t, clk, dev.IssuerConfig(testAudience))
	w := &kubeWriter{dir: t.TempDir()}
	tokEU, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	require.NoError(t, err)
	w.write(t, "token", tokEU)
	a := NewAttestor(FileSource(filepath.Join(w.dir, "token")), v)

	loc, got, err := a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)
	require.Equal(t, tokEU, got)

	tokUS, err := dev.Token(testAudience, "us-east1", "w", time.Hour)
	require.NoError(t, err)
	w.write(t, "token", tokUS)
	clk.Advance(DefaultRefreshInterval)
	loc, got, err = a.Current(ctx)
	require.NoError(t, err)
	require.Equal(t, "us-east1", loc.Region)
	require.Equal(t, tokUS, got, "the old token is still in use")

	entries, err := os.ReadDir(w.dir)
	require.NoError(t, err)
	require.Len(t, entries, 3) // ..data, one timestamped dir, token
}

// steadyAttestor returns an Attestor whose Location is cached.
func steadyAttestor(b *testing.B) *Attestor {
	dev, err := NewDevIssuer(testIssuer)
	require.NoError(b, err)
	v, err := NewVerifier(dev.IssuerConfig(testAudience))
	require.NoError(b, err)
	tok, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	require.NoError(b, err)
	a := NewAttestor(StaticSource(tok), v)
	_, _, err = a.Current(context.Background())
	require.NoError(b, err)
	return a
}

// BenchmarkAttestorCurrent measures the hot path: the keystore's check on
// every key access. The refresh once per second is part of the steady state.
func BenchmarkAttestorCurrent(b *testing.B) {
	ctx := context.Background()
	a := steadyAttestor(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := a.Current(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAttestorCurrentParallel(b *testing.B) {
	ctx := context.Background()
	a := steadyAttestor(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := a.Current(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkVerifyCached measures Verify of a token already verified: a
// SHA-256 of the token and a map lookup.
func BenchmarkVerifyCached(b *testing.B) {
	ctx := context.Background()
	dev, err := NewDevIssuer(testIssuer)
	require.NoError(b, err)
	v, err := NewVerifier(dev.IssuerConfig(testAudience))
	require.NoError(b, err)
	tok, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	require.NoError(b, err)
	_, err = v.Verify(ctx, tok)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// CurrentUntil says until when Current keeps returning what it returns:
// the next refresh, or the evidence's expiry if that comes first, and no
// time at all with an error.
func TestAttestorCurrentUntil(t *testing.T) {
	ctx := context.Background()
	e := newAttestorEnv(t, 10*time.Minute)
	a, clk, dev, src, tok := e.a, e.clk, e.dev, e.src, e.tok

	start := clk.Now()
	loc, got, until, err := a.CurrentUntil(ctx)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)
	require.Equal(t, tok, got)
	require.Equal(t, start.Add(DefaultRefreshInterval), until, "the next refresh")

	// From the cache, the same instant.
	clk.Advance(DefaultRefreshInterval / 2)
	_, _, until2, err := a.CurrentUntil(ctx)
	require.NoError(t, err)
	require.Equal(t, until, until2)

	// Evidence that expires before the next refresh bounds it.
	short, err := dev.Token(testAudience, "europe-west1", "w", 2*time.Second)
	require.NoError(t, err)
	src.set(short, nil)
	a.RefreshInterval = time.Hour
	clk.Advance(DefaultRefreshInterval)
	loc, got, until, err = a.CurrentUntil(ctx)
	require.NoError(t, err)
	require.Equal(t, short, got)
	require.Equal(t, loc.Expiry, until, "the evidence's expiry")
	require.True(t, until.Before(clk.Now().Add(time.Hour)))

	// An error comes with no time.
	src.set("", errors.New("metadata server down"))
	clk.Advance(3 * time.Second)
	_, _, until, err = a.CurrentUntil(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.True(t, until.IsZero())
}

// attestorEnv is an Attestor over a counting source that serves one token
// of the dev issuer (region europe-west1, workload "w"), on a fake clock.
type attestorEnv struct {
	clk *fakeClock
	dev *DevIssuer
	v   *Verifier
	src *countingSource
	tok string
	a   *Attestor
}

func newAttestorEnv(t *testing.T, ttl time.Duration) *attestorEnv {
	t.Helper()
	e := &attestorEnv{clk: newClock()}
	e.dev = newDev(t, testIssuer, e.clk)
	e.v = newVerifier(t, e.clk, e.dev.IssuerConfig(testAudience))
	tok, err := e.dev.Token(testAudience, "europe-west1", "w", ttl)
	require.NoError(t, err)
	e.tok, e.src = tok, &countingSource{token: tok}
	e.a = NewAttestor(e.src, e.v)
	return e
}

// Evidence whose signing key the issuer withdrew stops being served once
// its key set is jwksMaxAge old, though the token is far from its exp:
// the Attestor verifies the evidence it keeps again at that bound, whether
// the Source yields the same token, fails, or yields a new token that does
// not verify. Up to the bound, the kept evidence stands.
func TestAttestorDropsWithdrawnEvidence(t *testing.T) {
	boom := errors.New("token file vanished")
	tests := []struct {
		name    string
		then    func(t *testing.T, published *DevIssuer, src *countingSource)
		want    string
		wantErr error
	}{
		{
			name: "same token",
			then: func(*testing.T, *DevIssuer, *countingSource) {},
			want: "is not a key of issuer",
		},
		{
			name: "source fails",
			then: func(_ *testing.T, _ *DevIssuer, src *countingSource) { src.set("", boom) },
			want: "attestation source", wantErr: boom,
		},
		{
			name: "new token does not verify",
			then: func(t *testing.T, published *DevIssuer, src *countingSource) {
				bad, err := published.Token("another-service", "europe-west1", "w", 24*time.Hour)
				require.NoError(t, err)
				src.set(bad, nil)
			},
			want: "aud",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			dev := newDev(t, testIssuer, clk)
			v, publish := publishedVerifier(t, "file", clk, dev)
			tok, err := dev.Token(testAudience, "europe-west1", "w", 24*time.Hour)
			require.NoError(t, err)
			src := &countingSource{token: tok}
			a := NewAttestor(src, v)
			_, _, err = a.Current(ctx)
			require.NoError(t, err)

			// The issuer withdraws the key: it now publishes another.
			published := newDev(t, testIssuer, clk)
			publish(jwksDoc(t, published.JWKS()))
			tt.then(t, published, src)
			clk.Advance(jwksMaxAge - time.Second)
			loc, got, err := a.Current(ctx)
			require.NoError(t, err, "within the bound, the evidence stands")
			require.Equal(t, "europe-west1", loc.Region)
			require.Equal(t, tok, got)

			clk.Advance(time.Second)
			loc, got, until, err := a.CurrentUntil(ctx)
			require.ErrorIs(t, err, ErrAttestation)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			}
			require.Contains(t, err.Error(), tt.want)
			require.Equal(t, Location{}, loc)
			require.Empty(t, got)
			require.True(t, until.IsZero())
		})
	}
}
