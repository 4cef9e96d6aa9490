// Package envelope seals and opens one field value under one data key (DEK).
//
// It is the innermost layer of zonekey and does no I/O: given a Key (a DEK and
// its id) and the Binding of the value (field path, map key, subject), Seal
// produces an envelope and Open reverses it. The binding is not optional: it
// is authenticated as associated data, so a ciphertext copied into another
// field or another subject's record fails to open with ErrTampered.
//
// An envelope is a versioned binary structure (see docs/format.md for the
// byte-by-byte layout and test vectors). Algorithm 0x01, randomized AES-256-GCM
// under a Key, is what every encrypted field uses unless it asks otherwise:
//
//	version(1) | algorithm(1) | DEK id(16) | nonce(12) | ciphertext+tag
//
// Algorithm 0x02 is deterministic AES-SIV under a DetKey, for fields that
// must be found by equality: the same plaintext at the same field path and
// map key under the same key always gives the same envelope. It binds no
// subject (that is what makes equal values of different subjects match) and
// so reveals which records share a value; see DetKey.
//
//	version(1) | algorithm(1) | key id(16) | synthetic IV(16) | ciphertext
//
// In text form (string fields, and []byte fields, so that both are
// recognisable) it is the prefix "zk1." followed by the unpadded base64url
// encoding of the binary form. The text form is canonical: parsers accept
// exactly the string Seal would produce for a binary envelope, and refuse
// padding, line breaks and non-zero unused bits in the last character.
package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/zonekey/zonekey/internal/errs"
)

// Format constants.
const (
	// Version1 is the only envelope format version.
	Version1 byte = 0x01
	// AlgAES256GCM is AES-256-GCM with a random 96-bit nonce (Key).
	AlgAES256GCM byte = 0x01
	// AlgAES256SIV is deterministic AES-SIV (RFC 5297) with a 64-byte key
	// (DetKey).
	AlgAES256SIV byte = 0x02

	// Prefix starts every envelope in text form.
	Prefix = "zk1."

	// KeyIDSize is the length of a DEK id in bytes.
	KeyIDSize = 16
	// KeySize is the length of a DEK in bytes (AES-256).
	KeySize = 32
	// NonceSize is the length of the AES-GCM nonce.
	NonceSize = 12
	// TagSize is the length of the AES-GCM authentication tag.
	TagSize = 16
	// HeaderSize is the length of version, algorithm and DEK id.
	HeaderSize = 2 + KeyIDSize
	// Overhead is how many bytes the binary form of an AES-GCM envelope
	// adds to a plaintext.
	Overhead = HeaderSize + NonceSize + TagSize

	// DetKeySize is the length of a DetKey's secret in bytes: two AES-256
	// keys, for S2V (CMAC) and for CTR.
	DetKeySize = 64
	// SIVSize is the length of AES-SIV's synthetic IV, which is also its
	// authentication tag.
	SIVSize = 16
	// DetOverhead is how many bytes the binary form of an AES-SIV
	// envelope adds to a plaintext.
	DetOverhead = HeaderSize + SIVSize

	// MaxPlaintext bounds the plaintext of one envelope (16 MiB). Parsers
	// refuse anything longer before decoding it.
	MaxPlaintext = 16 << 20
	// MaxBindingField bounds each string of a Binding.
	MaxBindingField = 1<<16 - 1
)

// Errors returned by this package, wrapped with detail. They are the same
// values as the sentinels of package zonekey.
var (
	// ErrFormat reports a value that is not a well-formed envelope:
	// missing prefix, bad base64, truncated, unknown version or algorithm,
	// or too long.
	ErrFormat = errs.Format
	// ErrTampered reports a well-formed envelope that failed
	// authentication: it was altered, or it is opened with another
	// binding (another field, map key or subject) than it was sealed with.
	ErrTampered = errs.Tampered
	// ErrUnknownKey reports an envelope sealed under another key than the
	// one used to open it: another key id, or another algorithm (an AES-SIV
	// envelope offered to an AES-GCM Key, or the reverse).
	ErrUnknownKey = errs.UnknownKey
)

