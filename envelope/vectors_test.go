package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the reference implementation")

const vectorsPath = "testdata/vectors.json"

// The JSON schema of testdata/vectors.json. Byte strings are lowercase hex;
// binding strings are UTF-8.
type vectorFile struct {
	Comment               []string       `json:"comment"`
	Vectors               []vector       `json:"vectors"`
	Negative              []negVector    `json:"negative"`
	Deterministic         []detVector    `json:"deterministic"`
	DeterministicNegative []detNegVector `json:"deterministic_negative"`
}

type vecBinding struct {
	Path    string `json:"path"`
	MapKey  string `json:"map_key"`
	Subject string `json:"subject"`
}

func (b vecBinding) binding() Binding {
	return Binding(b)
}

type vector struct {
	Name           string     `json:"name"`
	DEK            string     `json:"dek"`
	KeyID          string     `json:"key_id"`
	Nonce          string     `json:"nonce"`
	Binding        vecBinding `json:"binding"`
	Plaintext      string     `json:"plaintext"`
	AssociatedData string     `json:"associated_data"`
	Binary         string     `json:"binary"`
	Envelope       string     `json:"envelope"`
}

type negVector struct {
	Name     string     `json:"name"`
	DEK      string     `json:"dek"`
	KeyID    string     `json:"key_id"`
	Binding  vecBinding `json:"binding"`
	Envelope string     `json:"envelope"`
	Error    string     `json:"error"`
}

// detVector is a deterministic (algorithm 0x02) envelope: key is the 64-byte
// AES-SIV key; there is no nonce, and the binding's subject is always empty.
type detVector struct {
	Name           string     `json:"name"`
	Key            string     `json:"key"`
	KeyID          string     `json:"key_id"`
	Binding        vecBinding `json:"binding"`
	Plaintext      string     `json:"plaintext"`
	AssociatedData string     `json:"associated_data"`
	Binary         string     `json:"binary"`
	Envelope       string     `json:"envelope"`
}

type detNegVector struct {
	Name     string     `json:"name"`
	Key      string     `json:"key"`
	KeyID    string     `json:"key_id"`
	Binding  vecBinding `json:"binding"`
	Envelope string     `json:"envelope"`
	Error    string     `json:"error"`
}

func hexRange(start, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(start + i)
	}
	return hex.EncodeToString(b)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// genVectors computes the vectors with the reference implementation. It is
