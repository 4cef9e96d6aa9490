package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
)

// This file is a second implementation of the envelope, written from
// docs/format.md alone. It shares no code and no constants with the package
// (only the plain Binding struct), uses crypto/cipher.NewGCM with an explicit
// nonce, implements AES-SIV from RFC 5297 itself (CMAC, S2V, CTR over
// crypto/aes) instead of using Tink's, and decides canonical base64url by
// re-encoding rather than with a strict decoder. The vectors and the differential tests check the package
// against it in both directions, so that a change to either the code or the
// document that makes them disagree fails a test.

const (
	refPrefix    = "zk1."
	refLabel     = "zonekey/field/v1"
	refVersion   = 0x01
	refAlgGCM    = 0x01
	refAlgSIV    = 0x02
	refSIVKeyLen = 64
	refSIVLen    = 16
	refDetMinLen = refHdrLen + refSIVLen // 34
	refIDLen     = 16
	refNonceLen  = 12
	refTagLen    = 16
	refHdrLen    = 2 + refIDLen
	refMinLen    = refHdrLen + refNonceLen + refTagLen // 46
	refMaxPT     = 16 << 20
	refMaxField  = 65535
	refDEKLen    = 32
	refClassOK   = ""
	refFormat    = "format"
	refUnknown   = "unknown_key"
	refTampered  = "tampered"
	refMaxBinLen = refMinLen + refMaxPT
)

// refClassErr maps the error classes used in testdata/vectors.json to the
// package's sentinels.
var refClassErr = map[string]error{
	refFormat:   ErrFormat,
	refUnknown:  ErrUnknownKey,
	refTampered: ErrTampered,
}

// refAD is the associated data of §"Associated data": the label, the 18
// header bytes, then Path, MapKey and Subject, each after its length as a
// 16-bit big-endian integer.
func refAD(hdr []byte, b Binding) []byte {
	ad := []byte(refLabel)
	ad = append(ad, hdr...)
	for _, f := range []string{b.Path, b.MapKey, b.Subject} {
		ad = binary.BigEndian.AppendUint16(ad, uint16(len(f)))
		ad = append(ad, f...)
	}
	return ad
}

