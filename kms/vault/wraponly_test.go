package vault_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// wrapOnlyPolicy is the policy of docs/vault.md, "Moving subjects into a
// zone: the wrap-only role": encrypt under the zone's key, nothing else.
const wrapOnlyPolicy = `
path "transit/encrypt/eu-users" { capabilities = ["update"] }
`

// wrapOnlyRole is the JWT role of the eu Vault for processes attested in
// the us zone's region, with wrapOnlyPolicy.
func wrapOnlyRole() map[string]any {
	return map[string]any{
		"role_type":       "jwt",
		"bound_audiences": []string{audience},
		"user_claim":      "sub",
		"bound_claims":    map[string]any{"region": []string{"us-east1"}},
		"token_policies":  []string{"eu-wrap-only"},
		"token_ttl":       "5m",
		"token_max_ttl":   "10m",
	}
}

// openWrapOnly opens, by URL, a custodian of key eu-users at addr under the
// wrap-only role, as a process of the us zone would.
func openWrapOnly(t *testing.T, addr string) *vault.Custodian {
	t.Helper()
	c, err := kms.Open(t.Context(), "vault://"+hostPort(t, addr)+"/transit/keys/eu-users?auth=jwt&role=eu-wrap-from-us")
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c.(*vault.Custodian)
}

// TestWrapOnlyRole moves a subject from zone us into zone eu: a process
// attested in us-east1 wraps a key for zone eu through the eu Vault, with
// a role that may encrypt under eu's key and do nothing else; an eu
// process unwraps it.
func TestWrapOnlyRole(t *testing.T) {
	z := setupZoneVault(t, "5m")
	root := z.root
	ctx := t.Context()
	require.NoError(t, root.Sys().PutPolicy("eu-wrap-only", wrapOnlyPolicy))
	_, err := root.Logical().Write("auth/jwt/role/eu-wrap-from-us", wrapOnlyRole())
	require.NoError(t, err)
	us := caller(ctx, "us-east1", z.token(t, "us-east1"))
	eu := caller(ctx, "europe-west1", z.token(t, "europe-west1"))
	before, err := root.Logical().Read("transit/keys/eu-users")
	require.NoError(t, err)

	p := newProxy(t, z.srv.Addr)
	wrapOnly := openWrapOnly(t, p.URL)
	b := binding("eu")
	key := randomKey(t)
	w, err := wrapOnly.Wrap(us, key, b)
	require.NoError(t, err, "the us process wraps for zone eu")
	// The check that the key is derived needed the encrypt permission
	// only: the read of the key's settings and the decrypt probe were
	// refused, an encrypt without a context told.
	require.Equal(t, 1, p.count("/v1/transit/keys/eu-users"), "the read, refused")
	require.Equal(t, 1, p.count("/decrypt/eu-users"), "the decrypt probe, refused")
	require.Equal(t, 2, p.count("/encrypt/eu-users"), "the encrypt probe and the wrap")
	p.reset()
	w2, err := wrapOnly.Wrap(us, key, b)
	require.NoError(t, err)
	require.Equal(t, 1, p.count(""), "once checked, a wrap is one request")

	// An eu process unwraps what the us process wrapped.
	inZone := z.openJWT(t, z.srv.Addr, "eu-users")
	for _, w := range []kms.Wrapped{w, w2} {
		got, err := inZone.Unwrap(eu, w, b)
		require.NoError(t, err)
		require.Equal(t, key, got)
	}

	// Everything but wrapping is refused by Vault.
	got, err := wrapOnly.Unwrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, got)
	_, err = wrapOnly.Rewrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)
	_, err = wrapOnly.Rotate(us)
	require.ErrorIs(t, err, kms.ErrDenied)
	_, _, err = wrapOnly.KEKVersions(us)
	require.ErrorIs(t, err, kms.ErrDenied)
	require.ErrorIs(t, wrapOnly.RetireBelow(us, 1), kms.ErrDenied)
	require.ErrorIs(t, wrapOnly.DestroyBelow(us, 1), kms.ErrDenied)
	require.ErrorIs(t, wrapOnly.Destroy(us), kms.ErrDenied)
	require.ErrorIs(t, wrapOnly.CreateKey(us), kms.ErrDenied)
	results, err := wrapOnly.UnwrapBatch(us, []vault.UnwrapRequest{{Wrapped: w, Binding: b}})
	require.ErrorIs(t, err, kms.ErrDenied)
	require.Nil(t, results)
	// Batches of wraps are wraps.
	wrapped, err := wrapOnly.WrapBatch(us, []vault.WrapRequest{{Key: key, Binding: b}})
	require.NoError(t, err)
	require.Len(t, wrapped, 1)
	require.NoError(t, wrapped[0].Err)
	got, err = inZone.Unwrap(eu, wrapped[0].Wrapped, b)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// None of it changed the key.
	after, err := root.Logical().Read("transit/keys/eu-users")
	require.NoError(t, err)
	require.Equal(t, before.Data, after.Data, "the wrap-only role changed the key")

	// The role is for the us region only, and the eu role is not for it.
	_, err = wrapOnly.Wrap(eu, key, b)
	require.ErrorIs(t, err, kms.ErrDenied, "an eu process has its own role")
	require.ErrorContains(t, err, "JWT login")
	_, err = inZone.Wrap(us, key, b)
	require.ErrorIs(t, err, kms.ErrDenied, "a us process may not use the eu role")
	_, err = inZone.Unwrap(us, w, b)
	require.ErrorIs(t, err, kms.ErrDenied)

	// The role wraps under eu-users only, not under another key of the
	// same Vault.
	other, err := vault.Open(ctx, vault.Config{Address: z.srv.Addr, Key: "us-users", Auth: vault.AuthJWT, Role: "eu-wrap-from-us"})
	require.NoError(t, err)
	defer other.Close()
	_, err = other.Wrap(us, key, b)
	require.ErrorIs(t, err, kms.ErrDenied)
}
