package vaulttest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// Timeouts of the server lifecycle.
const (
	// readyTimeout bounds the wait for a started server to answer its
	// health endpoint as wanted.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds the wait for a server to exit after SIGTERM,
	// before it is killed.
	stopTimeout = 15 * time.Second
	// killTimeout bounds the wait for a killed server to be reaped.
	killTimeout = 10 * time.Second
	// startAttempts is how often a server is started on another free port
	// (Start) or again on its own port (Restart) when the port is taken.
	startAttempts = 8
)

// Server is a running Vault server on a loopback port, started by Start or
// StartPersistent. It is stopped when the test that started it ends.
//
// The methods of a Server may be called from the goroutine running the test
// (and its subtests) only, like the methods of testing.T that end a test.
type Server struct {
	// Addr is the server's address, http://127.0.0.1:PORT. It stays the
	// same across Stop and Restart.
	Addr string
	// Token is the root token.
	Token string
	// UnsealKey is the (single) unseal key, as Unseal uses it. A dev
	// server gets a new one on every start.
	UnsealKey string

	bin        string
	dir        string // the server's temporary directory: log, config, data
	logPath    string
	persistent bool
	port       int

	mu         sync.Mutex
	proc       *process          // the running server; nil when stopped
	runs       int               // starts so far, for the log
	transports []*http.Transport // of the clients made by Client
}

// process is one run of the server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // the exit status; read after done is closed
}

// health is the answer of /v1/sys/health.
type health struct {
	Initialized bool   `json:"initialized"`
	Sealed      bool   `json:"sealed"`
	Standby     bool   `json:"standby"`
	Version     string `json:"version"`
}

func (h health) active() bool { return h.Initialized && !h.Sealed && !h.Standby }

// errPortInUse reports that the server exited because its address was taken.
var errPortInUse = errors.New("address already in use")

// Start starts a Vault dev server (`vault server -dev`: in-memory storage,
// initialised and unsealed, with a random root token) on a free loopback
// port, waits until it is active, and registers its Stop with t.Cleanup.
//
// A dev server keeps nothing across Restart: mounts, keys and tokens other
// than the root token are gone. Use StartPersistent when data must survive a
// restart.
//
// The server's environment has no VAULT_* variables of this process, and it
// writes no token helper file (~/.vault-token). Its output is logged to a
// file in the test's temporary directory, whose tail is part of the failure
// message of any lifecycle method that fails.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// StartPersistent starts a real (non-dev) Vault server with file storage in
// the test's temporary directory, initialises it with a single unseal key
// (the equivalent of `vault operator init -key-shares=1 -key-threshold=1`),
// unseals it, waits until it is active, and registers its Stop with
// t.Cleanup. Restart keeps its data and unseals it again with UnsealKey.
func StartPersistent(t testing.TB) *Server {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, persistent bool) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir() // removed after the Stop registered below has run
	s := &Server{
		bin:        bin,
		dir:        dir,
		logPath:    filepath.Join(dir, "vault.log"),
		persistent: persistent,
	}
	if !persistent {
		s.Token = "root-" + randomHex(16)
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("vaulttest: stopping %s: %v", s.Addr, err)
		}
	})

	var err error
	for range startAttempts {
		s.port, err = freePort()
		if err != nil {
			t.Fatalf("vaulttest: %v", err)
		}
		s.Addr = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.launch(); !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("vaulttest: starting Vault: %v\n%s", err, s.logTail())
	}
	if persistent {
		if err := s.initialize(); err != nil {
			t.Fatalf("vaulttest: initialising Vault at %s: %v\n%s", s.Addr, err, s.logTail())
		}
	}
	return s
}

