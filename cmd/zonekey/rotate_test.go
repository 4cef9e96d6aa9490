package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/kms/localkms"
)

// keyEnv is a configuration file with two zones, "eu" and "us", whose KEKs
// are local files, open to every region.
type keyEnv struct {
	dir    string
	config string
}

func newKeyEnv(t *testing.T) *keyEnv {
	t.Helper()
	dir := t.TempDir()
	fc := zonekey.FileConfig{
		Dir:   filepath.Join(dir, "keys"),
		Zones: map[string]zonekey.FileZoneConfig{},
	}
	for _, zone := range []string{"eu", "us"} {
		fc.Zones[zone] = zonekey.FileZoneConfig{KEK: zonekey.LocalKEK(filepath.Join(dir, zone+".kek")), Regions: []string{zonekey.AnyRegion}}
	}
	b, err := json.Marshal(fc)
	require.NoError(t, err)
	e := &keyEnv{dir: dir, config: filepath.Join(dir, "zonekey.json")}
	require.NoError(t, os.WriteFile(e.config, b, 0o600))
	// Report progress on every batch.
	old := progressInterval
	progressInterval = 0
	t.Cleanup(func() { progressInterval = old })
	return e
}

// client opens a client of the configuration, as an application would.
func (e *keyEnv) client(t *testing.T) *zonekey.Client {
	t.Helper()
	cfg, err := zonekey.LoadConfig(e.config)
	require.NoError(t, err)
	c, err := zonekey.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// message is a message sealed under a subject's DEK.
type message struct {
	id   envelope.KeyID
	bind envelope.Binding
	ct   []byte
}

// seal seals a message for each of n subjects of zone, from an application
// client that it then closes.
func (e *keyEnv) seal(t *testing.T, zone, prefix string, n int) []message {
	t.Helper()
	c := e.client(t)
	defer c.Close()
	var out []message
	for i := range n {
		subject := fmt.Sprintf("%s-%04d", prefix, i)
		d, err := c.Keyring().DataKey(t.Context(), zone, subject)
		require.NoError(t, err)
		b := envelope.Binding{Path: "Email", Subject: subject}
		ct, err := d.Seal([]byte(subject+"@example.com"), b)
		require.NoError(t, err)
		out = append(out, message{id: d.ID(), bind: b, ct: ct})
	}
	return out
}

// requireOpens checks that a new client opens every message.
func (e *keyEnv) requireOpens(t *testing.T, msgs []message) {
	t.Helper()
	c := e.client(t)
	defer c.Close()
	for _, m := range msgs {
		d, err := c.Keyring().Key(t.Context(), m.id)
		require.NoError(t, err)
		pt, err := d.Open(m.ct, m.bind)
		require.NoError(t, err)
		require.Equal(t, m.bind.Subject+"@example.com", string(pt))
	}
}

// cliJSON runs the CLI with --json and decodes its one line of output.
func cliJSON(t *testing.T, args ...string) (int, map[string]any) {
	t.Helper()
	code, stdout, stderr := cli(append(args, "--json")...)
	require.Equal(t, 1, strings.Count(stdout, "\n"), "stdout: %s\nstderr: %s", stdout, stderr)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &got), stdout)
	return code, got
}

// keys runs keys list --json and returns its keys.
func (e *keyEnv) keys(t *testing.T, zone string) []map[string]any {
	t.Helper()
	args := []string{"keys", "list", "--config", e.config}
	if zone != "" {
		args = append(args, "--zone", zone)
	}
	code, got := cliJSON(t, args...)
	require.Equal(t, 0, code, got)
	require.Equal(t, true, got["ok"])
	var out []map[string]any
	for _, k := range got["keys"].([]any) {
		out = append(out, k.(map[string]any))
	}
	return out
}

// column returns the values of field in keys.
func column(keys []map[string]any, field string) []any {
	var out []any
	for _, k := range keys {
		out = append(out, k[field])
	}
	return out
}

func TestRotateKEKCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 3)
	msgs = append(msgs, e.seal(t, "us", "user", 2)...)

	code, stdout, stderr := cli("rotate", "--zone", "eu", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stderr)
	require.Equal(t, `zone "eu": KEK rotated to v2; 1 zone-key rows rewrapped, 0 already under it`+"\n"+
		"Older KEK versions still unwrap; retire them with: zonekey rotate --zone eu --retire-below 2\n", stdout)

	code, got := cliJSON(t, "rotate", "--zone", "eu", "--config", e.config)
	require.Equal(t, 0, code)
	require.Equal(t, map[string]any{"ok": true, "zone": "eu", "operation": "kek", "kek_version": 3.0, "rewrapped": 1.0, "skipped": 0.0}, got)
	require.Equal(t, []any{3.0}, column(e.keys(t, "eu"), "kek_version"))
	require.Equal(t, []any{1.0}, column(e.keys(t, "us"), "kek_version"), "other zones are untouched")

	code, got = cliJSON(t, "rotate", "--zone", "eu", "--rewrap-only", "--config", e.config)
	require.Equal(t, 0, code)
	require.Equal(t, map[string]any{"ok": true, "zone": "eu", "operation": "rewrap", "kek_version": 3.0, "rewrapped": 0.0, "skipped": 1.0}, got)

	code, got = cliJSON(t, "rotate", "--zone", "eu", "--retire-below", "3", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, map[string]any{"ok": true, "zone": "eu", "operation": "retire", "kek_version": 3.0}, got)
	e.requireOpens(t, msgs)
}

func TestRetireCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 2)
	// A KEK rotated at the custodian whose zone-key rows were not
	// rewrapped, as after an interrupted rotate.
	kek, err := localkms.Open(filepath.Join(e.dir, "eu.kek"))
	require.NoError(t, err)
	_, err = kek.Rotate(t.Context())
	require.NoError(t, err)
	require.NoError(t, kek.Close())

	code, stdout, stderr := cli("rotate", "--zone", "eu", "--retire-below", "2", "--config", e.config)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, `zonekey rotate: keystore: zone "eu": cannot retire KEK versions below 2: zone-key rows v1 are still wrapped`)
	require.Contains(t, stderr, "zonekey rotate --zone eu --rewrap-only")

	code, got := cliJSON(t, "rotate", "--zone", "eu", "--retire-below", "2", "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, false, got["ok"])
	require.Equal(t, "kek_in_use", got["error_kind"])
	require.Equal(t, []any{1.0}, got["lagging_zone_key_versions"])
	require.Contains(t, got["error"], `zone "eu"`)

	code, stdout, stderr = cli("rotate", "--zone", "eu", "--rewrap-only", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, `zone "eu": 1 zone-key rows rewrapped to KEK v2, 0 already under it`+"\n", stdout)
	code, stdout, stderr = cli("rotate", "--zone", "eu", "--retire-below", "2", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, `zone "eu": KEK versions below 2 retired`+"\n", stdout)
	e.requireOpens(t, msgs)

	// Above the primary version: the custodian refuses.
	code, _, stderr = cli("rotate", "--zone", "eu", "--retire-below", "3", "--config", e.config)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, `zone "eu"`)
	require.Contains(t, stderr, "the primary version is 2")
}

func TestRotateZoneKeyCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 230)

	code, stdout, stderr := cli("rotate", "--zone", "eu", "--zone-key", "--batch", "50", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, `zone "eu": zone key v2 (made); 230 DEKs scanned, 230 rewrapped, 0 still below v2`+"\n", stdout)
	// Not a terminal: plain lines, here one per batch.
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	require.Equal(t, []string{
		`zone "eu": 50/230 DEKs (21%)`,
		`zone "eu": 100/230 DEKs (43%)`,
		`zone "eu": 150/230 DEKs (65%)`,
		`zone "eu": 200/230 DEKs (86%)`,
		`zone "eu": 230/230 DEKs (100%)`,
	}, lines)

	code, got := cliJSON(t, "rotate", "--zone", "eu", "--zone-key", "--config", e.config)
	require.Equal(t, 0, code)
	require.Equal(t, map[string]any{
		"ok": true, "zone": "eu", "operation": "zone-key", "zone_key_version": 3.0, "created": true,
		"scanned": 230.0, "rewrapped": 230.0, "remaining": 0.0, "zone_key_ttl": "10m0s",
	}, got)
	keys := e.keys(t, "eu")
	require.Equal(t, []any{1.0, 2.0, 3.0}, column(keys, "version"))
	require.Equal(t, []any{0.0, 0.0, 230.0}, column(keys, "deks"))
	e.requireOpens(t, msgs)
}

