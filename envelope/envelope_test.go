package envelope

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// Test keys are deterministic so that failures reproduce.
func testSecret(seed byte) []byte {
	s := make([]byte, KeySize)
	for i := range s {
		s[i] = seed + byte(i)
	}
	return s
}

func testID(seed byte) KeyID {
	var id KeyID
	for i := range id {
		id[i] = seed ^ byte(0xa0+i)
	}
	return id
}

func newTestKey(t testing.TB, seed byte) *Key {
	t.Helper()
	k, err := NewKey(testID(seed), testSecret(seed))
	require.NoError(t, err)
	return k
}

var bindEmail = Binding{Path: "Contact.Email", Subject: "user-42"}

// requireClass checks that err is of exactly the given class ("" for nil).
func requireClass(t testing.TB, want string, err error, msgAndArgs ...any) {
	t.Helper()
	require.Equal(t, want, errClass(err), msgAndArgs...)
}

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func TestRoundTrip(t *testing.T) {
	key := newTestKey(t, 1)
	id := key.ID()
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	kib := bytes.Repeat([]byte("0123456789abcdef"), 64)
	long := strings.Repeat("p", MaxBindingField)

	tests := []struct {
		name string
		pt   []byte
		b    Binding
	}{
		{"empty", nil, bindEmail},
		{"one byte", []byte{0}, bindEmail},
		{"two bytes", []byte("hi"), bindEmail},
		{"utf-8", []byte("Bahnhofstraße 1, 東京"), Binding{Path: "Address.Street", Subject: "user-ü"}},
		{"every byte value", allBytes, Binding{Path: "Notes"}},
		{"1 KiB", kib, bindEmail},
		{"map entry", []byte("+1 555 0100"), Binding{Path: "Phones", MapKey: "home", Subject: "user-42"}},
		{"empty binding", []byte("x"), Binding{}},
		{"binding fields at the limit", []byte("x"), Binding{Path: long, MapKey: long, Subject: long}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantTextLen := len(Prefix) + base64.RawURLEncoding.EncodedLen(Overhead+len(tc.pt))

			// String form.
			text, err := key.SealString(string(tc.pt), tc.b)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(text, Prefix))
			require.True(t, IsText(text))
			require.Len(t, text, wantTextLen)
			s, err := key.OpenString(text, tc.b)
			require.NoError(t, err)
			require.Equal(t, string(tc.pt), s)

			// Bytes form; the two text forms are interchangeable.
			tb, err := key.SealBytes(tc.pt, tc.b)
			require.NoError(t, err)
			require.True(t, IsText(tb))
			require.Len(t, tb, wantTextLen)
			p, err := key.OpenBytes(tb, tc.b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.pt, p))
			p, err = key.OpenBytes([]byte(text), tc.b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.pt, p))
			s, err = key.OpenString(string(tb), tc.b)
			require.NoError(t, err)
			require.Equal(t, string(tc.pt), s)

			// Binary form.
			bin, err := key.Seal(tc.pt, tc.b)
			require.NoError(t, err)
			require.Len(t, bin, Overhead+len(tc.pt))
			require.Equal(t, []byte{Version1, AlgAES256GCM}, bin[:2])
			require.Equal(t, id[:], bin[2:HeaderSize])
			p, err = key.Open(bin, tc.b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.pt, p))

			// The text form is the prefix and the base64url of the binary form.
			e, err := ParseText(text)
			require.NoError(t, err)
			require.Equal(t, id, e.KeyID)
			rebuilt := append([]byte{e.Version, e.Algorithm}, e.KeyID[:]...)
			rebuilt = append(append(rebuilt, e.Nonce...), e.Ciphertext...)
			require.Equal(t, text, Prefix+base64.RawURLEncoding.EncodeToString(rebuilt))
			p, err = key.Open(rebuilt, tc.b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.pt, p))

			// An implementation that follows docs/format.md opens all three.
			for _, env := range []string{text, string(tb), refText(bin)} {
				p, class := refOpenText(testSecret(1), id[:], env, tc.b)
				require.Equal(t, refClassOK, class)
				require.True(t, bytes.Equal(tc.pt, p))
			}
		})
	}
}