// deterministic: every nonce is given.
func genVectors() vectorFile {
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	type in struct {
		name  string
		dek   string
		id    string
		nonce string
		b     vecBinding
		pt    []byte
	}
	ins := []in{
		{"basic", hexRange(0x00, 32), hexRange(0xa0, 16), "cafebabefacedbaddecaf888",
			vecBinding{Path: "Email", Subject: "user-42"}, []byte("alice@example.com")},
		{"empty plaintext, empty binding", hexRange(0x20, 32), hexRange(0xb0, 16), "000000000000000000000000",
			vecBinding{}, nil},
		{"one byte", hexRange(0x40, 32), hexRange(0xc0, 16), "ffffffffffffffffffffffff",
			vecBinding{Path: "Flags", Subject: "user-42"}, []byte{0x00}},
		{"two bytes", hexRange(0x60, 32), hexRange(0xd0, 16), "0102030405060708090a0b0c",
			vecBinding{Path: "Country"}, []byte("de")},
		{"map entry", hexRange(0x00, 32), hexRange(0xa0, 16), "5f5e5d5c5b5a595857565554",
			vecBinding{Path: "Phones", MapKey: "home", Subject: "user-42"}, []byte("+1 555 0100")},
		{"every byte value", hexRange(0x00, 32), hexRange(0xa0, 16), "101112131415161718191a1b",
			vecBinding{Path: "Notes", Subject: "user-42"}, allBytes},
		{"utf-8 binding", hexRange(0x80, 32), hexRange(0xe0, 16), "a1a2a3a4a5a6a7a8a9aaabac",
			vecBinding{Path: "Adresse.Straße", MapKey: "clé", Subject: "ユーザー-7"}, []byte("Bahnhofstraße 1")},
		{"path ab, subject c", hexRange(0x00, 32), hexRange(0xa0, 16), "0c0b0a090807060504030201",
			vecBinding{Path: "ab", Subject: "c"}, []byte("x")},
	}

	var f vectorFile
	f.Comment = []string{
		"Test vectors for the zonekey envelope, version 1 (docs/format.md).",
		"Byte strings are lowercase hex; binding strings and envelopes are UTF-8.",
		"vectors: sealing plaintext under dek/key_id with the given nonce and binding gives",
		"  associated_data, binary and envelope exactly; opening envelope gives plaintext.",
		"negative: opening envelope with dek/key_id and binding must fail with the error class:",
		"  format (malformed), unknown_key (another key id or algorithm), tampered (authentication failed).",
		"deterministic: algorithm 0x02 (AES-SIV, 64-byte key, no nonce, no subject in the binding);",
		"  sealing plaintext under key/key_id with the binding gives associated_data, binary and",
		"  envelope exactly, every time; opening envelope gives plaintext.",
		"deterministic_negative: opening envelope with the AES-SIV key/key_id and binding must fail",
		"  with the error class.",
		"Generated by: go test ./envelope -run Vectors -update",
	}
	for _, v := range ins {
		dek, id, nonce := mustHex(v.dek), mustHex(v.id), mustHex(v.nonce)
		bin, ad := refSeal(dek, id, nonce, v.pt, v.b.binding())
		f.Vectors = append(f.Vectors, vector{
			Name: v.name, DEK: v.dek, KeyID: v.id, Nonce: v.nonce, Binding: v.b,
			Plaintext:      hex.EncodeToString(v.pt),
			AssociatedData: hex.EncodeToString(ad),
			Binary:         hex.EncodeToString(bin),
			Envelope:       refText(bin),
		})
	}

	basic, empty, abc := f.Vectors[0], f.Vectors[1], f.Vectors[7]
	basicBin := mustHex(basic.Binary)
	neg := func(name string, from vector, env string, b vecBinding, class string) negVector {
		return negVector{Name: name, DEK: from.DEK, KeyID: from.KeyID, Binding: b, Envelope: env, Error: class}
	}
	flip := func(off int, mask byte) string {
		m := bytes.Clone(basicBin)
		m[off] ^= mask
		return refText(m)
	}
	setHeader := func(version, alg byte) string {
		m := bytes.Clone(basicBin)
		m[0], m[1] = version, alg
		return refText(m)
	}
	b := basic.Binding
	f.Negative = []negVector{
		neg("tag bit flipped", basic, flip(len(basicBin)-1, 0x01), b, refTampered),
		neg("ciphertext bit flipped", basic, flip(30, 0x80), b, refTampered),
		neg("nonce bit flipped", basic, flip(18, 0x01), b, refTampered),
		neg("last byte removed", basic, refText(basicBin[:len(basicBin)-1]), b, refTampered),
		neg("other path", basic, basic.Envelope, vecBinding{Path: "Phone", Subject: "user-42"}, refTampered),
		neg("other subject", basic, basic.Envelope, vecBinding{Path: "Email", Subject: "user-43"}, refTampered),
		neg("map key added", basic, basic.Envelope, vecBinding{Path: "Email", MapKey: "x", Subject: "user-42"}, refTampered),
		neg("binding boundary moved (ab|c opened as a|bc)", abc, abc.Envelope, vecBinding{Path: "a", Subject: "bc"}, refTampered),
		{Name: "another DEK under the same id", DEK: hexRange(0x01, 32), KeyID: basic.KeyID, Binding: b, Envelope: basic.Envelope, Error: refTampered},
		neg("key id bit flipped", basic, flip(17, 0x01), b, refUnknown),
		{Name: "opened with another key id", DEK: basic.DEK, KeyID: hexRange(0xa1, 16), Binding: b, Envelope: basic.Envelope, Error: refUnknown},
		neg("version 0x00", basic, setHeader(0x00, 0x01), b, refFormat),
		neg("version 0x02", basic, setHeader(0x02, 0x01), b, refFormat),
		neg("algorithm 0x00", basic, setHeader(0x01, 0x00), b, refFormat),
		neg("algorithm 0x02 (AES-SIV) opened with an AES-GCM key", basic, setHeader(0x01, 0x02), b, refUnknown),
		neg("algorithm 0x03", basic, setHeader(0x01, 0x03), b, refFormat),
		neg("algorithm 0xff", basic, setHeader(0x01, 0xff), b, refFormat),
		neg("truncated to 45 bytes", basic, refText(basicBin[:45]), b, refFormat),
		neg("empty string", basic, "", b, refFormat),
		neg("prefix only", basic, refPrefix, b, refFormat),
		neg("missing prefix", basic, strings.TrimPrefix(basic.Envelope, refPrefix), b, refFormat),
		neg("upper-case prefix", basic, "ZK1."+strings.TrimPrefix(basic.Envelope, refPrefix), b, refFormat),
		neg("prefix zk2.", basic, "zk2."+strings.TrimPrefix(basic.Envelope, refPrefix), b, refFormat),
		neg("non-zero unused bits in the last character", empty, nonCanonicalLast(empty.Envelope), empty.Binding, refFormat),
		neg("padding", empty, empty.Envelope+"==", empty.Binding, refFormat),
		neg("line break", basic, basic.Envelope[:40]+"\n"+basic.Envelope[40:], b, refFormat),
		neg("trailing newline", basic, basic.Envelope+"\n", b, refFormat),
		neg("space", basic, basic.Envelope[:40]+" "+basic.Envelope[40:], b, refFormat),
	}
	// The standard base64 alphabet ('+' and '/') is not base64url.
	for _, v := range f.Vectors {
		if std := strings.NewReplacer("-", "+", "_", "/").Replace(v.Envelope); std != v.Envelope {
			f.Negative = append(f.Negative, neg("standard base64 alphabet", v, std, v.Binding, refFormat))
			break
		}
	}
	genDetVectors(&f, allBytes)
	return f
}

