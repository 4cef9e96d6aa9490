package envelope

import (
	"bytes"
	"encoding/base64"
	"testing"
)

// The fuzz key is the key of the first test vector, so that the vectors'
// envelopes are valid seeds. Seed corpora live in testdata/fuzz/<FuzzName>.
var (
	fuzzDEK = mustHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	fuzzID  = KeyID(mustHex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"))
)

// The deterministic fuzz key is the key of the first deterministic vector.
var (
	fuzzDetSecret = mustHex(hexRange(0x00, 64))
	fuzzDetID     = KeyID(mustHex(hexRange(0x10, 16)))
)

func fuzzDetKey(t *testing.T) *DetKey {
	k, err := NewDetKey(fuzzDetID, fuzzDetSecret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fuzzKey(t *testing.T) *Key {
	k, err := NewKey(fuzzID, fuzzDEK)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func assemble(e Envelope) []byte {
	b := append([]byte{e.Version, e.Algorithm}, e.KeyID[:]...)
	b = append(b, e.Nonce...)
	return append(b, e.Ciphertext...)
}

// FuzzParse: Parse never panics, fails only with ErrFormat, and on success
// splits its input into parts that reassemble it exactly.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, bin []byte) {
		e, err := Parse(bin)
		if err != nil {
			if c := errClass(err); c != refFormat {
				t.Fatalf("Parse error of class %q: %v", c, err)
			}
		} else {
			switch {
			case e.Version != Version1:
				t.Fatalf("accepted version %#x", e.Version)
			case e.Algorithm == AlgAES256GCM:
				if len(e.Nonce) != NonceSize || len(e.Ciphertext) < TagSize || len(e.Ciphertext) > MaxPlaintext+TagSize {
					t.Fatalf("bad part lengths: nonce %d, ciphertext %d", len(e.Nonce), len(e.Ciphertext))
				}
			case e.Algorithm == AlgAES256SIV:
				if e.Nonce != nil || len(e.Ciphertext) < SIVSize || len(e.Ciphertext) > MaxPlaintext+SIVSize {
					t.Fatalf("bad part lengths: nonce %d, ciphertext %d", len(e.Nonce), len(e.Ciphertext))
				}
			default:
				t.Fatalf("accepted algorithm %#x", e.Algorithm)
			}
			if !bytes.Equal(assemble(e), bin) {
				t.Fatal("parts do not reassemble the input")
			}
		}

		// Opening agrees with the reference, class and plaintext.
		key := fuzzKey(t)
		b := Binding{Path: "Email", Subject: "user-42"}
		pt, err := key.Open(bin, b)
		want, wantClass := refOpen(fuzzDEK, fuzzID[:], bin, b)
		if c := errClass(err); c != wantClass {
			t.Fatalf("Open: class %q, reference %q (%v)", c, wantClass, err)
		}
		if err == nil && !bytes.Equal(pt, want) {
			t.Fatal("Open and reference disagree on the plaintext")
		}

		// So does opening with the deterministic fuzz key.
		dk := fuzzDetKey(t)
		db := Binding{Path: "Email"}
		pt, err = dk.Open(bin, db)
		want, wantClass = refDetOpen(fuzzDetSecret, fuzzDetID[:], bin, db)
		if c := errClass(err); c != wantClass {
			t.Fatalf("DetKey.Open: class %q, reference %q (%v)", c, wantClass, err)
		}
		if err == nil && !bytes.Equal(pt, want) {
			t.Fatal("DetKey.Open and reference disagree on the plaintext")
		}
	})
}

// FuzzParseText: ParseText and TextKeyID never panic, fail only with
// ErrFormat, agree between string and []byte input, and accept only the
// canonical encoding of what they return.
func FuzzParseText(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseText(s)
		eb, errb := ParseText([]byte(s))
		if (err == nil) != (errb == nil) {
			t.Fatalf("string and []byte forms disagree: %v / %v", err, errb)
		}
		id, idErr := TextKeyID(s)
		if idErr != nil && errClass(idErr) != refFormat {
			t.Fatalf("TextKeyID error of another class: %v", idErr)
		}
		_, refClass := refDecodeText(s)
		if err != nil {
			if c := errClass(err); c != refFormat {
				t.Fatalf("ParseText error of class %q: %v", c, err)
			}
			return
		}
		if refClass != refClassOK {
			t.Fatalf("ParseText accepted what the reference refuses: %q", s)
		}
		bin := assemble(e)
		if !bytes.Equal(bin, assemble(eb)) {
			t.Fatal("string and []byte forms parse differently")
		}
		if Prefix+base64.RawURLEncoding.EncodeToString(bin) != s {
			t.Fatalf("accepted a non-canonical encoding: %q", s)
		}
		if idErr != nil || id != e.KeyID {
			t.Fatalf("TextKeyID = %v, %v; ParseText found %v", id, idErr, e.KeyID)
		}
		if _, err := Parse(bin); err != nil {
			t.Fatalf("ParseText accepted what Parse refuses: %v", err)
		}
	})
}