// Named string and byte slice types go through the generic functions'
// fallback path; they must behave like string and []byte.
func TestNamedTypes(t *testing.T) {
	type secretString string
	type secretBytes []byte
	key := newTestKey(t, 1)
	text, err := key.SealString("v", bindEmail)
	require.NoError(t, err)

	for _, parse := range []func() (Envelope, error){
		func() (Envelope, error) { return ParseText(secretString(text)) },
		func() (Envelope, error) { return ParseText(secretBytes(text)) },
	} {
		e, err := parse()
		require.NoError(t, err)
		require.Equal(t, key.ID(), e.KeyID)
	}
	id, err := TextKeyID(secretString(text))
	require.NoError(t, err)
	require.Equal(t, key.ID(), id)
	id, err = TextKeyID(secretBytes(text))
	require.NoError(t, err)
	require.Equal(t, key.ID(), id)
	require.True(t, IsText(secretString(text)))
	require.False(t, IsText(secretBytes("zk1")))

	_, err = ParseText(secretString(text + "\n"))
	requireClass(t, refFormat, err)
}

func TestMaxPlaintext(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~150 MiB")
	}
	key := newTestKey(t, 2)
	b := bindEmail
	pt := make([]byte, MaxPlaintext+1)
	pt[0], pt[MaxPlaintext-1], pt[MaxPlaintext] = 1, 2, 3

	t.Run("exactly MaxPlaintext", func(t *testing.T) {
		bin, err := key.Seal(pt[:MaxPlaintext], b)
		require.NoError(t, err)
		require.Len(t, bin, Overhead+MaxPlaintext)
		got, err := key.Open(bin, b)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pt[:MaxPlaintext], got))

		text, err := key.SealBytes(pt[:MaxPlaintext], b)
		require.NoError(t, err)
		require.Len(t, text, maxText, "the longest text envelope is exactly the limit parsers apply")
		got, err = key.OpenBytes(text, b)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pt[:MaxPlaintext], got))
	})

	t.Run("MaxPlaintext+1", func(t *testing.T) {
		_, err := key.Seal(pt, b)
		requireClass(t, refFormat, err)
		_, err = key.SealBytes(pt, b)
		requireClass(t, refFormat, err)
		_, err = key.SealString(string(pt), b)
		requireClass(t, refFormat, err)

		// An authentic envelope that long, made without the package, is
		// refused as malformed before it is decrypted.
		var nonce [12]byte
		id := key.ID()
		bin, _ := refSeal(testSecret(2), id[:], nonce[:], pt, b)
		_, err = Parse(bin)
		requireClass(t, refFormat, err)
		_, err = key.Open(bin, b)
		requireClass(t, refFormat, err)
		text := refText(bin)
		require.Greater(t, len(text), maxText)
		_, err = ParseText(text)
		requireClass(t, refFormat, err)
		_, err = key.OpenString(text, b)
		requireClass(t, refFormat, err)
		_, err = key.OpenBytes([]byte(text), b)
		requireClass(t, refFormat, err)
	})
}

func TestSealIsRandomized(t *testing.T) {
	key := newTestKey(t, 3)
	a, err := key.SealString("same value", bindEmail)
	require.NoError(t, err)
	b, err := key.SealString("same value", bindEmail)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	for _, text := range []string{a, b} {
		got, err := key.OpenString(text, bindEmail)
		require.NoError(t, err)
		require.Equal(t, "same value", got)
	}

	// Every seal draws a fresh nonce.
	seen := make(map[string]bool)
	for range 500 {
		bin, err := key.Seal([]byte("same value"), bindEmail)
		require.NoError(t, err)
		e, err := Parse(bin)
		require.NoError(t, err)
		nonce := string(e.Nonce)
		require.False(t, seen[nonce], "nonce repeated")
		seen[nonce] = true
	}
}