// genDetVectors adds the deterministic vectors to f.
func genDetVectors(f *vectorFile, allBytes []byte) {
	type in struct {
		name string
		key  string
		id   string
		b    vecBinding
		pt   []byte
	}
	ins := []in{
		{"det basic", hexRange(0x00, 64), hexRange(0x10, 16), vecBinding{Path: "Email"}, []byte("alice@example.com")},
		{"det empty plaintext, empty binding", hexRange(0x40, 64), hexRange(0x20, 16), vecBinding{}, nil},
		{"det short plaintext (under one block)", hexRange(0x00, 64), hexRange(0x10, 16), vecBinding{Path: "Country"}, []byte("de")},
		{"det exactly one block", hexRange(0x00, 64), hexRange(0x10, 16), vecBinding{Path: "Email"}, []byte("bob@example.org!")},
		{"det map entry", hexRange(0x80, 64), hexRange(0x30, 16), vecBinding{Path: "Emails", MapKey: "work"}, []byte("alice@example.com")},
		{"det every byte value", hexRange(0xc0, 64), hexRange(0x40, 16), vecBinding{Path: "Token"}, allBytes},
		{"det utf-8 binding", hexRange(0x00, 64), hexRange(0x10, 16), vecBinding{Path: "Adresse.Straße", MapKey: "clé"}, []byte("Bahnhofstraße 1")},
	}
	for _, v := range ins {
		bin, ad := refDetSeal(mustHex(v.key), mustHex(v.id), v.pt, v.b.binding())
		f.Deterministic = append(f.Deterministic, detVector{
			Name: v.name, Key: v.key, KeyID: v.id, Binding: v.b,
			Plaintext:      hex.EncodeToString(v.pt),
			AssociatedData: hex.EncodeToString(ad),
			Binary:         hex.EncodeToString(bin),
			Envelope:       refText(bin),
		})
	}
	basic, empty := f.Deterministic[0], f.Deterministic[1]
	bin := mustHex(basic.Binary)
	b := basic.Binding
	neg := func(name string, env string, b vecBinding, class string) detNegVector {
		return detNegVector{Name: name, Key: basic.Key, KeyID: basic.KeyID, Binding: b, Envelope: env, Error: class}
	}
	flip := func(off int, mask byte) string {
		m := bytes.Clone(bin)
		m[off] ^= mask
		return refText(m)
	}
	setHeader := func(version, alg byte) string {
		m := bytes.Clone(bin)
		m[0], m[1] = version, alg
		return refText(m)
	}
	f.DeterministicNegative = []detNegVector{
		neg("synthetic IV bit flipped", flip(18, 0x01), b, refTampered),
		neg("ciphertext bit flipped", flip(len(bin)-1, 0x80), b, refTampered),
		neg("last byte removed", refText(bin[:len(bin)-1]), b, refTampered),
		neg("other path", basic.Envelope, vecBinding{Path: "Phone"}, refTampered),
		neg("map key added", basic.Envelope, vecBinding{Path: "Email", MapKey: "x"}, refTampered),
		{Name: "another key under the same id", Key: hexRange(0x01, 64), KeyID: basic.KeyID, Binding: b, Envelope: basic.Envelope, Error: refTampered},
		neg("a subject in the binding", basic.Envelope, vecBinding{Path: "Email", Subject: "user-42"}, refFormat),
		neg("key id bit flipped", flip(17, 0x01), b, refUnknown),
		{Name: "opened with another key id", Key: basic.Key, KeyID: hexRange(0x11, 16), Binding: b, Envelope: basic.Envelope, Error: refUnknown},
		neg("algorithm 0x01 (AES-GCM) opened with an AES-SIV key", setHeader(0x01, 0x01), b, refUnknown),
		neg("algorithm 0x03", setHeader(0x01, 0x03), b, refFormat),
		neg("version 0x02", setHeader(0x02, 0x02), b, refFormat),
		neg("truncated to 33 bytes", refText(bin[:33]), b, refFormat),
		{Name: "empty plaintext envelope, one byte short", Key: empty.Key, KeyID: empty.KeyID, Binding: empty.Binding,
			Envelope: refText(mustHex(empty.Binary)[:33]), Error: refFormat},
		neg("padding", basic.Envelope+"=", b, refFormat),
		neg("line break", basic.Envelope[:30]+"\n"+basic.Envelope[30:], b, refFormat),
	}
}

