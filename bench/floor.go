package bench

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"testing"
	"unsafe"

	"github.com/tink-crypto/tink-go/v2/daead/subtle"
)

// Envelope sizes, as documented in package envelope: a text envelope is
// "zk1." and the unpadded base64url of
// version(1) | algorithm(1) | DEK id(16) | nonce(12) | ciphertext | tag(16).
const (
	textPrefix = "zk1."
	headerSize = 18
	adLabel    = "zonekey/field/v1"
)

var b64 = base64.RawURLEncoding

// ADSize is the size of the associated data zonekey authenticates for a
// value at path (not in a map) of subject: a domain label, the 18-byte
// header and the three binding strings, each with a 2-byte length.
func ADSize(path, subject string) int {
	return len(adLabel) + headerSize + 6 + len(path) + len(subject)
}

// Floor is the least work that sealing or opening one field value can take
// in zonekey's format, done with the standard library alone: one
// AES-256-GCM seal or open with associated data of the same size, a fresh
// nonce from crypto/rand (cipher.NewGCMWithRandomNonce), and the base64url
// encoding or decoding of the same bytes zonekey writes (text prefix,
// header, nonce, ciphertext and tag). Its associated data is precomputed,
// its scratch buffer reused, and its only allocation is the output value.
//
// A Floor is not safe for concurrent use.
type Floor struct {
	aead    cipher.AEAD
	pt, ad  []byte
	hdr     [headerSize]byte
	scratch []byte // binary envelope, reused
	ptbuf   []byte // opened plaintext, reused
	sealed  []byte // a text envelope of pt, for Open
}

// NewFloor returns the floor of a size-byte value with adSize bytes of
// associated data (see ADSize).
func NewFloor(size, adSize int) *Floor {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		panic(err)
	}
	f := &Floor{aead: aead, pt: []byte(Text(size, 1)), ad: make([]byte, adSize)}
	rand.Read(f.ad)
	f.hdr[0], f.hdr[1] = 1, 1
	rand.Read(f.hdr[2:])
	f.scratch = make([]byte, 0, headerSize+aead.NonceSize()+size+aead.Overhead())
	f.ptbuf = make([]byte, 0, size)
	f.sealed = f.Seal()
	if pt, err := f.Open(); err != nil || pt != string(f.pt) {
		panic(fmt.Sprintf("bench: floor round trip failed: %v", err))
	}
	return f
}

// Size returns the plaintext size.
func (f *Floor) Size() int { return len(f.pt) }

// Seal seals the value and returns its text form in a new slice.
func (f *Floor) Seal() []byte {
	bin := append(f.scratch[:0], f.hdr[:]...)
	bin = f.aead.Seal(bin, nil, f.pt, f.ad)
	f.scratch = bin[:0]
	out := make([]byte, len(textPrefix)+b64.EncodedLen(len(bin)))
	copy(out, textPrefix)
	b64.Encode(out[len(textPrefix):], bin)
	return out
}

// Open decodes and opens the text form made by NewFloor and returns the
// plaintext as a new string.
func (f *Floor) Open() (string, error) {
	body := f.sealed[len(textPrefix):]
	n, err := b64.Decode(f.scratch[:cap(f.scratch)], body)
	if err != nil {
		return "", err
	}
	bin := f.scratch[:n]
	pt, err := f.aead.Open(f.ptbuf[:0], nil, bin[headerSize:], f.ad)
	if err != nil {
		return "", err
	}
	return string(pt), nil
}

// BenchmarkSeal measures Seal.
func (f *Floor) BenchmarkSeal(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(f.pt)))
	for b.Loop() {
		f.Seal()
	}
}

// BenchmarkOpen measures Open.
func (f *Floor) BenchmarkOpen(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(f.pt)))
	for b.Loop() {
		if _, err := f.Open(); err != nil {
			b.Fatal(err)
		}
	}
}

// FloorSet is the floor of several values, sealed or opened one after the
// other: the floor of a record with those fields.
type FloorSet []*Floor

// NewFloorSet returns the floors of fields of subject's record.
func NewFloorSet(fields []FieldSpec, subject string) FloorSet {
	fs := make(FloorSet, len(fields))
	for i, f := range fields {
		fs[i] = NewFloor(f.Size, ADSize(f.Path, subject))
	}
	return fs
}

func (fs FloorSet) bytes() int64 {
	var n int64
	for _, f := range fs {
		n += int64(f.Size())
	}
	return n
}

// BenchmarkSeal measures sealing every value of the set once per op.
func (fs FloorSet) BenchmarkSeal(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(fs.bytes())
	for b.Loop() {
		for _, f := range fs {
			f.Seal()
		}
	}
}

