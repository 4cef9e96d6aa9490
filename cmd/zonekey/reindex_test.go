package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The command table in main.go lists reindex; until it does, the tests add
// it themselves.
type indexedUser struct {
	ID       string `zonekey:"subject"`
	Region   string `zonekey:"zone"`
	Email    string `zonekey:"encrypt"`
	EmailIdx string `zonekey:"index=Email,lower"`
	TaxID    string `zonekey:"encrypt,deterministic"`
}

func TestReindexCommand(t *testing.T) {
	e := newKeyEnv(t)
	ctx := t.Context()
	status := func(args ...string) map[string]any {
		t.Helper()
		code, got := cliJSON(t, append([]string{"reindex", "--config", e.config, "--zone", "eu"}, args...)...)
		require.Equal(t, 0, code, got)
		require.Equal(t, true, got["ok"])
		return got
	}

	// No key yet: status creates nothing.
	got := status("--index", "EmailIdx")
	require.Equal(t, []any{}, got["live"])
	require.Equal(t, "status", got["operation"])
	require.Equal(t, "index", got["purpose"])

	// The application writes a record: version 1.
	app := e.client(t)
	u := &indexedUser{ID: "u-1", Region: "eu", Email: "Alice@example.com", TaxID: "T-1"}
	require.NoError(t, app.Encrypt(ctx, u))
	require.True(t, strings.HasPrefix(u.EmailIdx, "1:"))
	require.NoError(t, app.Close())

	// 1. The custodian starts a new version.
	got = status("--index", "EmailIdx", "--start")
	require.Equal(t, []any{2.0, 1.0}, got["live"])
	code, stdout, stderr := cli("reindex", "--config", e.config, "--zone", "eu", "--index", "EmailIdx")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "current version 2; live versions [2 1]")
	require.Contains(t, stdout, "--retire-through 1")

	// 2. The application re-indexes its records; lookups find them
	// throughout.
	app = e.client(t)
	terms, err := app.IndexTerms(ctx, "eu", indexedUser{}, "EmailIdx", "alice@example.com")
	require.NoError(t, err)
	require.Len(t, terms, 2)
	require.Contains(t, terms, u.EmailIdx)
	changed, err := app.Reindex(ctx, u)
	require.NoError(t, err)
	require.True(t, changed)
	require.True(t, strings.HasPrefix(u.EmailIdx, "2:"))
	require.NoError(t, app.Close())

	// 3. The custodian retires version 1.
	got = status("--index", "EmailIdx", "--retire-through", "1")
	require.Equal(t, []any{2.0}, got["live"])
	require.Equal(t, 1.0, got["retired_through"])
	app = e.client(t)
	terms, err = app.IndexTerms(ctx, "eu", indexedUser{}, "EmailIdx", "alice@example.com")
	require.NoError(t, err)
	require.Equal(t, []string{u.EmailIdx}, terms)
	require.NoError(t, app.Close())

	// The current version cannot be retired.
	code, got = cliJSON(t, "reindex", "--config", e.config, "--zone", "eu", "--index", "EmailIdx", "--retire-through", "2")
	require.Equal(t, 1, code)
	require.Equal(t, false, got["ok"])
	require.Equal(t, "invalid_value", got["error_kind"])

	// Deterministic keys work the same way.
	got = status("--deterministic", "TaxID", "--start")
	require.Equal(t, []any{2.0, 1.0}, got["live"])
	require.Equal(t, "det", got["purpose"])

	// Starting a key that had no version makes version 1: nothing to
	// re-index, and no retire command to suggest.
	code, stdout, stderr = cli("reindex", "--config", e.config, "--zone", "eu", "--index", "PhoneIdx", "--start")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "current version 1")
	require.Contains(t, stdout, "nothing to re-index")
	require.NotContains(t, stdout, "--retire-through")
}

func TestReindexUsage(t *testing.T) {
	e := newKeyEnv(t)
	for _, args := range [][]string{
		{"--index", "EmailIdx"},
		{"--zone", "eu"},
		{"--zone", "eu", "--index", "A", "--deterministic", "B"},
		{"--zone", "eu", "--index", "A", "--start", "--retire-through", "1"},
		{"--zone", "eu", "--index", "A", "--retire-through", "0"},
		{"--zone", "eu", "--index", "A", "extra"},
	} {
		code, _, stderr := cli(append([]string{"reindex", "--config", e.config}, args...)...)
		require.Equal(t, exitUsage, code, "%v: %s", args, stderr)
	}
	code, _, stderr := cli("reindex", "--config", e.config, "--zone", "mars", "--index", "A")
	require.Equal(t, exitFail, code)
	require.Contains(t, stderr, "mars")
}
