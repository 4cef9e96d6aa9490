package vault

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Sizes of a Transit AES-GCM ciphertext: "vault:v<N>:" then base64 of
// nonce || ciphertext || tag.
const (
	ctPrefix      = "vault:v"
	nonceSize     = 12
	tagSize       = 16
	minRaw        = nonceSize + 1 + tagSize
	maxRaw        = nonceSize + MaxKeySize + tagSize
	maxVersionLen = 10 // digits of math.MaxUint32
	maxCiphertext = len(ctPrefix) + maxVersionLen + 1 + (maxRaw+2)/3*4
)

// parseCiphertext checks that ct is "vault:v<N>:<base64>" exactly as Vault
// writes it for a key of 1 to MaxKeySize bytes, and returns N. It refuses
// what Vault would tolerate: version 0 or with leading zeros or a sign,
// base64 that is not canonical (non-zero padding bits, line breaks), and
// any other byte.
func parseCiphertext(ct []byte) (uint32, error) {
	if len(ct) > maxCiphertext {
		return 0, fmt.Errorf("ciphertext is %d bytes, longer than any wrapped key", len(ct))
	}
	rest, ok := bytes.CutPrefix(ct, []byte(ctPrefix))
	if !ok {
		return 0, errors.New("ciphertext does not start with " + ctPrefix)
	}
	digits, b64, ok := bytes.Cut(rest, []byte(":"))
	if !ok {
		return 0, errors.New("ciphertext has no ':' after its version")
	}
	if len(digits) == 0 || len(digits) > maxVersionLen || digits[0] == '0' {
		return 0, errors.New("ciphertext version is not a decimal number from 1 without leading zeros")
	}
	var v uint64
	for _, d := range digits {
		if d < '0' || d > '9' {
			return 0, errors.New("ciphertext version is not a decimal number")
		}
		v = v*10 + uint64(d-'0')
	}
	if v > math.MaxUint32 {
		return 0, errors.New("ciphertext version is out of range")
	}
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Strict().Decode(raw, b64)
	if err != nil {
		return 0, errors.New("ciphertext is not valid base64")
	}
	raw = raw[:n]
	if n < minRaw || n > maxRaw {
		return 0, fmt.Errorf("ciphertext holds %d bytes, not %d to %d", n, minRaw, maxRaw)
	}
	// Strict decoding still skips line breaks: the text must be exactly
	// the canonical encoding of what it decodes to.
	if base64.StdEncoding.EncodedLen(n) != len(b64) || base64.StdEncoding.EncodeToString(raw) != string(b64) {
		return 0, errors.New("ciphertext is not canonical base64")
	}
	return uint32(v), nil
}

// derivationContext is the Transit context for b: base64 of b.Bytes().
func derivationContext(b kms.Binding) string {
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

func (c *Custodian) keyPath(action string) string {
	return c.mount + "/" + action + "/" + c.key
}

// Wrap encrypts key, 1 to MaxKeySize bytes, under the Transit key's latest
// version with b as the derivation context (Vault's transit/encrypt).
// Invalid arguments fail with errs.InvalidValue, an invalid binding with
// kms.ErrConfig; Vault's refusals are classified as the package
// documentation describes.
func (c *Custodian) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	const op = "wrap"
	if err := ctx.Err(); err != nil {
		return kms.Wrapped{}, err
	}
	if err := c.usable(op); err != nil {
		return kms.Wrapped{}, err
	}
	if len(key) == 0 || len(key) > MaxKeySize {
		return kms.Wrapped{}, fmt.Errorf("%w: vault: wrap %v: key is %d bytes, want 1 to %d", errs.InvalidValue, b, len(key), MaxKeySize)
	}
	if err := b.Validate(); err != nil {
		return kms.Wrapped{}, fmt.Errorf("vault: wrap: %w", err)
	}
	return c.wrapAt(ctx, op, "encrypt", transitItem{Plaintext: key, Context: derivationContext(b)})
}

