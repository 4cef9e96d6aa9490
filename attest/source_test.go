package attest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStaticSource(t *testing.T) {
	tok, err := StaticSource(" abc\n").Token(context.Background())
	require.NoError(t, err)
	require.Equal(t, "abc", tok)
	_, err = StaticSource(" \n").Token(context.Background())
	require.ErrorIs(t, err, ErrAttestation)
}

// kubeWriter writes a file the way the kubelet updates projected volumes:
// the data goes into a fresh timestamped directory, a "..data" symlink is
// swapped to it by rename, and the visible name is a symlink through
// "..data".
type kubeWriter struct {
	dir string
	n   int
}

func (w *kubeWriter) write(t *testing.T, name, content string) {
	t.Helper()
	w.n++
	ts := fmt.Sprintf("..2030_06_01_12_00_%02d.%d", w.n, w.n)
	require.NoError(t, os.Mkdir(filepath.Join(w.dir, ts), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(w.dir, ts, name), []byte(content), 0o644))
	tmp := filepath.Join(w.dir, "..data_tmp")
	require.NoError(t, os.Symlink(ts, tmp))
	old, _ := os.Readlink(filepath.Join(w.dir, "..data"))
	require.NoError(t, os.Rename(tmp, filepath.Join(w.dir, "..data")))
	if _, err := os.Lstat(filepath.Join(w.dir, name)); os.IsNotExist(err) {
		require.NoError(t, os.Symlink(filepath.Join("..data", name), filepath.Join(w.dir, name)))
	}
	if old != "" {
		require.NoError(t, os.RemoveAll(filepath.Join(w.dir, old)))
	}
}

func TestFileSourceKubernetesSwap(t *testing.T) {
	ctx := context.Background()
	w := &kubeWriter{dir: t.TempDir()}
	w.write(t, "token", "first-token\n")
	src := FileSource(filepath.Join(w.dir, "token"))

	for range 3 {
		tok, err := src.Token(ctx)
		require.NoError(t, err)
		require.Equal(t, "first-token", tok)
	}
	w.write(t, "token", "second-token\n")
	tok, err := src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "second-token", tok)
}

func TestFileSourceRename(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	replace := func(content string) {
		tmp := filepath.Join(dir, ".token.tmp")
		require.NoError(t, os.WriteFile(tmp, []byte(content), 0o600))
		require.NoError(t, os.Rename(tmp, path))
	}
	replace("aaaa")
	src := FileSource(path)
	tok, err := src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "aaaa", tok)

	replace("bbbb") // same size, likely the same mtime: the inode differs
	tok, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "bbbb", tok)

	// Rewritten in place, same size, within the mtime granularity: caught
	// by the racy-mtime rule.
	require.NoError(t, os.WriteFile(path, []byte("cccc"), 0o600))
	tok, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "cccc", tok)

	require.NoError(t, os.WriteFile(path, []byte(" \n\t"), 0o600))
	_, err = src.Token(ctx)
	require.ErrorIs(t, err, ErrAttestation)
	require.Contains(t, err.Error(), "empty")

	require.NoError(t, os.Remove(path))
	_, err = src.Token(ctx)
	require.ErrorIs(t, err, ErrAttestation)
}

func TestFileSourceCachesStableFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
	// Pretend the file was written long ago, so its mtime is trustworthy.
	long := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(path, long, long))
	s := FileSource(path).(*fileSource)
	tok, err := s.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "old", tok)
	readAt := s.readAt
	tok, err = s.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, "old", tok)
	require.Equal(t, readAt, s.readAt, "an unchanged stable file was read again")
}

// metadataServer implements the identity endpoint of the GCP metadata
// server and records the requests.
type metadataServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	token    string
	noFlavor bool // omit the Metadata-Flavor response header
}

func newMetadataServer(t *testing.T, token string) *metadataServer {
	m := &metadataServer{token: token}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.requests = append(m.requests, r.Clone(context.Background()))
		noFlavor, token := m.noFlavor, m.token
		m.mu.Unlock()
		if !noFlavor {
			w.Header().Set("Metadata-Flavor", "Google")
		}
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
			return
		}
		if r.URL.Path != metadataIdentityPath {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("audience") == "" {
			http.Error(w, "non-empty audience parameter required", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, token)
	}))
	t.Cleanup(m.Close)
	return m
}

func (m *metadataServer) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.requests)
}