func refGCM(dek []byte) cipher.AEAD {
	if len(dek) != refDEKLen {
		panic("reference: DEK must be 32 bytes")
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		panic(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return gcm
}

// refSeal builds a binary envelope with the given nonce and returns it with
// its associated data.
func refSeal(dek, keyID, nonce, plaintext []byte, b Binding) (bin, ad []byte) {
	if len(keyID) != refIDLen || len(nonce) != refNonceLen {
		panic("reference: bad key id or nonce length")
	}
	hdr := append([]byte{refVersion, refAlgGCM}, keyID...)
	ad = refAD(hdr, b)
	bin = append(hdr, nonce...)
	bin = refGCM(dek).Seal(bin, nonce, plaintext, ad)
	return bin, ad
}

func refText(bin []byte) string {
	return refPrefix + base64.RawURLEncoding.EncodeToString(bin)
}

// refDecodeText returns the binary form of a text envelope, refusing
// anything that is not exactly what refText would produce.
func refDecodeText(s string) ([]byte, string) {
	body, ok := strings.CutPrefix(s, refPrefix)
	if !ok {
		return nil, refFormat
	}
	if len(body) > base64.RawURLEncoding.EncodedLen(refMaxBinLen) {
		return nil, refFormat
	}
	bin, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || base64.RawURLEncoding.EncodeToString(bin) != body {
		return nil, refFormat
	}
	return bin, refClassOK
}

// refOpen opens a binary envelope with the DEK dek whose id is keyID and
// returns the plaintext or the error class, checked in the documented order:
// structure, then key id, then authentication.
func refOpen(dek, keyID, bin []byte, b Binding) ([]byte, string) {
	if !refWellFormed(bin) {
		return nil, refFormat
	}
	if len(b.Path) > refMaxField || len(b.MapKey) > refMaxField || len(b.Subject) > refMaxField {
		return nil, refFormat
	}
	if bin[1] != refAlgGCM {
		return nil, refUnknown // an AES-SIV envelope: not this key's
	}
	if !bytes.Equal(bin[2:refHdrLen], keyID) {
		return nil, refUnknown
	}
	nonce := bin[refHdrLen : refHdrLen+refNonceLen]
	pt, err := refGCM(dek).Open(nil, nonce, bin[refHdrLen+refNonceLen:], refAD(bin[:refHdrLen], b))
	if err != nil {
		return nil, refTampered
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, refClassOK
}

// refWellFormed checks the version, the algorithm and the length limits of
// that algorithm (§1, §3, §7, §11).
func refWellFormed(bin []byte) bool {
	if len(bin) < 2 || bin[0] != refVersion {
		return false
	}
	switch bin[1] {
	case refAlgGCM:
		return len(bin) >= refMinLen && len(bin) <= refMinLen+refMaxPT
	case refAlgSIV:
		return len(bin) >= refDetMinLen && len(bin) <= refDetMinLen+refMaxPT
	}
	return false
}

func refOpenText(dek, keyID []byte, s string, b Binding) ([]byte, string) {
	bin, class := refDecodeText(s)
	if class != refClassOK {
		return nil, class
	}
	return refOpen(dek, keyID, bin, b)
}

// errClass returns the class of an error returned by the package, or
// "other" for an error of none of the three classes (always a test failure).
func errClass(err error) string {
	if err == nil {
		return refClassOK
	}
	found := ""
	for class, sentinel := range refClassErr {
		if errors.Is(err, sentinel) {
			if found != "" {
				return "ambiguous"
			}
			found = class
		}
	}
	if found == "" {
		return "other: " + err.Error()
	}
	return found
}

// AES-SIV (RFC 5297) with one associated-data component, for keys of 32, 48
// or 64 bytes: K1, the first half, keys S2V; K2, the second half, keys CTR.

// refDbl is "dbl" of RFC 5297 §2.3: multiplication by x in GF(2^128).
func refDbl(b [16]byte) [16]byte {
	var out [16]byte
	for i := 0; i < 15; i++ {
		out[i] = b[i]<<1 | b[i+1]>>7
	}
	out[15] = b[15] << 1
	if b[0]&0x80 != 0 {
		out[15] ^= 0x87
	}
	return out
}

// refCMAC is AES-CMAC (RFC 4493) under key.
func refCMAC(key, msg []byte) [16]byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	var l, x [16]byte
	block.Encrypt(l[:], l[:])
	k1 := refDbl(l)
	k2 := refDbl(k1)
	n := (len(msg) + 15) / 16
	complete := n > 0 && len(msg)%16 == 0
	if n == 0 {
		n = 1
	}
	for i := 0; i < n-1; i++ {
		for j := 0; j < 16; j++ {
			x[j] ^= msg[16*i+j]
		}
		block.Encrypt(x[:], x[:])
	}
	var last [16]byte
	rest := msg[16*(n-1):]
	if complete {
		for j := 0; j < 16; j++ {
			last[j] = rest[j] ^ k1[j]
		}
	} else {
		copy(last[:], rest)
		last[len(rest)] = 0x80
		for j := 0; j < 16; j++ {
			last[j] ^= k2[j]
		}
	}
	for j := 0; j < 16; j++ {
		x[j] ^= last[j]
	}
	block.Encrypt(x[:], x[:])
	return x
}

// refS2V is S2V of RFC 5297 §2.4 with the single string ad before the
// plaintext.
func refS2V(k1, ad, pt []byte) [16]byte {
	var zero [16]byte
	d := refCMAC(k1, zero[:])
	d = refDbl(d)
	c := refCMAC(k1, ad)
	for j := range d {
		d[j] ^= c[j]
	}
	var t []byte
	if len(pt) >= 16 {
		t = bytes.Clone(pt)
		for j := 0; j < 16; j++ {
			t[len(t)-16+j] ^= d[j]
		}
	} else {
		d = refDbl(d)
		var padded [16]byte
		copy(padded[:], pt)
		padded[len(pt)] = 0x80
		for j := range d {
			d[j] ^= padded[j]
		}
		t = d[:]
	}
	return refCMAC(k1, t)
}

// refSIVCTR is the CTR step of RFC 5297 §2.6: the counter starts at the
// synthetic IV with bits 63 and 31 (counting from the right, from 0) cleared.
func refSIVCTR(k2 []byte, v [16]byte, in []byte) []byte {
	q := v
	q[8] &= 0x7f
	q[12] &= 0x7f
	block, err := aes.NewCipher(k2)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(in))
	cipher.NewCTR(block, q[:]).XORKeyStream(out, in)
	return out
}

// refSIVSeal returns V || C.
func refSIVSeal(key, ad, pt []byte) []byte {
	k1, k2 := key[:len(key)/2], key[len(key)/2:]
	v := refS2V(k1, ad, pt)
	return append(v[:], refSIVCTR(k2, v, pt)...)
}

// refSIVOpen reverses refSIVSeal, or returns false if V does not verify.
func refSIVOpen(key, ad, ct []byte) ([]byte, bool) {
	if len(ct) < 16 {
		return nil, false
	}
	k1, k2 := key[:len(key)/2], key[len(key)/2:]
	var v [16]byte
	copy(v[:], ct)
	pt := refSIVCTR(k2, v, ct[16:])
	if want := refS2V(k1, ad, pt); !bytes.Equal(want[:], v[:]) {
		return nil, false
	}
	return pt, true
}

// refDetSeal builds a deterministic (algorithm 0x02) binary envelope and
// returns it with its associated data. The binding's Subject must be empty.
func refDetSeal(key, keyID, plaintext []byte, b Binding) (bin, ad []byte) {
	if len(key) != refSIVKeyLen || len(keyID) != refIDLen || b.Subject != "" {
		panic("reference: bad deterministic key, key id or binding")
	}
	hdr := append([]byte{refVersion, refAlgSIV}, keyID...)
	ad = refAD(hdr, b)
	return append(hdr, refSIVSeal(key, ad, plaintext)...), ad
}

// refDetOpen opens a binary envelope with the deterministic key key whose
// id is keyID, in the documented order.
func refDetOpen(key, keyID, bin []byte, b Binding) ([]byte, string) {
	if !refWellFormed(bin) {
		return nil, refFormat
	}
	if len(b.Path) > refMaxField || len(b.MapKey) > refMaxField || len(b.Subject) > refMaxField || b.Subject != "" {
		return nil, refFormat
	}
	if bin[1] != refAlgSIV || !bytes.Equal(bin[2:refHdrLen], keyID) {
		return nil, refUnknown
	}
	pt, ok := refSIVOpen(key, refAD(bin[:refHdrLen], b), bin[refHdrLen:])
	if !ok {
		return nil, refTampered
	}
	return pt, refClassOK
}

func refDetOpenText(key, keyID []byte, s string, b Binding) ([]byte, string) {
	bin, class := refDecodeText(s)
	if class != refClassOK {
		return nil, class
	}
	return refDetOpen(key, keyID, bin, b)
}