// BenchmarkOpen measures opening every value of the set once per op.
func (fs FloorSet) BenchmarkOpen(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(fs.bytes())
	for b.Loop() {
		for _, f := range fs {
			if _, err := f.Open(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// HMACFloor is the least work computing one blind-index term can take in
// zonekey's format (see fieldcrypt's IndexTerms): one HMAC-SHA256 of the
// value under a 32-byte key, truncated to the index's bits (the unused low
// bits of the last byte cleared), written as the key version in decimal,
// ":" and the truncated sum in lowercase hex, and handed over as a new
// string. The HMAC is made once and Reset for each term, and the sum and
// the term are built in reused buffers, so that, as for Floor, the only
// allocation is the value returned: a term that a caller can keep.
//
// An HMACFloor is not safe for concurrent use.
type HMACFloor struct {
	h       hash.Hash
	value   []byte
	bits    int
	version uint64
	sum     [sha256.Size]byte
	out     []byte // the term, reused
}

// NewHMACFloor returns the floor of the bits-bit term of a size-byte value
// under version 1 of an index key.
func NewHMACFloor(size, bits int) *HMACFloor {
	if bits < 1 || bits > 8*sha256.Size {
		panic(fmt.Sprintf("bench: %d-bit index", bits))
	}
	key := make([]byte, 32)
	rand.Read(key)
	return &HMACFloor{
		h:       hmac.New(sha256.New, key),
		value:   []byte(Text(size, 1)),
		bits:    bits,
		version: 1,
		out:     make([]byte, 0, 10+1+2*sha256.Size),
	}
}

// Size returns the value's size.
func (f *HMACFloor) Size() int { return len(f.value) }

// Term computes the value's term.
func (f *HMACFloor) Term() string {
	f.h.Reset()
	f.h.Write(f.value)
	sum := f.h.Sum(f.sum[:0])
	nb := (f.bits + 7) / 8
	sum = sum[:nb]
	if r := f.bits % 8; r != 0 {
		sum[nb-1] &= byte(0xff << (8 - r))
	}
	b := strconv.AppendUint(f.out[:0], f.version, 10)
	b = append(b, ':')
	b = hex.AppendEncode(b, sum)
	f.out = b[:0]
	return string(b)
}

// Benchmark measures Term.
func (f *HMACFloor) Benchmark(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(f.value)))
	for b.Loop() {
		f.Term() // b.Loop keeps the result alive: it is made as a caller's would be
	}
}

// SIVFloor is the least work sealing or opening one deterministic value
// can take in zonekey's format (package envelope's DetKey), done with
// tink-go's AES-SIV alone: one EncryptDeterministically or
// DecryptDeterministically under a 64-byte key with associated data of the
// same size as zonekey's (ADSize of the path and no subject), and base64url
// of the same bytes zonekey writes (text prefix, header, SIV and
// ciphertext). Its associated data is precomputed and its scratch buffer
// reused; its allocations are tink's (the ciphertext or plaintext) and the
// output value.
//
// A SIVFloor is not safe for concurrent use.
type SIVFloor struct {
	siv     *subtle.AESSIV
	pt, ad  []byte
	hdr     [headerSize]byte
	scratch []byte // decoded binary envelope, reused
	sealed  []byte // a text envelope of pt, for Open
}

// NewSIVFloor returns the floor of a size-byte deterministic value with
// adSize bytes of associated data (see ADSize).
func NewSIVFloor(size, adSize int) *SIVFloor {
	key := make([]byte, 64)
	rand.Read(key)
	siv, err := subtle.NewAESSIV(key)
	if err != nil {
		panic(err)
	}
	f := &SIVFloor{siv: siv, pt: []byte(Text(size, 1)), ad: make([]byte, adSize)}
	rand.Read(f.ad)
	f.hdr[0], f.hdr[1] = 1, 2
	rand.Read(f.hdr[2:])
	f.scratch = make([]byte, headerSize+aes.BlockSize+size)
	f.sealed = f.Seal()
	if pt, err := f.Open(); err != nil || pt != string(f.pt) {
		panic(fmt.Sprintf("bench: SIV floor round trip failed: %v", err))
	}
	return f
}

// Size returns the plaintext size.
func (f *SIVFloor) Size() int { return len(f.pt) }

// Seal seals the value and returns its text form in a new slice. The
// header is 18 bytes, a whole number of base64 quanta, so it and the
// ciphertext are encoded in place, without joining them first.
func (f *SIVFloor) Seal() []byte {
	ct, err := f.siv.EncryptDeterministically(f.pt, f.ad)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(textPrefix)+b64.EncodedLen(headerSize+len(ct)))
	copy(out, textPrefix)
	b64.Encode(out[len(textPrefix):], f.hdr[:])
	b64.Encode(out[len(textPrefix)+b64.EncodedLen(headerSize):], ct)
	return out
}

// Open decodes and opens the text form made by NewSIVFloor and returns the
// plaintext as a string sharing tink's freshly allocated plaintext.
func (f *SIVFloor) Open() (string, error) {
	n, err := b64.Decode(f.scratch, f.sealed[len(textPrefix):])
	if err != nil {
		return "", err
	}
	pt, err := f.siv.DecryptDeterministically(f.scratch[headerSize:n], f.ad)
	if err != nil {
		return "", err
	}
	return unsafe.String(unsafe.SliceData(pt), len(pt)), nil
}

// BenchmarkSeal measures Seal.
func (f *SIVFloor) BenchmarkSeal(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(f.pt)))
	for b.Loop() {
		f.Seal()
	}
}

// BenchmarkOpen measures Open.
func (f *SIVFloor) BenchmarkOpen(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(f.pt)))
	for b.Loop() {
		if _, err := f.Open(); err != nil {
			b.Fatal(err)
		}
	}
}
