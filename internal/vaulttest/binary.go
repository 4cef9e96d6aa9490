// Package vaulttest runs real HashiCorp Vault servers for the tests of this
// module: throwaway dev servers (Start) and servers with file storage whose
// data survives a restart (StartPersistent), each on a free loopback port, so
// that a test can run one Vault per region and stop, restart, seal and unseal
// them to inject faults.
//
// The Vault binary is built from the tools module tools/vault (pinned at
// Version, kept out of this module's go.mod) by scripts/build-vault.sh into a
// cache directory outside the repository, once per machine; see Binary. The
// first build takes several minutes, so run the tests of a fresh checkout with
// a generous -timeout (for example -timeout 40m).
//
// Environment:
//
//	ZONEKEY_VAULT_BIN  path of a Vault binary to use instead of building one
//	ZONEKEY_VAULT_DIR  directory of the cached build
//	                   (default ${XDG_CACHE_HOME:-$HOME/.cache}/zonekey/vault-v1.21.0)
//
// The package needs a Unix system (process groups, flock).
package vaulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the Vault version the tests are written against, and the one
// Binary builds.
const Version = "1.21.0"

const (
	// modulePath is the path of the module whose scripts/build-vault.sh
	// builds Vault.
	modulePath = "github.com/zonekey/zonekey"
	// buildScript is the build script, relative to the module root.
	buildScript = "scripts/build-vault.sh"
	// lockName is the lock file next to the binary; the build script takes
	// the same lock.
	lockName = "vault.lock"
)

// The result of the first Binary call of this process (without
// ZONEKEY_VAULT_BIN); a failed build is not retried by later tests.
var (
	buildMu   sync.Mutex
	buildDone bool
	buildPath string
	buildErr  error
)

// Binary returns the path of a Vault v1.21.0 binary: $ZONEKEY_VAULT_BIN if
// set, else the cached build in $ZONEKEY_VAULT_DIR (see the package
// documentation), building it first with scripts/build-vault.sh if it is
// missing or reports another version. Test packages running in parallel
// serialise the build with a file lock next to the binary, so it is built
// once. Binary fails the test if the binary cannot be had; a missing Vault is
// a broken test setup, not a reason to skip.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ZONEKEY_VAULT_BIN"); p != "" {
		if err := checkExecutable(p); err != nil {
			t.Fatalf("vaulttest: ZONEKEY_VAULT_BIN: %v", err)
		}
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if !buildDone {
		buildPath, buildErr = ensureBinary(t)
		buildDone = true
	}
	if buildErr != nil {
		t.Fatalf("vaulttest: no Vault v%s binary: %v", Version, buildErr)
	}
	return buildPath
}

// cacheDir returns the directory of the cached build, as the build script
// computes it.
func cacheDir() (string, error) {
	if d := os.Getenv("ZONEKEY_VAULT_DIR"); d != "" {
		return filepath.Abs(d)
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no cache directory: set ZONEKEY_VAULT_DIR or HOME: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "zonekey", "vault-v"+Version), nil
}

// ensureBinary returns the cached binary, building it under the file lock if
// needed.
func ensureBinary(t testing.TB) (string, error) {
	t.Helper()
	dir, err := cacheDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "vault")

	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("lock file: %w", err)
	}
	defer lock.Close() // closing the file releases the lock
	fd := int(lock.Fd())
	if err := flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return "", fmt.Errorf("locking %s: %w", lock.Name(), err)
		}
		t.Logf("vaulttest: waiting for another process building Vault into %s", dir)
		if err := flock(fd, syscall.LOCK_EX); err != nil {
			return "", fmt.Errorf("locking %s: %w", lock.Name(), err)
		}
	}

	if versionOK(bin) == nil {
		return bin, nil
	}

	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, buildScript)
	start := time.Now()
	msg := fmt.Sprintf("vaulttest: building Vault v%s into %s with %s; a first build takes several minutes "+
		"(about 15 on 2 cores), so give go test a long -timeout (e.g. 40m) or run the script beforehand", Version, dir, script)
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			msg += fmt.Sprintf("; this test binary times out in %v", time.Until(dl).Round(time.Second))
		}
	}
	t.Log(msg)
	// Also straight to stderr: if the test binary times out during the
	// build, the test log is lost but stderr is not.
	fmt.Fprintln(os.Stderr, msg)
	cmd := exec.Command("bash", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "ZONEKEY_VAULT_DIR="+dir, "ZONEKEY_VAULT_LOCK_HELD=1")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s failed after %v: %v\n--- build output (tail) ---\n%s",
			script, time.Since(start).Round(time.Second), err, tail(out.Bytes(), 60))
	}
	if err := versionOK(bin); err != nil {
		return "", fmt.Errorf("%s succeeded but %w\n--- build output (tail) ---\n%s", script, err, tail(out.Bytes(), 60))
	}
	t.Logf("vaulttest: built %s in %v", bin, time.Since(start).Round(time.Second))
	return bin, nil
}

// flock is syscall.Flock, retried when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := syscall.Flock(fd, how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// versionOK reports whether bin runs and reports Version.
func versionOK(bin string) error {
	if err := checkExecutable(bin); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "version")
	cmd.Env = childEnv()
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", bin, err)
	}
	v := strings.TrimSpace(string(out))
	want := "Vault v" + Version
	if rest, ok := strings.CutPrefix(v, want); !ok || (rest != "" && !strings.ContainsAny(rest[:1], " ,(")) {
		return fmt.Errorf("%s reports %q, want %s", bin, v, want)
	}
	return nil
}

// checkExecutable reports whether p is an executable regular file.
func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// moduleRoot finds the root of this module's source tree: up from the
// working directory (a test runs in its package's directory), else from this
// file's compile-time location.
func moduleRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for {
			if isModuleRoot(d) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("cannot find the source tree of module %s (with %s) above the working directory; set ZONEKEY_VAULT_BIN", modulePath, buildScript)
}

func isModuleRoot(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, buildScript)); err != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == modulePath {
			return true
		}
	}
	return false
}

// childEnv is the environment of a Vault process: this process's, without
// VAULT_* variables, which would otherwise change how the server or the CLI
// behaves (VAULT_ADDR, VAULT_TOKEN, VAULT_API_ADDR, ...).
func childEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "VAULT_") {
			out = append(out, kv)
		}
	}
	return out
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	s := strings.TrimRight(string(b), "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d earlier lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
