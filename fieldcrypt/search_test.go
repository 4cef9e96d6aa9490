package fieldcrypt_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/keystore"
)

// member has the searchable fields of a typical users table.
type member struct {
	ID       string  `zonekey:"subject"`
	Region   string  `zonekey:"zone"`
	Email    string  `zonekey:"encrypt"`
	EmailIdx string  `zonekey:"index=Email,bits=32,lower,trim"`
	EmailRaw string  `zonekey:"index=Email,bits=32,name=email-raw"` // no normalisation
	Tax      string  `zonekey:"encrypt,deterministic"`
	TaxB     []byte  `zonekey:"encrypt,deterministic"`
	Country  *string `zonekey:"encrypt,deterministic"`
	Phone    string  `zonekey:"encrypt"`
	Plan     string
}

func newMember(id, zone, email string) *member {
	c := "DE"
	return &member{ID: id, Region: zone, Email: email, Tax: "DE-123", TaxB: []byte("DE-123"), Country: &c, Phone: "+49 30 1234", Plan: "pro"}
}

var termRE = regexp.MustCompile(`^[1-9][0-9]*:[0-9a-f]+$`)

func indexTerms(t *testing.T, e *env, zone, index, value string) []string {
	t.Helper()
	terms, err := e.c.IndexTerms(ctx, zone, member{}, index, value)
	require.NoError(t, err)
	for _, term := range terms {
		require.Regexp(t, termRE, term)
	}
	return terms
}

func detTerms(t *testing.T, e *env, zone, field, value string) []string {
	t.Helper()
	out, err := e.c.DeterministicTerms(ctx, zone, (*member)(nil), field, value)
	require.NoError(t, err)
	return out
}

func TestSearchableRoundTrip(t *testing.T) {
	e := newEnv(t)
	plain := newMember("m-1", "eu", "Alice@Example.com ")
	m := deepCopy(plain)
	require.NoError(t, e.c.Encrypt(ctx, m))

	require.True(t, envelope.IsText(m.Email) && envelope.IsText(m.Tax) && envelope.IsText(m.TaxB) && envelope.IsText(*m.Country))
	require.Regexp(t, `^1:[0-9a-f]{8}$`, m.EmailIdx, "version 1, 32 bits")
	require.Regexp(t, `^1:[0-9a-f]{8}$`, m.EmailRaw)
	for _, f := range []string{m.Tax, string(m.TaxB), *m.Country} {
		alg, _, err := envelope.TextHeader(f)
		require.NoError(t, err)
		require.Equal(t, envelope.AlgAES256SIV, alg)
	}
	require.NotContains(t, strings.Join(texts(m), "|"), "lice@", "no plaintext left")

	// The index matches the query term; normalisation as the tag says.
	require.Equal(t, []string{m.EmailIdx}, indexTerms(t, e, "eu", "EmailIdx", "alice@example.com"))
	require.Equal(t, []string{m.EmailIdx}, indexTerms(t, e, "eu", "EmailIdx", "  ALICE@example.COM"))
	require.Equal(t, []string{m.EmailRaw}, indexTerms(t, e, "eu", "EmailRaw", "Alice@Example.com "))
	require.NotEqual(t, []string{m.EmailRaw}, indexTerms(t, e, "eu", "EmailRaw", "alice@example.com"), "EmailRaw does not normalise")
	require.NotEqual(t, m.EmailIdx, m.EmailRaw, "two indexes, two keys")

	// The deterministic fields match the query envelopes.
	require.Equal(t, []string{m.Tax}, detTerms(t, e, "eu", "Tax", "DE-123"))
	require.Equal(t, []string{string(m.TaxB)}, detTerms(t, e, "eu", "TaxB", "DE-123"))
	require.Equal(t, []string{*m.Country}, detTerms(t, e, "eu", "Country", "DE"))

	// Encrypt again: nothing changes (idempotent), index terms included.
	again := deepCopy(m)
	require.NoError(t, e.c.Encrypt(ctx, again))
	require.Equal(t, m, again)

	// Decrypt restores the values and leaves the index fields alone.
	require.NoError(t, e.c.Decrypt(ctx, m))
	want := deepCopy(plain)
	want.EmailIdx, want.EmailRaw = again.EmailIdx, again.EmailRaw
	require.Equal(t, want, m)
}

