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
	hdr, ct, err := k.seal(plaintext, &b)
	if err != nil {
		return nil, err
	}
	return append(append(make([]byte, 0, HeaderSize+len(ct)), hdr[:]...), ct...), nil
}

// seal seals plaintext bound to b, with the associated data in scratch,
// and returns the header and the synthetic IV and ciphertext.
func (k *DetKey) seal(plaintext []byte, b *Binding) (hdr [HeaderSize]byte, ct []byte, err error) {
	if len(plaintext) > MaxPlaintext {
		return hdr, nil, fmt.Errorf("%w: plaintext longer than %d bytes", ErrFormat, MaxPlaintext)
	}
	if err := validDet(*b); err != nil {
		return hdr, nil, err
	}
	hdr = k.header()
	sp := getScratch()
	defer putScratch(sp)
	if cap(sp.b) < adLen(b) {
		sp.b = make([]byte, 0, adLen(b))
	}
	ct, err = k.siv.EncryptDeterministically(plaintext, appendAD(sp.b[:0], hdr[:], b))
	return hdr, ct, err
}

// sealText returns the text envelope of plaintext bound to b. The header
// is 18 bytes, a whole number of base64 quanta, so it and the ciphertext
// are encoded in place, without joining them first.
func (k *DetKey) sealText(plaintext []byte, b Binding) ([]byte, error) {
	hdr, ct, err := k.seal(plaintext, &b)
	if err != nil {
		return nil, err
	}
	const hdrChars = HeaderSize / 3 * 4
	text := make([]byte, len(Prefix)+hdrChars+b64.EncodedLen(len(ct)))
	copy(text, Prefix)
	b64.Encode(text[len(Prefix):], hdr[:])
	b64.Encode(text[len(Prefix)+hdrChars:], ct)
	return text, nil
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
	sp := getScratch()
	defer putScratch(sp)
	return k.open(sp, bin, &b)
}

// open is Open with the associated data built in sp. The plaintext is a
// fresh slice of its own.
func (k *DetKey) open(sp *scratchBuf, bin []byte, b *Binding) ([]byte, error) {
	e, err := Parse(bin)
	if err != nil {
		return nil, err
	}
	if err := validDet(*b); err != nil {
		return nil, err
	}
	if e.Algorithm != AlgAES256SIV {
		return nil, fmt.Errorf("%w: envelope is sealed with %s, not with this key's %s", ErrUnknownKey, algName(e.Algorithm), algName(AlgAES256SIV))
	}
	if e.KeyID != k.id {
		return nil, fmt.Errorf("%w: envelope is sealed under key %s, not %s", ErrUnknownKey, e.KeyID, k.id)
	}
	if cap(sp.b) < adLen(b) {
		sp.b = make([]byte, 0, adLen(b))
	}
	pt, err := k.siv.DecryptDeterministically(e.Ciphertext, appendAD(sp.b[:0], bin[:HeaderSize], b))
	if err != nil {
		return nil, fmt.Errorf("%w: field %q", ErrTampered, b.Path)
	}
	return pt, nil
}

// openDetText decodes and opens the text envelope s under k. The binary
// envelope goes to scratch after the associated data; the plaintext is
// Tink's fresh slice, nothing else's.
func openDetText[T ~string | ~[]byte](k *DetKey, s T, b *Binding) ([]byte, error) {
	if err := checkTextLen(len(s)); err != nil {
		return nil, err
	}
	if !IsText(s) {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	sp := getScratch()
	defer putScratch(sp)
	a, n := adLen(b), b64.DecodedLen(len(s)-len(Prefix))
	if cap(sp.b) < a+n+decodeSlack {
		sp.b = make([]byte, 0, a+n+decodeSlack)
	}
	bin, err := decodeText(sp.b[a:a+n+decodeSlack], s)
	if err != nil {
		return nil, err
	}
	return k.open(&scratchBuf{b: sp.b[:0:a]}, bin, b)
}

// OpenString authenticates and decrypts the text envelope s bound to b and
// returns the plaintext as a string.
func (k *DetKey) OpenString(s string, b Binding) (string, error) {
	pt, err := openDetText(k, s, &b)
	if err != nil {
		return "", err
	}
	return unsafe.String(unsafe.SliceData(pt), len(pt)), nil // pt is no one else's
}

// OpenBytes authenticates and decrypts the text envelope s bound to b and
// returns the plaintext in a new slice.
func (k *DetKey) OpenBytes(s []byte, b Binding) ([]byte, error) {
	return openDetText(k, s, &b)
}
