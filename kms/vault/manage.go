package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// CreateKey creates the Transit key as this package needs it: type
// aes256-gcm96, derived=true, exportable=false, no plaintext backup. If the
// key exists already, Vault leaves it as it is and CreateKey checks it as
// first use would: a key that is not derived fails with kms.ErrConfig.
//
// The token needs the update (or create) capability on
// MOUNT/keys/KEY.
func (c *Custodian) CreateKey(ctx context.Context) error {
	const op = "creating the key"
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.usable(op); err != nil {
		return err
	}
	return c.withToken(ctx, op, func(tok string) error {
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys"), map[string]any{
			"type":                   "aes256-gcm96",
			"derived":                true,
			"exportable":             false,
			"allow_plaintext_backup": false,
		}, retryTransient)
		if err != nil {
			return err
		}
		clear(resp.body)
		// Vault answers a create of an existing key with that key's
		// settings, unchanged: check what is there now.
		c.checked.Store(false)
		return c.ensureKey(ctx, tok)
	})
}

// Rotate makes a new version of the Transit key, which Wrap uses from now
// on, and returns its number (Vault's transit/keys/KEY/rotate). It is not
// retried after a failure that may have reached Vault, so that one call
// never rotates twice. The token needs update on MOUNT/keys/KEY/rotate.
func (c *Custodian) Rotate(ctx context.Context) (uint32, error) {
	const op = "rotate"
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := c.usable(op); err != nil {
		return 0, err
	}
	var v uint32
	err := c.withToken(ctx, op, func(tok string) error {
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys")+"/rotate", nil, retryUnsent)
		if err != nil {
			return err
		}
		defer clear(resp.body)
		s, ok := parseSettings(resp.body)
		if !ok {
			// Older Vaults answer 204 without the key's settings.
			if s, err = c.settings(ctx, tok, op); err != nil {
				return err
			}
		}
		v = s.LatestVersion
		return nil
	})
	return v, err
}

// Rewrap re-encrypts w, wrapped for b under any live version of the key,
// under its latest version, inside Vault (transit/rewrap with b as the
// context): the zone key never leaves Vault. Errors are those of Unwrap.
func (c *Custodian) Rewrap(ctx context.Context, w kms.Wrapped, b kms.Binding) (kms.Wrapped, error) {
	const op = "rewrap"
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, err
	}
	if err := c.usable(op); err != nil {
		return kms.Wrapped{}, err
	}
	if err := checkWrapped(w, b); err != nil {
		return kms.Wrapped{}, fmt.Errorf("%w: vault: rewrap %v: %v", kms.ErrTampered, b, err)
	}
	return c.wrapAt(ctx, op, "rewrap", transitItem{Ciphertext: string(w.Ciphertext), Context: derivationContext(b)})
}