func TestIndexNormalisation(t *testing.T) {
	type norm struct {
		Zone  string `zonekey:"zone"`
		S     string `zonekey:"encrypt"`
		None  string `zonekey:"index=S,bits=64"`
		Lower string `zonekey:"index=S,bits=64,lower"`
		Trim  string `zonekey:"index=S,bits=64,trim"`
		NFC   string `zonekey:"index=S,bits=64,nfc"`
		All   string `zonekey:"index=S,bits=64,nfc,lower,trim"` // any order
	}
	e := newEnv(t)
	term := func(index, value string) string {
		terms, err := e.c.IndexTerms(ctx, "eu", norm{}, index, value)
		require.NoError(t, err)
		require.Len(t, terms, 1)
		return terms[0]
	}
	same := func(index string, a, b string, want bool) {
		t.Helper()
		require.Equal(t, want, term(index, a) == term(index, b), "%s: %q vs %q", index, a, b)
	}
	const composed, decomposed = "Ren\u00e9", "Rene\u0301"
	same("None", "a", "a", true)
	same("None", "A", "a", false)
	same("None", " a", "a", false)
	same("None", composed, decomposed, false)
	same("Lower", "ÄBC", "äbc", true)
	same("Lower", " a", "a", false)
	same("Trim", "\t a \n", "a", true)
	same("Trim", "A", "a", false)
	same("NFC", composed, decomposed, true)
	same("NFC", "A", "a", false)
	same("All", " RENE\u0301 ", "ren\u00e9", true)

	// What Encrypt stores is what IndexTerms computes.
	r := &norm{Zone: "eu", S: " René "}
	require.NoError(t, e.c.Encrypt(ctx, r))
	require.Equal(t, term("None", " René "), r.None)
	require.Equal(t, term("All", "rené"), r.All)
	require.Equal(t, term("Trim", "René"), r.Trim)
}

// bitsRecord returns a new record, holding s, of a type whose one blind
// index has bits bits (the default if 0) under the key named "b", which
// every such type shares. One type cannot hold two indexes of one key with
// different bits (the plan refuses it), so the tests that compare lengths
// under one key use a type per length.
func bitsRecord(bits int, s string) reflect.Value {
	tag := `zonekey:"index=S,name=b"`
	if bits != 0 {
		tag = fmt.Sprintf(`zonekey:"index=S,bits=%d,name=b"`, bits)
	}
	str := reflect.TypeFor[string]()
	r := reflect.New(reflect.StructOf([]reflect.StructField{
		{Name: "Zone", Type: str, Tag: `zonekey:"zone"`},
		{Name: "S", Type: str, Tag: `zonekey:"encrypt"`},
		{Name: "B", Type: str, Tag: reflect.StructTag(tag)},
	}))
	r.Elem().Field(0).SetString("eu")
	r.Elem().Field(1).SetString(s)
	return r
}

// storedTerm encrypts a bitsRecord of s and returns the term it stores.
func storedTerm(t *testing.T, e *env, bits int, s string) string {
	t.Helper()
	r := bitsRecord(bits, s)
	require.NoError(t, e.c.Encrypt(ctx, r.Interface()))
	return r.Elem().Field(2).String()
}

func TestIndexTermFormat(t *testing.T) {
	e := newEnv(t)
	// One key (name=b) truncated to several lengths: the terms are
	// prefixes of each other, with the unused low bits zero.
	full, err := hex.DecodeString(strings.TrimPrefix(storedTerm(t, e, 128, "x"), "1:"))
	require.NoError(t, err)
	require.Len(t, full, 16)
	require.Equal(t, "1:"+hex.EncodeToString(full[:2]), storedTerm(t, e, 0, "x"), "the default, 16 bits")
	require.Equal(t, "1:"+hex.EncodeToString([]byte{full[0], full[1] & 0xf0}), storedTerm(t, e, 12, "x"))
	require.Equal(t, "1:"+hex.EncodeToString([]byte{full[0], full[1] & 0xf8}), storedTerm(t, e, 13, "x"))
	require.Regexp(t, `^1:(00|80)$`, storedTerm(t, e, 1, "x"))
}

