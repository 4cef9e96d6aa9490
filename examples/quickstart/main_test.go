package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRunTwice runs the tour twice on one directory: the second run opens
// the keystore and KEK files the first one created, and decrypts the records
// the first one stored.
func TestRunTwice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	var first bytes.Buffer
	require.NoError(t, run(ctx, &first, dir))
	out := first.String()
	require.NotContains(t, out, "records stored by an earlier run")
	require.Contains(t, out, "u-1001 (eu): Ada Lovelace <ada@example.eu> phones=[+44 20 7946 0000]")
	require.Contains(t, out, "(ErrTampered: true)")
	// The custody part: the allowed and the refused read, and both
	// decisions in the audit output.
	custody, _, ok := strings.Cut(out[strings.Index(out, "== custody"):], "== Ada's email")
	require.True(t, ok, out)
	require.Contains(t, custody, "europe-west1: allowed: Ada Lovelace <ada@example.eu>")
	require.Contains(t, custody, "(ErrOutsideCustody: true)")
	require.Regexp(t, `action=dek.unwrap decision=allow zone=eu subject=u-1001 .* region=europe-west1`, custody)
	require.Regexp(t, `action=access decision=deny .* zone=eu subject=u-1001 .* region=us-east1`, custody)
	require.NotContains(t, custody, "action=zonekey.create", "audit lines are shown only for the custody part")

	// What the first run stored holds no plaintext of an encrypted field.
	data, err := os.ReadFile(filepath.Join(dir, "records.json"))
	require.NoError(t, err)
	for _, secret := range []string{"Ada Lovelace", "ada@example.eu", "+44 20", "1815-12-10", "Grace Hopper"} {
		require.NotContains(t, string(data), secret)
	}
	var stored []User
	require.NoError(t, json.Unmarshal(data, &stored))
	require.Len(t, stored, 3)
	require.True(t, strings.HasPrefix(stored[0].Email, "zk1."))
	require.Equal(t, "pro", stored[0].Plan)

	var second bytes.Buffer
	require.NoError(t, run(ctx, &second, dir))
	out = second.String()
	earlier, _, ok := strings.Cut(out, "== what the application stores")
	require.True(t, ok, out)
	require.Contains(t, earlier, "== 3 records stored by an earlier run, decrypted in this process")
	require.Contains(t, earlier, "u-1001 (eu): Ada Lovelace <ada@example.eu>")
	require.Contains(t, earlier, "u-1002 (eu): Émilie du Châtelet <emilie@example.fr>")
	require.Contains(t, earlier, "u-2001 (us): Grace Hopper <grace@example.com>")
}

// TestRunTempDir: without a directory the tour works in a temporary one and
// removes it.
func TestRunTempDir(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, ""))
	first, _, _ := strings.Cut(out.String(), "\n")
	dir := strings.TrimPrefix(first, "keystore and KEKs in ")
	require.NotEqual(t, first, dir)
	_, err := os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}
