package bench_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/bench"
	"github.com/zonekey/zonekey/envelope"
)

// fieldSizes are the plaintext sizes of the single-field benchmarks.
var fieldSizes = []int{16, 64, 256, 1024}

// searchSizes are the value sizes of the blind-index and deterministic
// benchmarks: searchable values are short (e-mail addresses, phone numbers,
// national ids).
var searchSizes = []int{16, 64, 256}

// tmpRoot holds every keystore the benchmarks make; TestMain removes it.
var tmpRoot string

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "zonekey-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	closeShared()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// tempDir returns a new directory under tmpRoot that outlives a single
// benchmark run, so fixtures can be shared across -count repetitions.
func tempDir(tb testing.TB, name string) string {
	dir, err := os.MkdirTemp(tmpRoot, name+"-")
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

var shared struct {
	once   sync.Once
	client *zonekey.Client
	err    error
}

// hotClient returns the Client of the hot-path benchmarks, opened once per
// process on its own keystore.
func hotClient(tb testing.TB) *zonekey.Client {
	shared.once.Do(func() {
		dir, err := os.MkdirTemp(tmpRoot, "hot-")
		if err != nil {
			shared.err = err
			return
		}
		shared.client, shared.err = bench.Open(context.Background(), dir, 0)
	})
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.client
}

func closeShared() {
	if shared.client != nil {
		shared.client.Close()
	}
}

func sizeName(n int) string { return fmt.Sprintf("size=%d", n) }

// runSizes runs, as a sub-benchmark per size, the case that mk makes on the
// shared hot client.
func runSizes(b *testing.B, sizes []int, mk func(c *zonekey.Client, n int) (bench.Case, error)) {
	c := hotClient(b)
	for _, n := range sizes {
		cs, err := mk(c, n)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(sizeName(n), cs.Run)
	}
}

// perSize runs, as a sub-benchmark per size, the op that mk makes for an
// n-byte value, with allocations and bytes of plaintext reported.
func perSize(b *testing.B, sizes []int, mk func(n int) (op func(*testing.B))) {
	for _, n := range sizes {
		op := mk(n)
		b.Run(sizeName(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			for b.Loop() {
				op(b)
			}
		})
	}
}

// BenchmarkFieldEncrypt encrypts a OneField record (one string field) with
// zonekey.Client, its DEK cached: the hot path.
func BenchmarkFieldEncrypt(b *testing.B) {
	runSizes(b, fieldSizes, func(c *zonekey.Client, n int) (bench.Case, error) {
		enc, _, err := bench.FieldCases(context.Background(), c, n)
		return enc, err
	})
}

// BenchmarkFieldDecrypt decrypts a OneField record with its DEK cached.
func BenchmarkFieldDecrypt(b *testing.B) {
	runSizes(b, fieldSizes, func(c *zonekey.Client, n int) (bench.Case, error) {
		_, dec, err := bench.FieldCases(context.Background(), c, n)
		return dec, err
	})
}

// BenchmarkStructEncrypt encrypts a Record (five sensitive fields of 16 to
// 200 bytes, three plain) with its DEK cached.
func BenchmarkStructEncrypt(b *testing.B) {
	enc, _, err := bench.RecordCases(context.Background(), hotClient(b))
	if err != nil {
		b.Fatal(err)
	}
	enc.Run(b)
}

// BenchmarkStructDecrypt decrypts a Record with its DEK cached.
func BenchmarkStructDecrypt(b *testing.B) {
	_, dec, err := bench.RecordCases(context.Background(), hotClient(b))
	if err != nil {
		b.Fatal(err)
	}
	dec.Run(b)
}

// BenchmarkFloorSeal is the floor of BenchmarkFieldEncrypt: AES-256-GCM
// seal with a crypto/rand nonce and base64url of the same bytes.
func BenchmarkFloorSeal(b *testing.B) {
	for _, n := range fieldSizes {
		b.Run(sizeName(n), bench.NewFloor(n, bench.ADSize(bench.OneFieldPath, bench.Subject(0))).BenchmarkSeal)
	}
}

// BenchmarkFloorOpen is the floor of BenchmarkFieldDecrypt.
func BenchmarkFloorOpen(b *testing.B) {
	for _, n := range fieldSizes {
		b.Run(sizeName(n), bench.NewFloor(n, bench.ADSize(bench.OneFieldPath, bench.Subject(0))).BenchmarkOpen)
	}
}

// BenchmarkFloorStructSeal is the floor of BenchmarkStructEncrypt: the
// field floor over the same five values.
func BenchmarkFloorStructSeal(b *testing.B) {
	bench.NewFloorSet(bench.RecordFields, bench.Subject(0)).BenchmarkSeal(b)
}

// BenchmarkFloorStructOpen is the floor of BenchmarkStructDecrypt.
func BenchmarkFloorStructOpen(b *testing.B) {
	bench.NewFloorSet(bench.RecordFields, bench.Subject(0)).BenchmarkOpen(b)
}

// envelopeKey returns a DEK for the envelope-level benchmarks.
func envelopeKey(b *testing.B) *envelope.Key {
	secret := make([]byte, envelope.KeySize)
	rand.Read(secret)
	k, err := envelope.NewKey(envelope.NewKeyID(), secret)
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// BenchmarkEnvelopeSeal seals one value with package envelope directly,
// without fieldcrypt and the keyring: it splits the hot path's overhead
// over the floor between the envelope and the layers above it.
func BenchmarkEnvelopeSeal(b *testing.B) {
	k := envelopeKey(b)
	bind := envelope.Binding{Path: bench.OneFieldPath, Subject: bench.Subject(0)}
	perSize(b, fieldSizes, func(n int) func(*testing.B) {
		pt := bench.Text(n, 0)
		return func(b *testing.B) {
			if _, err := k.SealString(pt, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEnvelopeOpen opens one value with package envelope directly.
func BenchmarkEnvelopeOpen(b *testing.B) {
	k := envelopeKey(b)
	bind := envelope.Binding{Path: bench.OneFieldPath, Subject: bench.Subject(0)}
	perSize(b, fieldSizes, func(n int) func(*testing.B) {
		ct, err := k.SealString(bench.Text(n, 0), bind)
		if err != nil {
			b.Fatal(err)
		}
		return func(b *testing.B) {
			if _, err := k.OpenString(ct, bind); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// tinkAEAD returns a Tink AEAD primitive of a fresh AES256GCM keyset.
func tinkAEAD(b *testing.B) tink.AEAD {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

// tinkField is one value as a Tink user would store it in a string column:
// Encrypt with associated data, then base64url.
type tinkField struct {
	pt, ad []byte
	ct     string
}

func newTinkField(b *testing.B, a tink.AEAD, f bench.FieldSpec) tinkField {
	tf := tinkField{pt: []byte(bench.Text(f.Size, 0)), ad: make([]byte, bench.ADSize(f.Path, bench.Subject(0)))}
	rand.Read(tf.ad)
	ct, err := a.Encrypt(tf.pt, tf.ad)
	if err != nil {
		b.Fatal(err)
	}
	tf.ct = base64.RawURLEncoding.EncodeToString(ct)
	return tf
}

func (tf tinkField) encrypt(b *testing.B, a tink.AEAD) string {
	ct, err := a.Encrypt(tf.pt, tf.ad)
	if err != nil {
		b.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(ct)
}

func (tf tinkField) decrypt(b *testing.B, a tink.AEAD) string {
	ct, err := base64.RawURLEncoding.DecodeString(tf.ct)
	if err != nil {
		b.Fatal(err)
	}
	pt, err := a.Decrypt(ct, tf.ad)
	if err != nil {
		b.Fatal(err)
	}
	return string(pt)
}

// BenchmarkTinkEncrypt is the Tink baseline of BenchmarkFieldEncrypt: a
// tink-go AES256GCM keyset's AEAD, per field, with associated data of the
// same size, and base64url of the result.
func BenchmarkTinkEncrypt(b *testing.B) {
	a := tinkAEAD(b)
	perSize(b, fieldSizes, func(n int) func(*testing.B) {
		tf := newTinkField(b, a, bench.FieldSpec{Path: bench.OneFieldPath, Size: n})
		return func(b *testing.B) { tf.encrypt(b, a) }
	})
}

// BenchmarkTinkDecrypt is the Tink baseline of BenchmarkFieldDecrypt.
func BenchmarkTinkDecrypt(b *testing.B) {
	a := tinkAEAD(b)
	perSize(b, fieldSizes, func(n int) func(*testing.B) {
		tf := newTinkField(b, a, bench.FieldSpec{Path: bench.OneFieldPath, Size: n})
		return func(b *testing.B) { tf.decrypt(b, a) }
	})
}

// BenchmarkTinkStructEncrypt is the Tink baseline of BenchmarkStructEncrypt:
// the same five values, each sealed as in BenchmarkTinkEncrypt.
func BenchmarkTinkStructEncrypt(b *testing.B) {
	a := tinkAEAD(b)
	var tfs []tinkField
	for _, f := range bench.RecordFields {
		tfs = append(tfs, newTinkField(b, a, f))
	}
	b.ReportAllocs()
	b.SetBytes(int64(bench.RecordBytes()))
	for b.Loop() {
		for _, tf := range tfs {
			tf.encrypt(b, a)
		}
	}
}

// BenchmarkTinkStructDecrypt is the Tink baseline of BenchmarkStructDecrypt.
func BenchmarkTinkStructDecrypt(b *testing.B) {
	a := tinkAEAD(b)
	var tfs []tinkField
	for _, f := range bench.RecordFields {
		tfs = append(tfs, newTinkField(b, a, f))
	}
	b.ReportAllocs()
	b.SetBytes(int64(bench.RecordBytes()))
	for b.Loop() {
		for _, tf := range tfs {
			tf.decrypt(b, a)
		}
	}
}

// BenchmarkFieldEncryptParallel is BenchmarkFieldEncrypt (64 bytes) from
// GOMAXPROCS goroutines at once, all on the same subject: it shows
// contention in the keyring's DEK cache.
func BenchmarkFieldEncryptParallel(b *testing.B) {
	c := hotClient(b)
	ctx := context.Background()
	plain := bench.OneField{Subject: bench.Subject(0), Zone: bench.Zone, Value: bench.Text(bench.FieldSize, 0)}
	b.ReportAllocs()
	b.SetBytes(bench.FieldSize)
	b.RunParallel(func(pb *testing.PB) {
		r := new(bench.OneField)
		*r = plain
		for pb.Next() {
			r.Value = plain.Value
			if err := c.Encrypt(ctx, r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkIndexTerm computes the blind-index term of a value with
// Client.AppendIndexTerms into a reused slice (Indexed's 16-bit index, one
// live key version, cached): the query side of a blind-index lookup, and
// the guard's index-term case.
func BenchmarkIndexTerm(b *testing.B) {
	runSizes(b, searchSizes, func(c *zonekey.Client, n int) (bench.Case, error) {
		return bench.IndexTermCase(context.Background(), c, n)
	})
}

// BenchmarkIndexTerms is BenchmarkIndexTerm through Client.IndexTerms,
// which also allocates the slice (with the term, in one allocation).
func BenchmarkIndexTerms(b *testing.B) {
	c := hotClient(b)
	ctx := context.Background()
	perSize(b, searchSizes, func(n int) func(*testing.B) {
		value := bench.Text(n, 0)
		return func(b *testing.B) {
			if _, err := c.IndexTerms(ctx, bench.Zone, (*bench.Indexed)(nil), bench.IndexedIndex, value); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFloorHMAC is the floor of BenchmarkIndexTerm: one reused
// HMAC-SHA256, truncated and written as zonekey writes a term.
func BenchmarkFloorHMAC(b *testing.B) {
	for _, n := range searchSizes {
		b.Run(sizeName(n), bench.NewHMACFloor(n, bench.IndexBits).Benchmark)
	}
}

// BenchmarkFieldEncryptIndexed encrypts an Indexed record: its value sealed
// and its blind-index term computed, DEK and index key cached. Its floor is
// BenchmarkFloorSeal plus BenchmarkFloorHMAC, run together as
// BenchmarkFloorSealHMAC.
func BenchmarkFieldEncryptIndexed(b *testing.B) {
	c := hotClient(b)
	for _, n := range searchSizes {
		ic, err := bench.IndexedEncryptCase(context.Background(), c, n)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(sizeName(n), ic.Run)
	}
}

// BenchmarkFloorSealHMAC is the floor of BenchmarkFieldEncryptIndexed: a
// FloorSeal and a FloorHMAC of the same value per op.
func BenchmarkFloorSealHMAC(b *testing.B) {
	c := hotClient(b)
	for _, n := range searchSizes {
		ic, err := bench.IndexedEncryptCase(context.Background(), c, n)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(sizeName(n), ic.Floor)
	}
}

// BenchmarkFieldEncryptDeterministic encrypts a Deterministic record (one
// AES-SIV field) with its key cached.
func BenchmarkFieldEncryptDeterministic(b *testing.B) {
	runSizes(b, searchSizes, func(c *zonekey.Client, n int) (bench.Case, error) {
		enc, _, err := bench.DetCases(context.Background(), c, n)
		return enc, err
	})
}

// BenchmarkFieldDecryptDeterministic decrypts a Deterministic record with
// its key cached.
func BenchmarkFieldDecryptDeterministic(b *testing.B) {
	runSizes(b, searchSizes, func(c *zonekey.Client, n int) (bench.Case, error) {
		_, dec, err := bench.DetCases(context.Background(), c, n)
		return dec, err
	})
}

// BenchmarkFloorSIV is the floor of the deterministic benchmarks: tink-go's
// AES-SIV with associated data of the same size as zonekey's, and base64url
// of the same bytes.
func BenchmarkFloorSIV(b *testing.B) {
	for _, n := range searchSizes {
		f := bench.NewSIVFloor(n, bench.ADSize(bench.OneFieldPath, ""))
		b.Run(sizeName(n)+"/seal", f.BenchmarkSeal)
		b.Run(sizeName(n)+"/open", f.BenchmarkOpen)
	}
}

// TestFloorMatchesEnvelope checks that the floor writes as many bytes as
// zonekey does for the same value, so that the two are comparable.
func TestFloorMatchesEnvelope(t *testing.T) {
	c := hotClient(t)
	for _, n := range []int{1, 16, 17, 18, 64, 200} {
		r := bench.OneField{Subject: bench.Subject(0), Zone: bench.Zone, Value: bench.Text(n, 0)}
		if err := c.Encrypt(context.Background(), &r); err != nil {
			t.Fatal(err)
		}
		f := bench.NewFloor(n, bench.ADSize(bench.OneFieldPath, r.Subject))
		if got, want := len(f.Seal()), len(r.Value); got != want {
			t.Errorf("size %d: floor output is %d bytes, zonekey's %d", n, got, want)
		}
	}
}

// TestHotPathCases checks that the guard's cases set up and round-trip.
func TestHotPathCases(t *testing.T) {
	cases, err := bench.HotPath(context.Background(), hotClient(t), bench.FieldSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{bench.CaseFieldEncrypt, bench.CaseFieldDecrypt, bench.CaseStructEncrypt, bench.CaseStructDecrypt,
		bench.CaseIndexTerm, bench.CaseDetEncrypt}
	if len(cases) != len(want) {
		t.Fatalf("HotPath returned %d cases, want %d", len(cases), len(want))
	}
	for i, c := range cases {
		if c.Name != want[i] || c.Fields != 1 && c.Fields != len(bench.RecordFields) || c.Run == nil || c.Floor == nil {
			t.Errorf("case %d: %+v, want %s", i, c, want[i])
		}
	}
}

// TestSearchFloorsMatch checks that the HMAC and SIV floors write as many
// bytes as zonekey does for the same value (the index term, the
// deterministic envelope), and that the HMAC floor allocates only the term
// it returns.
func TestSearchFloorsMatch(t *testing.T) {
	var termSink string
	c := hotClient(t)
	ctx := context.Background()
	for _, n := range []int{1, 16, 17, 64, 200} {
		value := bench.Text(n, 0)
		terms, err := c.IndexTerms(ctx, bench.Zone, bench.Indexed{}, bench.IndexedIndex, value)
		if err != nil {
			t.Fatal(err)
		}
		f := bench.NewHMACFloor(n, bench.IndexBits)
		if got := f.Term(); len(terms) != 1 || len(got) != len(terms[0]) || got[:2] != terms[0][:2] {
			t.Errorf("size %d: floor term %q, zonekey's %q", n, got, terms)
		}
		if a := testing.AllocsPerRun(100, func() { termSink = f.Term() }); a != 1 || termSink != f.Term() {
			t.Errorf("size %d: HMAC floor allocates %v times per term, want 1 (the term)", n, a)
		}
		r := bench.Deterministic{Subject: bench.Subject(0), Zone: bench.Zone, Value: value}
		if err := c.Encrypt(ctx, &r); err != nil {
			t.Fatal(err)
		}
		sf := bench.NewSIVFloor(n, bench.ADSize(bench.OneFieldPath, ""))
		if got := len(sf.Seal()); got != len(r.Value) {
			t.Errorf("size %d: SIV floor output is %d bytes, zonekey's %d", n, got, len(r.Value))
		}
		if _, err := sf.Open(); err != nil {
			t.Errorf("size %d: SIV floor open: %v", n, err)
		}
	}
}