// TestIndexesSharingAKeyDiffer: one type cannot hold two indexes under one
// key name with other bits or normalisers (their terms could be joined);
// with the same options they may share it.
func TestIndexesSharingAKeyDiffer(t *testing.T) {
	type bitsDiffer struct {
		Zone string `zonekey:"zone"`
		E    string `zonekey:"encrypt"`
		P    string `zonekey:"encrypt"`
		EIdx string `zonekey:"index=E,bits=8,name=shared"`
		PIdx string `zonekey:"index=P,bits=32,name=shared"`
	}
	type normDiffers struct {
		Zone string `zonekey:"zone"`
		E    string `zonekey:"encrypt"`
		A    string `zonekey:"index=E,name=shared"`
		B    string `zonekey:"index=E,lower,name=shared"`
	}
	type same struct {
		Zone string `zonekey:"zone"`
		E    string `zonekey:"encrypt"`
		P    string `zonekey:"encrypt"`
		EIdx string `zonekey:"index=E,bits=24,name=shared"`
		PIdx string `zonekey:"index=P,bits=24,name=shared"`
	}
	e := newEnv(t)
	for _, v := range []any{&bitsDiffer{Zone: "eu", E: "x"}, &normDiffers{Zone: "eu", E: "x"}} {
		err := e.c.Encrypt(ctx, v)
		var pe *fieldcrypt.PlanError
		require.ErrorAs(t, err, &pe, "%T", v)
		require.ErrorContains(t, err, `index key name "shared"`)
	}
	r := &same{Zone: "eu", E: "x", P: "x"}
	require.NoError(t, e.c.Encrypt(ctx, r))
	require.Equal(t, r.EIdx, r.PIdx, "one key, one value, one term: the sharing the tags ask for")
}

// TestAppendIndexTerms checks that AppendIndexTerms appends what IndexTerms
// returns, reusing the slice it is given, and leaves it as it was on error.
func TestAppendIndexTerms(t *testing.T) {
	e := newEnv(t)
	want := indexTerms(t, e, "eu", "EmailIdx", "alice@example.com")
	dst := make([]string, 1, 4)
	dst[0] = "kept"
	got, err := e.c.AppendIndexTerms(ctx, dst, "eu", (*member)(nil), "EmailIdx", "Alice@Example.com")
	require.NoError(t, err)
	require.Equal(t, append([]string{"kept"}, want...), got)
	require.Same(t, &dst[0], &got[0], "the slice's room is reused")

	_, err = e.keys.RotateAuxKey(ctx, "eu", keystore.AuxIndex, "EmailIdx")
	require.NoError(t, err)
	both, err := e.c.AppendIndexTerms(ctx, got[:0], "eu", (*member)(nil), "EmailIdx", "alice@example.com")
	require.NoError(t, err)
	require.Equal(t, indexTerms(t, e, "eu", "EmailIdx", "alice@example.com"), both)
	require.Len(t, both, 2, "one term per live version")

	for _, bad := range []struct{ index, value string }{{"Nope", "x"}, {"EmailIdx", ""}} {
		out, err := e.c.AppendIndexTerms(ctx, []string{"kept"}, "eu", (*member)(nil), bad.index, bad.value)
		require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
		require.Equal(t, []string{"kept"}, out)
	}
}

// TestIndexTermsMatchStored checks that the terms a query computes are the
// ones Encrypt stores, for terms of every length (short ones and long ones
// are laid out differently) and for versions with one and two digits.
func TestIndexTermsMatchStored(t *testing.T) {
	e := newEnv(t)
	for v := 1; v <= 10; v++ {
		if v > 1 {
			_, err := e.keys.RotateAuxKey(ctx, "eu", keystore.AuxIndex, "b")
			require.NoError(t, err)
			require.NoError(t, e.keys.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, "b", uint32(v-1)))
		}
		for _, bits := range []int{1, 48, 49, 56, 64, 128} {
			r := bitsRecord(bits, "some value")
			require.NoError(t, e.c.Encrypt(ctx, r.Interface()))
			stored := r.Elem().Field(2).String()
			terms, err := e.c.IndexTerms(ctx, "eu", r.Interface(), "B", "some value")
			require.NoError(t, err)
			require.Equal(t, []string{stored}, terms, "%d bits, version %d", bits, v)
			require.True(t, strings.HasPrefix(stored, fmt.Sprintf("%d:", v)), "%d bits: %q", bits, stored)
		}
	}
}