// FuzzOpenString: OpenString never panics, fails with exactly one of the
// three classes, agrees with OpenBytes and with the reference implementation,
// and succeeds only on a canonical envelope under the fuzz key whose
// plaintext re-seals and re-opens under the same binding.
func FuzzOpenString(f *testing.F) {
	f.Fuzz(func(t *testing.T, s, path, mapKey, subject string) {
		key := fuzzKey(t)
		b := Binding{Path: path, MapKey: mapKey, Subject: subject}
		pt, err := key.OpenString(s, b)
		ptb, errb := key.OpenBytes([]byte(s), b)
		class := errClass(err)
		if class != errClass(errb) {
			t.Fatalf("OpenString %v, OpenBytes %v", err, errb)
		}
		want, wantClass := refOpenText(fuzzDEK, fuzzID[:], s, b)
		if class != wantClass {
			t.Fatalf("class %q, reference %q (%v)", class, wantClass, err)
		}
		if err != nil {
			return
		}
		if pt != string(ptb) || pt != string(want) {
			t.Fatal("OpenString, OpenBytes and the reference disagree on the plaintext")
		}
		e, err := ParseText(s)
		if err != nil {
			t.Fatalf("opened, but ParseText fails: %v", err)
		}
		if id, err := TextKeyID(s); err != nil || id != key.ID() || e.KeyID != key.ID() {
			t.Fatalf("opened, but the key id is %v/%v (%v)", id, e.KeyID, err)
		}
		if Prefix+base64.RawURLEncoding.EncodeToString(assemble(e)) != s {
			t.Fatal("opened a non-canonical encoding")
		}
		again, err := key.SealString(pt, b)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := key.OpenString(again, b); err != nil || got != pt {
			t.Fatalf("re-seal round trip: %q, %v", got, err)
		}
	})
}

// FuzzDetOpenString: DetKey.OpenString never panics, fails with exactly one
// of the three classes, agrees with OpenBytes and with the reference, and
// what it opens re-seals to exactly its input (sealing is deterministic).
func FuzzDetOpenString(f *testing.F) {
	f.Fuzz(func(t *testing.T, s, path, mapKey, subject string) {
		key := fuzzDetKey(t)
		b := Binding{Path: path, MapKey: mapKey, Subject: subject}
		pt, err := key.OpenString(s, b)
		ptb, errb := key.OpenBytes([]byte(s), b)
		class := errClass(err)
		if class != errClass(errb) {
			t.Fatalf("OpenString %v, OpenBytes %v", err, errb)
		}
		want, wantClass := refDetOpenText(fuzzDetSecret, fuzzDetID[:], s, b)
		if class != wantClass {
			t.Fatalf("class %q, reference %q (%v)", class, wantClass, err)
		}
		if err != nil {
			return
		}
		if pt != string(ptb) || pt != string(want) {
			t.Fatal("OpenString, OpenBytes and the reference disagree on the plaintext")
		}
		again, err := key.SealString(pt, b)
		if err != nil {
			t.Fatal(err)
		}
		if again != s {
			t.Fatalf("re-sealing gives %q, not the opened %q", again, s)
		}
	})
}
