package localkms_test

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

// TestDestroy checks what Destroy leaves in the file, and that nothing
// makes a new KEK in place of the destroyed one.
func TestDestroy(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	c := open(t, path)
	_, w1 := wrap(t, c)
	_, err := c.Rotate(ctx)
	require.NoError(t, err)
	_, w2 := wrap(t, c)
	require.NoError(t, c.RetireBelow(ctx, 2))
	var oldKeys []string
	for _, v := range readFileJSON(t, path).Versions {
		oldKeys = append(oldKeys, base64.StdEncoding.EncodeToString(v.Key))
	}
	require.Len(t, oldKeys, 2)
	// A custodian of the same file, opened before the destruction.
	stale := open(t, path)

	start := time.Now().UTC().Truncate(time.Second)
	require.NoError(t, c.Destroy(ctx))
	require.Empty(t, c.Versions())
	requireMode(t, path, 0o600)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, k := range oldKeys {
		require.NotContains(t, string(raw), k, "the file still holds a KEK version")
	}
	var f struct {
		Format    string            `json:"format"`
		Primary   uint32            `json:"primary"`
		Destroyed time.Time         `json:"destroyed"`
		Versions  []json.RawMessage `json:"versions"`
	}
	require.NoError(t, json.Unmarshal(raw, &f))
	require.Equal(t, localkms.Format, f.Format)
	require.Zero(t, f.Primary)
	require.NotNil(t, f.Versions)
	require.Empty(t, f.Versions)
	require.False(t, f.Destroyed.Before(start), "destroyed %v, before the call at %v", f.Destroyed, start)
	require.NotContains(t, string(raw), "min_decrypt")

	for _, w := range []kms.Wrapped{w1, w2} {
		_, err = c.Unwrap(ctx, w, testBinding)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		require.ErrorContains(t, err, "destroyed")
	}
	_, err = c.Wrap(ctx, make([]byte, 32), testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	// Bad input is still reported as such.
	_, err = c.Wrap(ctx, nil, testBinding)
	require.ErrorIs(t, err, errs.InvalidValue)

	// Destroying again changes nothing, not even the time.
	require.NoError(t, c.Destroy(ctx))
	again, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, raw, again)

	// Neither opening nor create=1 makes a new KEK.
	for _, reopen := range []func() (kms.Custodian, error){
		func() (kms.Custodian, error) { return localkms.Open(path) },
		func() (kms.Custodian, error) { return localkms.Open(path, localkms.WithCreate()) },
		func() (kms.Custodian, error) { return kms.Open(ctx, "local://"+filepath.ToSlash(path)+"?create=1") },
	} {
		c2, err := reopen()
		require.NoError(t, err, "a destroyed KEK file opens")
		_, err = c2.Wrap(ctx, make([]byte, 32), testBinding)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		_, err = c2.(kms.KeyManager).Rotate(ctx)
		require.ErrorIs(t, err, kms.ErrUnknownKey)
		require.NoError(t, c2.Close())
	}
	now, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, raw, now, "reopening changed the destroyed file")
	require.ErrorIs(t, localkms.CreateKEKFile(path), os.ErrExist, "CreateKEKFile must not replace a destroyed KEK")

	// A custodian that read the file before finds it replaced at its next
	// Unwrap, re-reads it, and refuses too; so do its changes.
	require.Equal(t, []uint32{1, 2}, stale.Versions(), "the stale custodian has read nothing yet")
	_, err = stale.Unwrap(ctx, w2, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey, "the stale custodian re-reads the replaced file")
	require.ErrorContains(t, err, "destroyed")
	_, err = stale.Rotate(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.ErrorIs(t, stale.DestroyBelow(ctx, 1), kms.ErrUnknownKey)
	require.ErrorIs(t, stale.RetireBelow(ctx, 1), kms.ErrUnknownKey)
	_, err = stale.Unwrap(ctx, w2, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = stale.Wrap(ctx, make([]byte, 32), testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, _, err = stale.KEKVersions(ctx)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	require.Empty(t, stale.Versions())
	now, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, raw, now, "a stale custodian's change reached the destroyed file")

	require.NoError(t, c.Close())
	require.ErrorIs(t, c.Destroy(ctx), errs.Closed)
}

// TestDestroyRacesRotate runs Destroy against rotations of the same file
// by other custodians: whatever the order, the file ends destroyed, and no
// rotation after the destruction brings a KEK back.
func TestDestroyRacesRotate(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	const rotators, rotations = 4, 10
	var wg sync.WaitGroup
	errc := make(chan error, rotators*rotations)
	for range rotators {
		c := open(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rotations {
				if _, err := c.Rotate(ctx); err != nil {
					errc <- err
				}
			}
		}()
	}
	d := open(t, path)
	time.Sleep(time.Millisecond)
	require.NoError(t, d.Destroy(ctx))
	wg.Wait()
	close(errc)
	for err := range errc {
		require.ErrorIs(t, err, kms.ErrUnknownKey, "a rotation may only fail because the KEK was destroyed")
	}
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"destroyed"`)
	require.False(t, strings.Contains(string(raw), `"key"`), "a version came back after the destruction: %s", raw)
	c := open(t, path)
	_, err = c.Wrap(ctx, make([]byte, 32), testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
}
