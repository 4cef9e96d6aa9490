// Package bench holds zonekey's benchmarks and the fixtures they share with
// the hot-path guard (command bench/guard).
//
// The benchmarks themselves live in this package's test files; run them with
//
//	go test -run '^$' -bench . ./bench
//
// This file defines the records they encrypt, a Client over the embedded
// keystore and a local custodian, and the hot-path cases: each a zonekey
// operation paired with its floor, the same work done with the standard
// library alone (see Floor, HMACFloor), or with tink-go's AES-SIV for
// deterministic encryption (SIVFloor). The guard measures exactly these pairs, so a
// figure in `go test -bench` output and a ratio printed by the guard are
// always of the same code.
package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/zonekey/zonekey"
)

// Zone is the custody zone of every benchmark record.
const Zone = "eu"

// OneField is the smallest useful record: a subject, a zone and one
// sensitive string.
type OneField struct {
	Subject string `zonekey:"subject"`
	Zone    string `zonekey:"zone"`
	Value   string `zonekey:"encrypt"`
}

// OneFieldPath is the field path of OneField.Value, bound into its
// ciphertext.
const OneFieldPath = "Value"

// Indexed is OneField with a 16-bit blind index of its value: the record of
// the search benchmarks.
type Indexed struct {
	Subject  string `zonekey:"subject"`
	Zone     string `zonekey:"zone"`
	Value    string `zonekey:"encrypt"`
	ValueIdx string `zonekey:"index=Value,bits=16"`
}

// IndexedIndex is the path of Indexed's blind-index field, the argument of
// Client.IndexTerms, and IndexBits its size in bits.
const (
	IndexedIndex = "ValueIdx"
	IndexBits    = 16
)

// Deterministic is OneField with its value encrypted deterministically
// (AES-SIV under a per-zone key, bound to its path only).
type Deterministic struct {
	Subject string `zonekey:"subject"`
	Zone    string `zonekey:"zone"`
	Value   string `zonekey:"encrypt,deterministic"`
}

// Record is a realistic record: five sensitive fields of 16 to 200 bytes
// (RecordFields gives their sizes) and three plain ones.
type Record struct {
	ID      string `zonekey:"subject"`
	Region  string `zonekey:"zone"`
	Name    string `zonekey:"encrypt"`
	Email   string `zonekey:"encrypt"`
	Phone   string `zonekey:"encrypt"`
	Address string `zonekey:"encrypt"`
	Notes   []byte `zonekey:"encrypt"`
	Plan    string
	Country string
	Created int64
}

// setSensitive sets r's sensitive fields to those of from.
func (r *Record) setSensitive(from *Record) {
	r.Name, r.Email, r.Phone, r.Address, r.Notes = from.Name, from.Email, from.Phone, from.Address, from.Notes
}

// FieldSpec is the field path and plaintext size of one sensitive field.
type FieldSpec struct {
	Path string
	Size int
}

// RecordFields lists Record's sensitive fields and the sizes NewRecord gives
// them, in field order.
var RecordFields = []FieldSpec{
	{"Name", 16},
	{"Email", 32},
	{"Phone", 20},
	{"Address", 96},
	{"Notes", 200},
}

// RecordBytes is the plaintext size of Record's sensitive fields.
func RecordBytes() int {
	n := 0
	for _, f := range RecordFields {
		n += f.Size
	}
	return n
}

// Text returns n bytes of printable text; seed varies the content.
func Text(n, seed int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .@-+"
	var b strings.Builder
	b.Grow(n)
	for i := range n {
		b.WriteByte(alphabet[(i*7+seed*13)%len(alphabet)])
	}
	return b.String()
}

// NewRecord returns a plaintext Record of subject with the field sizes of
// RecordFields.
func NewRecord(subject string, seed int) Record {
	return Record{
		ID:      subject,
		Region:  Zone,
		Name:    Text(RecordFields[0].Size, seed),
		Email:   Text(RecordFields[1].Size, seed+1),
		Phone:   Text(RecordFields[2].Size, seed+2),
		Address: Text(RecordFields[3].Size, seed+3),
		Notes:   []byte(Text(RecordFields[4].Size, seed+4)),
		Plan:    "pro",
		Country: "DE",
		Created: 1735689600,
	}
}

// Subject returns the subject id of the i-th benchmark subject.
func Subject(i int) string { return fmt.Sprintf("user-%06d", i) }

// Open opens a Client on the embedded keystore in dir with a local
// custodian for Zone, the configuration of the quickstart. dekCacheSize 0
// keeps the default.
func Open(ctx context.Context, dir string, dekCacheSize int) (*zonekey.Client, error) {
	return zonekey.Open(ctx, zonekey.Config{
		Dir:          dir,
		Zones:        zonekey.LocalZones(dir, Zone),
		DEKCacheSize: dekCacheSize,
	})
}

