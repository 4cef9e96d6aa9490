package envelope

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/daead/subtle"
)

func testDetSecret(seed byte) []byte {
	s := make([]byte, DetKeySize)
	for i := range s {
		s[i] = seed + byte(i)
	}
	return s
}

func newTestDetKey(t testing.TB, seed byte) *DetKey {
	t.Helper()
	k, err := NewDetKey(testID(seed), testDetSecret(seed))
	require.NoError(t, err)
	return k
}

// The reference AES-SIV reproduces RFC 5297 Appendix A.1 (a 256-bit key,
// that is AES-128 for S2V and CTR), and agrees with Tink's for 512-bit keys.
func TestRefSIV(t *testing.T) {
	key := mustHex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
	ad := mustHex("101112131415161718191a1b1c1d1e1f2021222324252627")
	pt := mustHex("112233445566778899aabbccddee")
	want := "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"
	require.Equal(t, want, hex.EncodeToString(refSIVSeal(key, ad, pt)))
	got, ok := refSIVOpen(key, ad, mustHex(want))
	require.True(t, ok)
	require.Equal(t, pt, got)

	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100} {
		key := testDetSecret(byte(n))
		tink, err := subtle.NewAESSIV(key)
		require.NoError(t, err)
		msg := bytes.Repeat([]byte{byte(n)}, n)
		for _, ad := range [][]byte{nil, []byte("a"), bytes.Repeat([]byte("ad"), 40)} {
			ct, err := tink.EncryptDeterministically(msg, ad)
			require.NoError(t, err)
			require.Equal(t, ct, refSIVSeal(key, ad, msg), "plaintext %d bytes, AD %d bytes", n, len(ad))
		}
	}
}

func TestDetRoundTrip(t *testing.T) {
	key := newTestDetKey(t, 1)
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	long := strings.Repeat("p", MaxBindingField)
	tests := []struct {
		name string
		pt   []byte
		b    Binding
	}{
		{"empty", nil, Binding{Path: "Email"}},
		{"one byte", []byte{0}, Binding{Path: "Email"}},
		{"one block", []byte("0123456789abcdef"), Binding{Path: "Email"}},
		{"utf-8", []byte("Bahnhofstraße 1, 東京"), Binding{Path: "Address.Street"}},
		{"every byte value", allBytes, Binding{Path: "Notes"}},
		{"map entry", []byte("+1 555 0100"), Binding{Path: "Phones", MapKey: "home"}},
		{"empty binding", []byte("x"), Binding{}},
		{"binding fields at the limit", []byte("x"), Binding{Path: long, MapKey: long}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text, err := key.SealString(string(tc.pt), tc.b)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(text, Prefix))
			bin, err := key.Seal(tc.pt, tc.b)
			require.NoError(t, err)
			require.Len(t, bin, DetOverhead+len(tc.pt))
			require.Equal(t, refText(bin), text, "text and binary forms agree")
			again, err := key.SealString(string(tc.pt), tc.b)
			require.NoError(t, err)
			require.Equal(t, text, again, "sealing is deterministic")

			s, err := key.OpenString(text, tc.b)
			require.NoError(t, err)
			require.Equal(t, string(tc.pt), s)
			p, err := key.OpenBytes([]byte(text), tc.b)
			require.NoError(t, err)
			require.Equal(t, string(tc.pt), string(p))
			p, err = key.Open(bin, tc.b)
			require.NoError(t, err)
			require.Equal(t, string(tc.pt), string(p))

			// The reference opens what the package sealed.
			sec := testDetSecret(1)
			id := key.ID()
			got, class := refDetOpenText(sec, id[:], text, tc.b)
			require.Equal(t, refClassOK, class)
			require.Equal(t, string(tc.pt), string(got))
		})
	}
}

func TestDetBinding(t *testing.T) {
	key := newTestDetKey(t, 2)
	b := Binding{Path: "Email"}
	a1, err := key.SealString("alice@example.com", b)
	require.NoError(t, err)

	// Equal values at the same path are equal, whoever they belong to;
	// another value, path, map key or key gives another envelope.
	for name, other := range map[string]func() (string, error){
		"other value": func() (string, error) { return key.SealString("alice@example.org", b) },
		"other path":  func() (string, error) { return key.SealString("alice@example.com", Binding{Path: "Email2"}) },
		"other map key": func() (string, error) {
			return key.SealString("alice@example.com", Binding{Path: "Email", MapKey: "k"})
		},
		"other key": func() (string, error) { return newTestDetKey(t, 3).SealString("alice@example.com", b) },
	} {
		s, err := other()
		require.NoError(t, err, name)
		require.NotEqual(t, a1, s, name)
	}

	// Moved to another path or map entry: tampered.
	for _, ob := range []Binding{{Path: "Phone"}, {Path: "Email", MapKey: "x"}, {Path: "Emai", MapKey: "l"}} {
		_, err := key.OpenString(a1, ob)
		requireClass(t, refTampered, err, "%+v", ob)
	}

	// The subject is not part of a deterministic binding: naming one is
	// refused on both sides rather than silently ignored.
	withSubject := Binding{Path: "Email", Subject: "user-42"}
	_, err = key.SealString("x", withSubject)
	requireClass(t, refFormat, err)
	require.Contains(t, err.Error(), "Subject")
	_, err = key.OpenString(a1, withSubject)
	requireClass(t, refFormat, err)
}