// b64 is the text encoding. Strict makes the decoder refuse a last
// character whose unused low bits are not zero; without it, up to 16
// different strings decode to the same envelope. The decoder still skips CR
// and LF, which decodeText and TextKeyID refuse by checking lengths.
var b64 = base64.RawURLEncoding.Strict()

// KeyID identifies a DEK. It is random, carries no meaning, and is the only
// key reference an envelope holds.
type KeyID [KeyIDSize]byte

// NewKeyID returns a random KeyID.
func NewKeyID() KeyID {
	var id KeyID
	rand.Read(id[:]) // crypto/rand.Read never fails (it panics the process if the OS source does)
	return id
}

// String returns the id in lowercase hex.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// ParseKeyID parses the hex form produced by KeyID.String.
func ParseKeyID(s string) (KeyID, error) {
	var id KeyID
	if len(s) != hex.EncodedLen(KeyIDSize) {
		return id, fmt.Errorf("%w: key id must be %d hex digits", ErrFormat, 2*KeyIDSize)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: key id: %v", ErrFormat, err)
	}
	return id, nil
}

// Binding is what an envelope is bound to besides its DEK: where the value
// lives and whose it is. Seal and Open must be given the same Binding.
type Binding struct {
	Path    string // field path in its record type, e.g. "Address.Street" or "Phones[]"
	MapKey  string // key of the map entry holding the value, or "" if none
	Subject string // data subject of the record, or "" for subject-less records
}

func (b *Binding) valid() error {
	if len(b.Path) > MaxBindingField || len(b.MapKey) > MaxBindingField || len(b.Subject) > MaxBindingField {
		return fmt.Errorf("%w: binding field longer than %d bytes", ErrFormat, MaxBindingField)
	}
	return nil
}

const adLabel = "zonekey/field/v1"

// adHeadSize is the size of the fixed start of the associated data: the
// label and the header.
const adHeadSize = len(adLabel) + HeaderSize

// appendAD appends the associated data of an envelope with header hdr and
// binding b: a domain label, the header (version, algorithm, DEK id) and each
// binding string with a 16-bit length prefix.
func appendAD(dst []byte, hdr []byte, b *Binding) []byte {
	dst = append(dst, adLabel...)
	dst = append(dst, hdr...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b.Path)))
	dst = append(dst, b.Path...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b.MapKey)))
	dst = append(dst, b.MapKey...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b.Subject)))
	dst = append(dst, b.Subject...)
	return dst
}

// Key is a DEK ready for use. It is safe for concurrent use.
type Key struct {
	id   KeyID
	aead cipher.AEAD // AES-256-GCM that draws its own random nonce
	// head is the label and the header of the key's envelopes: the start
	// of the associated data of every value sealed or opened under it.
	head [adHeadSize]byte
}

// NewKey returns a Key for the 32-byte secret with the given id. The secret
// is not retained beyond the AES key schedule.
func NewKey(id KeyID, secret []byte) (*Key, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("%w: DEK must be %d bytes, got %d", ErrFormat, KeySize, len(secret))
	}
	block, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	k := &Key{id: id, aead: aead}
	copy(k.head[:], adLabel)
	k.head[len(adLabel)], k.head[len(adLabel)+1] = Version1, AlgAES256GCM
	copy(k.head[len(adLabel)+2:], id[:])
	return k, nil
}

// ID returns the key's id.
func (k *Key) ID() KeyID { return k.id }

// Scratch buffers keep the hot path to one allocation: the result. A
// scratchBuf is one buffer; its users slice b up to its capacity, growing
// it as needed, and ignore its length.
type scratchBuf struct {
	b    []byte
	slot *scratchSlot // the slot it lives in; nil for a pooled buffer
}

// A scratchSlot holds a buffer that one caller at a time claims with a
// compare-and-swap, and releases with a store: less work than sync.Pool's
// Get and Put, with no pointer stores (which cost a write barrier while
// the garbage collector marks). A caller tries the slot that its stack's
// address picks, so that goroutines, which have distinct stacks, mostly
// pick distinct slots; when that slot is busy it takes a buffer from the
// pool instead.
type scratchSlot struct {
	claimed atomic.Uint32
	buf     scratchBuf
	_       [24]byte // to 64 bytes, a cache line each: no false sharing
}

// scratchSlots is a power of two.
var scratchSlots [64]scratchSlot