// Case is one hot-path operation and its floor, both as benchmark
// functions. Run and Floor report allocations and bytes (b.SetBytes, the
// plaintext size); one operation handles Fields fields.
//
// Run encrypts or decrypts in place one record allocated before the loop,
// as an application does with a record it already holds, resetting only
// its sensitive fields each iteration: a fresh record per iteration would
// escape to the heap (Encrypt takes an interface) and count the
// benchmark's own allocation against zonekey, and copying the whole record
// would add the write barriers of its other fields.
//
// A Reported case is measured and printed like the others but is not held
// to the budget: deterministic encryption, whose floor is tink-go's AES-SIV
// and already allocates eight times per value (the search issue holds the
// blind-index term to the budget, not it).
type Case struct {
	Name     string
	Fields   int
	Run      func(b *testing.B)
	Floor    func(b *testing.B)
	Reported bool
}

// Hot-path case names, in the order HotPath returns them.
const (
	CaseFieldEncrypt  = "field-encrypt"
	CaseFieldDecrypt  = "field-decrypt"
	CaseStructEncrypt = "struct-encrypt"
	CaseStructDecrypt = "struct-decrypt"
	CaseIndexTerm     = "index-term"
	CaseDetEncrypt    = "det-encrypt"
)

// FieldSize is the default plaintext size of the single-field hot-path
// cases: a typical e-mail address, name or phone number is shorter, a
// postal address about as long.
const FieldSize = 64

// HotPath returns the hot-path cases over c, with the DEK of their subject
// (and the index and deterministic keys of their zone) cached: one field of
// fieldSize bytes encrypted and decrypted, a Record encrypted and
// decrypted, the blind-index term of a fieldSize-byte value, and a
// fieldSize-byte value encrypted deterministically (Reported). The struct
// cases' floor is the field floor over the same five values (RecordFields),
// one after the other; the index-term case's is HMACFloor, the det-encrypt
// case's SIVFloor.
func HotPath(ctx context.Context, c *zonekey.Client, fieldSize int) ([]Case, error) {
	fe, fd, err := FieldCases(ctx, c, fieldSize)
	if err != nil {
		return nil, err
	}
	se, sd, err := RecordCases(ctx, c)
	if err != nil {
		return nil, err
	}
	it, err := IndexTermCase(ctx, c, fieldSize)
	if err != nil {
		return nil, err
	}
	de, _, err := DetCases(ctx, c, fieldSize)
	if err != nil {
		return nil, err
	}
	de.Reported = true
	return []Case{fe, fd, se, sd, it, de}, nil
}

// FieldCases returns the encrypt and decrypt cases of a OneField record
// whose value is size bytes, with its DEK cached.
func FieldCases(ctx context.Context, c *zonekey.Client, size int) (enc, dec Case, err error) {
	plain := OneField{Subject: Subject(0), Zone: Zone, Value: Text(size, 0)}
	sealed := plain
	if err := c.Encrypt(ctx, &sealed); err != nil { // creates and caches the DEK
		return enc, dec, err
	}
	check := sealed
	if err := c.Decrypt(ctx, &check); err != nil || check.Value != plain.Value {
		return enc, dec, fmt.Errorf("bench: one-field round trip failed: %v", err)
	}
	floor := NewFloor(size, ADSize(OneFieldPath, plain.Subject))
	enc = Case{
		Name:   CaseFieldEncrypt,
		Fields: 1,
		Run:    recordRun(ctx, c.Encrypt, int64(size), plain, func(r *OneField) { r.Value = plain.Value }),
		Floor:  floor.BenchmarkSeal,
	}
	dec = Case{
		Name:   CaseFieldDecrypt,
		Fields: 1,
		Run:    recordRun(ctx, c.Decrypt, int64(size), sealed, func(r *OneField) { r.Value = sealed.Value }),
		Floor:  floor.BenchmarkOpen,
	}
	return enc, dec, nil
}

// RecordCases returns the encrypt and decrypt cases of a Record, with its
// DEK cached, and the floor over the same five values.
func RecordCases(ctx context.Context, c *zonekey.Client) (enc, dec Case, err error) {
	plain := NewRecord(Subject(0), 0)
	sealed := plain
	if err := c.Encrypt(ctx, &sealed); err != nil {
		return enc, dec, err
	}
	check := sealed
	if err := c.Decrypt(ctx, &check); err != nil || check.Address != plain.Address || string(check.Notes) != string(plain.Notes) {
		return enc, dec, fmt.Errorf("bench: record round trip failed: %v", err)
	}
	floors := NewFloorSet(RecordFields, plain.ID)
	n := int64(RecordBytes())
	enc = Case{
		Name:   CaseStructEncrypt,
		Fields: len(RecordFields),
		Run:    recordRun(ctx, c.Encrypt, n, plain, func(r *Record) { r.setSensitive(&plain) }),
		Floor:  floors.BenchmarkSeal,
	}
	dec = Case{
		Name:   CaseStructDecrypt,
		Fields: len(RecordFields),
		Run:    recordRun(ctx, c.Decrypt, n, sealed, func(r *Record) { r.setSensitive(&sealed) }),
		Floor:  floors.BenchmarkOpen,
	}
	return enc, dec, nil
}

