package fieldcrypt_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
)

// User is the record most tests use.
type User struct {
	ID     string            `zonekey:"subject"`
	Region string            `zonekey:"zone"`
	Name   string            `zonekey:"encrypt"`
	Email  string            `zonekey:"encrypt"`
	Phones []string          `zonekey:"encrypt"`
	Emails []string          `zonekey:"encrypt"`
	Notes  []byte            `zonekey:"encrypt"`
	Attrs  map[string]string `zonekey:"encrypt"`
	Home   Address           `zonekey:"encrypt"`
	Work   Address           `zonekey:"encrypt"`
	Plan   string
}

const (
	secretName  = "Ada Lovelace"
	secretEmail = "ada@example.eu"
	secretPhone = "+44 20 7946 0000"
	secretNote  = "prefers post"
	secretDOB   = "1815-12-10"
	secretCity  = "London"
)

var allSecrets = []string{secretName, secretEmail, secretPhone, secretNote, secretDOB, secretCity, "SECRET"}

func newUser(id, region string) *User {
	return &User{
		ID: id, Region: region,
		Name:   secretName,
		Email:  secretEmail,
		Phones: []string{secretPhone, "SECRET-phone-2"},
		Emails: []string{"SECRET-email-2"},
		Notes:  []byte(secretNote),
		Attrs:  map[string]string{"dob": secretDOB, "pet": "SECRET-pet"},
		Home:   Address{City: secretCity},
		Work:   Address{City: "SECRET-work-city"},
		Plan:   "pro",
	}
}

func sealedUser(t *testing.T, e *env, id, region string) *User {
	t.Helper()
	u := newUser(id, region)
	require.NoError(t, e.c.Encrypt(ctx, u))
	return u
}

// TestBinding moves ciphertexts where they do not belong: each move must
// fail with ErrTampered and leave the record unchanged.
func TestBinding(t *testing.T) {
	e := newEnv(t)
	other := sealedUser(t, e, "u-2", "eu")
	otherZone := sealedUser(t, e, "u-3", "us")
	tests := []struct {
		name string
		move func(u *User)
		path string
		zone string
	}{
		{"to another field", func(u *User) { u.Email = u.Name }, "Email", "eu"},
		{"[]byte into a string field", func(u *User) { u.Email = string(u.Notes) }, "Email", "eu"},
		{"string into a []byte field", func(u *User) { u.Notes = []byte(u.Email) }, "Notes", "eu"},
		{"into a slice", func(u *User) { u.Phones[1] = u.Name }, "Phones[]", "eu"},
		{"to another slice", func(u *User) { u.Emails[0] = u.Phones[0] }, "Emails[]", "eu"},
		{"out of a slice", func(u *User) { u.Name = u.Phones[0] }, "Name", "eu"},
		{"to another map key", func(u *User) { u.Attrs["dob"], u.Attrs["pet"] = u.Attrs["pet"], u.Attrs["dob"] }, "Attrs{}[", "eu"},
		{"to a new map key", func(u *User) { u.Attrs["dob2"] = u.Attrs["dob"]; delete(u.Attrs, "dob") }, `Attrs{}["dob2"]`, "eu"},
		{"to the same leaf of another struct field", func(u *User) { u.Work.City = u.Home.City }, "Work.City", "eu"},
		{"from another subject's record", func(u *User) { u.Email = other.Email }, "Email", "eu"},
		{"from another subject's record, same field of a slice", func(u *User) { u.Phones[0] = other.Phones[0] }, "Phones[]", "eu"},
		// Decrypt names the zone of the ciphertext's DEK.
		{"from another zone's record", func(u *User) { u.Email = otherZone.Email }, "Email", "us"},
		{"the subject field changed", func(u *User) { u.ID = "u-2" }, "Name", "eu"},
		{"the subject field changed to an unknown one", func(u *User) { u.ID = "u-404" }, "Name", "eu"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := sealedUser(t, e, "u-1", "eu")
			tc.move(u)
			before := deepCopy(u)
			err := e.c.Decrypt(ctx, u)
			require.ErrorIs(t, err, fieldcrypt.ErrTampered)
			fe := requireFieldError(t, err, "", tc.zone, allSecrets...)
			require.True(t, strings.HasPrefix(fe.Path, tc.path), "path %q, want %q...", fe.Path, tc.path)
			require.Equal(t, before, u, "a failed Decrypt must leave the record unchanged")

			// Encrypt refuses a moved ciphertext too, rather than
			// keeping it or sealing it again.
			err = e.c.Encrypt(ctx, u)
			require.ErrorIs(t, err, fieldcrypt.ErrTampered)
			require.Equal(t, before, u, "a failed Encrypt must leave the record unchanged")
		})
	}
}