// wrapAt sends item to the transit endpoint (encrypt or rewrap) of the key
// and returns the ciphertext Vault answers with.
func (c *Custodian) wrapAt(ctx context.Context, op, endpoint string, item transitItem) (kms.Wrapped, error) {
	var w kms.Wrapped
	err := c.withToken(ctx, op, func(tok string) error {
		if err := c.ensureKey(ctx, tok); err != nil {
			return err
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath(endpoint), item, retryTransient)
		if endpoint == "encrypt" && isForbidden(err) {
			return c.whyForbidden(ctx, tok, err)
		}
		if err != nil {
			return err
		}
		defer clear(resp.body)
		var out struct {
			Data *transitResult `json:"data"`
		}
		if err := json.Unmarshal(resp.body, &out); err != nil || out.Data == nil {
			return c.badAnswer(op, resp.status)
		}
		w, err = c.wrappedFrom(op, *out.Data)
		return err
	})
	if err != nil {
		return kms.Wrapped{}, err
	}
	return w, nil
}

// Unwrap decrypts w, which must have been wrapped for binding b (Vault's
// transit/decrypt with b as the context). A malformed ciphertext, one whose
// version is not w.KEKVersion, an invalid binding and a binding other than
// the one it was wrapped for fail with kms.ErrTampered; a version below the
// key's min_decryption_version, or a deleted key, with kms.ErrUnknownKey.
func (c *Custodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	const op = "unwrap"
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.usable(op); err != nil {
		return nil, err
	}
	if err := checkWrapped(w, b); err != nil {
		return nil, fmt.Errorf("%w: vault: unwrap %v: %v", kms.ErrTampered, b, err)
	}
	var key []byte
	err := c.withToken(ctx, op, func(tok string) error {
		if err := c.ensureKey(ctx, tok); err != nil {
			return err
		}
		resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("decrypt"),
			transitItem{Ciphertext: string(w.Ciphertext), Context: derivationContext(b)}, retryTransient)
		if err != nil {
			return err
		}
		defer clear(resp.body)
		var out struct {
			Data *transitResult `json:"data"`
		}
		if err := json.Unmarshal(resp.body, &out); err != nil || out.Data == nil {
			return c.badAnswer(op, resp.status)
		}
		key, err = plaintextFrom(op, out.Data.Plaintext)
		return err
	})
	if err != nil {
		return nil, err
	}
	return key, nil
}

// checkWrapped checks what Unwrap and Rewrap can check before asking Vault.
func checkWrapped(w kms.Wrapped, b kms.Binding) error {
	if err := b.Validate(); err != nil {
		// Nothing can have been wrapped under such a binding.
		return err
	}
	v, err := parseCiphertext(w.Ciphertext)
	if err != nil {
		return err
	}
	if v != w.KEKVersion {
		return fmt.Errorf("ciphertext names KEK version %d, not %d", v, w.KEKVersion)
	}
	return nil
}

// transitItem is one encrypt, decrypt or rewrap input.
type transitItem struct {
	Plaintext  []byte `json:"plaintext,omitempty"` // base64 in JSON
	Ciphertext string `json:"ciphertext,omitempty"`
	Context    string `json:"context"`
	Reference  string `json:"reference,omitempty"`
}

// transitResult is one encrypt, decrypt or rewrap output.
type transitResult struct {
	Ciphertext string `json:"ciphertext"`
	KeyVersion int64  `json:"key_version"`
	Plaintext  []byte `json:"plaintext"` // base64 in JSON
	Error      string `json:"error"`
	Reference  string `json:"reference"`
}

// wrappedFrom checks an encrypt or rewrap result.
func (c *Custodian) wrappedFrom(op string, r transitResult) (kms.Wrapped, error) {
	ct := []byte(r.Ciphertext)
	v, err := parseCiphertext(ct)
	if err != nil || (r.KeyVersion != 0 && r.KeyVersion != int64(v)) {
		return kms.Wrapped{}, &vaultError{class: kms.ErrUnavailable, op: op, detail: "Vault returned a ciphertext that is not of the expected form"}
	}
	return kms.Wrapped{Ciphertext: ct, KEKVersion: v}, nil
}

// plaintextFrom checks a decrypted key; the result is the caller's.
func plaintextFrom(op string, p []byte) ([]byte, error) {
	if len(p) == 0 || len(p) > MaxKeySize {
		clear(p)
		return nil, &vaultError{class: kms.ErrTampered, op: op, detail: fmt.Sprintf("decrypted key is %d bytes, not 1 to %d", len(p), MaxKeySize)}
	}
	return p, nil
}