// Client returns a client of the server, authenticated with the root token.
// It ignores the VAULT_* environment variables of this process for the
// address, token, namespace and TLS, and does not retry failed requests, so
// that a request to a stopped server fails at once with a connection error.
//
// Stop closes the idle connections of the clients made by Client, so their
// requests to a stopped server fail with "connection refused". Other HTTP
// clients, such as the SDK's own, may instead see a request on a kept-alive
// connection fail with EOF or "connection reset by peer".
func (s *Server) Client(t testing.TB) *api.Client {
	t.Helper()
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(transport.CloseIdleConnections)
	s.mu.Lock()
	s.transports = append(s.transports, transport)
	s.mu.Unlock()
	cfg := &api.Config{
		Address: s.Addr,
		HttpClient: &http.Client{
			Transport: transport,
			// The client follows Vault's redirects itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout:    30 * time.Second,
		MaxRetries: 0,
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("vaulttest: Vault client: %v", err)
	}
	c.SetToken(s.Token)
	c.ClearNamespace()
	return c
}

// EnableTransit mounts the Transit secrets engine at "transit/".
func (s *Server) EnableTransit(t testing.TB) {
	t.Helper()
	err := s.Client(t).Sys().Mount("transit", &api.MountInput{Type: "transit"})
	if err != nil {
		t.Fatalf("vaulttest: mounting transit at %s: %v\n%s", s.Addr, err, s.logTail())
	}
}

// Stop stops the server now (SIGTERM, then SIGKILL if it has not exited
// after 15s) and waits for it to exit; requests fail with a connection error
// until Restart (see Client). Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("vaulttest: stopping Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
}