// cancelWriter cancels a context once it has been written the nth progress
// line.
type cancelWriter struct {
	bytes.Buffer
	n      int
	cancel context.CancelFunc
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	if w.n -= bytes.Count(p, []byte(" DEKs (")); w.n <= 0 {
		w.cancel()
	}
	return w.Buffer.Write(p)
}

func TestRotateZoneKeyInterruptedCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 200)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	old := baseContext
	baseContext = func() context.Context { return ctx }
	defer func() { baseContext = old }()
	var stdout bytes.Buffer
	stderr := &cancelWriter{n: 2, cancel: cancel}
	code := run([]string{"rotate", "--zone", "eu", "--zone-key", "--batch", "40", "--config", e.config}, &stdout, stderr)
	baseContext = old
	require.Equal(t, 1, code, stderr.String())
	require.Empty(t, stdout.String())
	require.Contains(t, stderr.String(), `zonekey rotate: zone "eu": rotating to zone key v2: context canceled`)
	require.Contains(t, stderr.String(), "stopped after rewrapping 80 DEKs to zone key v2; run the same command again to resume")
	require.Equal(t, []any{120.0, 80.0}, column(e.keys(t, "eu"), "deks"))

	// Data written between the runs, by an application that has seen the
	// new version, is under it.
	msgs = append(msgs, e.seal(t, "eu", "between", 2)...)
	require.Equal(t, []any{120.0, 82.0}, column(e.keys(t, "eu"), "deks"))

	code, got := cliJSON(t, "rotate", "--zone", "eu", "--zone-key", "--batch", "40", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, map[string]any{
		"ok": true, "zone": "eu", "operation": "zone-key", "zone_key_version": 2.0, "created": false,
		"scanned": 202.0, "rewrapped": 120.0, "remaining": 0.0, "zone_key_ttl": "10m0s",
	}, got, "the second run resumes toward v2")
	keys := e.keys(t, "eu")
	require.Equal(t, []any{1.0, 2.0}, column(keys, "version"), "no third version")
	require.Equal(t, []any{0.0, 202.0}, column(keys, "deks"))
	e.requireOpens(t, msgs)

	// Interrupted in JSON mode.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	baseContext = func() context.Context { return ctx }
	var out bytes.Buffer
	code = run([]string{"rotate", "--zone", "eu", "--zone-key", "--batch", "40", "--config", e.config, "--json"}, &out, &cancelWriter{n: 1, cancel: cancel})
	baseContext = old
	require.Equal(t, 1, code)
	var res map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	require.Equal(t, false, res["ok"])
	require.Equal(t, "interrupted", res["error_kind"])
	require.Equal(t, 3.0, res["zone_key_version"])
	require.Equal(t, 40.0, res["rewrapped"])
	require.NotContains(t, res, "remaining")
	require.Contains(t, res["error"], "run the same command again to resume")
}

// TestRotateZoneKeyRunningApplication rotates while an application that
// has already used the zone keeps creating DEKs under the old version.
func TestRotateZoneKeyRunningApplication(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 5)
	// The application creates a DEK, and so knows v1 as the current
	// version for the zone-key TTL.
	app := e.client(t)
	_, err := app.Keyring().DataKey(t.Context(), "eu", "app")
	require.NoError(t, err)

	code, _, stderr := cli("rotate", "--zone", "eu", "--zone-key", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	d, err := app.Keyring().DataKey(t.Context(), "eu", "late")
	require.NoError(t, err)
	b := envelope.Binding{Path: "Email", Subject: "late"}
	ct, err := d.Seal([]byte("late@example.com"), b)
	require.NoError(t, err)
	msgs = append(msgs, message{id: d.ID(), bind: b, ct: ct})
	require.Equal(t, []any{1.0, 6.0}, column(e.keys(t, "eu"), "deks"), "the application's new DEK is under v1")

	// The next run rewraps it, and reports nothing remaining.
	code, got := cliJSON(t, "rotate", "--zone", "eu", "--zone-key", "--config", e.config)
	require.Equal(t, 0, code)
	require.Equal(t, false, got["created"])
	require.Equal(t, 1.0, got["rewrapped"])
	require.Equal(t, []any{0.0, 7.0}, column(e.keys(t, "eu"), "deks"))
	require.NoError(t, app.Close())
	e.requireOpens(t, msgs)
}