// IndexTermCase returns the case of the blind-index term of a size-byte
// value of Indexed's index (one live key version, cached), against
// HMACFloor. One op computes one term with Client.AppendIndexTerms into a
// reused slice, the form of a query loop: like the floor, it allocates the
// term alone. (IndexTerms also allocates the slice: BenchmarkIndexTerm.)
func IndexTermCase(ctx context.Context, c *zonekey.Client, size int) (Case, error) {
	value := Text(size, 0)
	terms, err := c.IndexTerms(ctx, Zone, (*Indexed)(nil), IndexedIndex, value) // creates and caches the key
	if err != nil {
		return Case{}, err
	}
	r := Indexed{Subject: Subject(0), Zone: Zone, Value: value}
	if err := c.Encrypt(ctx, &r); err != nil {
		return Case{}, err
	}
	if len(terms) != 1 || r.ValueIdx != terms[0] {
		return Case{}, fmt.Errorf("bench: index terms %q do not match the stored term %q", terms, r.ValueIdx)
	}
	floor := NewHMACFloor(size, IndexBits)
	if got := floor.Term(); len(got) != len(terms[0]) {
		return Case{}, fmt.Errorf("bench: HMAC floor writes %q, zonekey %q", got, terms[0])
	}
	return Case{
		Name:   CaseIndexTerm,
		Fields: 1,
		Run: func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var terms []string
			for b.Loop() {
				var err error
				if terms, err = c.AppendIndexTerms(ctx, terms[:0], Zone, (*Indexed)(nil), IndexedIndex, value); err != nil {
					b.Fatal(err)
				}
			}
		},
		Floor: floor.Benchmark,
	}, nil
}

// DetCases returns the encrypt and decrypt cases of a Deterministic record
// whose value is size bytes, with its key cached, against SIVFloor.
func DetCases(ctx context.Context, c *zonekey.Client, size int) (enc, dec Case, err error) {
	plain := Deterministic{Subject: Subject(0), Zone: Zone, Value: Text(size, 0)}
	sealed := plain
	if err := c.Encrypt(ctx, &sealed); err != nil { // creates and caches the key
		return enc, dec, err
	}
	check := sealed
	if err := c.Decrypt(ctx, &check); err != nil || check.Value != plain.Value {
		return enc, dec, fmt.Errorf("bench: deterministic round trip failed: %v", err)
	}
	floor := NewSIVFloor(size, ADSize(OneFieldPath, ""))
	if got := len(floor.Seal()); got != len(sealed.Value) {
		return enc, dec, fmt.Errorf("bench: SIV floor writes %d bytes, zonekey %d", got, len(sealed.Value))
	}
	enc = Case{
		Name:   CaseDetEncrypt,
		Fields: 1,
		Run:    recordRun(ctx, c.Encrypt, int64(size), plain, func(r *Deterministic) { r.Value = plain.Value }),
		Floor:  floor.BenchmarkSeal,
	}
	dec = Case{
		Name:   "det-decrypt",
		Fields: 1,
		Run:    recordRun(ctx, c.Decrypt, int64(size), sealed, func(r *Deterministic) { r.Value = sealed.Value }),
		Floor:  floor.BenchmarkOpen,
	}
	return enc, dec, nil
}

// IndexedEncryptCase returns the case of encrypting an Indexed record whose
// value is size bytes (its value sealed and its term computed, DEK and
// index key cached), against Floor's seal followed by HMACFloor. One op
// handles two fields.
func IndexedEncryptCase(ctx context.Context, c *zonekey.Client, size int) (Case, error) {
	plain := Indexed{Subject: Subject(0), Zone: Zone, Value: Text(size, 0)}
	sealed := plain
	if err := c.Encrypt(ctx, &sealed); err != nil {
		return Case{}, err
	}
	if sealed.ValueIdx == "" {
		return Case{}, fmt.Errorf("bench: Encrypt left the index field empty")
	}
	seal := NewFloor(size, ADSize(OneFieldPath, plain.Subject))
	mac := NewHMACFloor(size, IndexBits)
	return Case{
		Name:   "field-encrypt-indexed",
		Fields: 2,
		Run:    recordRun(ctx, c.Encrypt, int64(size), plain, func(r *Indexed) { r.Value, r.ValueIdx = plain.Value, "" }),
		Floor: func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				seal.Seal()
				mac.Term()
			}
		},
	}, nil
}

// recordRun is the Run of a case that applies op (Client.Encrypt or
// Decrypt) to a record of type T made from src, resetting its sealed
// fields with reset before each call.
func recordRun[T any](ctx context.Context, op func(context.Context, any, ...zonekey.CallOption) error, bytes int64, src T, reset func(r *T)) func(*testing.B) {
	return func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(bytes)
		r := new(T)
		*r = src
		for b.Loop() {
			reset(r)
			if err := op(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	}
}