// Restart stops the server if it is running and starts it again on the same
// address, with the same root token, and waits until it is active.
//
// A dev server (Start) comes back empty, initialised and unsealed with a new
// UnsealKey: everything but the root token is lost, including the transit
// mount. A persistent server (StartPersistent) keeps its data and is unsealed
// again with UnsealKey.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("vaulttest: stopping Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
	var err error
	for i := range startAttempts {
		if err = s.launch(); !errors.Is(err, errPortInUse) {
			break
		}
		time.Sleep(time.Duration(i+1) * 250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("vaulttest: restarting Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
	if s.persistent {
		if err := s.unseal(); err != nil {
			t.Fatalf("vaulttest: unsealing Vault at %s: %v\n%s", s.Addr, err, s.logTail())
		}
	}
}

// Seal seals the server and waits until it reports being sealed. A sealed
// server answers every request but health and unseal with an error (503).
func (s *Server) Seal(t testing.TB) {
	t.Helper()
	if err := s.Client(t).Sys().Seal(); err != nil {
		t.Fatalf("vaulttest: sealing Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
	if err := s.waitHealth(func(h health) bool { return h.Sealed }); err != nil {
		t.Fatalf("vaulttest: sealing Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
}

// Unseal unseals the server with UnsealKey and waits until it is active.
func (s *Server) Unseal(t testing.TB) {
	t.Helper()
	if err := s.unseal(); err != nil {
		t.Fatalf("vaulttest: unsealing Vault at %s: %v\n%s", s.Addr, err, s.logTail())
	}
}

// LogPath returns the path of the file the server's output goes to.
func (s *Server) LogPath() string { return s.logPath }

// launch starts the server process on s.port and waits until it answers:
// active for a dev server, responding for a persistent one. It returns
// errPortInUse if the server exited because the port was taken.
func (s *Server) launch() error {
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	var args []string
	if s.persistent {
		cfg, err := s.writeConfig(listen)
		if err != nil {
			return err
		}
		args = []string{"server", "-config=" + cfg}
	} else {
		args = []string{
			"server", "-dev",
			"-dev-root-token-id=" + s.Token,
			"-dev-listen-address=" + listen,
			"-dev-no-store-token",
		}
	}

	s.mu.Lock()
	s.runs++
	run := s.runs
	s.mu.Unlock()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	logStart, _ := logf.Seek(0, 2)
	fmt.Fprintf(logf, "=== vaulttest: run %d: %s %s\n", run, s.bin, strings.Join(args, " "))
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Env = append(childEnv(), "HOME="+s.dir)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	logf.Close() // the child has its own copy
	if err != nil {
		return err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	// A persistent server is ready when it answers (uninitialised or
	// sealed); a dev server when it is active and has printed its unseal
	// key, which it does after it becomes active.
	ready := func(health) bool { return true }
	if !s.persistent {
		ready = func(h health) bool { return h.active() && s.readDevUnsealKey(logStart) == nil }
	}
	if err = s.waitHealth(ready); err == nil {
		return nil
	}
	if stopErr := s.stop(); stopErr != nil {
		err = fmt.Errorf("%w; stopping it: %v", err, stopErr)
	}
	if out := s.logSince(logStart); strings.Contains(out, "address already in use") {
		return fmt.Errorf("%w: %v", errPortInUse, err)
	}
	return err
}

// writeConfig writes the configuration of a persistent server and returns
// its path.
func (s *Server) writeConfig(listen string) (string, error) {
	data := filepath.Join(s.dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`# Written by package vaulttest.
storage "file" {
  path = %q
}

listener "tcp" {
  address     = %q
  tls_disable = true
}

disable_mlock      = true
disable_clustering = true
ui                 = false
`, data, listen)
	path := filepath.Join(s.dir, "config.hcl")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// initialize initialises a fresh persistent server with one unseal key and
// unseals it.
func (s *Server) initialize() error {
	c, err := s.rawClient()
	if err != nil {
		return err
	}
	resp, err := c.Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		return err
	}
	if len(resp.KeysB64) != 1 || resp.RootToken == "" {
		return fmt.Errorf("init returned %d unseal keys and root token %q", len(resp.KeysB64), resp.RootToken)
	}
	s.UnsealKey = resp.KeysB64[0]
	s.Token = resp.RootToken
	return s.unseal()
}

// unseal unseals the server with UnsealKey and waits until it is active.
func (s *Server) unseal() error {
	if s.UnsealKey == "" {
		return errors.New("no unseal key")
	}
	c, err := s.rawClient()
	if err != nil {
		return err
	}
	st, err := c.Sys().Unseal(s.UnsealKey)
	if err != nil {
		return err
	}
	if st.Sealed {
		return fmt.Errorf("still sealed after the unseal key (progress %d/%d)", st.Progress, st.T)
	}
	return s.waitHealth(health.active)
}

// rawClient is a client for the lifecycle calls made outside a test's
// helpers (init, unseal).
func (s *Server) rawClient() (*api.Client, error) {
	cfg := &api.Config{
		Address:    s.Addr,
		HttpClient: &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		Timeout:    30 * time.Second,
		MaxRetries: 0,
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(s.Token)
	c.ClearNamespace()
	return c, nil
}

var devUnsealKey = regexp.MustCompile(`(?m)^Unseal Key: (\S+)\s*$`)

// readDevUnsealKey takes the unseal key a dev server prints at start from
// its output since logStart.
func (s *Server) readDevUnsealKey(logStart int64) error {
	m := devUnsealKey.FindAllStringSubmatch(s.logSince(logStart), -1)
	if len(m) == 0 {
		return errors.New("the dev server printed no unseal key")
	}
	s.UnsealKey = m[len(m)-1][1]
	return nil
}

// waitHealth polls /v1/sys/health until ready accepts its answer, the
// process exits, or readyTimeout passes.
func (s *Server) waitHealth(ready func(health) bool) error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return errors.New("server is not running")
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	url := s.Addr + "/v1/sys/health"
	deadline := time.Now().Add(readyTimeout)
	var last string
	for {
		h, err := getHealth(client, url)
		switch {
		case err != nil:
			last = err.Error()
		case ready(h):
			return nil
		default:
			last = fmt.Sprintf("%+v", h)
		}
		select {
		case <-p.done:
			return fmt.Errorf("server exited (%v) before it was ready", p.err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready after %v; last health: %s", readyTimeout, last)
		}
	}
}

func getHealth(client *http.Client, url string) (health, error) {
	var h health
	resp, err := client.Get(url)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	// Every status (200 active, 429 standby, 501 uninitialised, 503 sealed)
	// comes with the same JSON body.
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return h, fmt.Errorf("health: HTTP %d: %w", resp.StatusCode, err)
	}
	return h, nil
}

// stop stops the running process, if any, and waits for it to exit.
func (s *Server) stop() error {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	transports := s.transports
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	defer func() {
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
	}()
	select {
	case <-p.done:
		return nil // already exited
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	killGroup(p.cmd.Process.Pid)
	select {
	case <-p.done:
		return fmt.Errorf("killed after it ignored SIGTERM for %v", stopTimeout)
	case <-time.After(killTimeout):
		return fmt.Errorf("process %d did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}

// killGroup kills the process group of the server (it leads its own group),
// and the server itself if that fails.
func killGroup(pid int) {
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// logSince returns the server's output from offset on.
func (s *Server) logSince(offset int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return ""
	}
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// logTail is the end of the server's output, for failure messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("--- no Vault log: %v ---", err)
	}
	return fmt.Sprintf("--- Vault log %s (tail) ---\n%s", s.logPath, tail(b, 40))
}

// freePort returns a loopback port that is free, and whose successor is free
// too: a dev server also listens on PORT+1 for cluster traffic.
func freePort() (int, error) {
	var lastErr error
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if port >= 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
		l.Close()
		if err != nil {
			lastErr = err
			continue
		}
		l2.Close()
		return port, nil
	}
	return 0, fmt.Errorf("finding two free consecutive ports: %v", lastErr)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