func TestKeysListCommand(t *testing.T) {
	e := newKeyEnv(t)
	e.seal(t, "eu", "user", 3)
	e.seal(t, "us", "user", 1)
	code, _, stderr := cli("rotate", "--zone", "eu", "--config", e.config)
	require.Equal(t, 0, code, stderr)

	code, stdout, stderr := cli("keys", "list", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.Len(t, lines, 3)
	require.Regexp(t, `^ZONE +VERSION +KEY ID +KEK VERSION +CREATED +DEKS$`, lines[0])
	require.Regexp(t, `^eu +1 +[0-9a-f]{32} +2 +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +3$`, lines[1])
	require.Regexp(t, `^us +1 +[0-9a-f]{32} +1 +\S+ +1$`, lines[2])

	keys := e.keys(t, "")
	require.Equal(t, []any{"eu", "us"}, column(keys, "zone"))
	created, err := time.Parse(time.RFC3339Nano, keys[0]["created"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), created, time.Minute)
	require.Len(t, keys[0]["id"], 32)
	require.Equal(t, []any{"us"}, column(e.keys(t, "us"), "zone"))

	code, got := cliJSON(t, "keys", "list", "--zone", "mars", "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, false, got["ok"])
	require.Equal(t, "unknown_zone", got["error_kind"])
	require.Equal(t, []any{}, got["keys"])
	code, _, stderr = cli("keys", "list", "--zone", "mars", "--config", e.config)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, `zonekey keys list: zone "mars": `)
	require.Contains(t, stderr, "unknown zone")
}

func TestKeyCommandsConfig(t *testing.T) {
	e := newKeyEnv(t)
	e.seal(t, "eu", "user", 1)
	t.Setenv(configEnv, e.config)
	code, stdout, stderr := cli("keys", "list", "--zone", "eu")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "eu ")

	// --config wins over the environment.
	missing := filepath.Join(e.dir, "missing.json")
	code, _, stderr = cli("keys", "list", "--config", missing)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, missing)
	code, got := cliJSON(t, "rotate", "--zone", "eu", "--config", missing)
	require.Equal(t, 1, code)
	require.Equal(t, "not_found", got["error_kind"])

	bad := filepath.Join(e.dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"zones": {}, "bogus": 1}`), 0o600))
	code, got = cliJSON(t, "rotate", "--zone", "eu", "--config", bad)
	require.Equal(t, 1, code)
	require.Equal(t, "invalid_config", got["error_kind"])
}

func TestRotateFailures(t *testing.T) {
	e := newKeyEnv(t)
	code, stdout, stderr := cli("rotate", "--zone", "mars", "--config", e.config)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, `zonekey rotate: zone "mars": zonekey: unknown zone`)

	code, got := cliJSON(t, "rotate", "--zone", "mars", "--zone-key", "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, map[string]any{
		"ok": false, "zone": "mars", "operation": "zone-key", "zone_key_ttl": "10m0s",
		"error": got["error"], "error_kind": "unknown_zone",
	}, got)
}

func TestRotateUsage(t *testing.T) {
	e := newKeyEnv(t)
	t.Setenv(configEnv, "")
	cfg := []string{"--config", e.config}
	e.requireUsageErrors(t, []usageCase{
		{"no zone", append([]string{"rotate"}, cfg...), "--zone is required"},
		{"no config", []string{"rotate", "--zone", "eu"}, "no configuration: pass --config FILE or set ZONEKEY_CONFIG"},
		{"keys no config", []string{"keys", "list"}, "no configuration"},
		{"zone key and retire", append([]string{"rotate", "--zone", "eu", "--zone-key", "--retire-below", "2"}, cfg...), "exclude each other"},
		{"retire and rewrap", append([]string{"rotate", "--zone", "eu", "--rewrap-only", "--retire-below", "2"}, cfg...), "exclude each other"},
		{"batch without zone key", append([]string{"rotate", "--zone", "eu", "--batch", "10"}, cfg...), "--batch goes with --zone-key"},
		{"batch 0", append([]string{"rotate", "--zone", "eu", "--zone-key", "--batch", "0"}, cfg...), "--batch must be at least 1"},
		{"retire 0", append([]string{"rotate", "--zone", "eu", "--retire-below", "0"}, cfg...), "--retire-below must be a KEK version"},
		{"retire too high", append([]string{"rotate", "--zone", "eu", "--retire-below", "4294967296"}, cfg...), "--retire-below must be a KEK version"},
		{"retire negative", append([]string{"rotate", "--zone", "eu", "--retire-below", "-1"}, cfg...), "invalid value"},
		{"argument", append([]string{"rotate", "--zone", "eu", "extra"}, cfg...), `unexpected arguments ["extra"]`},
		{"keys argument", append([]string{"keys", "list", "eu"}, cfg...), `unexpected arguments ["eu"]`},
		{"bad flag", append([]string{"rotate", "--zone", "eu", "--force"}, cfg...), "flag provided but not defined: -force"},
		{"keys alone", []string{"keys"}, `"keys" needs a subcommand`},
	})

	code, stdout, _ := cli("help", "rotate")
	require.Equal(t, 0, code)
	for _, s := range []string{"--zone-key", "--retire-below", "--rewrap-only", "--batch", "ZONEKEY_CONFIG", "zone-key TTL"} {
		require.Contains(t, stdout, s)
	}
	code, stdout, _ = cli("help")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "rotate --zone Z")
	require.Contains(t, stdout, "keys list [--zone Z]")
}

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	require.False(t, isTerminal(&buf))
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	require.NoError(t, err)
	defer f.Close()
	require.False(t, isTerminal(f), "a regular file is not a terminal")

	// On a terminal: one line, redrawn.
	p := &progress{w: &buf, zone: "eu", tty: true}
	p.update(0, 200)
	p.update(100, 200)
	p.update(200, 200)
	p.finish()
	require.Equal(t, "\r"+`zone "eu" [                              ]   0% 0/200 DEKs`+
		"\r"+`zone "eu" [===============               ]  50% 100/200 DEKs`+
		"\r"+`zone "eu" [==============================] 100% 200/200 DEKs`+"\n", buf.String())

	// Otherwise: at most a line per interval, and always the last.
	old := progressInterval
	progressInterval = time.Hour
	defer func() { progressInterval = old }()
	buf.Reset()
	p = newProgress(&buf, "eu")
	for done := 10; done <= 100; done += 10 {
		p.update(done, 100)
	}
	p.finish()
	require.Equal(t, `zone "eu": 10/100 DEKs (10%)`+"\n"+`zone "eu": 100/100 DEKs (100%)`+"\n", buf.String())
	buf.Reset()
	p.update(0, 0)
	require.Equal(t, `zone "eu": 0/0 DEKs (100%)`+"\n", buf.String())
}

// usageCase is a command line refused as bad usage, and what its error says.
type usageCase struct {
	name   string
	args   []string
	stderr string
}

// requireUsageErrors checks that each command line exits 2 with the usage
// and its error and prints nothing on stdout, and that none opened the
// keystore.
func (e *keyEnv) requireUsageErrors(t *testing.T, tests []usageCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(tt.args...)
			require.Equal(t, 2, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Empty(t, stdout)
			require.Contains(t, stderr, tt.stderr)
			require.Contains(t, stderr, "Usage:")
		})
	}
	_, err := os.Stat(filepath.Join(e.dir, "keys"))
	require.ErrorIs(t, err, os.ErrNotExist, "a refused command opened the keystore")
}