func TestIndexZones(t *testing.T) {
	e := newEnv(t)
	eu := newMember("m-1", "eu", "alice@example.com")
	us := newMember("m-1", "us", "alice@example.com")
	require.NoError(t, e.c.Encrypt(ctx, eu))
	require.NoError(t, e.c.Encrypt(ctx, us))
	require.NotEqual(t, eu.EmailIdx, us.EmailIdx, "one value in two zones: unrelated terms")
	require.NotEqual(t, eu.Tax, us.Tax, "one value in two zones: unrelated envelopes")
	require.Equal(t, []string{eu.EmailIdx}, indexTerms(t, e, "eu", "EmailIdx", "alice@example.com"))
	require.Equal(t, []string{us.EmailIdx}, indexTerms(t, e, "us", "EmailIdx", "alice@example.com"))
}

func TestDeterministic(t *testing.T) {
	e := newEnv(t)
	a := newMember("m-1", "eu", "a@example.com")
	b := newMember("m-2", "eu", "b@example.com")
	require.NoError(t, e.c.Encrypt(ctx, a))
	require.NoError(t, e.c.Encrypt(ctx, b))

	// Equal values in one zone and field: equal ciphertexts, across
	// subjects (the subject is not bound).
	require.Equal(t, a.Tax, b.Tax)
	require.Equal(t, a.TaxB, b.TaxB)
	require.Equal(t, *a.Country, *b.Country)
	require.NotEqual(t, a.Email, b.Email)
	require.NotEqual(t, a.Phone, b.Phone, "randomized fields stay randomized")
	// Another field, the same value: another ciphertext.
	require.NotEqual(t, a.Tax, string(a.TaxB))
	// Another value: another ciphertext.
	c := newMember("m-3", "eu", "c@example.com")
	c.Tax = "DE-124"
	require.NoError(t, e.c.Encrypt(ctx, c))
	require.NotEqual(t, a.Tax, c.Tax)

	// A ciphertext copied to another subject's record at the same field
	// opens there: deterministic fields do not bind the subject.
	c.Tax = a.Tax
	require.NoError(t, e.c.Decrypt(ctx, c))
	require.Equal(t, "DE-123", c.Tax)

	// Moved to another field: tampered, and the record is unchanged.
	moved := deepCopy(b)
	moved.TaxB = []byte(a.Tax)
	before := deepCopy(moved)
	err := e.c.Decrypt(ctx, moved)
	require.ErrorIs(t, err, fieldcrypt.ErrTampered)
	var fe *fieldcrypt.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "TaxB", fe.Path)
	require.Equal(t, before, moved)
	moved.TaxB = before.TaxB
	moved.Country = &a.Tax
	require.ErrorIs(t, e.c.Decrypt(ctx, moved), fieldcrypt.ErrTampered)
	require.ErrorIs(t, e.c.Encrypt(ctx, moved), fieldcrypt.ErrTampered)

	// A deterministic ciphertext in a randomized field, and the reverse.
	swapped := deepCopy(b)
	swapped.Phone = a.Tax
	require.ErrorIs(t, e.c.Decrypt(ctx, swapped), fieldcrypt.ErrTampered)
	require.ErrorIs(t, e.c.Encrypt(ctx, swapped), fieldcrypt.ErrTampered)
	swapped = deepCopy(b)
	swapped.Tax = a.Phone
	require.ErrorIs(t, e.c.Decrypt(ctx, swapped), fieldcrypt.ErrTampered)
	require.ErrorIs(t, e.c.Encrypt(ctx, swapped), fieldcrypt.ErrTampered)

	// Another zone's ciphertext: Encrypt refuses it (Reindex would reseal it).
	us := newMember("m-1", "us", "a@example.com")
	require.NoError(t, e.c.Encrypt(ctx, us))
	require.NotEqual(t, a.Tax, us.Tax)
	mixed := deepCopy(a)
	mixed.Tax = us.Tax
	require.ErrorIs(t, e.c.Encrypt(ctx, mixed), fieldcrypt.ErrTampered)

	// Round trip.
	require.NoError(t, e.c.Decrypt(ctx, a))
	require.Equal(t, "DE-123", a.Tax)
	require.Equal(t, []byte("DE-123"), a.TaxB)
	require.Equal(t, "DE", *a.Country)
	require.Equal(t, "a@example.com", a.Email)
}

