package bench

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
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
