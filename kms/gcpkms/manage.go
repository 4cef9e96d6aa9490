package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/iterator"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

const (
	// maxVersions bounds how many versions of one key a listing accepts.
	maxVersions = 1 << 16
	// maxGenerationWait bounds how long Rotate waits for a new version to
	// be generated (HSM keys are generated asynchronously).
	maxGenerationWait = 2 * time.Minute
)

// Rotate creates a new version of the key and makes it the primary version,
// under which Wrap wraps from now on; older versions still unwrap. It
// returns the new version's number. A version that Cloud KMS generates
// asynchronously (HSM keys) is waited for, within ctx. A destroyed key
// (see Destroy), whose versions are all destroyed or scheduled for
// destruction, is refused with kms.ErrUnknownKey, before anything is
// created: Cloud KMS itself would give it a new version.
//
// Rotate first lists the versions, then makes two calls. If the second
// fails, the new version exists but is
// not primary, and the error says so; calling Rotate again makes another.
// A creation retried after a lost response may likewise leave an unused
// version behind; it does no harm.
func (c *Custodian) Rotate(ctx context.Context) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if c.closed.Load() {
		return 0, c.closedError(opRotate)
	}
	// Cloud KMS adds a version to a key whose versions are all destroyed;
	// that would bring a destroyed KEK back under the same name.
	versions, err := c.listVersions(ctx, opRotate)
	if err != nil {
		return 0, err
	}
	if destroyedKEK(versions) {
		return 0, c.destroyedError(opRotate)
	}
	var created *kmspb.CryptoKeyVersion
	err = c.retry(ctx, opRotate, func(ctx context.Context) error {
		var err error
		created, err = c.client.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{
			Parent:           c.key.full,
			CryptoKeyVersion: &kmspb.CryptoKeyVersion{},
		}, noRetry)
		return err
	})
	if err != nil {
		return 0, err
	}
	n, err := c.key.versionOf(created.GetName())
	if err != nil {
		return 0, err
	}
	if err := c.waitEnabled(ctx, created); err != nil {
		return 0, err
	}
	var ck *kmspb.CryptoKey
	err = c.retry(ctx, opRotate, func(ctx context.Context) error {
		var err error
		ck, err = c.client.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{
			Name:               c.key.full,
			CryptoKeyVersionId: strconv.FormatUint(uint64(n), 10),
		}, noRetry)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%w; version %d was created but is not primary", err, n)
	}
	if got := ck.GetPrimary().GetName(); got != created.GetName() {
		return 0, fmt.Errorf("gcpkms: rotate with %s: after making version %d primary, Cloud KMS reports primary %q", c.key.full, n, got)
	}
	c.primary.Store(n)
	return n, nil
}

// waitEnabled waits until the new version v is ENABLED.
func (c *Custodian) waitEnabled(ctx context.Context, v *kmspb.CryptoKeyVersion) error {
	start := time.Now()
	for n := 1; ; n++ {
		switch v.GetState() {
		case kmspb.CryptoKeyVersion_ENABLED:
			return nil
		case kmspb.CryptoKeyVersion_PENDING_GENERATION:
		default:
			return fmt.Errorf("gcpkms: rotate with %s: new version %s is %s %s", c.key.full, v.GetName(), v.GetState(), v.GetGenerationFailureReason())
		}
		if time.Since(start) > maxGenerationWait {
			return fmt.Errorf("%w: gcpkms: rotate with %s: new version %s still pending generation after %v",
				kms.ErrUnavailable, c.key.full, v.GetName(), maxGenerationWait)
		}
		t := time.NewTimer(c.retryPolicy.backoff(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return c.ctxError(opRotate, ctx.Err(), nil)
		case <-t.C:
		}
		name := v.GetName()
		err := c.retry(ctx, opRotate, func(ctx context.Context) error {
			var err error
			v, err = c.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name}, noRetry)
			return err
		})
		if err != nil {
			return err
		}
	}
}

// Rewrap decrypts w and encrypts the key again under the primary version.
// Cloud KMS has no server-side rewrap: the zone key passes through this
// process's memory (and is wiped from the buffer this package holds when
// done), as on every Unwrap, so Rewrap needs the same in-zone process and
// the same decrypt permission as Unwrap.
func (c *Custodian) Rewrap(ctx context.Context, w kms.Wrapped, b kms.Binding) (kms.Wrapped, error) {
	key, err := c.Unwrap(ctx, w, b)
	if err != nil {
		return kms.Wrapped{}, err
	}
	defer clear(key)
	return c.Wrap(ctx, key, b)
}

// version is one key version as listed.
type version struct {
	num   uint32
	state kmspb.CryptoKeyVersion_CryptoKeyVersionState
}