// Searchable fields inside slices and maps of structs.
type contact struct {
	Email    string `zonekey:"encrypt"`
	EmailIdx string `zonekey:"index=Email,lower"`
	Kind     string `zonekey:"encrypt,deterministic"`
}

type addressBook struct {
	Owner    string             `zonekey:"subject"`
	Zone     string             `zonekey:"zone"`
	Contacts []contact          `zonekey:""`
	ByName   map[string]contact `zonekey:""`
}

func TestSearchableNested(t *testing.T) {
	e := newEnv(t)
	ab := &addressBook{Owner: "o-1", Zone: "eu",
		Contacts: []contact{{Email: "A@x.com", Kind: "work"}, {Email: "b@x.com", Kind: "home"}},
		ByName:   map[string]contact{"ann": {Email: "a@X.com", Kind: "work"}}}
	require.NoError(t, e.c.Encrypt(ctx, ab))
	terms, err := e.c.IndexTerms(ctx, "eu", ab, "Contacts[].EmailIdx", "a@x.com")
	require.NoError(t, err)
	require.Equal(t, terms[0], ab.Contacts[0].EmailIdx)
	require.NotEqual(t, terms[0], ab.Contacts[1].EmailIdx)
	mt, err := e.c.IndexTerms(ctx, "eu", ab, "ByName{}.EmailIdx", "a@x.com")
	require.NoError(t, err)
	require.Equal(t, mt[0], ab.ByName["ann"].EmailIdx)
	require.NotEqual(t, mt[0], terms[0], "another index path, another key")
	kinds, err := e.c.DeterministicTerms(ctx, "eu", ab, "Contacts[].Kind", "work")
	require.NoError(t, err)
	require.Equal(t, kinds[0], ab.Contacts[0].Kind)

	again := deepCopy(ab)
	require.NoError(t, e.c.Encrypt(ctx, again))
	require.Equal(t, ab, again)
	require.NoError(t, e.c.Decrypt(ctx, again))
	require.Equal(t, "A@x.com", again.Contacts[0].Email)
	require.Equal(t, "work", again.ByName["ann"].Kind)
	require.Equal(t, ab.ByName["ann"].EmailIdx, again.ByName["ann"].EmailIdx)
}

func TestIndexAllOrNothing(t *testing.T) {
	e := newEnv(t)
	a := newMember("m-1", "eu", "a@example.com")
	b := newMember("m-2", "eu", "b@example.com")
	require.NoError(t, e.c.Encrypt(ctx, a))
	require.NoError(t, e.c.Encrypt(ctx, b))

	// b's record holding a's email ciphertext: Encrypt cannot verify the
	// source of the index, and changes nothing.
	bad := deepCopy(b)
	bad.Email = a.Email
	bad.EmailIdx = ""
	bad.Phone = "+1 555 0100" // would be sealed
	before := deepCopy(bad)
	err := e.c.Encrypt(ctx, bad)
	require.ErrorIs(t, err, fieldcrypt.ErrTampered)
	require.Equal(t, before, bad)

	// The custodian is down and the index key is not cached yet: nothing
	// changes either.
	e2 := newEnv(t)
	for _, c := range e2.cust {
		c.down.Store(true)
	}
	m := newMember("m-3", "eu", "c@example.com")
	before = deepCopy(m)
	require.ErrorIs(t, e2.c.Encrypt(ctx, m), fieldcrypt.ErrKMSUnavailable)
	require.Equal(t, before, m)
}

