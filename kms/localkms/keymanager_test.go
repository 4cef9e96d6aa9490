package localkms_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

func TestKeyManager(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "eu.kek")
	c, err := localkms.Open(path, localkms.WithCreate())
	require.NoError(t, err)
	defer c.Close()
	var km kms.KeyManager = c

	b := kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}
	key := []byte("0123456789abcdef0123456789abcdef")
	w1, err := c.Wrap(ctx, key, b)
	require.NoError(t, err)
	require.Equal(t, uint32(1), w1.KEKVersion)

	v2, err := km.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v2)
	minLive, primary, err := km.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint32{1, 2}, [2]uint32{minLive, primary})

	w2, err := km.Rewrap(ctx, w1, b)
	require.NoError(t, err)
	require.Equal(t, uint32(2), w2.KEKVersion)
	got, err := c.Unwrap(ctx, w2, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
	_, err = km.Rewrap(ctx, w1, kms.Binding{Zone: "us", KeyID: "zk-1", Version: 1})
	require.ErrorIs(t, err, kms.ErrTampered, "rewrap keeps the binding")

	// Retiring is recorded in the file and reversible.
	require.NoError(t, km.RetireBelow(ctx, 2))
	_, err = c.Unwrap(ctx, w1, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	reopened, err := localkms.Open(path)
	require.NoError(t, err)
	_, err = reopened.Unwrap(ctx, w1, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey, "the retirement survives a reopen")
	require.NoError(t, reopened.Close())
	minLive, _, err = km.KEKVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), minLive)
	require.NoError(t, km.RetireBelow(ctx, 1))
	_, err = c.Unwrap(ctx, w1, b)
	require.NoError(t, err)

	require.ErrorIs(t, km.RetireBelow(ctx, 3), errs.InvalidValue, "the primary version cannot be retired")

	// Destroying is final.
	require.NoError(t, km.DestroyBelow(ctx, 2))
	require.NoError(t, km.RetireBelow(ctx, 1))
	_, err = c.Unwrap(ctx, w1, b)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	got, err = c.Unwrap(ctx, w2, b)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

// TestConcurrentRotationsOfOneFile: custodians that share a KEK file (as
// processes on one host would) serialise their changes through the file
// lock, so no rotation loses another's new version.
func TestConcurrentRotationsOfOneFile(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "eu.kek")
	require.NoError(t, localkms.CreateKEKFile(path))
	const custodians, rotations = 4, 10
	got := make(chan uint32, custodians*rotations)
	errc := make(chan error, custodians)
	for range custodians {
		c, err := localkms.Open(path)
		require.NoError(t, err)
		defer c.Close()
		go func() {
			for range rotations {
				v, err := c.Rotate(ctx)
				if err != nil {
					errc <- err
					return
				}
				got <- v
			}
			errc <- nil
		}()
	}
	for range custodians {
		require.NoError(t, <-errc)
	}
	close(got)
	seen := map[uint32]bool{}
	for v := range got {
		require.False(t, seen[v], "version %d was handed out twice", v)
		seen[v] = true
	}
	c, err := localkms.Open(path)
	require.NoError(t, err)
	defer c.Close()
	require.Len(t, c.Versions(), 1+custodians*rotations, "every rotation's version is in the file")
	for v := range seen {
		require.Contains(t, c.Versions(), v)
	}
}
