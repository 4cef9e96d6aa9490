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
// nonce, and decides canonical base64url by re-encoding rather than with a
// strict decoder. The vectors and the differential tests check the package
// against it in both directions, so that a change to either the code or the
// document that makes them disagree fails a test.

const (
	refPrefix    = "zk1."
	refLabel     = "zonekey/field/v1"
	refVersion   = 0x01
	refAlgGCM    = 0x01
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
	if len(bin) < refMinLen || len(bin) > refMaxBinLen {
		return nil, refFormat
	}
	if bin[0] != refVersion || bin[1] != refAlgGCM {
		return nil, refFormat
	}
	if len(b.Path) > refMaxField || len(b.MapKey) > refMaxField || len(b.Subject) > refMaxField {
		return nil, refFormat
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
