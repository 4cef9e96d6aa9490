package gcpkms_test

import (
	"context"
	"testing"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/gcpkms"
	"github.com/zonekey/zonekey/kms/gcpkms/internal/kmsserver"
)

// TestDestroy destroys a key with versions in every state Destroy meets,
// under an organization policy that requires disabling first.
func TestDestroy(t *testing.T) {
	s := startServer(t)
	keyName := newKey(t, s)
	c := open(t, s, keyName)
	ctx := t.Context()
	s.RequireDisableBeforeDestroy(true)

	var ws []kms.Wrapped
	for i := range 4 {
		if i > 0 {
			_, err := c.Rotate(ctx)
			require.NoError(t, err)
		}
		w, err := c.Wrap(ctx, randomKey(t), bind)
		require.NoError(t, err)
		ws = append(ws, w)
	}
	require.NoError(t, c.DestroyBelow(ctx, 2)) // version 1 scheduled for destruction
	require.NoError(t, c.RetireBelow(ctx, 3))  // version 2 disabled; 3 and 4 enabled
	other := open(t, s, keyName)               // another process, opened before

	s.ResetCounters()
	require.NoError(t, c.Destroy(ctx))
	for v := uint32(1); v <= 4; v++ {
		require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(keyName, v), "version %d", v)
	}
	require.Equal(t, 3, s.Calls(kmsserver.DestroyCryptoKeyVersion), "versions 2, 3 and 4")
	require.Equal(t, 2, s.Calls(kmsserver.UpdateCryptoKeyVersion), "versions 3 and 4 disabled first")

	for _, cust := range []*gcpkms.Custodian{c, other, open(t, s, keyName)} {
		for _, w := range ws {
			_, err := cust.Unwrap(ctx, w, bind)
			require.ErrorIs(t, err, kms.ErrUnknownKey)
		}
		_, err := cust.Wrap(ctx, randomKey(t), bind)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		s.ResetCounters()
		_, err = cust.Rotate(ctx)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		require.ErrorContains(t, err, "every version of the key is destroyed")
		require.Zero(t, s.Calls(kmsserver.CreateCryptoKeyVersion), "Rotate must not give a destroyed key a new version")
		_, _, err = cust.KEKVersions(ctx)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		require.ErrorIs(t, cust.RetireBelow(ctx, 1), kms.ErrUnknownKey)
		require.ErrorIs(t, cust.DestroyBelow(ctx, 1), kms.ErrUnknownKey)
	}

	// Again, here and elsewhere: nothing to do.
	s.ResetCounters()
	require.NoError(t, c.Destroy(ctx))
	require.NoError(t, other.Destroy(ctx))
	require.Zero(t, s.Calls(kmsserver.DestroyCryptoKeyVersion))
	require.Zero(t, s.Calls(kmsserver.UpdateCryptoKeyVersion))

	s.ExpireDestruction()
	for v := uint32(1); v <= 4; v++ {
		require.Equal(t, kmspb.CryptoKeyVersion_DESTROYED, s.VersionState(keyName, v), "version %d", v)
	}
	require.NoError(t, c.Destroy(ctx))
	_, err := c.Unwrap(ctx, ws[3], bind)
	require.ErrorIs(t, err, kms.ErrUnknownKey)

	require.NoError(t, c.Close())
	require.ErrorIs(t, c.Destroy(ctx), errs.Closed)
}

// TestDestroyRestored checks that the destruction is Cloud KMS's state,
// not the custodian's: within destroy_scheduled_duration an administrator
// can restore a version, and the key then works again.
func TestDestroyRestored(t *testing.T) {
	s, c := newCustodian(t)
	ctx := t.Context()
	key := randomKey(t)
	w, err := c.Wrap(ctx, key, bind)
	require.NoError(t, err)
	require.NoError(t, c.Destroy(ctx))

	admin, err := kmsapi.NewKeyManagementClient(ctx, s.ClientOptions()...)
	require.NoError(t, err)
	defer admin.Close()
	name := c.KeyName() + "/cryptoKeyVersions/1"
	_, err = admin.RestoreCryptoKeyVersion(ctx, &kmspb.RestoreCryptoKeyVersionRequest{Name: name})
	require.NoError(t, err)
	_, _, err = c.KEKVersions(ctx)
	require.NoError(t, err, "a restored (disabled) version: the key is no longer destroyed")
	require.NoError(t, c.RetireBelow(ctx, 1), "re-enables it")
	got, err := c.Unwrap(ctx, w, bind)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

// TestDestroyPending checks a version still being generated: Destroy
// destroys the others, says to come back, and finishes the next time.
func TestDestroyPending(t *testing.T) {
	s, c := newCustodian(t)
	ctx := t.Context()
	admin, err := kmsapi.NewKeyManagementClient(ctx, s.ClientOptions()...)
	require.NoError(t, err)
	defer admin.Close()
	s.SetPendingGeneration(true)
	v, err := admin.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: c.KeyName(), CryptoKeyVersion: &kmspb.CryptoKeyVersion{}})
	require.NoError(t, err)
	require.Equal(t, kmspb.CryptoKeyVersion_PENDING_GENERATION, v.GetState())

	err = c.Destroy(ctx)
	require.ErrorIs(t, err, kms.ErrUnavailable)
	require.ErrorContains(t, err, "call Destroy again")
	require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(c.KeyName(), 1))
	_, _, err = c.KEKVersions(ctx)
	require.NoError(t, err, "not destroyed while a version is pending")

	// The server generates a pending version once it is read.
	_, err = admin.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: v.GetName()})
	require.NoError(t, err)
	require.NoError(t, c.Destroy(ctx))
	require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(c.KeyName(), 2))
	_, _, err = c.KEKVersions(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
}

// TestDestroyFailures checks failures part-way: a refusal stops Destroy
// with the sentinel, a lost response is retried, and calling Destroy again
// finishes the work.
func TestDestroyFailures(t *testing.T) {
	s := startServer(t)
	keyName := newKey(t, s)
	c := open(t, s, keyName)
	ctx := t.Context()
	for range 2 {
		_, err := c.Rotate(ctx)
		require.NoError(t, err)
	}

	s.InjectFaults(kmsserver.ListCryptoKeyVersions, codes.PermissionDenied)
	require.ErrorIs(t, c.Destroy(ctx), kms.ErrDenied)

	s.InjectFaults(kmsserver.DestroyCryptoKeyVersion, codes.PermissionDenied)
	err := c.Destroy(ctx)
	require.ErrorIs(t, err, kms.ErrDenied)
	w, werr := c.Wrap(ctx, randomKey(t), bind)
	require.ErrorIs(t, werr, kms.ErrUnknownKey, "every version was disabled before any destruction")
	require.Empty(t, w.Ciphertext)

	s.LoseResponses(kmsserver.DestroyCryptoKeyVersion, 1)
	require.NoError(t, c.Destroy(ctx))
	for v := uint32(1); v <= 3; v++ {
		require.Equal(t, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, s.VersionState(keyName, v), "version %d", v)
	}

	s.InjectFaults(kmsserver.ListCryptoKeyVersions, codes.Unavailable)
	require.NoError(t, c.Destroy(ctx), "a transient failure is retried")

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, c.Destroy(canceled), context.Canceled)
}