func TestTextKeyID(t *testing.T) {
	key := newTestKey(t, 4)
	text, err := key.SealString("v", bindEmail)
	require.NoError(t, err)

	id, err := TextKeyID(text)
	require.NoError(t, err)
	require.Equal(t, key.ID(), id)
	id, err = TextKeyID([]byte(text))
	require.NoError(t, err)
	require.Equal(t, key.ID(), id)

	// It reads the header only: the id of a damaged body is still found,
	// and opening reports the damage.
	damaged := text[:len(Prefix)+24] + "!"
	id, err = TextKeyID(damaged)
	require.NoError(t, err)
	require.Equal(t, key.ID(), id)
	_, err = key.OpenString(damaged, bindEmail)
	requireClass(t, refFormat, err)

	hdr := func(version, alg byte) string {
		h := append([]byte{version, alg}, make([]byte, KeyIDSize)...)
		return Prefix + base64.RawURLEncoding.EncodeToString(h)
	}
	bad := map[string]string{
		"empty":           "",
		"no prefix":       text[len(Prefix):],
		"prefix only":     Prefix,
		"short header":    text[:len(Prefix)+23],
		"bad base64":      Prefix + "!" + text[len(Prefix)+1:],
		"padding":         Prefix + "AQE=" + text[len(Prefix)+4:],
		"newline":         text[:len(Prefix)+8] + "\n" + text[len(Prefix)+8:],
		"carriage return": text[:len(Prefix)+23] + "\r" + text[len(Prefix)+23:],
		"version 0":       hdr(0, AlgAES256GCM),
		"version 2":       hdr(2, AlgAES256GCM),
		"algorithm 0":     hdr(Version1, 0),
		"algorithm 3":     hdr(Version1, 3),
	}
	for name, s := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := TextKeyID(s)
			requireClass(t, refFormat, err)
			_, err = TextKeyID([]byte(s))
			requireClass(t, refFormat, err)
		})
	}
}

func TestAssociatedData(t *testing.T) {
	id := testID(5)
	hdr := append([]byte{Version1, AlgAES256GCM}, id[:]...)
	got := appendAD(nil, hdr, &Binding{Path: "ab", MapKey: "", Subject: "c"})
	want := "zonekey/field/v1" + "\x01\x01" + string(id[:]) + "\x00\x02ab" + "\x00\x00" + "\x00\x01c"
	require.Equal(t, []byte(want), got)
	require.Equal(t, refAD(hdr, Binding{Path: "ab", Subject: "c"}), got)
	require.NotEqual(t, got, appendAD(nil, hdr, &Binding{Path: "a", Subject: "bc"}))
	require.Equal(t, adLen(&Binding{Path: "ab", Subject: "c"}), len(got))
}