func (c *Custodian) badAnswer(op string, status int) error {
	return &vaultError{class: kms.ErrUnavailable, op: op, status: status, detail: "unexpected answer from Vault"}
}

// ensureKey checks, once per custodian, that the Transit key exists and is
// a derived encryption key, so that bindings are enforced (see checkKey).
// An answer that the key does not exist, to any request, makes the next
// call check again (withToken).
func (c *Custodian) ensureKey(ctx context.Context, tok string) error {
	if c.checked.Load() {
		return nil
	}
	if err := c.checkKey(ctx, tok); err != nil {
		return err
	}
	c.checked.Store(true)
	return nil
}

// checkKey checks that the Transit key exists and is a derived encryption
// key. With a token allowed to read transit/keys/KEY it checks the key's
// settings; otherwise it probes with requests that only a derived key
// refuses for a missing context and that never create a key (probeDerived),
// so that a token allowed to decrypt, or only to encrypt, needs no more.
func (c *Custodian) checkKey(ctx context.Context, tok string) error {
	const op = "checking the key"
	resp, err := c.send(ctx, op, tok, http.MethodGet, c.keyPath("keys"), nil, retryTransient)
	switch {
	case err == nil:
		defer clear(resp.body)
		return c.checkSettings(op, resp)
	case isForbidden(err):
		return c.probeDerived(ctx, tok)
	default:
		var ve *vaultError
		if errors.As(err, &ve) && ve.status == http.StatusNotFound {
			return c.missingKey(op)
		}
		return err
	}
}

// whyForbidden is called when Vault refused an encrypt with 403. For a key
// that does not exist Vault's encrypt is a create (an "upsert"), which a
// token allowed only to update is refused: that 403 then means the key is
// gone, not that the caller is out of its policy. whyForbidden checks the
// key again and returns the error that says it is missing, or denied if the
// check cannot tell.
func (c *Custodian) whyForbidden(ctx context.Context, tok string, denied error) error {
	if err := c.checkKey(ctx, tok); keyGone(err) {
		return err
	}
	return denied
}

func (c *Custodian) missingKey(op string) error {
	return &missingKeyError{msg: fmt.Sprintf("%v: vault: %s: no Transit key %s/keys/%s at %s (create it with derived=true, see docs/vault.md, or open with create=1)",
		kms.ErrUnknownKey, op, c.mount, c.key, c.addr)}
}

// missingKeyError reports that the Transit key does not exist. It wraps
// kms.ErrUnknownKey.
type missingKeyError struct{ msg string }

func (e *missingKeyError) Error() string { return e.msg }
func (e *missingKeyError) Unwrap() error { return kms.ErrUnknownKey }

// keyGoneMessages are Vault's answers (as of Vault 1.21) to a request on a
// Transit key that does not exist: encrypt (with upserts disabled),
// decrypt and rewrap; rotate; config; delete.
var keyGoneMessages = []string{
	"encryption key not found",
	"key not found",
	"no existing key named",
	"could not delete key; not found",
}

// keyGone reports whether err says that the Transit key does not exist.
func keyGone(err error) bool {
	var mk *missingKeyError
	if errors.As(err, &mk) {
		return true
	}
	var ve *vaultError
	return errors.As(err, &ve) && ve.class == kms.ErrUnknownKey &&
		containsAny(strings.ToLower(ve.detail), keyGoneMessages)
}

// keySettings is the part of transit/keys/KEY the driver uses.
type keySettings struct {
	Type                 string `json:"type"`
	Derived              bool   `json:"derived"`
	Convergent           bool   `json:"convergent_encryption"`
	Exportable           bool   `json:"exportable"`
	PlaintextBackup      bool   `json:"allow_plaintext_backup"`
	SupportsEncryption   bool   `json:"supports_encryption"`
	LatestVersion        uint32 `json:"latest_version"`
	MinDecryptionVersion uint32 `json:"min_decryption_version"`
	MinEncryptionVersion uint32 `json:"min_encryption_version"`
	MinAvailableVersion  uint32 `json:"min_available_version"`
}