// TestBindingEmbeddedPaths: a field promoted from an embedded struct and an
// outer field of the same name bind different paths.
func TestBindingEmbeddedPaths(t *testing.T) {
	type rec struct {
		ID     string `zonekey:"subject"`
		Region string `zonekey:"zone"`
		Email  string `zonekey:"encrypt"`
		Contact
	}
	e := newEnv(t)
	r := &rec{ID: "s1", Region: "eu", Email: "SECRET-outer", Contact: Contact{Email: "SECRET-inner"}}
	require.NoError(t, e.c.Encrypt(ctx, r))
	r.Email, r.Contact.Email = r.Contact.Email, r.Email
	err := e.c.Decrypt(ctx, r)
	require.ErrorIs(t, err, fieldcrypt.ErrTampered)
	requireFieldError(t, err, "Email", "eu", "SECRET")
}

// flip changes the character at i of s to another base64url character.
func flip(s string, i int) string {
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

// reencode decodes the body of the text envelope s, lets f change the binary
// form, and encodes it again.
func reencode(t *testing.T, s string, f func([]byte) []byte) string {
	t.Helper()
	bin, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, envelope.Prefix))
	require.NoError(t, err)
	return envelope.Prefix + base64.RawURLEncoding.EncodeToString(f(bin))
}

func TestTamperedAndMalformed(t *testing.T) {
	e := newEnv(t)
	foreign := newEnv(t)
	foreignUser := sealedUser(t, foreign, "u-1", "eu") // same subject and zone, another keystore
	tests := []struct {
		name string
		edit func(t *testing.T, u *User)
		want []error // any of
		path string
		zone string
	}{
		{"one character flipped in the middle", func(t *testing.T, u *User) { u.Email = flip(u.Email, len(u.Email)/2) },
			[]error{fieldcrypt.ErrTampered, fieldcrypt.ErrFormat}, "Email", "eu"},
		{"one character flipped in the tag", func(t *testing.T, u *User) { u.Email = flip(u.Email, len(u.Email)-3) },
			[]error{fieldcrypt.ErrTampered, fieldcrypt.ErrFormat}, "Email", "eu"},
		{"nonce changed", func(t *testing.T, u *User) {
			u.Email = reencode(t, u.Email, func(b []byte) []byte { b[envelope.HeaderSize] ^= 1; return b })
		}, []error{fieldcrypt.ErrTampered}, "Email", "eu"},
		{"ciphertext bit flipped", func(t *testing.T, u *User) {
			u.Email = reencode(t, u.Email, func(b []byte) []byte { b[envelope.HeaderSize+envelope.NonceSize] ^= 0x80; return b })
		}, []error{fieldcrypt.ErrTampered}, "Email", "eu"},
		{"bytes appended", func(t *testing.T, u *User) {
			u.Email = reencode(t, u.Email, func(b []byte) []byte { return append(b, 0, 0, 0) })
		}, []error{fieldcrypt.ErrTampered}, "Email", "eu"},
		{"truncated inside the header", func(t *testing.T, u *User) { u.Email = u.Email[:len(envelope.Prefix)+10] },
			[]error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"truncated after the header", func(t *testing.T, u *User) { u.Email = u.Email[:len(envelope.Prefix)+40] },
			[]error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"truncated by one character", func(t *testing.T, u *User) { u.Notes = u.Notes[:len(u.Notes)-1] },
			[]error{fieldcrypt.ErrFormat}, "Notes", "eu"},
		{"truncated to the bare prefix", func(t *testing.T, u *User) { u.Phones[1] = envelope.Prefix },
			[]error{fieldcrypt.ErrFormat}, "Phones[]", "eu"},
		{"garbage after the prefix", func(t *testing.T, u *User) { u.Email = envelope.Prefix + strings.Repeat("!*", 40) },
			[]error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"padding", func(t *testing.T, u *User) { u.Email += "=" },
			[]error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"line break", func(t *testing.T, u *User) { u.Email = u.Email[:40] + "\n" + u.Email[40:] },
			[]error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"wrong version", func(t *testing.T, u *User) {
			u.Email = reencode(t, u.Email, func(b []byte) []byte { b[0] = 2; return b })
		}, []error{fieldcrypt.ErrFormat}, "Email", "eu"},
		{"wrong algorithm", func(t *testing.T, u *User) {
			u.Attrs["dob"] = reencode(t, u.Attrs["dob"], func(b []byte) []byte { b[1] = 0xff; return b })
		}, []error{fieldcrypt.ErrFormat}, `Attrs{}["dob"]`, "eu"},
		{"unknown DEK (another keystore)", func(t *testing.T, u *User) { u.Email = foreignUser.Email },
			[]error{fieldcrypt.ErrUnknownKey}, "Email", "eu"},
		{"unknown DEK in a nested field", func(t *testing.T, u *User) { u.Home.City = foreignUser.Home.City },
			[]error{fieldcrypt.ErrUnknownKey}, "Home.City", "eu"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := sealedUser(t, e, "u-1", "eu")
			tc.edit(t, u)
			before := deepCopy(u)
			err := e.c.Decrypt(ctx, u)
			requireIsAny(t, err, tc.want...)
			requireFieldError(t, err, tc.path, tc.zone, allSecrets...)
			require.Equal(t, before, u, "a failed Decrypt must leave the record unchanged")
		})
	}
}
