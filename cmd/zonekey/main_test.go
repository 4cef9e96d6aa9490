package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/audit"
)

// cli runs the CLI in-process.
func cli(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// writeLog writes an audit file of n events and returns its path and head.
func writeLog(t *testing.T, dir string, n int) (string, audit.Head) {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	s, err := audit.OpenFile(path)
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, s.Record(context.Background(), audit.Event{
			Time:   time.Date(2025, 3, 1, 12, 0, i, 0, time.UTC),
			Action: audit.DEKUnwrap, Decision: audit.Allow,
			Zone: "eu", Subject: fmt.Sprintf("user-%d", i+1),
		}))
	}
	head := s.Head()
	require.NoError(t, s.Close())
	return path, head
}

func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	valid, head := writeLog(t, dir, 3)
	b, err := os.ReadFile(valid)
	require.NoError(t, err)
	tampered := filepath.Join(dir, "tampered.log")
	require.NoError(t, os.WriteFile(tampered, bytes.Replace(b, []byte("user-2"), []byte("user-9"), 1), 0o600))
	empty := filepath.Join(dir, "empty.log")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	missing := filepath.Join(dir, "missing.log")

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // exact, unless empty
		stderr string // substring, unless empty
	}{
		{"valid", []string{"audit", "verify", valid}, 0, fmt.Sprintf("ok: 3 events, last hash %s\n", head.Hash), ""},
		{"empty", []string{"audit", "verify", empty}, 0, "ok: 0 events, last hash " + audit.ZeroHash + "\n", ""},
		{"tampered", []string{"audit", "verify", tampered}, 1, "", tampered + ":2: hash mismatch: the line was edited"},
		{"missing", []string{"audit", "verify", missing}, 1, "", "zonekey audit verify: open " + missing + ": no such file or directory"},
		{"directory", []string{"audit", "verify", dir}, 1, "", "zonekey audit verify: " + dir},
		{"no file", []string{"audit", "verify"}, 2, "", "want one FILE, got 0 arguments"},
		{"two files", []string{"audit", "verify", valid, valid}, 2, "", "want one FILE, got 2 arguments"},
		{"bad flag", []string{"audit", "verify", "--bogus", valid}, 2, "", "flag provided but not defined: -bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(tt.args...)
			require.Equal(t, tt.code, code, "stdout: %s\nstderr: %s", stdout, stderr)
			if tt.stdout != "" {
				require.Equal(t, tt.stdout, stdout)
			}
			if tt.stderr != "" {
				require.Contains(t, stderr, tt.stderr)
			}
			if code != 0 {
				require.Empty(t, stdout)
			} else {
				require.Empty(t, stderr)
			}
		})
	}
}

func TestAuditVerifyJSON(t *testing.T) {
	dir := t.TempDir()
	valid, head := writeLog(t, dir, 3)
	lines := strings.SplitAfter(mustRead(t, valid), "\n")
	deleted := filepath.Join(dir, "deleted.log")
	require.NoError(t, os.WriteFile(deleted, []byte(lines[0]+lines[2]), 0o600))
	f, err := os.Open(deleted)
	require.NoError(t, err)
	headBefore, err := audit.VerifyHead(f)
	require.NoError(t, f.Close())
	require.Error(t, err)

	tests := []struct {
		name string
		args []string
		code int
		want map[string]any
	}{
		{"valid", []string{"audit", "verify", "--json", valid}, 0, map[string]any{
			"ok": true, "file": valid, "events": 3.0, "last_hash": head.Hash}},
		{"flag after file", []string{"audit", "verify", valid, "-json"}, 0, map[string]any{
			"ok": true, "file": valid, "events": 3.0, "last_hash": head.Hash}},
		{"deleted line", []string{"audit", "verify", "--json", deleted}, 1, map[string]any{
			"ok": false, "file": deleted, "events": 1.0, "last_hash": headBefore.Hash, "line": 2.0,
			"reason": "seq gap: want seq 2, found 3 (a line was deleted, inserted, duplicated or reordered)", "error_kind": "broken_chain"}},
		{"missing", []string{"audit", "verify", "--json", filepath.Join(dir, "nope")}, 1, map[string]any{
			"ok": false, "file": filepath.Join(dir, "nope"), "events": 0.0,
			"reason": "open " + filepath.Join(dir, "nope") + ": no such file or directory", "error_kind": "not_found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(tt.args...)
			require.Equal(t, tt.code, code, "stderr: %s", stderr)
			require.Empty(t, stderr)
			require.Equal(t, 1, strings.Count(stdout, "\n"))
			var got map[string]any
			require.NoError(t, json.Unmarshal([]byte(stdout), &got))
			require.Equal(t, tt.want, got)
		})
	}
}