func TestReindexAfterRotation(t *testing.T) {
	e := newEnv(t)
	var rows []*member
	for i := range 20 {
		m := newMember(fmt.Sprintf("m-%d", i), "eu", fmt.Sprintf("user%d@example.com", i))
		m.Tax = fmt.Sprintf("T-%d", i%5)
		require.NoError(t, e.c.Encrypt(ctx, m))
		rows = append(rows, m)
	}
	find := func(index, value string) []string {
		terms := indexTerms(t, e, "eu", index, value)
		var ids []string
		for _, r := range rows {
			for _, term := range terms {
				if r.EmailIdx == term {
					ids = append(ids, r.ID)
				}
			}
		}
		return ids
	}
	findTax := func(value string) int {
		n := 0
		for _, r := range rows {
			for _, ct := range detTerms(t, e, "eu", "Tax", value) {
				if r.Tax == ct {
					n++
				}
			}
		}
		return n
	}
	require.Equal(t, []string{"m-3"}, find("EmailIdx", "user3@example.com"))
	require.Equal(t, 4, findTax("T-1"))

	// Rotate both keys. New records get version 2; old ones keep version
	// 1, and queries search both.
	purpose, name, err := fieldcrypt.SearchKey(member{}, "EmailIdx")
	require.NoError(t, err)
	require.Equal(t, keystore.AuxIndex, purpose)
	require.Equal(t, "EmailIdx", name)
	_, err = e.keys.RotateAuxKey(ctx, "eu", purpose, name)
	require.NoError(t, err)
	purpose, name, err = fieldcrypt.SearchKey(member{}, "Tax")
	require.NoError(t, err)
	require.Equal(t, keystore.AuxDeterministic, purpose)
	_, err = e.keys.RotateAuxKey(ctx, "eu", purpose, name)
	require.NoError(t, err)

	fresh := newMember("m-new", "eu", "new@example.com")
	fresh.Tax = "T-1"
	require.NoError(t, e.c.Encrypt(ctx, fresh))
	require.True(t, strings.HasPrefix(fresh.EmailIdx, "2:"))
	rows = append(rows, fresh)
	require.Len(t, indexTerms(t, e, "eu", "EmailIdx", "x@example.com"), 2)
	require.Equal(t, []string{"m-3"}, find("EmailIdx", "user3@example.com"), "old version still found")
	require.Equal(t, []string{"m-new"}, find("EmailIdx", "new@example.com"), "new version found")
	require.Equal(t, 5, findTax("T-1"), "old and new versions both found")

	// Encrypt leaves an older deterministic version alone; Reindex moves
	// everything to the current versions, resumably: a second pass
	// changes nothing.
	again := deepCopy(rows[1])
	require.NoError(t, e.c.Encrypt(ctx, again))
	require.Equal(t, rows[1].Tax, again.Tax)
	for pass := range 2 {
		changed := 0
		for _, r := range rows {
			ch, err := e.c.Reindex(ctx, r)
			require.NoError(t, err)
			if ch {
				changed++
			}
			require.True(t, strings.HasPrefix(r.EmailIdx, "2:"), r.EmailIdx)
		}
		if pass == 0 {
			require.Equal(t, 20, changed, "every old record changed, the new one did not")
		} else {
			require.Zero(t, changed, "a finished re-index changes nothing")
		}
	}
	require.Equal(t, []string{"m-3"}, find("EmailIdx", "user3@example.com"))
	require.Equal(t, 5, findTax("T-1"))

	// Retire version 1: queries search version 2 only, and still find
	// everything.
	require.NoError(t, e.keys.RetireAuxKeys(ctx, "eu", keystore.AuxIndex, "EmailIdx", 1))
	require.NoError(t, e.keys.RetireAuxKeys(ctx, "eu", keystore.AuxDeterministic, "Tax", 1))
	terms := indexTerms(t, e, "eu", "EmailIdx", "user3@example.com")
	require.Len(t, terms, 1)
	require.True(t, strings.HasPrefix(terms[0], "2:"))
	require.Equal(t, []string{"m-3"}, find("EmailIdx", "user3@example.com"))
	require.Len(t, detTerms(t, e, "eu", "Tax", "T-1"), 1)
	require.Equal(t, 5, findTax("T-1"))

	// The records still decrypt.
	for _, r := range rows {
		require.NoError(t, e.c.Decrypt(ctx, r))
	}
	require.Equal(t, "T-3", rows[3].Tax)
}