func TestBinding(t *testing.T) {
	key := newTestKey(t, 6)
	tests := []struct {
		name       string
		seal, open Binding
	}{
		{"other path", Binding{Path: "Email", Subject: "s"}, Binding{Path: "Phone", Subject: "s"}},
		{"other map key", Binding{Path: "Phones", MapKey: "home", Subject: "s"}, Binding{Path: "Phones", MapKey: "work", Subject: "s"}},
		{"map key dropped", Binding{Path: "Phones", MapKey: "home", Subject: "s"}, Binding{Path: "Phones", Subject: "s"}},
		{"other subject", Binding{Path: "Email", Subject: "user-1"}, Binding{Path: "Email", Subject: "user-2"}},
		{"other subject, other length", Binding{Path: "Email", Subject: "alice"}, Binding{Path: "Email", Subject: "bob"}},
		{"subject dropped", Binding{Path: "Email", Subject: "alice"}, Binding{Path: "Email"}},
		{"path is case sensitive", Binding{Path: "Email"}, Binding{Path: "email"}},
		{"trailing NUL", Binding{Path: "Email"}, Binding{Path: "Email\x00"}},
		{"ab|c is not a|bc (path, subject)", Binding{Path: "ab", Subject: "c"}, Binding{Path: "a", Subject: "bc"}},
		{"a|b is not ab (path, map key)", Binding{Path: "a", MapKey: "b"}, Binding{Path: "ab"}},
		{"map key is not subject", Binding{MapKey: "x"}, Binding{Subject: "x"}},
		{"path is not map key", Binding{Path: "x"}, Binding{MapKey: "x"}},
		{"length bytes are not content", Binding{Path: "a\x00\x01b"}, Binding{Path: "a", MapKey: "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text, err := key.SealString("secret value", tc.seal)
			require.NoError(t, err)
			bin, err := key.Seal([]byte("secret value"), tc.seal)
			require.NoError(t, err)

			_, err = key.OpenString(text, tc.open)
			requireClass(t, refTampered, err)
			require.ErrorIs(t, err, ErrTampered)
			require.NotContains(t, err.Error(), "secret value")
			_, err = key.OpenBytes([]byte(text), tc.open)
			requireClass(t, refTampered, err)
			_, err = key.Open(bin, tc.open)
			requireClass(t, refTampered, err)

			// Sanity: the sealing binding opens.
			got, err := key.OpenString(text, tc.seal)
			require.NoError(t, err)
			require.Equal(t, "secret value", got)
		})
	}

	t.Run("error names the field", func(t *testing.T) {
		text, err := key.SealString("v", Binding{Path: "Contact.Email"})
		require.NoError(t, err)
		_, err = key.OpenString(text, Binding{Path: "Contact.Phone"})
		require.ErrorIs(t, err, ErrTampered)
		require.Contains(t, err.Error(), "Contact.Phone")
	})

	t.Run("binding field too long", func(t *testing.T) {
		long := strings.Repeat("x", MaxBindingField+1)
		text, err := key.SealString("v", bindEmail)
		require.NoError(t, err)
		bin, err := key.Seal([]byte("v"), bindEmail)
		require.NoError(t, err)
		for _, b := range []Binding{{Path: long}, {MapKey: long}, {Subject: long}} {
			_, err := key.SealString("v", b)
			requireClass(t, refFormat, err)
			_, err = key.Seal([]byte("v"), b)
			requireClass(t, refFormat, err)
			_, err = key.OpenString(text, b)
			requireClass(t, refFormat, err)
			_, err = key.Open(bin, b)
			requireClass(t, refFormat, err)
		}
	})
}

func TestWrongKey(t *testing.T) {
	key := newTestKey(t, 7)
	text, err := key.SealString("v", bindEmail)
	require.NoError(t, err)

	// Another DEK id: the envelope names a key the caller does not hold.
	_, err = newTestKey(t, 8).OpenString(text, bindEmail)
	requireClass(t, refUnknown, err)
	require.Contains(t, err.Error(), key.ID().String())

	// The same id over another secret (a keyring mix-up): authentication fails.
	impostor, err := NewKey(key.ID(), testSecret(8))
	require.NoError(t, err)
	_, err = impostor.OpenString(text, bindEmail)
	requireClass(t, refTampered, err)
}

// Every single-bit change of a binary envelope is detected, and classified
// by the part it hit.
func TestBitFlipsBinary(t *testing.T) {
	key := newTestKey(t, 9)
	bin, err := key.Seal([]byte("0123456789"), bindEmail)
	require.NoError(t, err)
	orig := bytes.Clone(bin)

	for i := range len(bin) * 8 {
		mod := bytes.Clone(bin)
		mod[i/8] ^= 1 << (i % 8)
		var want string
		switch off := i / 8; {
		case off < 2: // version, algorithm
			want = refFormat
		case off < HeaderSize: // DEK id
			want = refUnknown
		default: // nonce, ciphertext, tag
			want = refTampered
		}
		_, err := key.Open(mod, bindEmail)
		requireClass(t, want, err, "bit %d (byte %d)", i, i/8)
		_, err = key.OpenString(refText(mod), bindEmail)
		requireClass(t, want, err, "text form, bit %d (byte %d)", i, i/8)
	}
	require.Equal(t, orig, bin, "Open must not modify its input")
}