// KEKVersions returns the lowest version that is ENABLED (0 if none is)
// and the primary version.
func (c *Custodian) KEKVersions(ctx context.Context) (minLive, primary uint32, err error) {
	primary, versions, err := c.state(ctx, opList)
	if err != nil {
		return 0, 0, err
	}
	for _, v := range versions {
		if v.state == kmspb.CryptoKeyVersion_ENABLED {
			return v.num, primary, nil
		}
	}
	return 0, primary, nil
}

// RetireBelow leaves enabled exactly the versions from v up, among those
// not scheduled for destruction: it disables every ENABLED version below v,
// so that what it wrapped fails to unwrap with kms.ErrUnknownKey, and
// re-enables every DISABLED version from v up, so that a later call with a
// lower v undoes an earlier one. v must not exceed the primary version.
//
// Cloud KMS applies a disable within seconds to, by its documentation, up
// to three hours; enabling is almost immediate.
func (c *Custodian) RetireBelow(ctx context.Context, v uint32) error {
	primary, versions, err := c.state(ctx, opRetire)
	if err != nil {
		return err
	}
	if v > primary {
		return fmt.Errorf("%w: gcpkms: retire versions of %s below %d: that would retire the primary version %d",
			errs.InvalidValue, c.key.full, v, primary)
	}
	for _, kv := range versions {
		switch {
		case kv.num < v && kv.state == kmspb.CryptoKeyVersion_ENABLED:
			err = c.setState(ctx, opRetire, kv.num, kmspb.CryptoKeyVersion_DISABLED)
		case kv.num >= v && kv.state == kmspb.CryptoKeyVersion_DISABLED:
			err = c.setState(ctx, opRetire, kv.num, kmspb.CryptoKeyVersion_ENABLED)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DestroyBelow destroys every ENABLED or DISABLED version below v,
// disabling it first. Cloud KMS schedules the destruction: the versions
// refuse to decrypt from then on (kms.ErrUnknownKey) but their material is
// erased only after the key's destroy_scheduled_duration, during which an
// administrator can restore them. v must not exceed the primary version.
// Versions already scheduled for destruction or destroyed are left as they
// are, so the call can be repeated. Keys still wrapped under the destroyed
// versions are lost: rewrap them first.
func (c *Custodian) DestroyBelow(ctx context.Context, v uint32) error {
	primary, versions, err := c.state(ctx, opDestroy)
	if err != nil {
		return err
	}
	if v > primary {
		return fmt.Errorf("%w: gcpkms: destroy versions of %s below %d: that would destroy the primary version %d",
			errs.InvalidValue, c.key.full, v, primary)
	}
	for _, kv := range versions {
		if kv.num >= v || (kv.state != kmspb.CryptoKeyVersion_ENABLED && kv.state != kmspb.CryptoKeyVersion_DISABLED) {
			continue
		}
		// Disable first, as organization policy may require
		// (constraints/cloudkms.disableBeforeDestroy).
		if kv.state == kmspb.CryptoKeyVersion_ENABLED {
			if err := c.setState(ctx, opDestroy, kv.num, kmspb.CryptoKeyVersion_DISABLED); err != nil {
				return err
			}
		}
		if err := c.destroy(ctx, opDestroy, kv.num); err != nil {
			return err
		}
	}
	return nil
}

// Destroy destroys every version of the key, for the shred of the whole
// zone: it disables every ENABLED version first, so that the key stops
// wrapping and unwrapping as soon as Cloud KMS applies that, then destroys
// every ENABLED or DISABLED version. Versions already scheduled for
// destruction or destroyed are left as they are, so destroying a destroyed
// key succeeds and changes nothing.
//
// As with DestroyBelow, Cloud KMS schedules the destruction: the versions
// refuse to encrypt and decrypt from now on, and their material is erased
// after the key's destroy_scheduled_duration, until when an administrator
// can restore them. The CryptoKey resource itself stays (Cloud KMS never
// deletes keys), with its destroyed versions.
//
// Afterwards Wrap and Unwrap fail with kms.ErrUnknownKey (Cloud KMS's
// FAILED_PRECONDITION), and so do Rewrap, KEKVersions, RetireBelow,
// DestroyBelow and Rotate, which refuse a key that has versions but none
// ENABLED, DISABLED or pending, whatever custodian or process asks: the
// state is Cloud KMS's, not this custodian's. A version still being
// generated or imported cannot be destroyed yet: Destroy destroys the
// others and then fails with kms.ErrUnavailable, to be called again.
//
// The credentials need cloudkms.cryptoKeyVersions.list, .update and
// .destroy on the key (docs/gcpkms.md).
func (c *Custodian) Destroy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.closed.Load() {
		return c.closedError(opDestroyKEK)
	}
	versions, err := c.listVersions(ctx, opDestroyKEK)
	if err != nil {
		return err
	}
	// Disable first, as organization policy may require
	// (constraints/cloudkms.disableBeforeDestroy), and every version
	// before destroying any, so that the whole key stops being used at
	// once.
	for _, kv := range versions {
		if kv.state == kmspb.CryptoKeyVersion_ENABLED {
			if err := c.setState(ctx, opDestroyKEK, kv.num, kmspb.CryptoKeyVersion_DISABLED); err != nil {
				return err
			}
		}
	}
	var pending []uint32
	for _, kv := range versions {
		switch kv.state {
		case kmspb.CryptoKeyVersion_ENABLED, kmspb.CryptoKeyVersion_DISABLED:
			if err := c.destroy(ctx, opDestroyKEK, kv.num); err != nil {
				return err
			}
		case kmspb.CryptoKeyVersion_PENDING_GENERATION, kmspb.CryptoKeyVersion_PENDING_IMPORT:
			pending = append(pending, kv.num)
		}
	}
	if len(pending) > 0 {
		return fmt.Errorf("%w: gcpkms: %s %s: versions %v are still being generated or imported and cannot be destroyed yet; the others are; call Destroy again",
			kms.ErrUnavailable, opDestroyKEK, c.key.full, pending)
	}
	return nil
}

// destroyedKEK reports whether versions, a key's every version, are those
// of a destroyed key: at least one version, and none that is ENABLED,
// DISABLED or pending (none that can, or could again, wrap or unwrap). A
// key without versions at all was never given one; it is not destroyed.
func destroyedKEK(versions []version) bool {
	if len(versions) == 0 {
		return false
	}
	for _, v := range versions {
		switch v.state {
		case kmspb.CryptoKeyVersion_ENABLED, kmspb.CryptoKeyVersion_DISABLED,
			kmspb.CryptoKeyVersion_PENDING_GENERATION, kmspb.CryptoKeyVersion_PENDING_IMPORT:
			return false
		}
	}
	return true
}

// destroyedError reports a key whose versions are all destroyed.
func (c *Custodian) destroyedError(o op) error {
	return fmt.Errorf("%w: gcpkms: %s with %s: every version of the key is destroyed or scheduled for destruction",
		kms.ErrUnknownKey, o, c.key.full)
}

// destroy destroys version n. A retried call whose first attempt got
// through fails with FAILED_PRECONDITION; the version's state then tells.
func (c *Custodian) destroy(ctx context.Context, o op, n uint32) error {
	name := c.key.versionName(n)
	err := c.retry(ctx, o, func(ctx context.Context) error {
		_, err := c.client.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: name}, noRetry)
		return err
	})
	if err == nil || !errors.Is(err, kms.ErrUnknownKey) {
		return err
	}
	var got *kmspb.CryptoKeyVersion
	if gerr := c.retry(ctx, o, func(ctx context.Context) error {
		var err error
		got, err = c.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name}, noRetry)
		return err
	}); gerr != nil {
		return err
	}
	switch got.GetState() {
	case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_DESTROYED:
		return nil
	}
	return err
}