func TestBlankSearchable(t *testing.T) {
	e := newEnv(t)
	m := newMember("m-1", "eu", "a@example.com")
	require.NoError(t, e.c.Encrypt(ctx, m))
	email, phone := m.Email, m.Phone
	require.NoError(t, fieldcrypt.BlankSearchable(m))
	require.Empty(t, m.EmailIdx)
	require.Empty(t, m.EmailRaw)
	require.Empty(t, m.Tax)
	require.Nil(t, m.TaxB)
	require.NotNil(t, m.Country)
	require.Empty(t, *m.Country)
	require.Equal(t, email, m.Email, "randomized fields are left to the shred")
	require.Equal(t, phone, m.Phone)
	require.Equal(t, "pro", m.Plan)

	ab := &addressBook{Owner: "o", Zone: "eu", ByName: map[string]contact{"x": {Email: "x@x", Kind: "k"}}}
	require.NoError(t, e.c.Encrypt(ctx, ab))
	require.NoError(t, fieldcrypt.BlankSearchable(ab))
	require.Empty(t, ab.ByName["x"].EmailIdx)
	require.Empty(t, ab.ByName["x"].Kind)
	require.NotEmpty(t, ab.ByName["x"].Email)

	require.ErrorIs(t, fieldcrypt.BlankSearchable(member{}), fieldcrypt.ErrInvalidValue)
	require.NoError(t, fieldcrypt.BlankSearchable(&hot{Name: "x"}), "nothing searchable: nothing to do")
}

func TestSearchQueryErrors(t *testing.T) {
	e := newEnv(t)
	_, err := e.c.IndexTerms(ctx, "eu", member{}, "Email", "x")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	require.Contains(t, err.Error(), "EmailIdx, EmailRaw")
	_, err = e.c.IndexTerms(ctx, "eu", member{}, "EmailIdx", "")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	_, err = e.c.IndexTerms(ctx, "mars", member{}, "EmailIdx", "x")
	require.ErrorIs(t, err, keystore.ErrUnknownZone)
	_, err = e.c.IndexTerms(ctx, "eu", "member", "EmailIdx", "x")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	_, err = e.c.DeterministicTerms(ctx, "eu", member{}, "Email", "x")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	_, err = e.c.DeterministicTerms(ctx, "eu", member{}, "Tax", "")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	_, _, err = fieldcrypt.SearchKey(member{}, "Phone")
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	type bad struct {
		S string `zonekey:"index=T"`
	}
	_, err = e.c.IndexTerms(ctx, "eu", bad{}, "S", "x")
	require.ErrorIs(t, err, fieldcrypt.ErrUnsupportedField)

	// A Keyring without search keys cannot serve searchable types.
	c := fieldcrypt.New(plainKeyring{e.keys})
	require.ErrorIs(t, c.Encrypt(ctx, newMember("m", "eu", "x")), fieldcrypt.ErrUnsupportedField)
	_, err = c.IndexTerms(ctx, "eu", member{}, "EmailIdx", "x")
	require.ErrorIs(t, err, fieldcrypt.ErrUnsupportedField)
	require.NoError(t, c.Encrypt(ctx, &hot{ID: "h", Region: "eu", Name: "n"}), "other types are fine")
}

// plainKeyring hides the search methods of a keyring.
type plainKeyring struct{ k *keystore.Keyring }

func (p plainKeyring) DataKey(ctx context.Context, zone, subject string) (*keystore.DEK, error) {
	return p.k.DataKey(ctx, zone, subject)
}

func (p plainKeyring) Key(ctx context.Context, id envelope.KeyID) (*keystore.DEK, error) {
	return p.k.Key(ctx, id)
}

