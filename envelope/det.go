package envelope

import (
	"fmt"
	"unsafe"

	"github.com/tink-crypto/tink-go/v2/daead/subtle"
)

// DetKey is a key for deterministic envelopes (algorithm 0x02, AES-SIV as
// specified in RFC 5297, with Tink's implementation). It is safe for
// concurrent use.
//
// Sealing the same plaintext under the same DetKey with the same Binding
// always gives the same envelope, so that a stored value can be found by
// comparing it with the envelope of a searched value. That is also what it
// gives away: whoever sees the envelopes learns which values are equal, and
// how often each occurs, without learning the values. The Binding authenticates the
// field path and map key, so an envelope moved to another field fails to
// open with ErrTampered, but no subject: Binding.Subject must be empty, and a
// deterministic envelope copied into another subject's record at the same
// field still opens there.
type DetKey struct {
	id  KeyID
	siv *subtle.AESSIV
}

// NewDetKey returns a DetKey for the 64-byte secret with the given id: the
// first 32 bytes are the S2V (CMAC) key, the last 32 the CTR key. The key
// keeps its own copy of the secret.
func NewDetKey(id KeyID, secret []byte) (*DetKey, error) {
	if len(secret) != DetKeySize {
		return nil, fmt.Errorf("%w: deterministic key must be %d bytes, got %d", ErrFormat, DetKeySize, len(secret))
	}
	siv, err := subtle.NewAESSIV(append([]byte(nil), secret...))
	if err != nil {
		return nil, err
	}
	return &DetKey{id: id, siv: siv}, nil
}

// ID returns the key's id.
func (k *DetKey) ID() KeyID { return k.id }

func (k *DetKey) header() [HeaderSize]byte {
	var h [HeaderSize]byte
	h[0], h[1] = Version1, AlgAES256SIV
	copy(h[2:], k.id[:])
	return h
}

// validDet checks a Binding for a deterministic envelope.
func validDet(b Binding) error {
	if b.Subject != "" {
		return fmt.Errorf("%w: a deterministic envelope binds no subject; Binding.Subject must be empty", ErrFormat)
	}
	return b.valid()
}

// Seal returns the binary envelope of plaintext bound to b, whose Subject
// must be empty.
func (k *DetKey) Seal(plaintext []byte, b Binding) ([]byte, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext longer than %d bytes", ErrFormat, MaxPlaintext)
	}
	if err := validDet(b); err != nil {
		return nil, err
	}
	hdr := k.header()
	ad := appendAD(make([]byte, 0, adLen(&b)), hdr[:], &b)
	ct, err := k.siv.EncryptDeterministically(plaintext, ad)
	if err != nil {
		return nil, err
	}
	bin := make([]byte, 0, HeaderSize+len(ct))
	bin = append(bin, hdr[:]...)
	return append(bin, ct...), nil
}

func (k *DetKey) sealText(plaintext []byte, b Binding) ([]byte, error) {
	bin, err := k.Seal(plaintext, b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(Prefix)+b64.EncodedLen(len(bin)))
	copy(out, Prefix)
	b64.Encode(out[len(Prefix):], bin)
	return out, nil
}

// SealString returns the text envelope of the string s bound to b.
func (k *DetKey) SealString(s string, b Binding) (string, error) {
	out, err := k.sealText(unsafe.Slice(unsafe.StringData(s), len(s)), b)
	if err != nil {
		return "", err
	}
	return unsafe.String(unsafe.SliceData(out), len(out)), nil
}

// SealBytes returns the text envelope of p bound to b, as bytes.
func (k *DetKey) SealBytes(p []byte, b Binding) ([]byte, error) {
	return k.sealText(p, b)
}

// Open authenticates and decrypts the binary envelope bin bound to b. The
// checks come in the order of docs/format.md: structure and binding
// (ErrFormat), algorithm and key id (ErrUnknownKey), authentication
// (ErrTampered).
func (k *DetKey) Open(bin []byte, b Binding) ([]byte, error) {
	e, err := Parse(bin)
	if err != nil {
		return nil, err
	}
	if err := validDet(b); err != nil {
		return nil, err
	}
	if e.Algorithm != AlgAES256SIV {
		return nil, fmt.Errorf("%w: envelope is sealed with %s, not with this key's %s", ErrUnknownKey, algName(e.Algorithm), algName(AlgAES256SIV))
	}
	if e.KeyID != k.id {
		return nil, fmt.Errorf("%w: envelope is sealed under key %s, not %s", ErrUnknownKey, e.KeyID, k.id)
	}
	ad := appendAD(make([]byte, 0, adLen(&b)), bin[:HeaderSize], &b)
	pt, err := k.siv.DecryptDeterministically(e.Ciphertext, ad)
	if err != nil {
		return nil, fmt.Errorf("%w: field %q", ErrTampered, b.Path)
	}
	return pt, nil
}

func openDetText[T ~string | ~[]byte](k *DetKey, s T, b Binding) ([]byte, error) {
	if err := checkTextLen(len(s)); err != nil {
		return nil, err
	}
	if !IsText(s) {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	bin, err := decodeText(make([]byte, b64.DecodedLen(len(s)-len(Prefix))), s)
	if err != nil {
		return nil, err
	}
	return k.Open(bin, b)
}

// OpenString authenticates and decrypts the text envelope s bound to b and
// returns the plaintext as a string.
func (k *DetKey) OpenString(s string, b Binding) (string, error) {
	pt, err := openDetText(k, s, b)
	if err != nil {
		return "", err
	}
	out := string(pt)
	clear(pt)
	return out, nil
}

// OpenBytes authenticates and decrypts the text envelope s bound to b and
// returns the plaintext in a new slice.
func (k *DetKey) OpenBytes(s []byte, b Binding) ([]byte, error) {
	return openDetText(k, s, b)
}