// setState changes the state of version n to ENABLED or DISABLED.
func (c *Custodian) setState(ctx context.Context, o op, n uint32, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	return c.retry(ctx, o, func(ctx context.Context) error {
		_, err := c.client.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
			CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: c.key.versionName(n), State: s},
			UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
		}, noRetry)
		return err
	})
}

// state reads the primary version and lists every version, ascending. A
// destroyed key (see destroyedKEK) fails with kms.ErrUnknownKey.
func (c *Custodian) state(ctx context.Context, o op) (primary uint32, versions []version, err error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if c.closed.Load() {
		return 0, nil, c.closedError(o)
	}
	ck, err := c.getKey(ctx, o)
	if err != nil {
		return 0, nil, err
	}
	if ck.GetPrimary() == nil {
		return 0, nil, fmt.Errorf("%w: gcpkms: %s with %s: the key has no primary version", kms.ErrUnknownKey, o, c.key.full)
	}
	primary, err = c.key.versionOf(ck.GetPrimary().GetName())
	if err != nil {
		return 0, nil, err
	}
	c.primary.Store(primary)
	versions, err = c.listVersions(ctx, o)
	if err != nil {
		return 0, nil, err
	}
	if destroyedKEK(versions) {
		return 0, nil, c.destroyedError(o)
	}
	return primary, versions, nil
}

// listVersions lists every version of the key, ascending.
func (c *Custodian) listVersions(ctx context.Context, o op) ([]version, error) {
	var versions []version
	err := c.retry(ctx, o, func(ctx context.Context) error {
		versions = versions[:0]
		it := c.client.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: c.key.full}, noRetry)
		for {
			v, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			if len(versions) == maxVersions {
				return fmt.Errorf("gcpkms: key %s has more than %d versions", c.key.full, maxVersions)
			}
			n, err := c.key.versionOf(v.GetName())
			if err != nil {
				return err
			}
			versions = append(versions, version{num: n, state: v.GetState()})
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(versions, func(a, b version) int { return int(int64(a.num) - int64(b.num)) })
	return versions, nil
}