// Changing any one character of a text envelope to any other character of
// the base64url alphabet is detected. The three plaintext lengths cover the
// three final-group shapes of unpadded base64 (2, 3 and 4 characters), so
// the unused low bits of the last character are exercised.
func TestTextCharChanges(t *testing.T) {
	key := newTestKey(t, 10)
	id := key.ID()
	for _, pt := range []string{"", "a", "ab"} {
		text, err := key.SealString(pt, bindEmail)
		require.NoError(t, err)
		orig, class := refDecodeText(text)
		require.Equal(t, refClassOK, class)
		for i := len(Prefix); i < len(text); i++ {
			for _, c := range []byte(b64Alphabet) {
				if c == text[i] {
					continue
				}
				mod := text[:i] + string(c) + text[i+1:]
				// Expected class: not canonical base64url, or not a
				// well-formed envelope -> format; else by the first byte
				// that differs: a header byte (the algorithm turned into
				// AES-SIV's, or the key id) -> unknown_key.
				want := refTampered
				if bin, class := refDecodeText(mod); class != refClassOK || !refWellFormed(bin) {
					want = refFormat
				} else if d := firstDiff(orig, bin); d < HeaderSize {
					want = refUnknown
				}
				_, err := key.OpenString(mod, bindEmail)
				requireClass(t, want, err, "len %d, char %d -> %q", len(pt), i, c)
				_, err = key.OpenBytes([]byte(mod), bindEmail)
				requireClass(t, want, err, "len %d, char %d -> %q", len(pt), i, c)
				_, refClass := refOpenText(testSecret(10), id[:], mod, bindEmail)
				require.Equal(t, want, refClass, "reference implementation")
			}
		}
		for i := range len(Prefix) {
			for _, c := range []byte("zZk1K2.:-_ ") {
				if c == text[i] {
					continue
				}
				mod := text[:i] + string(c) + text[i+1:]
				_, err := key.OpenString(mod, bindEmail)
				requireClass(t, refFormat, err, "prefix char %d -> %q", i, c)
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// The text form is canonical: exactly one string encodes a given binary
// envelope. Lenient base64 decoders accept aliases (unused low bits of the
// last character set, CR and LF anywhere); the package must refuse them.
func TestNonCanonicalText(t *testing.T) {
	key := newTestKey(t, 11)
	lenient := base64.RawURLEncoding

	for _, pt := range []string{"", "a"} { // final groups of 2 and 3 characters
		text, err := key.SealString(pt, bindEmail)
		require.NoError(t, err)
		last := strings.IndexByte(b64Alphabet, text[len(text)-1])
		alias := text[:len(text)-1] + string(b64Alphabet[last^1])
		a, err := lenient.DecodeString(alias[len(Prefix):])
		require.NoError(t, err)
		o, err := lenient.DecodeString(text[len(Prefix):])
		require.NoError(t, err)
		require.Equal(t, o, a, "the alias decodes to the same bytes under a lenient decoder")

		_, err = key.OpenString(alias, bindEmail)
		requireClass(t, refFormat, err, "plaintext %q: trailing bits", pt)
		_, err = key.OpenBytes([]byte(alias), bindEmail)
		requireClass(t, refFormat, err)
		_, err = ParseText(alias)
		requireClass(t, refFormat, err)
	}

	text, err := key.SealString("value", bindEmail)
	require.NoError(t, err)
	body := text[len(Prefix):]
	std := strings.NewReplacer("-", "+", "_", "/").Replace(text)
	if std == text { // make sure the case is exercised
		std = text[:len(text)-1] + "+"
	}
	pad := text
	for len(pad[len(Prefix):])%4 != 0 {
		pad += "="
	}
	if pad == text {
		pad += "===="
	}
	cases := map[string]string{
		"LF at start":      Prefix + "\n" + body,
		"LF in header":     text[:len(Prefix)+10] + "\n" + text[len(Prefix)+10:],
		"LF in body":       text[:len(text)-10] + "\n" + text[len(text)-10:],
		"trailing LF":      text + "\n",
		"trailing CRLF":    text + "\r\n",
		"CR in body":       text[:len(text)-5] + "\r" + text[len(text)-5:],
		"space":            text[:len(text)-5] + " " + text[len(text)-5:],
		"tab":              text + "\t",
		"NUL":              text + "\x00",
		"padding":          pad,
		"std alphabet":     std,
		"length mod 4 = 1": text + "A",
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := key.OpenString(s, bindEmail)
			requireClass(t, refFormat, err)
			_, err = key.OpenBytes([]byte(s), bindEmail)
			requireClass(t, refFormat, err)
			_, err = ParseText(s)
			requireClass(t, refFormat, err)
			_, class := refDecodeText(s)
			require.Equal(t, refFormat, class)
		})
	}
}

func TestTruncated(t *testing.T) {
	key := newTestKey(t, 12)
	id := key.ID()
	bin, err := key.Seal([]byte("truncate me"), bindEmail)
	require.NoError(t, err)
	for n := range len(bin) {
		want := refTampered
		if n < Overhead {
			want = refFormat
		}
		_, err := Parse(bin[:n])
		if n < Overhead {
			requireClass(t, refFormat, err, "Parse of %d bytes", n)
		} else {
			require.NoError(t, err, "Parse of %d bytes", n)
		}
		_, err = key.Open(bin[:n], bindEmail)
		requireClass(t, want, err, "Open of %d bytes", n)
	}

	text, err := key.SealString("truncate me", bindEmail)
	require.NoError(t, err)
	for n := range len(text) {
		s := text[:n]
		_, want := refOpenText(testSecret(12), id[:], s, bindEmail)
		require.NotEqual(t, refClassOK, want)
		_, err := key.OpenString(s, bindEmail)
		requireClass(t, want, err, "OpenString of %d characters", n)
		_, err = key.OpenBytes([]byte(s), bindEmail)
		requireClass(t, want, err, "OpenBytes of %d characters", n)
		_, err = ParseText(s)
		if want == refFormat {
			requireClass(t, refFormat, err, "ParseText of %d characters", n)
		} else {
			require.NoError(t, err, "ParseText of %d characters", n)
		}
	}
}

func TestMalformed(t *testing.T) {
	key := newTestKey(t, 13)
	id := key.ID()
	withHeader := func(version, alg byte, n int) []byte {
		b := make([]byte, n)
		b[0], b[1] = version, alg
		copy(b[2:], id[:])
		return b
	}
	binCases := map[string][]byte{
		"nil":                nil,
		"empty":              {},
		"one byte":           {Version1},
		"header only":        withHeader(Version1, AlgAES256GCM, HeaderSize),
		"one short":          withHeader(Version1, AlgAES256GCM, Overhead-1),
		"version 0":          withHeader(0, AlgAES256GCM, Overhead+4),
		"version 2":          withHeader(2, AlgAES256GCM, Overhead+4),
		"version 0xff":       withHeader(0xff, AlgAES256GCM, Overhead+4),
		"algorithm 0":        withHeader(Version1, 0, Overhead+4),
		"algorithm 3":        withHeader(Version1, 3, Overhead+4),
		"algorithm 0xff":     withHeader(Version1, 0xff, Overhead+4),
		"text given as bin":  []byte(Prefix + "AQE"),
		"all ones, long":     bytes.Repeat([]byte{0xff}, 1000),
		"over MaxPlaintext":  withHeader(Version1, AlgAES256GCM, Overhead+MaxPlaintext+1),
		"version 2, too big": withHeader(2, AlgAES256GCM, Overhead+MaxPlaintext+1),
	}
	for name, bin := range binCases {
		t.Run("binary/"+name, func(t *testing.T) {
			_, err := Parse(bin)
			requireClass(t, refFormat, err)
			_, err = key.Open(bin, bindEmail)
			requireClass(t, refFormat, err)
			if len(bin) < 4096 {
				_, err = key.OpenString(refText(bin), bindEmail)
				requireClass(t, refFormat, err)
			}
		})
	}

	valid, err := key.SealString("v", bindEmail)
	require.NoError(t, err)
	textCases := map[string]string{
		"empty":          "",
		"prefix only":    Prefix,
		"prefix no dot":  "zk1",
		"other prefix":   "zk2." + valid[len(Prefix):],
		"upper prefix":   "ZK1." + valid[len(Prefix):],
		"no prefix":      valid[len(Prefix):],
		"space first":    " " + valid,
		"bad base64":     Prefix + "!!!!",
		"garbage":        "\x00\xff\xfe garbage",
		"binary":         string(withHeader(Version1, AlgAES256GCM, Overhead)),
		"one char":       Prefix + "A",
		"utf-8":          Prefix + "ünïcödé",
		"over-long":      Prefix + strings.Repeat("A", maxText-len(Prefix)+1),
		"over-long junk": strings.Repeat("z", maxText+1),
	}
	for name, s := range textCases {
		t.Run("text/"+name, func(t *testing.T) {
			_, err := ParseText(s)
			requireClass(t, refFormat, err)
			_, err = ParseText([]byte(s))
			requireClass(t, refFormat, err)
			_, err = key.OpenString(s, bindEmail)
			requireClass(t, refFormat, err)
			_, err = key.OpenBytes([]byte(s), bindEmail)
			requireClass(t, refFormat, err)
		})
	}
}

func TestParse(t *testing.T) {
	key := newTestKey(t, 14)
	bin, err := key.Seal([]byte("hello"), bindEmail)
	require.NoError(t, err)

	e, err := Parse(bin)
	require.NoError(t, err)
	require.Equal(t, Version1, e.Version)
	require.Equal(t, AlgAES256GCM, e.Algorithm)
	require.Equal(t, key.ID(), e.KeyID)
	require.Len(t, e.Nonce, NonceSize)
	require.Len(t, e.Ciphertext, len("hello")+TagSize)
	require.Equal(t, bin[HeaderSize:HeaderSize+NonceSize], e.Nonce)
	require.Equal(t, bin[HeaderSize+NonceSize:], e.Ciphertext)
	require.Same(t, &bin[HeaderSize], &e.Nonce[0], "Parse aliases its input, as documented")

	text := []byte(Prefix + base64.RawURLEncoding.EncodeToString(bin))
	te, err := ParseText(text)
	require.NoError(t, err)
	require.Equal(t, e, te)
	clear(text)
	require.Equal(t, e, te, "ParseText must not alias its input")
}

func TestNewKey(t *testing.T) {
	for _, n := range []int{0, 1, 16, 24, 31, 33, 64} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			k, err := NewKey(testID(1), make([]byte, n))
			require.Error(t, err)
			require.Nil(t, k)
			require.Contains(t, err.Error(), "32 bytes")
		})
	}
	_, err := NewKey(testID(1), nil)
	require.Error(t, err)

	// The secret is not retained: changing it afterwards does not change
	// the key.
	secret := testSecret(15)
	k, err := NewKey(testID(15), secret)
	require.NoError(t, err)
	require.Equal(t, testID(15), k.ID())
	clear(secret)
	text, err := k.SealString("v", bindEmail)
	require.NoError(t, err)
	got, err := newTestKey(t, 15).OpenString(text, bindEmail)
	require.NoError(t, err)
	require.Equal(t, "v", got)
}