func parseSettings(body []byte) (keySettings, bool) {
	var out struct {
		Data *keySettings `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Data == nil || out.Data.LatestVersion == 0 {
		return keySettings{}, false
	}
	return *out.Data, true
}

// checkSettings refuses a key that would not enforce bindings, or whose
// key material may leave Vault.
func (c *Custodian) checkSettings(op string, resp *response) error {
	s, ok := parseSettings(resp.body)
	if !ok {
		return c.badAnswer(op, resp.status)
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: vault: Transit key %s/keys/%s at %s %s; create a new key with derived=true, type=aes256-gcm96, exportable=false (see docs/vault.md)",
			kms.ErrConfig, c.mount, c.key, c.addr, why)
	}
	switch {
	case !s.Derived:
		return bad("is not derived (derived=false): Vault would ignore the zone-key binding")
	case s.Convergent:
		return bad("uses convergent encryption: equal zone keys would wrap to equal ciphertexts")
	case s.Type != "aes256-gcm96":
		return bad(fmt.Sprintf("has type %q, not aes256-gcm96", s.Type))
	case !s.SupportsEncryption:
		return bad("does not support encryption")
	case s.Exportable || s.PlaintextBackup:
		return bad("is exportable or allows plaintext backups: the KEK could leave Vault")
	}
	return nil
}

// probeDerived finds out with the decrypt or the encrypt permission alone
// whether the key is derived: first with a decrypt without a context (which
// never creates a key), then, if the token may not decrypt or the probe's
// version is retired, with an encrypt (probeEncrypt).
func (c *Custodian) probeDerived(ctx context.Context, tok string) error {
	const op = "probing the key"
	probe := "vault:v1:" + base64.StdEncoding.EncodeToString(make([]byte, minRaw))
	_, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("decrypt"), map[string]string{"ciphertext": probe}, retryTransient)
	var ve *vaultError
	switch {
	case err == nil:
		return c.notDerived() // cannot happen: zeros do not authenticate
	case isForbidden(err):
		// A token that may not decrypt, such as a wrap-only role's.
		return c.probeEncrypt(ctx, tok)
	case !errors.As(err, &ve) || ve.status != http.StatusBadRequest:
		return err
	case containsAny(ve.detail, []string{"missing 'context'"}):
		return nil
	case containsAny(ve.detail, []string{"encryption key not found"}):
		return c.missingKey(op)
	case containsAny(ve.detail, []string{"too old"}):
		// Version 1 is retired, so the key exists.
		return c.probeEncrypt(ctx, tok)
	case ve.class == kms.ErrTampered:
		return c.notDerived() // the key was used without a context
	default:
		return err
	}
}

// probeEncrypt finds out with the encrypt permission alone whether the key
// is derived: an encrypt without a context, which a derived key refuses as
// such, and a key that is not derived performs (on one zero byte).
//
// Vault's encrypt creates a missing key when the token may create (an
// "upsert"), and would create one that is not derived for a request without
// a context. The probe therefore asks for convergent encryption: Vault
// reads convergent_encryption only when it creates the key, and refuses to
// create a convergent key without a context. So the probe never creates a
// key; for a missing key it gets that refusal (a token that may create) or
// 403 (one that may not).
func (c *Custodian) probeEncrypt(ctx context.Context, tok string) error {
	const op = "probing the key"
	resp, err := c.send(ctx, op, tok, http.MethodPut, c.keyPath("encrypt"),
		map[string]any{"plaintext": "AA==", "convergent_encryption": true}, retryTransient)
	if err == nil {
		clear(resp.body)
		return c.notDerived()
	}
	var ve *vaultError
	if errors.As(err, &ve) && ve.status == http.StatusBadRequest {
		switch {
		case containsAny(ve.detail, []string{"missing 'context'"}):
			return nil
		case containsAny(ve.detail, []string{"convergent encryption requires derivation"}):
			// Only the creation of a key reaches that check.
			return c.missingKey(op)
		}
	}
	return err
}

func (c *Custodian) notDerived() error {
	return fmt.Errorf("%w: vault: Transit key %s/keys/%s at %s is not derived (derived=false): Vault would ignore the zone-key binding; create a new key with derived=true (see docs/vault.md)",
		kms.ErrConfig, c.mount, c.key, c.addr)
}