func TestAlgorithmMismatch(t *testing.T) {
	gcm := newTestKey(t, 4)
	det, err := NewDetKey(gcm.ID(), testDetSecret(4)) // the same id, on purpose
	require.NoError(t, err)
	b := Binding{Path: "Email"}

	d, err := det.SealString("v", b)
	require.NoError(t, err)
	_, err = gcm.OpenString(d, b)
	requireClass(t, refUnknown, err)
	require.Contains(t, err.Error(), "AES-SIV")

	g, err := gcm.SealString("v", b)
	require.NoError(t, err)
	_, err = det.OpenString(g, b)
	requireClass(t, refUnknown, err)
	require.Contains(t, err.Error(), "AES-256-GCM")

	alg, id, err := TextHeader(d)
	require.NoError(t, err)
	require.Equal(t, AlgAES256SIV, alg)
	require.Equal(t, det.ID(), id)
	alg, _, err = TextHeader(g)
	require.NoError(t, err)
	require.Equal(t, AlgAES256GCM, alg)
}

func TestDetMalformed(t *testing.T) {
	key := newTestDetKey(t, 5)
	id := key.ID()
	withHeader := func(alg byte, n int) []byte {
		b := make([]byte, n)
		b[0], b[1] = Version1, alg
		copy(b[2:], id[:])
		return b
	}
	b := Binding{Path: "Email"}
	for name, bin := range map[string][]byte{
		"header only":       withHeader(AlgAES256SIV, HeaderSize),
		"one short":         withHeader(AlgAES256SIV, DetOverhead-1),
		"over MaxPlaintext": withHeader(AlgAES256SIV, DetOverhead+MaxPlaintext+1),
		"algorithm 3":       withHeader(3, DetOverhead+4),
	} {
		_, err := Parse(bin)
		requireClass(t, refFormat, err, name)
		_, err = key.Open(bin, b)
		requireClass(t, refFormat, err, name)
		_, class := refDetOpen(testDetSecret(5), id[:], bin, b)
		require.Equal(t, refFormat, class, name)
	}
	// The shortest envelope (an empty plaintext) is well formed, and an
	// all-zero one fails authentication, not parsing.
	_, err := key.Open(withHeader(AlgAES256SIV, DetOverhead), b)
	requireClass(t, refTampered, err)

	// At exactly MaxPlaintext a plaintext seals and opens; one more byte
	// does not seal.
	if !testing.Short() && !raceEnabled {
		pt := make([]byte, MaxPlaintext)
		bin, err := key.Seal(pt, b)
		require.NoError(t, err)
		got, err := key.Open(bin, b)
		require.NoError(t, err)
		require.Len(t, got, MaxPlaintext)
		_, err = key.Seal(make([]byte, MaxPlaintext+1), b)
		requireClass(t, refFormat, err)
	}
}

func TestNewDetKey(t *testing.T) {
	for _, n := range []int{0, 16, 32, 48, 63, 65} {
		k, err := NewDetKey(testID(1), make([]byte, n))
		require.Error(t, err, "%d bytes", n)
		require.Nil(t, k)
		require.Contains(t, err.Error(), "64 bytes")
	}
	// The key keeps its own copy of the secret.
	secret := testDetSecret(6)
	k, err := NewDetKey(testID(6), secret)
	require.NoError(t, err)
	require.Equal(t, testID(6), k.ID())
	want, err := newTestDetKey(t, 6).SealString("v", Binding{Path: "P"})
	require.NoError(t, err)
	clear(secret)
	got, err := k.SealString("v", Binding{Path: "P"})
	require.NoError(t, err)
	require.Equal(t, want, got)
}

func TestDetConcurrent(t *testing.T) {
	key := newTestDetKey(t, 7)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				v := fmt.Sprintf("value-%d", (g+i)%17)
				b := Binding{Path: "F", MapKey: fmt.Sprint(i % 3)}
				s, err := key.SealString(v, b)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := key.OpenString(s, b)
				if err != nil || got != v {
					t.Errorf("round trip: %q, %v", got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