var scratchPool = sync.Pool{New: func() any { return &scratchBuf{b: make([]byte, 0, 1024)} }}

func init() {
	for i := range scratchSlots {
		scratchSlots[i].buf.slot = &scratchSlots[i]
	}
}

// getScratch returns a scratch buffer; give it back with putScratch.
func getScratch() *scratchBuf {
	var probe byte
	// Goroutine stacks are at least 2 KiB apart.
	s := &scratchSlots[uintptr(unsafe.Pointer(&probe))>>11%uintptr(len(scratchSlots))]
	if s.claimed.CompareAndSwap(0, 1) {
		return &s.buf
	}
	return scratchPool.Get().(*scratchBuf)
}

// putScratch gives back a buffer from getScratch.
func putScratch(p *scratchBuf) {
	if cap(p.b) > 64<<10 { // don't keep huge buffers alive
		p.b = nil
	}
	if p.slot != nil {
		p.slot.claimed.Store(0)
		return
	}
	if p.b != nil {
		scratchPool.Put(p)
	}
}

// Scratch lends the working memory of seals and opens to a caller that
// handles several values in a row, such as the fields of one record: it
// claims the memory on first use and keeps it until Release, where each
// call without one claims and gives back its own. The functions that take
// a Scratch (SealStringWith, SealBytesWith, OpenStringFuncWith,
// OpenBytesFuncWith) otherwise do what those without do. It holds no
// plaintext between calls: values are decrypted straight into their
// results, and sealed from their inputs.
//
// The zero Scratch is ready to use, and can be used again after Release.
// A Scratch is not safe for concurrent use.
type Scratch struct {
	// slot is 1 + the index of the claimed slot in scratchSlots, or 0:
	// an integer, so that claiming and releasing store no pointer, which
	// would cost a write barrier while the garbage collector marks.
	slot   uint32
	pooled *scratchBuf // the buffer taken from the pool when the slot was busy
}

// buf returns the claimed buffer, claiming one first if needed.
func (s *Scratch) buf() *scratchBuf {
	if s.slot != 0 {
		return &scratchSlots[s.slot-1].buf
	}
	if s.pooled != nil {
		return s.pooled
	}
	var probe byte
	// Goroutine stacks are at least 2 KiB apart.
	i := uintptr(unsafe.Pointer(&probe)) >> 11 % uintptr(len(scratchSlots))
	if scratchSlots[i].claimed.CompareAndSwap(0, 1) {
		s.slot = uint32(i) + 1
		return &scratchSlots[i].buf
	}
	s.pooled = scratchPool.Get().(*scratchBuf)
	return s.pooled
}

// Release gives back the memory s holds, if any.
func (s *Scratch) Release() {
	if s.slot != 0 {
		putScratch(&scratchSlots[s.slot-1].buf)
		s.slot = 0
	} else if s.pooled != nil {
		putScratch(s.pooled)
		s.pooled = nil
	}
}

// putAD writes into dst, which has room for adLen(b) bytes, the associated
// data of a value bound to b under k (what appendAD writes with k's
// header), and returns it. The label and header go as one fixed-size block.
func (k *Key) putAD(dst []byte, b *Binding) []byte {
	dst = dst[:adLen(b)]
	*(*[adHeadSize]byte)(dst) = k.head
	putBinding(dst[adHeadSize:], b)
	return dst
}

// putBinding writes the binding part of the associated data (each string
// of b after its 16-bit length) into dst, which has room for it.
func putBinding(dst []byte, b *Binding) {
	p, m := len(b.Path), len(b.MapKey)
	binary.BigEndian.PutUint16(dst, uint16(p))
	copy(dst[2:], b.Path)
	dst = dst[2+p:]
	binary.BigEndian.PutUint16(dst, uint16(m))
	if m > 0 {
		copy(dst[2:], b.MapKey)
	}
	dst = dst[2+m:]
	binary.BigEndian.PutUint16(dst, uint16(len(b.Subject)))
	copy(dst[2:], b.Subject)
}

// checkSeal checks the arguments of a seal.
func checkSeal(plaintext []byte, b *Binding) error {
	if len(plaintext) > MaxPlaintext {
		return fmt.Errorf("%w: plaintext longer than %d bytes", ErrFormat, MaxPlaintext)
	}
	return b.valid()
}