// KEKVersions returns the key's min_decryption_version (the oldest version
// that still unwraps) and latest_version (the one Wrap uses). The token
// needs read on MOUNT/keys/KEY.
func (c *Custodian) KEKVersions(ctx context.Context) (minLive, primary uint32, err error) {
	const op = "reading the key's versions"
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if err := c.usable(op); err != nil {
		return 0, 0, err
	}
	err = c.withToken(ctx, op, func(tok string) error {
		s, err := c.settings(ctx, tok, op)
		minLive, primary = max(s.MinDecryptionVersion, s.MinAvailableVersion, 1), s.LatestVersion
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	return minLive, primary, nil
}

// settings reads transit/keys/KEY.
func (c *Custodian) settings(ctx context.Context, tok, op string) (keySettings, error) {
	resp, err := c.send(ctx, op, tok, http.MethodGet, c.keyPath("keys"), nil, retryTransient)
	if err != nil {
		var ve *vaultError
		if errors.As(err, &ve) && ve.status == http.StatusNotFound {
			return keySettings{}, c.missingKey(op)
		}
		return keySettings{}, err
	}
	defer clear(resp.body)
	s, ok := parseSettings(resp.body)
	if !ok {
		return keySettings{}, c.badAnswer(op, resp.status)
	}
	return s, nil
}

// RetireBelow sets the key's min_decryption_version to v, so that keys
// wrapped under older versions no longer unwrap (kms.ErrUnknownKey), and
// raises min_encryption_version to v too where a DestroyBelow set it lower
// (Vault wants it at least the decryption minimum). It can be lowered
// again, down to the oldest version not destroyed. v above the
// latest version, or 0, fails with errs.InvalidValue. The token needs read
// on MOUNT/keys/KEY and update on MOUNT/keys/KEY/config.
func (c *Custodian) RetireBelow(ctx context.Context, v uint32) error {
	const op = "retiring key versions"
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.usable(op); err != nil {
		return err
	}
	return c.withToken(ctx, op, func(tok string) error {
		s, err := c.settings(ctx, tok, op)
		if err != nil {
			return err
		}
		switch {
		case v == 0 || v > s.LatestVersion:
			return fmt.Errorf("%w: vault: %s below %d: the key's versions are 1 to %d", errs.InvalidValue, op, v, s.LatestVersion)
		case v < s.MinAvailableVersion:
			return fmt.Errorf("%w: vault: %s below %d: versions below %d are destroyed and cannot be made live again", errs.InvalidValue, op, v, s.MinAvailableVersion)
		case v == s.MinDecryptionVersion:
			return nil
		}
		settings := map[string]any{"min_decryption_version": v}
		if s.MinEncryptionVersion > 0 && s.MinEncryptionVersion < v {
			// Vault wants the encryption minimum, when set (a
			// DestroyBelow sets it), at least the decryption one.
			settings["min_encryption_version"] = v
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys")+"/config", settings, retryTransient)
		if err != nil {
			return err
		}
		clear(resp.body)
		return nil
	})
}

// DestroyBelow destroys the key's versions below v (Vault's trim): first it
// raises min_decryption_version and min_encryption_version to v where they
// are lower, as trim requires, then sets min_available_version to v. Keys
// wrapped under a destroyed version can never be unwrapped again
// (kms.ErrUnknownKey), by anyone. v above the latest version, or 0, fails
// with errs.InvalidValue; versions already destroyed are left alone.
//
// The token needs read on MOUNT/keys/KEY and update on MOUNT/keys/KEY/config
// and MOUNT/keys/KEY/trim.
func (c *Custodian) DestroyBelow(ctx context.Context, v uint32) error {
	const op = "destroying key versions"
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.usable(op); err != nil {
		return err
	}
	return c.withToken(ctx, op, func(tok string) error {
		s, err := c.settings(ctx, tok, op)
		if err != nil {
			return err
		}
		if v == 0 || v > s.LatestVersion {
			return fmt.Errorf("%w: vault: %s below %d: the key's versions are 1 to %d", errs.InvalidValue, op, v, s.LatestVersion)
		}
		if v <= max(s.MinAvailableVersion, 1) {
			return nil
		}
		settings := map[string]any{}
		if s.MinDecryptionVersion < v {
			settings["min_decryption_version"] = v
		}
		if s.MinEncryptionVersion < v {
			settings["min_encryption_version"] = v
		}
		if len(settings) > 0 {
			resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys")+"/config", settings, retryTransient)
			if err != nil {
				return err
			}
			clear(resp.body)
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys")+"/trim",
			map[string]any{"min_available_version": v}, retryTransient)
		if err != nil {
			return err
		}
		clear(resp.body)
		return nil
	})
}

// Destroy deletes the Transit key, with every version, for the shred of
// the whole zone: nothing wrapped under it can be unwrapped again, by
// anyone. Vault refuses to delete a key whose deletion_allowed is false;
// Destroy then sets it (transit/keys/KEY/config) and deletes again. A key
// that does not exist counts as destroyed, so Destroy can be repeated, from
// any process.
//
// Afterwards every method of this custodian, but Close and Destroy, fails
// with kms.ErrUnknownKey, without asking Vault. This matters for Wrap:
// Vault's encrypt creates a missing key when the token may create keys (an
// "upsert"), and would create a new derived key of the same name, under
// which a wrap would silently succeed. Other custodians find the key
// missing when they next check it; docs/vault.md describes what each sees.
//
// The token needs delete on MOUNT/keys/KEY and, unless deletion_allowed is
// set already, update on MOUNT/keys/KEY/config. Without delete, nothing is
// changed (kms.ErrDenied).
func (c *Custodian) Destroy(ctx context.Context) error {
	const op = "destroying the key"
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.closed.Load() {
		return c.closedError(op)
	}
	err := c.withToken(ctx, op, func(tok string) error {
		err := c.deleteKey(ctx, op, tok)
		var ve *vaultError
		if !errors.As(err, &ve) || !strings.Contains(ve.detail, "deletion is not allowed") {
			return err
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("keys")+"/config",
			map[string]any{"deletion_allowed": true}, retryTransient)
		if keyGone(err) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		clear(resp.body)
		return c.deleteKey(ctx, op, tok)
	})
	if err != nil {
		return err
	}
	c.destroyed.Store(true)
	c.checked.Store(false)
	return nil
}

// deleteKey deletes the key; one that does not exist is no error.
func (c *Custodian) deleteKey(ctx context.Context, op, tok string) error {
	_, err := c.send(ctx, op, tok, http.MethodDelete, c.keyPath("keys"), nil, retryTransient)
	if keyGone(err) {
		return nil
	}
	return err
}

// WrapRequest is one key to wrap in a WrapBatch.
type WrapRequest struct {
	Key     []byte
	Binding kms.Binding
}

// WrapResult is the outcome of one WrapRequest: Wrapped, or Err.
type WrapResult struct {
	Wrapped kms.Wrapped
	Err     error
}

// UnwrapRequest is one wrapped key to unwrap in an UnwrapBatch.
type UnwrapRequest struct {
	Wrapped kms.Wrapped
	Binding kms.Binding
}

// UnwrapResult is the outcome of one UnwrapRequest: Key, or Err.
type UnwrapResult struct {
	Key []byte
	Err error
}

// WrapBatch wraps several keys in one request to Vault (batch_input), each
// under its own binding. It returns one result per request, in order, each
// with the error of that item alone, classified as Wrap's; the error
// returned beside is for the batch as a whole (Vault unavailable, the
// caller denied, the context done), and the results are then nil. At most
// MaxBatch items.
func (c *Custodian) WrapBatch(ctx context.Context, reqs []WrapRequest) ([]WrapResult, error) {
	const op = "wrap batch"
	if err := c.checkBatch(ctx, op, len(reqs)); err != nil {
		return nil, err
	}
	results := make([]WrapResult, len(reqs))
	items := make([]transitItem, 0, len(reqs))
	index := make([]int, 0, len(reqs))
	for i, r := range reqs {
		switch {
		case len(r.Key) == 0 || len(r.Key) > MaxKeySize:
			results[i].Err = fmt.Errorf("%w: vault: wrap %v: key is %d bytes, want 1 to %d", errs.InvalidValue, r.Binding, len(r.Key), MaxKeySize)
		case r.Binding.Validate() != nil:
			results[i].Err = fmt.Errorf("vault: wrap: %w", r.Binding.Validate())
		default:
			items = append(items, transitItem{Plaintext: r.Key, Context: derivationContext(r.Binding), Reference: strconv.Itoa(i)})
			index = append(index, i)
		}
	}
	out, err := c.batch(ctx, op, "encrypt", items)
	if err != nil {
		return nil, err
	}
	for j, r := range out {
		i := index[j]
		if r.Error != "" {
			results[i].Err = fmt.Errorf("vault: wrap %v: %w", reqs[i].Binding, classifyItem(op, r.Error))
			continue
		}
		results[i].Wrapped, results[i].Err = c.wrappedFrom(op, r)
	}
	return results, nil
}

// UnwrapBatch unwraps several keys in one request to Vault (batch_input),
// each under its own binding. Results and errors are as for WrapBatch, each
// item's error classified as Unwrap's. At most MaxBatch items.
func (c *Custodian) UnwrapBatch(ctx context.Context, reqs []UnwrapRequest) ([]UnwrapResult, error) {
	const op = "unwrap batch"
	if err := c.checkBatch(ctx, op, len(reqs)); err != nil {
		return nil, err
	}
	results := make([]UnwrapResult, len(reqs))
	items := make([]transitItem, 0, len(reqs))
	index := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if err := checkWrapped(r.Wrapped, r.Binding); err != nil {
			results[i].Err = fmt.Errorf("%w: vault: unwrap %v: %v", kms.ErrTampered, r.Binding, err)
			continue
		}
		items = append(items, transitItem{Ciphertext: string(r.Wrapped.Ciphertext), Context: derivationContext(r.Binding), Reference: strconv.Itoa(i)})
		index = append(index, i)
	}
	out, err := c.batch(ctx, op, "decrypt", items)
	if err != nil {
		return nil, err
	}
	for j, r := range out {
		i := index[j]
		if r.Error != "" {
			clear(r.Plaintext)
			results[i].Err = fmt.Errorf("vault: unwrap %v: %w", reqs[i].Binding, classifyItem(op, r.Error))
			continue
		}
		results[i].Key, results[i].Err = plaintextFrom(op, r.Plaintext)
	}
	return results, nil
}

func (c *Custodian) checkBatch(ctx context.Context, op string, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.usable(op); err != nil {
		return err
	}
	if n > MaxBatch {
		return fmt.Errorf("%w: vault: %s of %d items, more than the %d allowed", errs.InvalidValue, op, n, MaxBatch)
	}
	return nil
}

// batch sends items to MOUNT/action/KEY as batch_input and returns Vault's
// results, one per item in order. Vault answers 200 when some items
// succeed (partial_failure_response_code) and 400 when none does; both carry
// the per-item errors.
func (c *Custodian) batch(ctx context.Context, op, action string, items []transitItem) ([]transitResult, error) {
	if len(items) == 0 {
		return nil, nil
	}
	var results []transitResult
	err := c.withToken(ctx, op, func(tok string) error {
		if err := c.ensureKey(ctx, tok); err != nil {
			return err
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath(action), map[string]any{
			"batch_input":                   items,
			"partial_failure_response_code": http.StatusOK,
		}, retryTransient)
		if action == "encrypt" && isForbidden(err) {
			return c.whyForbidden(ctx, tok, err)
		}
		if resp == nil {
			return err
		}
		defer clear(resp.body)
		var out struct {
			Data *struct {
				Results []transitResult `json:"batch_results"`
			} `json:"data"`
		}
		if jerr := json.Unmarshal(resp.body, &out); jerr != nil || out.Data == nil || len(out.Data.Results) != len(items) {
			if err != nil {
				return err // a 4xx about the whole batch
			}
			return c.badAnswer(op, resp.status)
		}
		for j, r := range out.Data.Results {
			if r.Reference != items[j].Reference {
				for _, r := range out.Data.Results {
					clear(r.Plaintext)
				}
				return c.badAnswer(op, resp.status)
			}
		}
		results = out.Data.Results
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}