func TestKeyID(t *testing.T) {
	a, b := NewKeyID(), NewKeyID()
	require.NotEqual(t, a, b)
	require.NotEqual(t, KeyID{}, a)

	id := testID(0x5a)
	s := id.String()
	require.Equal(t, hex.EncodeToString(id[:]), s)
	require.Len(t, s, 2*KeyIDSize)
	require.Equal(t, strings.ToLower(s), s)
	got, err := ParseKeyID(s)
	require.NoError(t, err)
	require.Equal(t, id, got)
	for _, id := range []KeyID{{}, a, b} {
		got, err := ParseKeyID(id.String())
		require.NoError(t, err)
		require.Equal(t, id, got)
	}

	bad := map[string]string{
		"empty":       "",
		"31 digits":   s[:31],
		"33 digits":   s + "0",
		"34 digits":   s + "00",
		"64 digits":   s + s,
		"non-hex":     "zz" + s[2:],
		"0x prefix":   "0x" + s[2:],
		"space":       " " + s[1:],
		"trailing LF": s[:31] + "\n",
		"utf-8":       "é" + s[2:],
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := ParseKeyID(in)
			require.ErrorIs(t, err, ErrFormat)
		})
	}
}

// Run under -race: one Key shared by many goroutines.
func TestConcurrent(t *testing.T) {
	key := newTestKey(t, 16)
	const workers, rounds = 8, 200
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				b := Binding{Path: "Field", Subject: fmt.Sprintf("user-%d", w)}
				want := strings.Repeat(fmt.Sprintf("w%d-i%d;", w, i), 1+i%50)
				text, err := key.SealString(want, b)
				if err != nil {
					errc <- err
					return
				}
				got, err := key.OpenString(text, b)
				if err != nil || got != want {
					errc <- fmt.Errorf("worker %d round %d: got %q, %v", w, i, got, err)
					return
				}
				bin, err := key.Seal([]byte(want), b)
				if err != nil {
					errc <- err
					return
				}
				if p, err := key.Open(bin, b); err != nil || string(p) != want {
					errc <- fmt.Errorf("worker %d round %d (binary): %v", w, i, err)
					return
				}
				if _, err := key.OpenString(text, Binding{Path: "Field", Subject: "other"}); errClass(err) != refTampered {
					errc <- fmt.Errorf("worker %d round %d: wrong binding gave %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
}

// SealString and OpenString (and their []byte twins) make one allocation,
// the result, for values up to 1 KiB.
func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	key := newTestKey(t, 17)
	for _, n := range []int{0, 16, 64, 1024} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			v := strings.Repeat("x", n)
			vb := []byte(v)
			text, err := key.SealString(v, bindEmail)
			require.NoError(t, err)
			tb := []byte(text)

			seal := testing.AllocsPerRun(200, func() {
				if _, err := key.SealString(v, bindEmail); err != nil {
					panic(err)
				}
			})
			open := testing.AllocsPerRun(200, func() {
				if s, err := key.OpenString(text, bindEmail); err != nil || s != v {
					panic(err)
				}
			})
			sealB := testing.AllocsPerRun(200, func() {
				if _, err := key.SealBytes(vb, bindEmail); err != nil {
					panic(err)
				}
			})
			openB := testing.AllocsPerRun(200, func() {
				if _, err := key.OpenBytes(tb, bindEmail); err != nil {
					panic(err)
				}
			})
			// An empty result needs no allocation.
			wantOpen := 1.0
			if n == 0 {
				wantOpen = 0
			}
			require.Equal(t, 1.0, seal, "SealString")
			require.Equal(t, wantOpen, open, "OpenString")
			require.Equal(t, 1.0, sealB, "SealBytes")
			require.Equal(t, wantOpen, openB, "OpenBytes")
		})
	}
}

