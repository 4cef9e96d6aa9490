package vault_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// TestDestroy destroys a key whose deletion_allowed is false, and checks
// that the custodian uses nothing of that name afterwards, without even
// asking Vault.
func TestDestroy(t *testing.T) {
	srv, root := startVault(t)
	createKey(t, root, "eu-users", true)
	p := newProxy(t, srv.Addr)
	c := openToken(t, p.URL, srv.Token, "eu-users")
	ctx := t.Context()
	b := binding("eu")
	w1, err := c.Wrap(ctx, randomKey(t), b)
	require.NoError(t, err)
	_, err = c.Rotate(ctx)
	require.NoError(t, err)
	w2, err := c.Wrap(ctx, randomKey(t), b)
	require.NoError(t, err)
	require.Equal(t, uint32(2), w2.KEKVersion)

	p.reset()
	require.NoError(t, c.Destroy(ctx))
	require.Equal(t, 2, p.count("/v1/transit/keys/eu-users"), "a delete refused (deletion_allowed=false), then the delete")
	require.Equal(t, 1, p.count("/v1/transit/keys/eu-users/config"), "deletion_allowed=true")
	requireNoKey(t, root, "eu-users", "after Destroy")

	p.reset()
	for _, w := range []kms.Wrapped{w1, w2} {
		got, err := c.Unwrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		require.Nil(t, got)
		_, err = c.Rewrap(ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
	}
	w, err := c.Wrap(ctx, randomKey(t), b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.ErrorContains(t, err, "destroyed")
	require.Empty(t, w.Ciphertext)
	_, err = c.WrapBatch(ctx, []vault.WrapRequest{{Key: randomKey(t), Binding: b}})
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c.UnwrapBatch(ctx, []vault.UnwrapRequest{{Wrapped: w1, Binding: b}})
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c.Rotate(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, _, err = c.KEKVersions(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.ErrorIs(t, c.RetireBelow(ctx, 1), kms.ErrUnknownKey)
	require.ErrorIs(t, c.DestroyBelow(ctx, 1), kms.ErrUnknownKey)
	require.ErrorIs(t, c.CreateKey(ctx), kms.ErrUnknownKey, "the custodian must not create the destroyed key anew")
	require.Zero(t, p.count(""), "a destroyed custodian asks Vault nothing")
	requireNoKey(t, root, "eu-users", "after using the destroyed custodian with the root token")

	// Again: Vault answers that there is no such key, which is success.
	require.NoError(t, c.Destroy(ctx))
	require.Equal(t, 1, p.count("/v1/transit/keys/eu-users"))

	// A custodian opened now, with a token that may create keys, finds
	// the key missing before anything could create it.
	c2 := openToken(t, srv.Addr, srv.Token, "eu-users")
	_, err = c2.Wrap(ctx, randomKey(t), b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c2.Unwrap(ctx, w2, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = c2.Rotate(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.NoError(t, c2.Destroy(ctx))
	requireNoKey(t, root, "eu-users", "after a fresh custodian's calls")

	// A key whose deletion is allowed already is deleted at once.
	createKey(t, root, "us-users", true)
	_, err = root.Logical().Write("transit/keys/us-users/config", map[string]any{"deletion_allowed": true})
	require.NoError(t, err)
	us := openToken(t, p.URL, srv.Token, "us-users")
	p.reset()
	require.NoError(t, us.Destroy(ctx))
	require.Equal(t, 1, p.count("/v1/transit/keys/us-users"))
	require.Zero(t, p.count("/config"))
	requireNoKey(t, root, "us-users", "after Destroy")

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, openToken(t, srv.Addr, srv.Token, "eu-users").Destroy(canceled), context.Canceled)
}

// TestDestroyPermissions checks that a token without the delete
// capability changes nothing, not even deletion_allowed, and that delete
// and config together are enough.
func TestDestroyPermissions(t *testing.T) {
	srv, root := startVault(t)
	ctx := t.Context()
	createKey(t, root, "eu-users", true)
	custodian := tokenWithPolicy(t, root, "eu-custodian", `
path "transit/keys/eu-users"        { capabilities = ["create", "update", "read"] }
path "transit/keys/eu-users/rotate" { capabilities = ["update"] }
path "transit/keys/eu-users/config" { capabilities = ["update"] }
path "transit/keys/eu-users/trim"   { capabilities = ["update"] }
`)
	deleteOnly := tokenWithPolicy(t, root, "eu-delete-only", `
path "transit/keys/eu-users" { capabilities = ["delete"] }
`)
	shred := tokenWithPolicy(t, root, "eu-shred", `
path "transit/keys/eu-users"        { capabilities = ["delete"] }
path "transit/keys/eu-users/config" { capabilities = ["update"] }
`)
	deletionAllowed := func() any {
		s, err := root.Logical().Read("transit/keys/eu-users")
		require.NoError(t, err)
		require.NotNil(t, s, "the key is gone")
		return s.Data["deletion_allowed"]
	}

	err := openToken(t, srv.Addr, custodian, "eu-users").Destroy(ctx)
	require.ErrorIs(t, err, kms.ErrDenied, "no delete capability")
	require.Equal(t, false, deletionAllowed(), "a refused Destroy changed deletion_allowed")

	err = openToken(t, srv.Addr, deleteOnly, "eu-users").Destroy(ctx)
	require.ErrorIs(t, err, kms.ErrDenied, "delete, but not config")
	require.Equal(t, false, deletionAllowed())

	c := openToken(t, srv.Addr, shred, "eu-users")
	require.NoError(t, c.Destroy(ctx))
	requireNoKey(t, root, "eu-users", "after Destroy")
	require.NoError(t, c.Destroy(ctx), "again")
	require.NoError(t, openToken(t, srv.Addr, deleteOnly, "eu-users").Destroy(ctx), "a missing key needs delete only")
}

// TestDestroyElsewhere records what other custodians of the key (other
// processes) see once one has destroyed it, depending on what their token
// may do, and what Vault does with their requests. The one hazard is
// Vault's upsert: an encrypt with a token that may create keys re-creates
// a missing key. docs/vault.md describes these cases.
func TestDestroyElsewhere(t *testing.T) {
	z := setupZoneVault(t, "5m")
	root := z.root
	ctx := t.Context()
	eu := caller(ctx, "europe-west1", z.token(t, "europe-west1"))
	require.NoError(t, root.Sys().PutPolicy("eu-wrap-only", wrapOnlyPolicy))
	_, err := root.Logical().Write("auth/jwt/role/eu-wrap-from-us", wrapOnlyRole())
	require.NoError(t, err)
	us := caller(ctx, "us-east1", z.token(t, "us-east1"))
	require.NoError(t, openToken(t, z.srv.Addr, z.srv.Token, "eu-users").Destroy(ctx), "the key setupZoneVault made")

	// Each case destroys a fresh eu-users after the other custodian has
	// used it (so it has checked the key already).
	type other struct {
		c   *vault.Custodian
		ctx context.Context
	}
	setUp := func(t *testing.T, open func() other) (other, kms.Wrapped, kms.Binding) {
		t.Helper()
		requireNoKey(t, root, "eu-users", "before the case")
		createKey(t, root, "eu-users", true)
		o := open()
		b := binding("eu")
		w, err := o.c.Wrap(o.ctx, randomKey(t), b)
		require.NoError(t, err)
		admin := openToken(t, z.srv.Addr, z.srv.Token, "eu-users")
		require.NoError(t, admin.Destroy(ctx))
		t.Cleanup(func() {
			// Whatever the case left, for the next one.
			c, err := vault.Open(context.Background(), vault.Config{Address: z.srv.Addr, Token: z.srv.Token, Key: "eu-users"})
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.Destroy(context.Background()))
		})
		return o, w, b
	}
	rootOther := func() other { return other{openToken(t, z.srv.Addr, z.srv.Token, "eu-users"), ctx} }

	t.Run("application role", func(t *testing.T) {
		// The eu role's policy allows update on encrypt, decrypt and
		// rewrap, not create. Vault treats an encrypt for a missing key as
		// a create and refuses it (403); the driver checks the key again
		// and reports it missing.
		o, w, b := setUp(t, func() other { return other{z.openJWT(t, z.srv.Addr, "eu-users"), eu} })
		_, err := o.c.Wrap(o.ctx, randomKey(t), b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		_, err = o.c.Unwrap(o.ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		_, err = o.c.Rewrap(o.ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		requireNoKey(t, root, "eu-users", "after the application's calls")
	})

	t.Run("wrap-only role", func(t *testing.T) {
		// Encrypt only: the 403 for the missing key cannot be told from a
		// refusal, and is reported as one.
		o, _, b := setUp(t, func() other { return other{openWrapOnly(t, z.srv.Addr), us} })
		_, err := o.c.Wrap(o.ctx, randomKey(t), b)
		require.ErrorIs(t, err, kms.ErrDenied)
		requireNoKey(t, root, "eu-users", "after the wrap-only caller's calls")
	})

	t.Run("token that may create, unwrap first", func(t *testing.T) {
		// Vault answers the decrypt "encryption key not found"; from then
		// on the driver checks the key before using it again, and finds
		// it missing before anything could create it.
		o, w, b := setUp(t, rootOther)
		_, err := o.c.Unwrap(o.ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		_, err = o.c.Wrap(o.ctx, randomKey(t), b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		requireNoKey(t, root, "eu-users", "after the checked wrap")
	})

	t.Run("token that may create, wrap first", func(t *testing.T) {
		// The hazard: Vault's encrypt upserts a new derived key of the
		// same name, and the wrap succeeds under it. Nothing wrapped
		// before unwraps under the new key.
		o, w, b := setUp(t, rootOther)
		key := randomKey(t)
		w2, err := o.c.Wrap(o.ctx, key, b)
		require.NoError(t, err, "Vault re-created the key (upsert)")
		s, err := root.Logical().Read("transit/keys/eu-users")
		require.NoError(t, err)
		require.NotNil(t, s, "the upsert created a key")
		require.Equal(t, true, s.Data["derived"], "an upsert with a context makes a derived key")
		require.Equal(t, uint32(1), w2.KEKVersion)
		_, err = o.c.Unwrap(o.ctx, w, b)
		require.ErrorIs(t, err, kms.ErrTampered, "the old wrap under the new key of the same name")
		got, err := o.c.Unwrap(o.ctx, w2, b)
		require.NoError(t, err)
		require.Equal(t, key, got)
	})

	t.Run("token that may create, upserts disabled", func(t *testing.T) {
		// With transit/config/keys disable_upsert=true, Vault answers an
		// encrypt for a missing key "encryption key not found".
		_, err := root.Logical().Write("transit/config/keys", map[string]any{"disable_upsert": true})
		require.NoError(t, err)
		defer func() {
			_, err := root.Logical().Write("transit/config/keys", map[string]any{"disable_upsert": false})
			require.NoError(t, err)
		}()
		o, w, b := setUp(t, rootOther)
		_, err = o.c.Wrap(o.ctx, randomKey(t), b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		requireNoKey(t, root, "eu-users", "after a wrap with upserts disabled")
		_, err = o.c.Unwrap(o.ctx, w, b)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
	})
}