// sealInto seals plaintext bound to b. It uses sp as scratch for the
// associated data and the binary envelope, growing it when needed, and
// returns the binary envelope, which aliases sp.
func (k *Key) sealInto(sp *scratchBuf, plaintext []byte, b *Binding) ([]byte, error) {
	if err := checkSeal(plaintext, b); err != nil {
		return nil, err
	}
	a := adLen(b)
	if need := a + Overhead + len(plaintext); cap(sp.b) < need {
		sp.b = make([]byte, 0, need)
	}
	ad := k.putAD(sp.b, b)
	bin := ad[a : a+HeaderSize]
	*(*[HeaderSize]byte)(bin) = [HeaderSize]byte(k.head[len(adLabel):])
	// The AEAD writes nonce || ciphertext || tag after the header.
	return k.aead.Seal(bin, nil, plaintext, ad), nil
}

// Seal returns the binary envelope of plaintext bound to b.
func (k *Key) Seal(plaintext []byte, b Binding) ([]byte, error) {
	sp := getScratch()
	defer putScratch(sp)
	bin, err := k.sealInto(sp, plaintext, &b)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), bin...), nil
}

// sealText returns the text envelope as a freshly allocated byte slice (the
// only allocation of the call for values that fit the scratch), using sp
// as working memory.
func (k *Key) sealText(sp *scratchBuf, plaintext []byte, b *Binding) ([]byte, error) {
	bin, err := k.sealInto(sp, plaintext, b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(Prefix)+b64.EncodedLen(len(bin)))
	copy(out, Prefix)
	b64.Encode(out[len(Prefix):], bin)
	return out, nil
}

// SealString returns the text envelope of the string s bound to b.
func (k *Key) SealString(s string, b Binding) (string, error) {
	var sc Scratch
	defer sc.Release()
	return k.SealStringWith(&sc, s, b)
}

// SealStringWith is SealString working in sc.
func (k *Key) SealStringWith(sc *Scratch, s string, b Binding) (string, error) {
	// The AEAD only reads its plaintext, so viewing s as bytes is safe.
	out, err := k.sealText(sc.buf(), unsafe.Slice(unsafe.StringData(s), len(s)), &b)
	if err != nil {
		return "", err
	}
	return unsafe.String(unsafe.SliceData(out), len(out)), nil
}

// SealBytes returns the text envelope of p bound to b, as bytes.
func (k *Key) SealBytes(p []byte, b Binding) ([]byte, error) {
	var sc Scratch
	defer sc.Release()
	return k.sealText(sc.buf(), p, &b)
}

// SealBytesWith is SealBytes working in sc.
func (k *Key) SealBytesWith(sc *Scratch, p []byte, b Binding) ([]byte, error) {
	return k.sealText(sc.buf(), p, &b)
}

// Envelope is a parsed binary envelope. Its slices alias the parsed input.
type Envelope struct {
	Version   byte
	Algorithm byte
	KeyID     KeyID
	// Nonce is the AES-GCM nonce; nil for AES-SIV, which has none.
	Nonce []byte
	// Ciphertext is, for AES-GCM, the ciphertext followed by the tag; for
	// AES-SIV, the synthetic IV followed by the ciphertext.
	Ciphertext []byte
}

// limits returns the minimum and maximum binary length of an envelope
// of algorithm alg (a known one).
func limits(alg byte) (minLen, maxLen int) {
	if alg == AlgAES256SIV {
		return DetOverhead, DetOverhead + MaxPlaintext
	}
	return Overhead, Overhead + MaxPlaintext
}

// Parse parses a binary envelope of either algorithm without authenticating
// it. It never panics.
func Parse(bin []byte) (Envelope, error) {
	var e Envelope
	if err := checkBinary(bin); err != nil {
		return e, err
	}
	e.Version, e.Algorithm = bin[0], bin[1]
	copy(e.KeyID[:], bin[2:HeaderSize])
	if e.Algorithm == AlgAES256GCM {
		e.Nonce = bin[HeaderSize : HeaderSize+NonceSize]
		e.Ciphertext = bin[HeaderSize+NonceSize:]
	} else {
		e.Ciphertext = bin[HeaderSize:]
	}
	return e, nil
}

