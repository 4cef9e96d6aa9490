package keystore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/vaulttest"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// vaultZone is a zone's Vault: the server, a custodian with the root token
// (the zone's own processes), and a custodian whose token may only wrap
// (encrypt) under the zone's key, as the other zone's processes get it for
// moving subjects in.
type vaultZone struct {
	srv      *vaulttest.Server
	admin    *vault.Custodian
	wrapOnly *vault.Custodian
}

func newVaultZone(t *testing.T, zone string) *vaultZone {
	t.Helper()
	srv := vaulttest.Start(t)
	srv.EnableTransit(t)
	key := zone + "-users"
	open := func(token string, create bool) *vault.Custodian {
		c, err := vault.Open(t.Context(), vault.Config{Address: srv.Addr, Key: key, Token: token, Create: create})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	admin := open(srv.Token, true)
	client := srv.Client(t)
	policy := fmt.Sprintf(`
path "transit/encrypt/%[1]s" { capabilities = ["update"] }
`, key)
	require.NoError(t, client.Sys().PutPolicy("wrap-only", policy))
	secret, err := client.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"wrap-only"}, NoDefaultPolicy: true})
	require.NoError(t, err)
	return &vaultZone{srv: srv, admin: admin, wrapOnly: open(secret.Auth.ClientToken, false)}
}

// TestLifecycleWithVault runs a move, a shred and the epochs of both zones
// against two real Vault servers, one per zone: the custodian itself
// refuses what the SDK would, and the epoch's destroy is Vault's trim.
func TestLifecycleWithVault(t *testing.T) {
	eu, us := newVaultZone(t, "eu"), newVaultZone(t, "us")
	dir := t.TempDir()
	path := filepath.Join(dir, "keystore.db")
	bs, err := boltstore.Open(path, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bs.Close() })
	clk := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	keyring := func(store keystore.Store, policy keystore.Policy, cs map[string]kms.Custodian) *keystore.Keyring {
		k, err := keystore.New(keystore.Config{Store: store, Custodians: cs, Policy: policy, Now: clk.Now})
		require.NoError(t, err)
		t.Cleanup(func() { _ = k.Close() })
		return k
	}
	inEU := map[string]kms.Custodian{"eu": eu.admin, "us": us.wrapOnly}
	inUS := map[string]kms.Custodian{"eu": eu.wrapOnly, "us": us.admin}
	procEU := keyring(bs, zonePolicy{"eu": true}, inEU)
	procUS := keyring(bs, zonePolicy{"us": true}, inUS)

	alice := makeDEKs(t, procEU, "eu", "alice", 1)
	bob := makeDEKs(t, procEU, "eu", "bob", 1)
	carol := makeDEKs(t, procEU, "eu", "carol", 1)
	backup := filepath.Join(dir, "backup.db")
	copyFile(t, path, backup)

	// Move alice to us: the eu process wraps for us with a wrap-only token.
	_, err = procEU.MoveSubject(t.Context(), "alice-00000", "eu", "us")
	require.NoError(t, err)
	requireRefused(t, procEU, alice, keystore.ErrOutsideCustody, "the SDK's check in eu")
	// With the SDK's check out of the picture, us's Vault refuses the eu
	// process's token: it may wrap, not unwrap.
	bypass := keyring(bs, nil, inEU)
	requireRefused(t, bypass, alice, kms.ErrDenied, "us's Vault, for the eu process")
	requireOpens(t, procUS, alice, "the us process")
	requireRefused(t, keyring(bs, nil, inEU), alice, kms.ErrDenied, "us's Vault, after adoption")

	// Shred bob, then eu's epoch: rotate, rewrap, trim.
	_, err = procEU.ShredSubject(t.Context(), "eu", "bob-00000")
	require.NoError(t, err)
	res, err := procEU.Epoch(t.Context(), "eu", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.KEKVersion)
	minLive, primary, err := eu.admin.KEKVersions(t.Context())
	require.NoError(t, err)
	require.Equal(t, [2]uint32{2, 2}, [2]uint32{minLive, primary})
	_, err = procUS.Epoch(t.Context(), "us", keystore.EpochOptions{Settle: -1})
	require.NoError(t, err)

	// The backup, restored beside the live Vaults with their root tokens:
	// nothing of eu opens, the moved subject neither.
	rs, err := boltstore.Open(backup, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rs.Close() })
	restored := keyring(rs, nil, map[string]kms.Custodian{"eu": eu.admin, "us": us.admin})
	for _, recs := range [][]sealed{alice, bob, carol} {
		requireRefused(t, restored, recs, kms.ErrUnknownKey, "the backup after the epoch")
	}
	// The live keystore: carol in eu, alice in us, bob shredded.
	requireOpens(t, keyring(bs, zonePolicy{"eu": true}, inEU), carol, "eu, live")
	requireOpens(t, keyring(bs, zonePolicy{"us": true}, inUS), alice, "us, live")
	requireRefused(t, keyring(bs, nil, inEU), bob, keystore.ErrKeyShredded, "shredded")
}

// The zone shred destroys the Transit key: nothing of the zone opens again.
func TestShredZoneWithVault(t *testing.T) {
	eu := newVaultZone(t, "eu")
	bs, err := boltstore.Open(filepath.Join(t.TempDir(), "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bs.Close() })
	k, err := keystore.New(keystore.Config{Store: bs, Custodians: map[string]kms.Custodian{"eu": eu.admin}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	recs := makeDEKs(t, k, "eu", "s", 2)
	_, err = k.ShredZone(t.Context(), "eu", "eu")
	require.NoError(t, err)
	// A fresh custodian and keyring, as another process would open them.
	c, err := vault.Open(context.Background(), vault.Config{Address: eu.srv.Addr, Key: "eu-users", Token: eu.srv.Token})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	k2, err := keystore.New(keystore.Config{Store: bs, Custodians: map[string]kms.Custodian{"eu": c}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = k2.Close() })
	requireRefused(t, k2, recs, keystore.ErrKeyShredded, "after the zone shred")
	// Running it again (after a lost answer, say) finds the key gone and
	// the zone shredded: done.
	_, err = k.ShredZone(t.Context(), "eu", "eu")
	require.NoError(t, err, "a repeated zone shred")
}

// TestShredZoneNoSuchKEK: a zone whose KEK URL names a key that does not
// exist at the custodian (a typo, another Vault) is not reported shredded:
// the shred refuses with kms.ErrUnknownKey and writes nothing.
func TestShredZoneNoSuchKEK(t *testing.T) {
	eu := newVaultZone(t, "eu")
	c, err := vault.Open(context.Background(), vault.Config{Address: eu.srv.Addr, Key: "eu-userz", Token: eu.srv.Token})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	bs, err := boltstore.Open(filepath.Join(t.TempDir(), "keystore.db"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bs.Close() })
	k, err := keystore.New(keystore.Config{Store: bs, Custodians: map[string]kms.Custodian{"eu": c}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	_, err = k.ShredZone(t.Context(), "eu", "eu")
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.ErrorContains(t, err, "check the zone's KEK URL")
	_, err = bs.Tombstone(t.Context(), "eu", "")
	require.ErrorIs(t, err, keystore.ErrUnknownKey, "no tombstone written")
}