// The plain-field hot path is unchanged by searchable fields elsewhere:
// a record with an index costs its HMAC and the term, nothing per plain
// field.
func TestSearchableAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	type rec struct {
		ID       string `zonekey:"subject"`
		Region   string `zonekey:"zone"`
		Email    string `zonekey:"encrypt"`
		EmailIdx string `zonekey:"index=Email,bits=16"`
	}
	e := newEnv(t)
	plain := rec{ID: "u", Region: "eu", Email: "ada@example.eu"}
	v := plain
	require.NoError(t, e.c.Encrypt(ctx, &v))
	n := testing.AllocsPerRun(100, func() {
		v = plain
		if err := e.c.Encrypt(ctx, &v); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("Encrypt with one blind index: %.1f allocations", n)
	require.LessOrEqual(t, n, float64(2), "the ciphertext and the term")
}

// A zone-key rotation rewraps the index and deterministic keys with the
// DEKs (they are DEK rows): stored terms and deterministic ciphertexts stay
// valid, and nothing needs a re-index.
func TestSearchableSurviveZoneKeyRotation(t *testing.T) {
	e := newEnv(t)
	m := newMember("m-1", "eu", "alice@example.com")
	require.NoError(t, e.c.Encrypt(ctx, m))
	stored := deepCopy(m)
	res, err := e.keys.RotateZoneKey(ctx, "eu", keystore.ZoneKeyRotation{})
	require.NoError(t, err)
	require.Equal(t, uint32(2), res.Version)
	require.GreaterOrEqual(t, res.Rewrapped, 5, "the DEK, two index keys, three deterministic keys")

	// Another process, with cold caches, on the rotated keystore.
	e2 := openEnvWithStore(t, e.dir, e.store)
	require.Equal(t, []string{stored.EmailIdx}, indexTerms(t, e2, "eu", "EmailIdx", "alice@example.com"))
	require.Equal(t, []string{stored.Tax}, detTerms(t, e2, "eu", "Tax", "DE-123"))
	fresh := newMember("m-2", "eu", "alice@example.com")
	require.NoError(t, e2.c.Encrypt(ctx, fresh))
	require.Equal(t, stored.Tax, fresh.Tax, "equal values still give equal ciphertexts")
	require.Equal(t, stored.EmailIdx, fresh.EmailIdx)
	changed, err := e2.c.Reindex(ctx, m)
	require.NoError(t, err)
	require.False(t, changed, "no re-index needed")
	require.NoError(t, e2.c.Decrypt(ctx, m))
	require.Equal(t, "DE-123", m.Tax)
	require.Equal(t, "alice@example.com", m.Email)
}

// A record that moves to another zone keeps its deterministic values under
// the old zone's key: Encrypt refuses them, Reindex (by a caller allowed in
// both zones) reseals them under the new zone's key.
func TestReindexAfterZoneMove(t *testing.T) {
	type taxRecord struct {
		Region string `zonekey:"zone"`
		TaxID  string `zonekey:"encrypt,deterministic"`
	}
	e := newEnv(t)
	r := &taxRecord{Region: "eu", TaxID: "T-1"}
	require.NoError(t, e.c.Encrypt(ctx, r))
	euCT := r.TaxID
	r.Region = "us"
	require.ErrorIs(t, e.c.Encrypt(ctx, r), fieldcrypt.ErrTampered)
	changed, err := e.c.Reindex(ctx, r)
	require.NoError(t, err)
	require.True(t, changed)
	require.NotEqual(t, euCT, r.TaxID)
	us, err := e.c.DeterministicTerms(ctx, "us", taxRecord{}, "TaxID", "T-1")
	require.NoError(t, err)
	require.Equal(t, []string{r.TaxID}, us)
	require.NoError(t, e.c.Decrypt(ctx, r))
	require.Equal(t, "T-1", r.TaxID)
}

// A blind index of a deterministic field: Encrypt computes it from the
// plaintext, and again, after opening the deterministic ciphertext, on an
// encrypted record.
func TestIndexOfDeterministicSource(t *testing.T) {
	type rec struct {
		Zone   string `zonekey:"zone"`
		Tax    string `zonekey:"encrypt,deterministic"`
		TaxIdx string `zonekey:"index=Tax,bits=20,trim"`
	}
	e := newEnv(t)
	r := &rec{Zone: "eu", Tax: " T-1 "}
	require.NoError(t, e.c.Encrypt(ctx, r))
	terms, err := e.c.IndexTerms(ctx, "eu", rec{}, "TaxIdx", "T-1")
	require.NoError(t, err)
	require.Equal(t, []string{r.TaxIdx}, terms)
	r.TaxIdx = ""
	changed, err := e.c.Reindex(ctx, r)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, []string{r.TaxIdx}, terms)
}