// checkBinary is Parse's validation of the binary envelope bin: after it,
// bin holds a known version and algorithm and a length that algorithm
// allows.
func checkBinary(bin []byte) error {
	if len(bin) < DetOverhead {
		return fmt.Errorf("%w: %d bytes is shorter than the minimum %d", ErrFormat, len(bin), DetOverhead)
	}
	if len(bin) > Overhead+MaxPlaintext {
		return fmt.Errorf("%w: envelope longer than %d bytes", ErrFormat, Overhead+MaxPlaintext)
	}
	if err := checkHeader(bin[0], bin[1]); err != nil {
		return err
	}
	minLen, maxLen := limits(bin[1])
	if len(bin) < minLen {
		return fmt.Errorf("%w: %d bytes is shorter than the minimum %d of algorithm 0x%02x", ErrFormat, len(bin), minLen, bin[1])
	}
	if len(bin) > maxLen {
		return fmt.Errorf("%w: envelope of algorithm 0x%02x longer than %d bytes", ErrFormat, bin[1], maxLen)
	}
	return nil
}

func checkHeader(version, alg byte) error {
	if version != Version1 {
		return fmt.Errorf("%w: unknown version 0x%02x", ErrFormat, version)
	}
	if alg != AlgAES256GCM && alg != AlgAES256SIV {
		return fmt.Errorf("%w: unknown algorithm 0x%02x", ErrFormat, alg)
	}
	return nil
}

// algName names a known algorithm in errors.
func algName(alg byte) string {
	if alg == AlgAES256SIV {
		return "AES-SIV (0x02)"
	}
	return "AES-256-GCM (0x01)"
}

// maxText is the longest text envelope any parser accepts.
var maxText = len(Prefix) + b64.EncodedLen(Overhead+MaxPlaintext)

// IsText reports whether s starts with the text prefix. It says nothing of
// whether the rest is well formed; ParseText and TextKeyID do.
func IsText[T ~string | ~[]byte](s T) bool {
	return len(s) >= len(Prefix) && string(s[:len(Prefix)]) == Prefix
}

// TextKeyID returns the DEK id of a text envelope after checking its prefix,
// version and algorithm, without decoding the rest. It is how a caller finds
// which key to fetch before opening.
func TextKeyID[T ~string | ~[]byte](s T) (KeyID, error) {
	_, id, err := TextHeader(s)
	return id, err
}

