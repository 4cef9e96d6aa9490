package fieldcrypt_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
)

// flatRecord is a record the flat path takes: direct string and []byte
// fields, a zone and a subject, no searchable field.
type flatRecord struct {
	Region string `zonekey:"zone"`
	ID     string `zonekey:"subject"`
	Name   string `zonekey:"encrypt"`
	Email  string `zonekey:"encrypt"`
	Notes  []byte `zonekey:"encrypt"`
	Plan   string
}

func newFlat(id, region string) *flatRecord {
	return &flatRecord{Region: region, ID: id, Name: "Ada " + secretName, Email: secretEmail,
		Notes: []byte(secretNote), Plan: "PLAIN-pro"}
}

// both runs op once on the flat path (no option) and once on the general
// walk (AllowPlaintext, which changes nothing for these values but takes
// the general path), each on its own copy of r, and checks that both give
// the same error, and on error leave the record as it was. It returns the
// flat path's record.
func both(t *testing.T, r *flatRecord, op func(r *flatRecord, opts ...fieldcrypt.CallOption) error) (*flatRecord, error) {
	t.Helper()
	flat, walked := deepCopy(r), deepCopy(r)
	ferr := op(flat)
	werr := op(walked, fieldcrypt.AllowPlaintext())
	if ferr == nil || werr == nil {
		require.Equal(t, werr == nil, ferr == nil, "flat path %v, general walk %v", ferr, werr)
	} else {
		require.Equal(t, werr.Error(), ferr.Error(), "the flat path and the general walk disagree")
	}
	if ferr != nil {
		require.Equal(t, r, flat, "a failed call must leave the record unchanged")
		require.Equal(t, r, walked)
	}
	return flat, ferr
}

func TestFlatPathMatchesWalk(t *testing.T) {
	e := newEnv(t)
	other := newEnv(t)
	encrypt := func(r *flatRecord, opts ...fieldcrypt.CallOption) error { return e.c.Encrypt(ctx, r, opts...) }
	decrypt := func(r *flatRecord, opts ...fieldcrypt.CallOption) error { return e.c.Decrypt(ctx, r, opts...) }

	sealed, err := both(t, newFlat("u-1", "eu"), encrypt)
	require.NoError(t, err)
	require.True(t, envelope.IsText(sealed.Name) && envelope.IsText(sealed.Email) && envelope.IsText(sealed.Notes))
	require.Equal(t, "PLAIN-pro", sealed.Plan)
	opened, err := both(t, sealed, decrypt)
	require.NoError(t, err)
	require.Equal(t, newFlat("u-1", "eu"), opened)

	// Encrypting a sealed record again leaves it as it is.
	again, err := both(t, sealed, encrypt)
	require.NoError(t, err)
	require.Equal(t, sealed, again)

	// Empty values stay empty.
	empty := &flatRecord{Region: "eu", ID: "u-1"}
	got, err := both(t, empty, encrypt)
	require.NoError(t, err)
	require.Equal(t, empty, got)

	otherSubject, err := both(t, newFlat("u-2", "eu"), encrypt)
	require.NoError(t, err)
	foreign := newFlat("u-1", "eu")
	require.NoError(t, other.c.Encrypt(ctx, foreign))
	det := func() string {
		k, err := envelope.NewDetKey(envelope.NewKeyID(), make([]byte, envelope.DetKeySize))
		require.NoError(t, err)
		s, err := k.SealString("x", envelope.Binding{Path: "Email"})
		require.NoError(t, err)
		return s
	}()
	reencode := func(s string, f func([]byte) []byte) string {
		bin, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, envelope.Prefix))
		require.NoError(t, err)
		return envelope.Prefix + base64.RawURLEncoding.EncodeToString(f(bin))
	}

	for _, tc := range []struct {
		name string
		edit func(r *flatRecord)
		want []error // any of
		path string
		// shaped says the value still looks like an envelope: the
		// general walk then refuses it even with AllowPlaintext.
		shaped bool
	}{
		{"tag flipped", func(r *flatRecord) { r.Email = flip(r.Email, len(r.Email)-3) },
			[]error{fieldcrypt.ErrTampered}, "Email", true},
		{"bytes field tampered", func(r *flatRecord) {
			r.Notes = []byte(reencode(string(r.Notes), func(b []byte) []byte { b[len(b)-1] ^= 1; return b }))
		}, []error{fieldcrypt.ErrTampered}, "Notes", true},
		{"moved to another field", func(r *flatRecord) { r.Name = r.Email }, []error{fieldcrypt.ErrTampered}, "Name", true},
		{"another subject's ciphertext", func(r *flatRecord) { r.Email = otherSubject.Email },
			[]error{fieldcrypt.ErrTampered}, "Email", true},
		{"another keystore's DEK", func(r *flatRecord) { r.Email = foreign.Email }, []error{fieldcrypt.ErrUnknownKey}, "Email", true},
		{"deterministic envelope", func(r *flatRecord) { r.Email = det }, []error{fieldcrypt.ErrTampered}, "Email", true},
		{"truncated", func(r *flatRecord) { r.Email = r.Email[:len(r.Email)-1] },
			[]error{fieldcrypt.ErrFormat, fieldcrypt.ErrTampered}, "Email", true},
		{"line break", func(r *flatRecord) { r.Email = r.Email[:40] + "\n" + r.Email[40:] },
			[]error{fieldcrypt.ErrFormat}, "Email", true},
		{"wrong version", func(r *flatRecord) {
			r.Email = reencode(r.Email, func(b []byte) []byte { b[0] = 2; return b })
		}, []error{fieldcrypt.ErrFormat}, "Email", false},
		{"bare prefix", func(r *flatRecord) { r.Name = envelope.Prefix }, []error{fieldcrypt.ErrFormat}, "Name", false},
		{"plaintext", func(r *flatRecord) { r.Name = "PLAIN-not-sealed" }, []error{fieldcrypt.ErrNotEncrypted}, "Name", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := deepCopy(sealed)
			tc.edit(r)
			flat := deepCopy(r)
			err := decrypt(flat)
			requireIsAny(t, err, tc.want...)
			requireFieldError(t, err, tc.path, "eu", allSecrets...)
			require.Equal(t, r, flat, "a failed Decrypt must leave the record unchanged")
			if !tc.shaped {
				return // AllowPlaintext lets the general walk take it as data
			}
			_, err = both(t, r, decrypt)
			require.Error(t, err)
			if tc.want[0] != fieldcrypt.ErrFormat {
				// A sealed value that is not this record's is refused
				// by Encrypt too, and not sealed over.
				_, err = both(t, r, encrypt)
				requireIsAny(t, err, fieldcrypt.ErrTampered, fieldcrypt.ErrUnknownKey)
			}
		})
	}

	// The flat path names the zone of the DEK that failed.
	r := deepCopy(sealed)
	r.Email = flip(r.Email, len(r.Email)-3)
	requireFieldError(t, decrypt(r), "Email", "eu", allSecrets...)
}

