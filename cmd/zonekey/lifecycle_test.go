package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/internal/coarse"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
)

// requireRefused checks that a new client cannot get the key of any of
// msgs, with an error wrapping want.
func (e *keyEnv) requireRefused(t *testing.T, msgs []message, want error) {
	t.Helper()
	c := e.client(t)
	defer c.Close()
	for _, m := range msgs {
		_, err := c.Keyring().Key(t.Context(), m.id)
		require.ErrorIs(t, err, want, "DEK %s of %s", m.id, m.bind.Subject)
	}
}

// deks returns the DEK counts of the zone's zone-key versions.
func (e *keyEnv) deks(t *testing.T, zone string) []any {
	t.Helper()
	return column(e.keys(t, zone), "deks")
}

// ids returns the DEK ids of msgs, as the JSON output lists them.
func ids(msgs ...message) []any {
	var out []any
	for _, m := range msgs {
		out = append(out, m.id.String())
	}
	return out
}

// writeSubjects writes a subject list for --subjects-from.
func (e *keyEnv) writeSubjects(t *testing.T, name string, lines ...string) string {
	t.Helper()
	path := filepath.Join(e.dir, name)
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	return path
}

func TestShredCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 3)
	others := e.seal(t, "us", "user", 1)

	code, stdout, stderr := cli("shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stderr)
	require.Equal(t, `zone "eu", subject "user-0000": shredded; 1 DEKs deleted: `+msgs[0].id.String()+"\n"+
		"Its data is unreadable from now on: here at once, in running processes once the DEK leaves their cache (dek_ttl, 5m0s).\n"+
		"It is final in backups of the keystore after the zone's next epoch: zonekey epoch --zone eu\n"+
		"(The zone has had no epoch yet.)\n", stdout)
	e.requireRefused(t, msgs[:1], zonekey.ErrKeyShredded)
	e.requireOpens(t, append(msgs[1:], others...))
	require.Equal(t, []any{2.0}, e.deks(t, "eu"))

	// Decrypting a record of the subject fails with ErrKeyShredded, and
	// the subject gets no new DEK.
	c := e.client(t)
	_, err := c.Keyring().Key(t.Context(), msgs[0].id)
	require.ErrorIs(t, err, zonekey.ErrKeyShredded)
	_, err = c.Keyring().DataKey(t.Context(), "eu", "user-0000")
	require.ErrorIs(t, err, zonekey.ErrKeyShredded)
	require.NoError(t, c.Close())

	// Again: nothing to do, and it says so.
	code, got := cliJSON(t, "shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
	require.Equal(t, 0, code, got)
	shreddedAt := got["shredded_at"]
	require.NotEmpty(t, shreddedAt)
	require.Equal(t, map[string]any{
		"ok": true, "operation": "shred", "zone": "eu", "subject": "user-0000", "deks": []any{},
		"already_shredded": true, "shredded_at": shreddedAt, "final_after": "next epoch", "final_in_backups": false,
	}, got)
	code, stdout, stderr = cli("shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, `zone "eu", subject "user-0000": already shredded at `)
	require.Contains(t, stdout, "; nothing changed\n")

	code, got = cliJSON(t, "shred", "--zone", "eu", "--subject", "user-0001", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, ids(msgs[1]), got["deks"])
	require.Equal(t, false, got["already_shredded"])
	require.Equal(t, "next epoch", got["final_after"])

	// After an epoch, the shreds before it are final in backups, and the
	// command says so; a later shred waits for the next epoch. (Times
	// are the keyring's coarse clock's: an epoch that starts within its
	// precision of a shred is not known to follow it.)
	time.Sleep(4 * coarse.Granularity)
	code, _, stderr = cli("epoch", "--zone", "eu", "--no-settle", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	code, got = cliJSON(t, "shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, true, got["already_shredded"])
	require.Equal(t, "epoch 1", got["final_after"])
	require.Equal(t, true, got["final_in_backups"])
	require.Equal(t, 1.0, got["last_epoch"])
	require.NotEmpty(t, got["last_epoch_finished"])
	code, stdout, stderr = cli("shred", "--zone", "eu", "--subject", "user-0001", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "It is final in backups of the keystore too: epoch 1 of the zone started after it and finished at ")

	code, stdout, stderr = cli("shred", "--zone", "eu", "--subject", "user-0002", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "It is final in backups of the keystore after the zone's next epoch: zonekey epoch --zone eu\n(The zone's last epoch, 1, finished at ")
	e.requireRefused(t, msgs, zonekey.ErrKeyShredded)
	e.requireOpens(t, others)
}

func TestShredFailures(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 2)

	tests := []struct {
		name    string
		zone    string
		subject string
		kind    string
		message string
	}{
		{"unknown subject", "eu", "ghost", "unknown_key", `subject "ghost" has no key in zone "eu"; nothing changed`},
		{"subject of another zone", "us", "user-0000", "unknown_key", `subject "user-0000" has no key in zone "us"`},
		{"unknown zone", "mars", "user-0000", "unknown_zone", `zone "mars", subject "user-0000": `},
		{"reserved subject", "eu", keystore.ReservedPrefix + "x", "invalid_value", "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, got := cliJSON(t, "shred", "--zone", tt.zone, "--subject", tt.subject, "--config", e.config)
			require.Equal(t, 1, code)
			require.Equal(t, map[string]any{
				"ok": false, "operation": "shred", "zone": tt.zone, "subject": tt.subject, "deks": []any{},
				"already_shredded": false, "final_in_backups": false, "error": got["error"], "error_kind": tt.kind,
			}, got)
			require.Contains(t, got["error"], tt.message)

			code, stdout, stderr := cli("shred", "--zone", tt.zone, "--subject", tt.subject, "--config", e.config)
			require.Equal(t, 1, code)
			require.Empty(t, stdout)
			require.Contains(t, stderr, "zonekey shred: ")
			require.Contains(t, stderr, tt.message)
		})
	}
	// Nothing changed.
	require.Equal(t, []any{2.0}, e.deks(t, "eu"))
	e.requireOpens(t, msgs)
}

func TestShredZoneCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 2)
	others := e.seal(t, "us", "user", 2)

	// Without the confirmation, or with another zone's name: refused as
	// bad usage, and nothing changed.
	for _, args := range [][]string{
		{"--all"},
		{"--all", "--confirm", "us"},
		{"--all", "--confirm", ""},
		{"--all", "--confirm", "EU"},
	} {
		code, stdout, stderr := cli(append([]string{"shred", "--zone", "eu", "--config", e.config, "--json"}, args...)...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
		require.Contains(t, stderr, "--confirm eu")
		require.Contains(t, stderr, "unreadable for good")
		// Under --json, the usage error is in the JSON too.
		var got map[string]any
		require.NoError(t, json.Unmarshal([]byte(stdout), &got), stdout)
		require.Equal(t, false, got["ok"])
		require.Equal(t, "usage", got["error_kind"])
		require.Contains(t, got["error"], "--confirm eu")
	}
	e.requireOpens(t, append(msgs, others...))

	code, got := cliJSON(t, "shred", "--zone", "eu", "--all", "--confirm", "eu", "--config", e.config)
	require.Equal(t, 0, code, got)
	at, err := time.Parse(time.RFC3339Nano, got["shredded_at"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), at, time.Minute)
	require.Equal(t, map[string]any{"ok": true, "operation": "shred-zone", "zone": "eu", "shredded_at": got["shredded_at"]}, got)
	e.requireRefused(t, msgs, zonekey.ErrKeyShredded)
	e.requireOpens(t, others)

	// The zone gets no new key, nor an epoch.
	c := e.client(t)
	_, err = c.Keyring().DataKey(t.Context(), "eu", "new")
	require.ErrorIs(t, err, zonekey.ErrKeyShredded)
	require.NoError(t, c.Close())
	code, got = cliJSON(t, "epoch", "--zone", "eu", "--no-settle", "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, "key_shredded", got["error_kind"])

	// Running it again completes or confirms it.
	code, stdout, stderr := cli("shred", "--zone", "eu", "--all", "--confirm", "eu", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, `zone "eu": shredded at `)
	require.Contains(t, stdout, "Every record of the zone, in every copy of the keystore, is unreadable for good.")
}

func TestShredSubjectsFromCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 3)
	list := e.writeSubjects(t, "subjects.txt", "# to erase", "user-0000", "", "  ghost  ", "user-0001")

	code, stdout, stderr := cli("shred", "--zone", "eu", "--subjects-from", list, "--config", e.config)
	require.Equal(t, 1, code, stderr)
	require.Equal(t, `zone "eu": 2 subjects shredded (2 DEKs deleted), 0 already shredded, 1 failed, of 3 listed`+"\n"+
		"Their data is unreadable from now on: here at once, in running processes once the DEKs leave their cache (dek_ttl, 5m0s).\n"+
		"It is final in backups of the keystore after the zone's next epoch: zonekey epoch --zone eu\n"+
		"(The zone has had no epoch yet.)\n", stdout)
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	require.Len(t, lines, 5, stderr)
	require.Equal(t, `zone "eu": 1/3 subjects (33%)`, lines[0])
	require.Contains(t, lines[1], `zonekey shred: zone "eu": `)
	require.Contains(t, lines[1], `subject "ghost" has no key in zone "eu"`)
	require.Equal(t, `zone "eu": 2/3 subjects (66%)`, lines[2])
	require.Equal(t, `zone "eu": 3/3 subjects (100%)`, lines[3])
	require.Equal(t, "zonekey shred: 1 of 3 subjects failed (listed above); run the same command again to retry them", lines[4])
	e.requireRefused(t, msgs[:2], zonekey.ErrKeyShredded)
	e.requireOpens(t, msgs[2:])

	// Again, as JSON: the shredded subjects count as such.
	code, got := cliJSON(t, "shred", "--zone", "eu", "--subjects-from", list, "--config", e.config)
	require.Equal(t, 1, code)
	failures := got["failures"].([]any)
	require.Len(t, failures, 1)
	failure := failures[0].(map[string]any)
	require.Contains(t, failure["error"], `subject "ghost"`)
	require.Equal(t, map[string]any{
		"ok": false, "operation": "shred-subjects", "zone": "eu", "subjects_from": list, "subjects": 3.0,
		"shredded": 0.0, "already_shredded": 2.0, "failed": 1.0,
		"failures":   []any{map[string]any{"subject": "ghost", "error": failure["error"], "error_kind": "unknown_key"}},
		"error":      "1 of 3 subjects failed",
		"error_kind": "subjects_failed",
	}, got)

	// From standard input, all well.
	old := stdin
	stdin = strings.NewReader("user-0002\nuser-0001\n")
	defer func() { stdin = old }()
	code, got = cliJSON(t, "shred", "--zone", "eu", "--subjects-from", "-", "--config", e.config)
	stdin = old
	require.Equal(t, 0, code, got)
	require.Equal(t, map[string]any{
		"ok": true, "operation": "shred-subjects", "zone": "eu", "subjects_from": "-", "subjects": 2.0,
		"shredded": 1.0, "already_shredded": 1.0, "failed": 0.0, "failures": []any{},
	}, got)
	e.requireRefused(t, msgs, zonekey.ErrKeyShredded)

	// A list that cannot be read, or lists nobody, changes nothing.
	empty := e.writeSubjects(t, "empty.txt", "# nobody", "")
	code, got = cliJSON(t, "shred", "--zone", "eu", "--subjects-from", empty, "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, "invalid_value", got["error_kind"])
	require.Contains(t, got["error"], "lists no subjects")
	code, got = cliJSON(t, "shred", "--zone", "eu", "--subjects-from", filepath.Join(e.dir, "missing.txt"), "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, "not_found", got["error_kind"])
	require.Equal(t, 0.0, got["subjects"])
	code, got = cliJSON(t, "shred", "--zone", "mars", "--subjects-from", list, "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, "unknown_zone", got["error_kind"])
	require.Equal(t, 3.0, got["subjects"])
	require.Equal(t, []any{}, got["failures"])
}

func TestMigrateCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 4)
	others := e.seal(t, "us", "local", 1)

	code, stdout, stderr := cli("migrate", "--subject", "user-0000", "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stderr)
	require.Equal(t, `subject "user-0000": moved from zone "eu" to zone "us"; 1 DEKs: `+msgs[0].id.String()+"\n"+
		`Its records decrypt in zone "us" from now on, and are refused to callers only in zone "eu" (running processes once the DEK leaves their cache, dek_ttl, 5m0s). Encrypt its new data under zone "us".`+"\n"+
		`Zone "us" adopts the DEKs under its zone key on first use, or at its next zone-key rotation or epoch: zonekey epoch --zone us`+"\n"+
		`Keystore backups of zone "eu" taken before the move hold the DEKs until its next epoch: zonekey epoch --zone eu`+"\n", stdout)

	// The data is as readable as before, now in "us"; new data of the
	// subject in "eu" is refused.
	e.requireOpens(t, append(msgs, others...))
	c := e.client(t)
	_, err := c.Keyring().DataKey(t.Context(), "eu", "user-0000")
	require.ErrorIs(t, err, zonekey.ErrSubjectMoved)
	d, err := c.Keyring().Key(t.Context(), msgs[0].id)
	require.NoError(t, err)
	require.Equal(t, "us", d.Zone)
	require.NoError(t, c.Close())

	code, got := cliJSON(t, "migrate", "--subject", "user-0000", "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, map[string]any{
		"ok": true, "operation": "migrate", "subject": "user-0000", "from": "eu", "to": "us", "deks": []any{}, "already_moved": true,
	}, got)
	code, stdout, _ = cli("migrate", "--subject", "user-0000", "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 0, code)
	require.Equal(t, `subject "user-0000": already moved from zone "eu" to zone "us"; nothing changed`+"\n", stdout)

	code, got = cliJSON(t, "migrate", "--subject", "user-0001", "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, ids(msgs[1]), got["deks"])
	require.Equal(t, false, got["already_moved"])

	// An epoch of "us" adopts the moved DEKs under its zone key.
	code, got = cliJSON(t, "epoch", "--zone", "us", "--no-settle", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, []any{3.0}, e.deks(t, "us"))
	require.Equal(t, []any{2.0}, e.deks(t, "eu"))
	e.requireOpens(t, append(msgs, others...))

	code, _, stderr = cli("shred", "--zone", "eu", "--subject", "user-0003", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	tests := []struct {
		name          string
		subject       string
		from, to      string
		kind, message string
	}{
		{"unknown zone", "user-0002", "eu", "mars", "unknown_zone", `subject "user-0002", zone "eu" to zone "mars": `},
		{"unknown source zone", "user-0002", "mars", "eu", "unknown_zone", "unknown zone"},
		{"unknown subject", "ghost", "eu", "us", "unknown_key", `subject "ghost" has no key in zone "eu"`},
		{"shredded", "user-0003", "eu", "us", "key_shredded", `subject "user-0003" of zone "eu" was shredded`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, got := cliJSON(t, "migrate", "--subject", tt.subject, "--from", tt.from, "--to", tt.to, "--config", e.config)
			require.Equal(t, 1, code)
			require.Equal(t, false, got["ok"])
			require.Equal(t, tt.kind, got["error_kind"])
			require.Contains(t, got["error"], tt.message)
			require.Equal(t, []any{}, got["deks"])
		})
	}
	require.Equal(t, []any{1.0}, e.deks(t, "eu"), "nothing changed")

	// A subject moved back is in its first zone again.
	code, got = cliJSON(t, "migrate", "--subject", "user-0000", "--from", "us", "--to", "eu", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, ids(msgs[0]), got["deks"])
	code, got = cliJSON(t, "migrate", "--subject", "user-0000", "--from", "us", "--to", "eu", "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, true, got["already_moved"])
	e.requireOpens(t, append(msgs[:3], others...))
}

func TestMigrateSubjectsFromCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 3)
	list := e.writeSubjects(t, "movers.txt", "user-0000", "ghost", "user-0002")

	code, got := cliJSON(t, "migrate", "--subjects-from", list, "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 1, code)
	failures := got["failures"].([]any)
	require.Len(t, failures, 1)
	require.Equal(t, map[string]any{
		"ok": false, "operation": "migrate-subjects", "from": "eu", "to": "us", "subjects_from": list, "subjects": 3.0,
		"moved": 2.0, "already_moved": 0.0, "failed": 1.0,
		"failures": []any{map[string]any{"subject": "ghost", "error": failures[0].(map[string]any)["error"], "error_kind": "unknown_key"}},
		"error":    "1 of 3 subjects failed", "error_kind": "subjects_failed",
	}, got)
	e.requireOpens(t, msgs)

	code, stdout, stderr := cli("migrate", "--subjects-from", list, "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 1, code)
	require.Contains(t, stdout, `zone "eu" to zone "us": 0 subjects moved (0 DEKs), 2 already moved, 1 failed, of 3 listed`)
	require.Contains(t, stderr, `zone "eu" to zone "us": 3/3 subjects (100%)`)
	require.Contains(t, stderr, `subject "ghost"`)

	list = e.writeSubjects(t, "rest.txt", "user-0001", "user-0002")
	code, stdout, stderr = cli("migrate", "--subjects-from", list, "--from", "eu", "--to", "us", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, `zone "eu" to zone "us": 1 subjects moved (1 DEKs), 1 already moved, 0 failed, of 2 listed`)
	require.Contains(t, stdout, `Zone "us" adopts the DEKs`)
	require.Equal(t, []any{0.0}, e.deks(t, "eu"))
	e.requireOpens(t, msgs)
}

func TestEpochCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 5)
	others := e.seal(t, "us", "user", 1)
	// Two zone-key versions to start with.
	code, _, stderr := cli("rotate", "--zone", "eu", "--zone-key", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	msgs = append(msgs, e.seal(t, "eu", "late", 1)...)

	code, stdout, stderr := cli("epoch", "--zone", "eu", "--batch", "2", "--no-settle", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, []string{
		`zone "eu": epoch 1: rotating the KEK at the custodian`,
		`zone "eu": epoch 1: making a zone key under the new KEK version only`,
		`zone "eu": epoch 1: rewrapping every DEK of the zone under the new zone key`,
		`zone "eu": epoch 1: 2 of 6 DEKs scanned`,
		`zone "eu": epoch 1: 4 of 6 DEKs scanned`,
		`zone "eu": epoch 1: 6 of 6 DEKs scanned`,
		`zone "eu": epoch 1: deleting the older zone keys`,
		`zone "eu": epoch 1: destroying the older KEK versions at the custodian`,
		`zone "eu": epoch 1: done`,
	}, strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"))
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.Len(t, lines, 3)
	require.Regexp(t, `^zone "eu": epoch 1 finished \(started at \S+\): KEK v2, zone key v3; 6 DEKs scanned, 6 rewrapped; 2 older zone keys deleted; older KEK versions destroyed$`, lines[0])
	require.Regexp(t, `^Subjects shredded before \S+ are now shredded in every keystore backup too\.$`, lines[1])
	require.Regexp(t, `^Keystore backups taken before \S+ can no longer be opened; those taken while the epoch ran \(until \S+\) may still open, like current ones: take a new backup now, and discard those\.$`, lines[2])
	keys := e.keys(t, "eu")
	require.Equal(t, []any{3.0}, column(keys, "version"), "older zone keys deleted")
	require.Equal(t, []any{2.0}, column(keys, "kek_version"))
	require.Equal(t, []any{6.0}, column(keys, "deks"))
	require.Equal(t, []any{1.0}, column(e.keys(t, "us"), "kek_version"), "other zones are untouched")
	e.requireOpens(t, append(msgs, others...))

	// The next, as JSON, with a settle.
	code, got := cliJSON(t, "epoch", "--zone", "eu", "--settle", "20ms", "--config", e.config)
	require.Equal(t, 0, code, got)
	started, err := time.Parse(time.RFC3339Nano, got["started"].(string))
	require.NoError(t, err)
	finished, err := time.Parse(time.RFC3339Nano, got["finished"].(string))
	require.NoError(t, err)
	require.False(t, finished.Before(started.Add(20*time.Millisecond)), "it waited for the settle")
	require.Equal(t, map[string]any{
		"ok": true, "operation": "epoch", "zone": "eu", "number": 2.0, "resumed": false,
		"kek_version": 3.0, "zone_key_version": 4.0, "scanned": 6.0, "rewrapped": 6.0, "zone_keys_deleted": 1.0,
		"settle": "20ms", "started": got["started"], "finished": got["finished"],
	}, got)
	e.requireOpens(t, append(msgs, others...))

	// The settle is explained on stderr.
	code, _, stderr = cli("epoch", "--zone", "us", "--settle", "500ms", "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Regexp(t, `zone "us": epoch 1: waiting until \S+ \(--settle 500ms after the new zone key was made\): running processes create DEKs under the zone key they know for up to their zone-key TTL`, stderr)

	code, got = cliJSON(t, "epoch", "--zone", "mars", "--no-settle", "--config", e.config)
	require.Equal(t, 1, code)
	require.Equal(t, "unknown_zone", got["error_kind"])
	require.Contains(t, got["error"], `zone "mars"`)
}

// cancelAfter cancels a context once the text written to it holds n times
// the string s.
type cancelAfter struct {
	bytes.Buffer
	s      string
	n      int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	if w.n -= bytes.Count(p, []byte(w.s)); w.n <= 0 {
		w.cancel()
	}
	return w.Buffer.Write(p)
}

// withOwner runs f as the epoch runner owner.
func withOwner(owner string, f func()) {
	old := epochOwner
	epochOwner = func() string { return owner }
	defer func() { epochOwner = old }()
	f()
}

func TestEpochInterruptedCommand(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 100)

	// Interrupted during the rewrap.
	withOwner("alice@host-a", func() {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		old := baseContext
		baseContext = func() context.Context { return ctx }
		defer func() { baseContext = old }()
		var stdout bytes.Buffer
		stderr := &cancelAfter{s: " DEKs scanned", n: 2, cancel: cancel}
		code := run([]string{"epoch", "--zone", "eu", "--batch", "20", "--no-settle", "--config", e.config}, &stdout, stderr)
		require.Equal(t, 1, code, stderr.String())
		require.Empty(t, stdout.String())
		require.Contains(t, stderr.String(), `zonekey epoch: zone "eu": epoch 1: `)
		require.Contains(t, stderr.String(), "context canceled")
		require.Contains(t, stderr.String(), "zonekey epoch: epoch 1 stopped in its rewrap phase; run the same command again to resume")
	})
	e.requireOpens(t, msgs)

	// A run that stops releases its claim; one that is killed cannot. As
	// if alice's run had been killed, its claim still holds:
	e.holdEpochClaim(t, "eu", "alice@host-a")

	// Another runner is refused while the claim holds, and nothing changes.
	withOwner("bob@host-b", func() {
		code, got := cliJSON(t, "epoch", "--zone", "eu", "--no-settle", "--config", e.config)
		require.Equal(t, 1, code)
		held, err := time.Parse(time.RFC3339Nano, got["held_until"].(string))
		require.NoError(t, err)
		require.WithinDuration(t, time.Now().Add(keystore.DefaultEpochLease), held, time.Minute)
		require.Equal(t, map[string]any{
			"ok": false, "operation": "epoch", "zone": "eu", "number": 1.0, "resumed": false,
			"scanned": 0.0, "rewrapped": 0.0, "zone_keys_deleted": 0.0, "settle": "none",
			"held_by": "alice@host-a", "held_until": got["held_until"],
			"error": got["error"], "error_kind": "epoch_running",
		}, got)
		require.Contains(t, got["error"], `epoch 1 is being run by alice@host-a`)
		require.Contains(t, got["error"], "if that run has stopped, run this command again after ")

		code, _, stderr := cli("epoch", "--zone", "eu", "--no-settle", "--config", e.config)
		require.Equal(t, 1, code)
		require.Contains(t, stderr, `zonekey epoch: keystore: zone "eu": epoch 1 is being run by alice@host-a (claimed until `)
	})

	// The same runner resumes it at once.
	withOwner("alice@host-a", func() {
		code, got := cliJSON(t, "epoch", "--zone", "eu", "--batch", "20", "--no-settle", "--config", e.config)
		require.Equal(t, 0, code, got)
		require.Equal(t, true, got["resumed"])
		require.Equal(t, 1.0, got["number"])
		require.Equal(t, 2.0, got["kek_version"], "no second KEK rotation")
		require.Equal(t, 2.0, got["zone_key_version"])
	})
	require.Equal(t, []any{100.0}, e.deks(t, "eu"))
	e.requireOpens(t, msgs)

	// Interrupted in JSON mode.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	old := baseContext
	baseContext = func() context.Context { return ctx }
	var out bytes.Buffer
	code := run([]string{"epoch", "--zone", "eu", "--batch", "20", "--no-settle", "--config", e.config, "--json"}, &out, &cancelAfter{s: " DEKs scanned", n: 1, cancel: cancel})
	baseContext = old
	require.Equal(t, 1, code)
	var res map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	require.Equal(t, false, res["ok"])
	require.Equal(t, "interrupted", res["error_kind"])
	require.Equal(t, 2.0, res["number"])
	require.Contains(t, res["error"], "run the same command again to resume")
	require.NotContains(t, res, "finished")
}

func TestLifecycleUsage(t *testing.T) {
	e := newKeyEnv(t)
	t.Setenv(configEnv, "")
	cfg := []string{"--config", e.config}
	list := e.writeSubjects(t, "list.txt", "a")
	e.requireUsageErrors(t, []usageCase{
		{"shred no zone", append([]string{"shred", "--subject", "a"}, cfg...), "--zone is required"},
		{"shred nothing", append([]string{"shred", "--zone", "eu"}, cfg...), "give one of --subject S, --subjects-from FILE and --all"},
		{"shred subject and all", append([]string{"shred", "--zone", "eu", "--subject", "a", "--all", "--confirm", "eu"}, cfg...), "exclude each other"},
		{"shred subject and list", append([]string{"shred", "--zone", "eu", "--subject", "a", "--subjects-from", list}, cfg...), "exclude each other"},
		{"shred empty subject", append([]string{"shred", "--zone", "eu", "--subject", ""}, cfg...), "--subject must not be empty"},
		{"shred empty list", append([]string{"shred", "--zone", "eu", "--subjects-from", ""}, cfg...), "--subjects-from must name a file"},
		{"shred confirm alone", append([]string{"shred", "--zone", "eu", "--subject", "a", "--confirm", "eu"}, cfg...), "--confirm goes with --all"},
		{"shred all unconfirmed", append([]string{"shred", "--zone", "eu", "--all"}, cfg...), "To confirm, repeat the zone's name: --confirm eu"},
		{"shred all misconfirmed", append([]string{"shred", "--zone", "eu", "--all", "--confirm", "us"}, cfg...), `--confirm "us" does not match the zone "eu"`},
		{"shred argument", append([]string{"shred", "--zone", "eu", "--subject", "a", "b"}, cfg...), `unexpected arguments ["b"]`},
		{"shred no config", []string{"shred", "--zone", "eu", "--subject", "a"}, "no configuration"},
		{"epoch no zone", append([]string{"epoch"}, cfg...), "--zone is required"},
		{"epoch batch 0", append([]string{"epoch", "--zone", "eu", "--batch", "0"}, cfg...), "--batch must be at least 1"},
		{"epoch settle 0", append([]string{"epoch", "--zone", "eu", "--settle", "0s"}, cfg...), "use --no-settle"},
		{"epoch settle negative", append([]string{"epoch", "--zone", "eu", "--settle", "-1m"}, cfg...), "--settle must be positive"},
		{"epoch settle and no settle", append([]string{"epoch", "--zone", "eu", "--settle", "1m", "--no-settle"}, cfg...), "exclude each other"},
		{"epoch bad settle", append([]string{"epoch", "--zone", "eu", "--settle", "soon"}, cfg...), "invalid value"},
		{"epoch no config", []string{"epoch", "--zone", "eu"}, "no configuration"},
		{"migrate no zones", append([]string{"migrate", "--subject", "a"}, cfg...), "--from and --to are required"},
		{"migrate no to", append([]string{"migrate", "--subject", "a", "--from", "eu"}, cfg...), "--from and --to are required"},
		{"migrate same zone", append([]string{"migrate", "--subject", "a", "--from", "eu", "--to", "eu"}, cfg...), `--from and --to are the same zone "eu"`},
		{"migrate no subject", append([]string{"migrate", "--from", "eu", "--to", "us"}, cfg...), "give one of --subject S and --subjects-from FILE"},
		{"migrate both", append([]string{"migrate", "--subject", "a", "--subjects-from", list, "--from", "eu", "--to", "us"}, cfg...), "exclude each other"},
		{"migrate zone flag", append([]string{"migrate", "--zone", "eu", "--subject", "a", "--from", "eu", "--to", "us"}, cfg...), "flag provided but not defined: -zone"},
		{"migrate no config", []string{"migrate", "--subject", "a", "--from", "eu", "--to", "us"}, "no configuration"},
	})

	for cmd, want := range map[string][]string{
		"shred":   {"--subject", "--subjects-from", "--all", "--confirm", "final in backups", "zonekey epoch --zone Z", "unknown_key", "ZONEKEY_CONFIG"},
		"epoch":   {"--settle", "--no-settle", "--batch", "longest zone-key TTL", `not "no wait"`, "run the same command again", "epoch_running"},
		"migrate": {"--subject", "--subjects-from", "--from", "--to", "wrap-only", "docs/vault.md", "adopts"},
	} {
		code, stdout, _ := cli("help", cmd)
		require.Equal(t, 0, code)
		require.True(t, strings.HasPrefix(stdout, "Usage: zonekey "+cmd+" "), stdout)
		for _, s := range want {
			require.Contains(t, stdout, s, cmd)
		}
	}
	code, stdout, _ := cli("help")
	require.Equal(t, 0, code)
	for _, s := range []string{"shred --zone Z", "epoch --zone Z", "migrate (--subject S"} {
		require.Contains(t, stdout, s)
	}
}

func TestLifecycleErrorKinds(t *testing.T) {
	tests := []struct {
		err  error
		kind string
	}{
		{fmt.Errorf("x: %w", zonekey.ErrKeyShredded), "key_shredded"},
		{fmt.Errorf("x: %w", zonekey.ErrSubjectMoved), "subject_moved"},
		{fmt.Errorf("x: %w", &keystore.EpochRunningError{Zone: "eu", Number: 1}), "epoch_running"},
		{keystore.ErrConflict, "conflict"},
		{fmt.Errorf("%w: %w", context.Canceled, zonekey.ErrKeyShredded), "interrupted"},
		{errors.Join(zonekey.ErrKeyShredded, zonekey.ErrUnknownKey), "key_shredded"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.kind, errorKind(tt.err), "%v", tt.err)
	}
}

func TestShredSubjectsInterrupted(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 3)
	list := e.writeSubjects(t, "subjects.txt", "user-0000", "user-0001", "user-0002")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	old := baseContext
	baseContext = func() context.Context { return ctx }
	var out bytes.Buffer
	code := run([]string{"shred", "--zone", "eu", "--subjects-from", list, "--config", e.config, "--json"}, &out, &cancelAfter{s: " subjects (", n: 1, cancel: cancel})
	baseContext = old
	require.Equal(t, 1, code)
	var got map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	require.Equal(t, false, got["ok"])
	require.Equal(t, "interrupted", got["error_kind"])
	require.Equal(t, 1.0, got["shredded"])
	require.Equal(t, 2.0, got["remaining"])
	require.Equal(t, 0.0, got["failed"])
	require.Contains(t, got["error"], `zone "eu": stopped after 1 of 3 subjects (1 changed, 0 already done, 0 failed)`)
	require.Contains(t, got["error"], "run the same command again to continue")
	e.requireRefused(t, msgs[:1], zonekey.ErrKeyShredded)
	e.requireOpens(t, msgs[1:])

	code, stdout, stderr := cli("shred", "--zone", "eu", "--subjects-from", list, "--config", e.config)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, `zone "eu": 2 subjects shredded (2 DEKs deleted), 1 already shredded, 0 failed, of 3 listed`)
	e.requireRefused(t, msgs, zonekey.ErrKeyShredded)
}

// holdEpochClaim renews the claim of the zone's latest epoch for owner, as a
// run that was killed mid-way leaves it.
func (e *keyEnv) holdEpochClaim(t *testing.T, zone, owner string) {
	t.Helper()
	bs, err := boltstore.Open(filepath.Join(e.dir, "keys", "keystore.db"), nil)
	require.NoError(t, err)
	defer bs.Close()
	cur, err := bs.LatestEpoch(t.Context(), zone)
	require.NoError(t, err)
	next := cur
	next.Owner, next.Lease = owner, time.Now().UTC().Add(keystore.DefaultEpochLease).Truncate(time.Microsecond)
	require.NoError(t, bs.UpdateEpoch(t.Context(), cur, next))
}

// TestShredFinalityAcrossUnfinishedEpoch: a shred that a finished epoch made
// final in backups stays reported final while a later epoch runs or stopped
// part-way, in JSON and in text.
func TestShredFinalityAcrossUnfinishedEpoch(t *testing.T) {
	e := newKeyEnv(t)
	e.seal(t, "eu", "user", 60)
	shred := func() map[string]any {
		code, got := cliJSON(t, "shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
		require.Equal(t, 0, code, got)
		return got
	}
	shred()
	time.Sleep(4 * coarse.Granularity) // the epoch starts after the shred on the keyring's clock
	code, got := cliJSON(t, "epoch", "--zone", "eu", "--no-settle", "--config", e.config)
	require.Equal(t, 0, code, got)
	got = shred()
	require.Equal(t, true, got["final_in_backups"], got)
	require.Equal(t, "epoch 1", got["final_after"])

	// Epoch 2 starts and is interrupted.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	old := baseContext
	baseContext = func() context.Context { return ctx }
	var out bytes.Buffer
	code = run([]string{"epoch", "--zone", "eu", "--batch", "10", "--no-settle", "--config", e.config}, &out, &cancelAfter{s: " DEKs scanned", n: 1, cancel: cancel})
	baseContext = old
	require.Equal(t, 1, code, out.String())

	got = shred()
	require.Equal(t, true, got["final_in_backups"], "epoch 1 started after the shred and finished: %v", got)
	require.Equal(t, "epoch 1", got["final_after"])
	require.Equal(t, 2.0, got["last_epoch"], "the latest epoch is still reported")
	_, stdout, _ := cli("shred", "--zone", "eu", "--subject", "user-0000", "--config", e.config)
	require.Contains(t, stdout, "final in backups of the keystore too: epoch 1 of the zone started after it")
}

// TestSubjectsFileEdges: a subjects file may start with a UTF-8 byte-order
// mark; a line too long for any subject refuses the whole run, naming the
// line, as invalid input, before anything is done.
func TestSubjectsFileEdges(t *testing.T) {
	e := newKeyEnv(t)
	msgs := e.seal(t, "eu", "user", 2)
	long := e.writeSubjects(t, "long.txt", "user-0000", strings.Repeat("x", 70_000), "user-0001")
	code, got := cliJSON(t, "shred", "--zone", "eu", "--subjects-from", long, "--config", e.config)
	require.Equal(t, 1, code, got)
	require.Equal(t, "invalid_value", got["error_kind"], got)
	require.Contains(t, got["error"], "line 2")
	e.requireOpens(t, msgs)

	bom := e.writeSubjects(t, "bom.txt", "\ufeffuser-0000", "user-0001")
	code, got = cliJSON(t, "shred", "--zone", "eu", "--subjects-from", bom, "--config", e.config)
	require.Equal(t, 0, code, got)
	require.Equal(t, 2.0, got["shredded"], got)
}

// TestSubjectsNotUTF8: two subjects that differ only in bytes that are not
// UTF-8 are told apart in the JSON failures by their exact bytes.
func TestSubjectsNotUTF8(t *testing.T) {
	e := newKeyEnv(t)
	e.seal(t, "eu", "user", 1)
	list := e.writeSubjects(t, "s.txt", "user-0000", "bad\xffone", "bad\xfeone")
	code, got := cliJSON(t, "shred", "--zone", "eu", "--subjects-from", list, "--config", e.config)
	require.Equal(t, 1, code, got)
	f := got["failures"].([]any)
	require.Len(t, f, 2)
	var raw []string
	for _, x := range f {
		b, err := base64.StdEncoding.DecodeString(x.(map[string]any)["subject_base64"].(string))
		require.NoError(t, err)
		raw = append(raw, string(b))
	}
	require.ElementsMatch(t, []string{"bad\xffone", "bad\xfeone"}, raw)
}