func TestAuditRepair(t *testing.T) {
	dir := t.TempDir()
	path, _ := writeLog(t, dir, 3)
	lines := strings.SplitAfter(mustRead(t, path), "\n")
	torn := lines[2][:25]
	require.NoError(t, os.WriteFile(path, []byte(lines[0]+lines[1]+torn), 0o600))

	code, _, stderr := cli("audit", "verify", path)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, path+":3: torn line")

	code, stdout, stderr := cli("audit", "repair", path)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, fmt.Sprintf("removed a torn line of %d bytes from %s: %q\n", len(torn), path, torn))
	require.Contains(t, stdout, "ok: 2 events, last hash ")

	code, stdout, _ = cli("audit", "repair", path)
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "nothing removed")

	code, stdout, _ = cli("audit", "repair", "--json", path)
	require.Equal(t, 0, code)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &got))
	require.Equal(t, true, got["ok"])
	require.Equal(t, 0.0, got["removed_bytes"])
	require.Equal(t, 2.0, got["events"])

	// A torn line cut inside a character: its exact bytes are in
	// removed_base64.
	cut := "{\"seq\":3,\"prev\":\"x\",\"event\":{\"reason\":\"caf\xc3"
	require.NoError(t, os.WriteFile(path, []byte(lines[0]+lines[1]+cut), 0o600))
	code, stdout, _ = cli("audit", "repair", "--json", path)
	require.Equal(t, 0, code)
	got = nil
	require.NoError(t, json.Unmarshal([]byte(stdout), &got))
	require.Equal(t, float64(len(cut)), got["removed_bytes"])
	raw, err := base64.StdEncoding.DecodeString(got["removed_base64"].(string))
	require.NoError(t, err)
	require.Equal(t, cut, string(raw))

	// A chain broken otherwise is reported, not repaired.
	require.NoError(t, os.WriteFile(path, []byte(lines[1]), 0o600))
	code, _, stderr = cli("audit", "repair", path)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, path+":1: seq gap")

	code, _, stderr = cli("audit", "repair", filepath.Join(dir, "nope"))
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "no such file or directory")
}

func TestDispatch(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"no command", nil, 2, "", "Commands:"},
		{"help", []string{"help"}, 0, "audit verify [--json] FILE", ""},
		{"-h", []string{"-h"}, 0, "Commands:", ""},
		{"--help", []string{"--help"}, 0, "Commands:", ""},
		{"help command", []string{"help", "audit", "verify"}, 0, "Usage: zonekey audit verify [--json] FILE", ""},
		{"help unknown", []string{"help", "frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"command -h", []string{"audit", "verify", "-h"}, 0, "-json", ""},
		{"unknown command", []string{"frobnicate"}, 2, "", `zonekey: unknown command "frobnicate"`},
		{"unknown subcommand", []string{"audit", "frobnicate"}, 2, "", `zonekey: unknown command "audit frobnicate"`},
		{"group only", []string{"audit"}, 2, "", `"audit" needs a subcommand`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(tt.args...)
			require.Equal(t, tt.code, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tt.stdout)
			require.Contains(t, stderr, tt.stderr)
			if code == 2 {
				require.Empty(t, stdout)
				require.Contains(t, stderr, "Usage:")
			}
		})
	}
}

func TestDoubleDashEndsFlags(t *testing.T) {
	dir := t.TempDir()
	_, head := writeLog(t, dir, 1)
	require.NoError(t, os.Rename(filepath.Join(dir, "audit.log"), filepath.Join(dir, "-json")))
	t.Chdir(dir)
	code, stdout, stderr := cli("audit", "verify", "--", "-json")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "ok: 1 events, last hash "+head.Hash+"\n", stdout)
}

// TestCommandTable checks what every command must declare, so that new ones
// slot in consistently.
func TestCommandTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		require.NotEmpty(t, c.name)
		require.False(t, seen[c.name], "duplicate command %q", c.name)
		seen[c.name] = true
		require.NotEmpty(t, c.summary, c.name)
		require.NotEmpty(t, strings.TrimSpace(c.help), c.name)
		require.NotNil(t, c.setup, c.name)
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		require.NotNil(t, c.setup(fs), c.name)
		require.NotNil(t, fs.Lookup("json"), "%s has no --json", c.name)
		cmd, rest := lookup(strings.Fields(c.name))
		require.Same(t, c, cmd)
		require.Empty(t, rest)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