// flatNoTags is a flat record whose zone and subject come from the
// resolver or options.
type flatNoTags struct {
	Owner string
	Where string
	Body  string `zonekey:"encrypt"`
}

func TestFlatPathResolver(t *testing.T) {
	resolve := func(v any) (string, string, error) {
		r := v.(*flatNoTags)
		return r.Where, r.Owner, nil
	}
	e := newEnv(t, fieldcrypt.WithResolver(resolve))
	r := &flatNoTags{Owner: "s-1", Where: "us", Body: "SECRET"}
	require.NoError(t, e.c.Encrypt(ctx, r))
	require.True(t, envelope.IsText(r.Body))
	sealed := *r
	require.NoError(t, e.c.Decrypt(ctx, r))
	require.Equal(t, "SECRET", r.Body)

	// Another subject opens nothing; no subject at all neither.
	r2 := sealed
	r2.Owner = "s-2"
	require.ErrorIs(t, e.c.Decrypt(ctx, &r2), fieldcrypt.ErrTampered)
	require.Equal(t, "s-2", r2.Owner)
	require.Equal(t, sealed.Body, r2.Body)

	plain := newEnv(t) // no resolver: the flat path needs a zone to encrypt
	require.ErrorIs(t, plain.c.Encrypt(ctx, &flatNoTags{Body: "SECRET"}), fieldcrypt.ErrInvalidValue)

	var nilRecord *flatRecord
	require.ErrorIs(t, e.c.Encrypt(ctx, nilRecord), fieldcrypt.ErrInvalidValue)
	require.ErrorIs(t, e.c.Encrypt(ctx, &flatRecord{Region: "eu", Name: "x"}), fieldcrypt.ErrInvalidValue, "no subject")
}