// TextHeader is TextKeyID that also returns the envelope's algorithm
// (AlgAES256GCM or AlgAES256SIV), which says what kind of key opens it.
func TextHeader[T ~string | ~[]byte](s T) (alg byte, id KeyID, err error) {
	if !IsText(s) {
		return 0, id, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	// 18 header bytes are exactly 24 base64 characters.
	const hdrChars = HeaderSize / 3 * 4
	if len(s) < len(Prefix)+hdrChars {
		return 0, id, fmt.Errorf("%w: truncated header", ErrFormat)
	}
	var hdr [HeaderSize]byte
	// A CR or LF among the characters would be skipped and leave hdr short.
	if n, err := b64.Decode(hdr[:], []byte(s[len(Prefix):len(Prefix)+hdrChars])); err != nil || n != HeaderSize {
		return 0, id, fmt.Errorf("%w: header is not base64url", ErrFormat)
	}
	if err := checkHeader(hdr[0], hdr[1]); err != nil {
		return 0, id, err
	}
	copy(id[:], hdr[2:])
	return hdr[1], id, nil
}

// decodeText decodes the body of the text envelope s into dst, which must
// have room for b64.DecodedLen of it, and returns the binary form.
func decodeText[T ~string | ~[]byte](dst []byte, s T) ([]byte, error) {
	if !IsText(s) {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	var src []byte
	switch v := any(s).(type) {
	case string:
		src = unsafe.Slice(unsafe.StringData(v), len(v))
	case []byte:
		src = v
	default:
		src = []byte(s)
	}
	return decodeBody(dst, src[len(Prefix):])
}

// decodeSlack is the room a decode destination should have past the
// decoded bytes: the decoder converts eight characters at a time, writing
// eight bytes, only while that much room is left, and goes four characters
// at a time, much more slowly, for the rest.
const decodeSlack = 8

// decodeBody decodes body, the text form after the prefix, into dst, which
// must have room for b64.DecodedLen of it (and should have decodeSlack
// more), and returns the binary form.
func decodeBody(dst, body []byte) ([]byte, error) {
	m, err := b64.Decode(dst, body)
	// The decoder skips CR and LF; a body holding any decodes to fewer
	// bytes than its length implies. Refusing it keeps the form canonical.
	if err != nil || b64.EncodedLen(m) != len(body) {
		return nil, fmt.Errorf("%w: not canonical unpadded base64url", ErrFormat)
	}
	return dst[:m], nil
}

func checkTextLen(n int) error {
	if n > maxText {
		return fmt.Errorf("%w: envelope longer than %d characters", ErrFormat, maxText)
	}
	return nil
}

// ParseText parses a text envelope without authenticating it. The returned
// Envelope does not alias s.
func ParseText[T ~string | ~[]byte](s T) (Envelope, error) {
	if err := checkTextLen(len(s)); err != nil {
		return Envelope{}, err
	}
	if !IsText(s) {
		return Envelope{}, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	bin, err := decodeText(make([]byte, b64.DecodedLen(len(s)-len(Prefix))), s)
	if err != nil {
		return Envelope{}, err
	}
	return Parse(bin)
}

// openInto authenticates and decrypts the binary envelope bin bound to b. It
// builds the associated data in adBuf and appends the plaintext to dst; the
// three must not overlap.
func (k *Key) openInto(dst, adBuf, bin []byte, b *Binding) ([]byte, error) {
	if err := checkBinary(bin); err != nil {
		return nil, err
	}
	if err := b.valid(); err != nil {
		return nil, err
	}
	if bin[1] != AlgAES256GCM {
		return nil, fmt.Errorf("%w: envelope is sealed with %s, not with this key's %s", ErrUnknownKey, algName(bin[1]), algName(AlgAES256GCM))
	}
	if id := KeyID(bin[2:HeaderSize]); id != k.id {
		return nil, fmt.Errorf("%w: envelope is sealed under DEK %s, not %s", ErrUnknownKey, id, k.id)
	}
	ad := appendAD(adBuf, bin[:HeaderSize], b)
	pt, err := k.aead.Open(dst, nil, bin[HeaderSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: field %q", ErrTampered, b.Path)
	}
	return pt, nil
}

func adLen(b *Binding) int {
	return len(adLabel) + HeaderSize + 6 + len(b.Path) + len(b.MapKey) + len(b.Subject)
}

// Open authenticates and decrypts the binary envelope bin bound to b.
func (k *Key) Open(bin []byte, b Binding) ([]byte, error) {
	if err := b.valid(); err != nil {
		return nil, err
	}
	sp := getScratch()
	defer putScratch(sp)
	if cap(sp.b) < adLen(&b) {
		sp.b = make([]byte, 0, adLen(&b))
	}
	return k.openInto(nil, sp.b[:0], bin, &b)
}

// OpenString authenticates and decrypts the text envelope s bound to b and
// returns the plaintext as a string.
func (k *Key) OpenString(s string, b Binding) (string, error) {
	var sc Scratch
	defer sc.Release()
	return openString(&sc, unsafe.Slice(unsafe.StringData(s), len(s)), &b, k, nil)
}

// OpenBytes authenticates and decrypts the text envelope s bound to b and
// returns the plaintext in a new slice.
func (k *Key) OpenBytes(s []byte, b Binding) ([]byte, error) {
	var sc Scratch
	defer sc.Release()
	return openText(&sc, s, &b, k, nil)
}

// OpenStringFunc opens the text envelope s bound to b like OpenString, under
// the Key that key returns for the DEK id in its header. It decodes s once:
// a caller that must look the key up by id does not parse the header first.
// key is called only once s has decoded to a well-formed AES-256-GCM
// envelope; an error from it is returned as it is. The Key key returns must
// have the id it was asked for.
func OpenStringFunc(s string, b Binding, key func(KeyID) (*Key, error)) (string, error) {
	var sc Scratch
	defer sc.Release() // also if key panics: the slot is not lost
	return OpenStringFuncWith(&sc, s, b, key)
}

// OpenStringFuncWith is OpenStringFunc working in sc.
func OpenStringFuncWith(sc *Scratch, s string, b Binding, key func(KeyID) (*Key, error)) (string, error) {
	return openString(sc, unsafe.Slice(unsafe.StringData(s), len(s)), &b, nil, key)
}

// OpenBytesFunc is OpenStringFunc for a text envelope held in bytes; it
// returns the plaintext in a new slice.
func OpenBytesFunc(s []byte, b Binding, key func(KeyID) (*Key, error)) ([]byte, error) {
	var sc Scratch
	defer sc.Release() // also if key panics: the slot is not lost
	return openText(&sc, s, &b, nil, key)
}

// OpenBytesFuncWith is OpenBytesFunc working in sc.
func OpenBytesFuncWith(sc *Scratch, s []byte, b Binding, key func(KeyID) (*Key, error)) ([]byte, error) {
	return openText(sc, s, &b, nil, key)
}

// openString opens the text envelope text (the bytes of a string, only
// read) under k, or under the key that key returns if k is nil, and returns
// the plaintext as a string.
func openString(sc *Scratch, text []byte, b *Binding, k *Key, key func(KeyID) (*Key, error)) (string, error) {
	pt, err := openText(sc, text, b, k, key)
	// pt is a fresh allocation nothing else refers to.
	return unsafe.String(unsafe.SliceData(pt), len(pt)), err
}

// openText decodes and opens the text envelope text bound to b under k, or
// under the key that key returns for the id in its header if k is nil, and
// returns the plaintext in a new slice (nil if it is empty). It decodes
// into scratch and decrypts straight into the result, so that no
// plaintext is left in the scratch.
func openText(sc *Scratch, text []byte, b *Binding, k *Key, key func(KeyID) (*Key, error)) ([]byte, error) {
	if len(text) > maxText {
		return nil, checkTextLen(len(text))
	}
	if !IsText(text) {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrFormat, Prefix)
	}
	body := text[len(Prefix):]
	// Scratch layout: binary envelope | associated data. The binding may
	// be invalid (it is checked after the lookup, as Open does): size
	// the associated data for what putAD would write.
	n := b64.DecodedLen(len(body))
	a := adLen(b)
	sp := sc.buf()
	if cap(sp.b) < n+decodeSlack+a {
		sp.b = make([]byte, 0, n+decodeSlack+a)
	}
	buf := sp.b[:n+decodeSlack+a]
	m, err := b64.Decode(buf[:n+decodeSlack], body)
	// The decoder skips CR and LF; a body holding any decodes to fewer
	// bytes than its length implies. Refusing it keeps the form canonical.
	if err != nil || b64.EncodedLen(m) != len(body) || m < Overhead || buf[0] != Version1 || buf[1] != AlgAES256GCM {
		return nil, malformed(body)
	}
	bin := buf[:m]
	id := KeyID(bin[2:HeaderSize])
	if k == nil {
		if k, err = key(id); err != nil {
			return nil, err
		}
	}
	if err := b.valid(); err != nil {
		return nil, err
	}
	if k.id != id {
		return nil, fmt.Errorf("%w: envelope is sealed under DEK %s, not %s", ErrUnknownKey, id, k.id)
	}
	// The header is version 1, AES-GCM and k's id: k's own.
	ad := k.putAD(buf[n+decodeSlack:], b)
	var dst []byte
	if ptLen := m - Overhead; ptLen > 0 {
		dst = make([]byte, 0, ptLen)
	}
	pt, err := k.aead.Open(dst, nil, bin[HeaderSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: field %q", ErrTampered, b.Path)
	}
	return pt, nil
}

// malformed returns the error of openText for the body of a text envelope
// that is not a well-formed AES-GCM envelope: why it does not decode, or
// why the binary envelope is malformed, or that it is of another algorithm.
func malformed(body []byte) error {
	bin, err := decodeBody(make([]byte, b64.DecodedLen(len(body))), body)
	if err != nil {
		return err
	}
	if err := checkBinary(bin); err != nil {
		return err
	}
	return fmt.Errorf("%w: envelope is sealed with %s, not with this key's %s", ErrUnknownKey, algName(bin[1]), algName(AlgAES256GCM))
}