// nonCanonicalLast sets an unused low bit of the last character of a text
// envelope whose binary length is 1 modulo 3 (last group of 2 characters).
func nonCanonicalLast(env string) string {
	last := strings.IndexByte(b64Alphabet, env[len(env)-1])
	return env[:len(env)-1] + string(b64Alphabet[last|1])
}

func readVectors(t testing.TB) vectorFile {
	t.Helper()
	data, err := os.ReadFile(filepath.FromSlash(vectorsPath))
	require.NoError(t, err)
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f vectorFile
	require.NoError(t, dec.Decode(&f))
	require.NotEmpty(t, f.Vectors)
	require.NotEmpty(t, f.Negative)
	return f
}

func TestVectors(t *testing.T) {
	gen := genVectors()
	if *update {
		data, err := json.MarshalIndent(gen, "", "  ")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.FromSlash(vectorsPath), append(data, '\n'), 0o644))
	}
	f := readVectors(t)
	require.Equal(t, gen, f, "testdata/vectors.json is stale: go test ./envelope -run Vectors -update")

	for _, v := range f.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			dek, idb, nonce, pt := mustHex(v.DEK), mustHex(v.KeyID), mustHex(v.Nonce), mustHex(v.Plaintext)
			b := v.Binding.binding()

			// The file agrees with the reference implementation of
			// docs/format.md.
			bin, ad := refSeal(dek, idb, nonce, pt, b)
			require.Equal(t, v.AssociatedData, hex.EncodeToString(ad))
			require.Equal(t, v.Binary, hex.EncodeToString(bin))
			require.Equal(t, v.Envelope, refText(bin))

			// (a) The package opens every vector to its plaintext.
			id, err := ParseKeyID(v.KeyID)
			require.NoError(t, err)
			key, err := NewKey(id, dek)
			require.NoError(t, err)
			s, err := key.OpenString(v.Envelope, b)
			require.NoError(t, err)
			require.Equal(t, string(pt), s)
			p, err := key.OpenBytes([]byte(v.Envelope), b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pt, p))
			p, err = key.Open(bin, b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pt, p))
			e, err := ParseText(v.Envelope)
			require.NoError(t, err)
			require.Equal(t, id, e.KeyID)
			require.Equal(t, nonce, e.Nonce)
			tid, err := TextKeyID(v.Envelope)
			require.NoError(t, err)
			require.Equal(t, id, tid)
			require.Equal(t, ad, appendAD(nil, bin[:HeaderSize], &b))

			// (b) The reference opens what the package seals, in both
			// the text and the binary form.
			text, err := key.SealString(string(pt), b)
			require.NoError(t, err)
			got, class := refOpenText(dek, idb, text, b)
			require.Equal(t, refClassOK, class)
			require.True(t, bytes.Equal(pt, got))
			sealed, err := key.Seal(pt, b)
			require.NoError(t, err)
			require.Equal(t, bin[:HeaderSize], sealed[:HeaderSize])
			require.Len(t, sealed, len(bin))
			got, class = refOpen(dek, idb, sealed, b)
			require.Equal(t, refClassOK, class)
			require.True(t, bytes.Equal(pt, got))
		})
	}

	testDetVectors(t, f)

	for _, v := range f.Negative {
		t.Run("negative/"+v.Name, func(t *testing.T) {
			require.Contains(t, refClassErr, v.Error)
			dek, idb := mustHex(v.DEK), mustHex(v.KeyID)
			b := v.Binding.binding()

			_, class := refOpenText(dek, idb, v.Envelope, b)
			require.Equal(t, v.Error, class, "reference implementation")

			id, err := ParseKeyID(v.KeyID)
			require.NoError(t, err)
			key, err := NewKey(id, dek)
			require.NoError(t, err)
			_, err = key.OpenString(v.Envelope, b)
			requireClass(t, v.Error, err)
			_, err = key.OpenBytes([]byte(v.Envelope), b)
			requireClass(t, v.Error, err)
			if v.Error == refFormat {
				_, err = ParseText(v.Envelope)
				requireClass(t, refFormat, err)
			}
		})
	}
}

