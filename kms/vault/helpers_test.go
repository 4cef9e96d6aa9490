package vault_test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// startVault starts a dev server with Transit mounted at transit/.
func startVault(t *testing.T) (*vaulttest.Server, *api.Client) {
	t.Helper()
	srv := vaulttest.Start(t)
	srv.EnableTransit(t)
	return srv, srv.Client(t)
}

// hostPort is the host:port of a server address http://host:port.
func hostPort(t testing.TB, addr string) string {
	t.Helper()
	u, err := url.Parse(addr)
	require.NoError(t, err)
	return u.Host
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// createKey creates a Transit key with the root client; derived unless
// plain.
func createKey(t testing.TB, root *api.Client, name string, derived bool) {
	t.Helper()
	_, err := root.Logical().Write("transit/keys/"+name, map[string]any{
		"type":    "aes256-gcm96",
		"derived": derived,
	})
	require.NoError(t, err, "creating Transit key %s", name)
}

// writeToken writes a token file and returns its path.
func writeToken(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte(token+"\n"), 0o600))
	return path
}

// openToken opens a token-auth custodian for key at addr.
func openToken(t testing.TB, addr, token, key string) *vault.Custodian {
	t.Helper()
	c, err := vault.Open(t.Context(), vault.Config{Address: addr, Token: token, Key: key})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func randomKey(t testing.TB) []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func binding(zone string) kms.Binding {
	return kms.Binding{Zone: zone, KeyID: randomName("zk"), Version: 1}
}

// proxy is a loopback reverse proxy in front of a Vault server that counts
// the requests it sees by path and can answer some of them itself with a
// 502, as a load balancer in front of a failing Vault would.
type proxy struct {
	URL string

	fail atomic.Int32 // answer this many more requests with 502

	mu     sync.Mutex
	counts map[string]int
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	p, _ := startProxy(t, target, false)
	return p
}

// newTLSProxy is a proxy that serves https, with a certificate for
// 127.0.0.1 signed by the returned CA (PEM).
func newTLSProxy(t testing.TB, target string) (*proxy, []byte) {
	t.Helper()
	return startProxy(t, target, true)
}

func startProxy(t testing.TB, target string, useTLS bool) (*proxy, []byte) {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(u)
	transport := &http.Transport{Proxy: nil}
	rp.Transport = transport
	p := &proxy{counts: map[string]int{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.counts[r.URL.Path]++
		p.mu.Unlock()
		if p.fail.Add(-1) >= 0 {
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		p.fail.Store(0)
		rp.ServeHTTP(w, r)
	}))
	var ca []byte
	if useTLS {
		srv.StartTLS()
		ca = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		srv.Close()
		transport.CloseIdleConnections()
	})
	p.URL = srv.URL
	return p, ca
}

// count returns the number of requests seen whose path ends with suffix.
func (p *proxy) count(suffix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for path, c := range p.counts {
		if strings.HasSuffix(path, suffix) {
			n += c
		}
	}
	return n
}

func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.counts)
}

// writeFile replaces the file at path with content, atomically, as an agent
// writing a token sink does.
func writeFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// requireNoKey checks that Vault has no Transit key of that name.
func requireNoKey(t *testing.T, root *api.Client, name, msg string) {
	t.Helper()
	s, err := root.Logical().Read("transit/keys/" + name)
	require.NoError(t, err)
	require.Nil(t, s, "%s: Vault has a key %s", msg, name)
}

// tokenWithPolicy returns a token of a new policy with the given rules.
func tokenWithPolicy(t *testing.T, root *api.Client, name, rules string) string {
	t.Helper()
	require.NoError(t, root.Sys().PutPolicy(name, rules))
	s, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{name}, NoParent: true})
	require.NoError(t, err)
	return s.Auth.ClientToken
}