func TestGCPMetadataSource(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	gcp := newDev(t, gcpIssuer, clk)
	const aud = "https://zonekey.example.com/attest?x=1&y=2"
	tok, err := gcp.Mint(with(gcpClaims(clk.Now(), "europe-west1-b"), "aud", aud))
	require.NoError(t, err)
	srv := newMetadataServer(t, tok)

	src := &GCPMetadataSource{Audience: aud, BaseURL: srv.URL + "/", now: clk.Now}
	got, err := src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, tok, got)

	require.Equal(t, 1, srv.count())
	req := srv.requests[0]
	require.Equal(t, http.MethodGet, req.Method)
	require.Equal(t, metadataIdentityPath, req.URL.Path)
	require.Equal(t, "Google", req.Header.Get("Metadata-Flavor"))
	require.Equal(t, url.Values{"audience": {aud}, "format": {"full"}}, req.URL.Query())

	// It verifies as a GCP token.
	cfg := gcp.IssuerConfig(aud)
	cfg.Profile = GCPProfile
	v := newVerifier(t, clk, cfg)
	loc, err := v.Verify(ctx, got)
	require.NoError(t, err)
	require.Equal(t, "europe-west1", loc.Region)
	require.Equal(t, "europe-west1-b", loc.Zone)

	// Cached until five minutes before exp (the token lives an hour).
	clk.Advance(54 * time.Minute)
	_, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, srv.count())

	tok2, err := gcp.Mint(with(gcpClaims(clk.Now(), "europe-west1-c"), "aud", aud))
	require.NoError(t, err)
	srv.mu.Lock()
	srv.token = tok2
	srv.mu.Unlock()
	clk.Advance(time.Minute)
	got, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, tok2, got)
	require.Equal(t, 2, srv.count())
}

// TestGCPMetadataSourceFarExp: a token whose (unverified) exp is years
// away is cached no longer than a real one, so that a bad response is not
// served until the process restarts.
func TestGCPMetadataSourceFarExp(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	gcp := newDev(t, gcpIssuer, clk)
	const aud = "https://zonekey.example.com/attest"
	far, err := gcp.Mint(with(with(gcpClaims(clk.Now(), "europe-west1-b"), "aud", aud), "exp", clk.Now().Add(10*365*24*time.Hour).Unix()))
	require.NoError(t, err)
	srv := newMetadataServer(t, far)
	src := &GCPMetadataSource{Audience: aud, BaseURL: srv.URL, now: clk.Now}
	_, err = src.Token(ctx)
	require.NoError(t, err)
	clk.Advance(54 * time.Minute)
	_, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, srv.count(), "cached for 55 minutes")
	clk.Advance(2 * time.Minute)
	_, err = src.Token(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, srv.count(), "fetched again after 55 minutes, whatever the exp")
}

func TestGCPMetadataSourceRefuses(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	gcp := newDev(t, gcpIssuer, clk)
	tok, err := gcp.Mint(gcpClaims(clk.Now(), "europe-west1-b"))
	require.NoError(t, err)

	t.Run("no Metadata-Flavor response header", func(t *testing.T) {
		srv := newMetadataServer(t, tok)
		srv.mu.Lock()
		srv.noFlavor = true
		srv.mu.Unlock()
		_, err := (&GCPMetadataSource{Audience: testAudience, BaseURL: srv.URL}).Token(ctx)
		require.ErrorIs(t, err, ErrAttestation)
		require.Contains(t, err.Error(), "Metadata-Flavor")
	})
	t.Run("error status", func(t *testing.T) {
		srv := newMetadataServer(t, tok)
		_, err := (&GCPMetadataSource{Audience: testAudience, BaseURL: srv.URL + "/wrong"}).Token(ctx)
		require.ErrorIs(t, err, ErrAttestation)
		require.Contains(t, err.Error(), "404")
	})
	t.Run("not a JWT", func(t *testing.T) {
		srv := newMetadataServer(t, "<html>captive portal</html>")
		_, err := (&GCPMetadataSource{Audience: testAudience, BaseURL: srv.URL}).Token(ctx)
		require.ErrorIs(t, err, ErrAttestation)
	})
	t.Run("no audience", func(t *testing.T) {
		srv := newMetadataServer(t, tok)
		_, err := (&GCPMetadataSource{BaseURL: srv.URL}).Token(ctx)
		require.ErrorIs(t, err, ErrAttestation)
		require.Equal(t, 0, srv.count())
	})
	t.Run("unreachable", func(t *testing.T) {
		srv := newMetadataServer(t, tok)
		srv.Close()
		_, err := (&GCPMetadataSource{Audience: testAudience, BaseURL: srv.URL}).Token(ctx)
		require.ErrorIs(t, err, ErrAttestation)
	})
}