// testDetVectors checks the deterministic vectors in both directions, like
// the AES-GCM ones; since sealing is deterministic, the package must also
// reproduce every envelope byte for byte.
func testDetVectors(t *testing.T, f vectorFile) {
	require.NotEmpty(t, f.Deterministic)
	require.NotEmpty(t, f.DeterministicNegative)
	for _, v := range f.Deterministic {
		t.Run(v.Name, func(t *testing.T) {
			keyb, idb, pt := mustHex(v.Key), mustHex(v.KeyID), mustHex(v.Plaintext)
			b := v.Binding.binding()
			require.Empty(t, b.Subject)

			bin, ad := refDetSeal(keyb, idb, pt, b)
			require.Equal(t, v.AssociatedData, hex.EncodeToString(ad))
			require.Equal(t, v.Binary, hex.EncodeToString(bin))
			require.Equal(t, v.Envelope, refText(bin))

			id, err := ParseKeyID(v.KeyID)
			require.NoError(t, err)
			key, err := NewDetKey(id, keyb)
			require.NoError(t, err)

			// (a) The package opens every vector.
			s, err := key.OpenString(v.Envelope, b)
			require.NoError(t, err)
			require.Equal(t, string(pt), s)
			p, err := key.OpenBytes([]byte(v.Envelope), b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pt, p))
			p, err = key.Open(bin, b)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pt, p))
			e, err := ParseText(v.Envelope)
			require.NoError(t, err)
			require.Equal(t, AlgAES256SIV, e.Algorithm)
			require.Nil(t, e.Nonce)
			alg, tid, err := TextHeader(v.Envelope)
			require.NoError(t, err)
			require.Equal(t, AlgAES256SIV, alg)
			require.Equal(t, id, tid)

			// (b) The package seals exactly the vector's bytes, and the
			// reference opens them.
			text, err := key.SealString(string(pt), b)
			require.NoError(t, err)
			require.Equal(t, v.Envelope, text)
			sealed, err := key.Seal(pt, b)
			require.NoError(t, err)
			require.Equal(t, v.Binary, hex.EncodeToString(sealed))
			sb, err := key.SealBytes(pt, b)
			require.NoError(t, err)
			require.Equal(t, v.Envelope, string(sb))
			got, class := refDetOpenText(keyb, idb, text, b)
			require.Equal(t, refClassOK, class)
			require.True(t, bytes.Equal(pt, got))
		})
	}
	for _, v := range f.DeterministicNegative {
		t.Run("deterministic_negative/"+v.Name, func(t *testing.T) {
			require.Contains(t, refClassErr, v.Error)
			keyb, idb := mustHex(v.Key), mustHex(v.KeyID)
			b := v.Binding.binding()
			_, class := refDetOpenText(keyb, idb, v.Envelope, b)
			require.Equal(t, v.Error, class, "reference implementation")
			id, err := ParseKeyID(v.KeyID)
			require.NoError(t, err)
			key, err := NewDetKey(id, keyb)
			require.NoError(t, err)
			_, err = key.OpenString(v.Envelope, b)
			requireClass(t, v.Error, err)
			_, err = key.OpenBytes([]byte(v.Envelope), b)
			requireClass(t, v.Error, err)
		})
	}
}