func TestScratchSlotSize(t *testing.T) {
	require.Equal(t, uintptr(64), unsafe.Sizeof(scratchSlot{}), "a scratch slot fills one cache line")
}

// Opens decrypt straight into their results and seals read their inputs:
// the scratch that served them holds the envelope and the associated data,
// never the plaintext.
func TestScratchHoldsNoPlaintext(t *testing.T) {
	key := newTestKey(t, 18)
	const pt = "PLAINTEXT-MARKER-0123456789"
	text, err := key.SealString(pt, bindEmail)
	require.NoError(t, err)
	e, err := ParseText(text)
	require.NoError(t, err)
	bin := append([]byte{e.Version, e.Algorithm}, e.KeyID[:]...)
	bin = append(append(bin, e.Nonce...), e.Ciphertext...)
	// An open lays out its scratch as binary envelope | slack for the
	// decoder | associated data.
	// The opens without a Scratch use one internally: inspecting one
	// that served an open shows what they leave.
	var sc Scratch
	defer sc.Release()
	for _, open := range []func() (string, error){
		func() (string, error) {
			return OpenStringFuncWith(&sc, text, bindEmail, func(KeyID) (*Key, error) { return key, nil })
		},
		func() (string, error) {
			b, err := OpenBytesFuncWith(&sc, []byte(text), bindEmail, func(KeyID) (*Key, error) { return key, nil })
			return string(b), err
		},
	} {
		got, err := open()
		require.NoError(t, err)
		require.Equal(t, pt, got)
		buf := sc.buf().b
		buf = buf[:cap(buf)]
		require.True(t, bytes.Contains(buf, bin) && bytes.Contains(buf, []byte(adLabel)), "this buffer served the open")
		require.False(t, bytes.Contains(buf, []byte(pt)), "plaintext left in the scratch")
	}
	// A seal leaves its ciphertext, not its plaintext.
	_, err = key.SealStringWith(&sc, pt, bindEmail)
	require.NoError(t, err)
	buf := sc.buf().b
	require.False(t, bytes.Contains(buf[:cap(buf)], []byte(pt)), "plaintext left in the scratch by a seal")
}