// docs/format.md works through the first vector; keep the two in step.
func TestFormatDocExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.FromSlash("../docs/format.md"))
	require.NoError(t, err)
	v := readVectors(t).Vectors[0]
	bin := mustHex(v.Binary)
	parts := map[string]string{
		"dek":             v.DEK,
		"key id":          v.KeyID,
		"nonce":           v.Nonce,
		"plaintext":       v.Plaintext,
		"associated data": v.AssociatedData,
		"header":          hex.EncodeToString(bin[:HeaderSize]),
		"ciphertext":      hex.EncodeToString(bin[HeaderSize+NonceSize : len(bin)-TagSize]),
		"tag":             hex.EncodeToString(bin[len(bin)-TagSize:]),
		"binary":          v.Binary,
		"envelope":        v.Envelope,
	}
	for name, want := range parts {
		require.Contains(t, string(doc), want, "docs/format.md must show the %s of vector %q", name, v.Name)
	}

	// §12 works through the first deterministic vector.
	d := readVectors(t).Deterministic[0]
	bin = mustHex(d.Binary)
	for name, want := range map[string]string{
		"key":             d.Key,
		"key id":          d.KeyID,
		"plaintext":       d.Plaintext,
		"associated data": d.AssociatedData,
		"header":          hex.EncodeToString(bin[:HeaderSize]),
		"synthetic IV":    hex.EncodeToString(bin[HeaderSize:DetOverhead]),
		"ciphertext":      hex.EncodeToString(bin[DetOverhead:]),
		"binary":          d.Binary,
		"envelope":        d.Envelope,
	} {
		require.Contains(t, string(doc), want, "docs/format.md must show the %s of vector %q", name, d.Name)
	}
}
