package fieldcrypt_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/fieldcrypt"
)

// validTags is the whole grammar of the zonekey tag.
var validTags = map[string]bool{
	"":                      true,
	"-":                     true,
	"zone":                  true,
	"subject":               true,
	"encrypt":               true,
	"encrypt,deterministic": true,
}

func FuzzParseTag(f *testing.F) {
	for tag := range validTags {
		f.Add(tag)
	}
	for _, tag := range []string{"encrpyt", "encrypt,determinstic", "encrypt,", ",", "-,", "zone,deterministic", "encrypt,deterministic,deterministic"} {
		f.Add(tag)
	}
	for _, tag := range []string{"index=Email", "index=Email,bits=12,lower,trim", "index=Email,name=e,nfc", "index=Email,bits=0", "index=Email,upper"} {
		f.Add(tag)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		valid := validTags[tag] || validIndexTag(tag)
		got, err := fieldcrypt.ParseTag(tag)
		if err != nil {
			require.ErrorIs(t, err, fieldcrypt.ErrUnsupportedField)
			require.False(t, valid, "valid tag %q refused: %v", tag, err)
			require.Equal(t, fieldcrypt.Tag{}, got)
			return
		}
		require.True(t, valid, "tag %q is outside the grammar but was accepted as %+v", tag, got)
		if got.Role != fieldcrypt.RoleIndex {
			require.Equal(t, tag, got.String(), "canonical form")
		}
		again, err := fieldcrypt.ParseTag(got.String())
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}

// indexTagRE is the grammar of blind-index tags, less the rule that no
// option appears twice, which validIndexTag checks.
var indexTagRE = regexp.MustCompile(`^index=\p{Lu}[\p{L}\p{Nd}_]*((,bits=([1-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))|(,name=[A-Za-z0-9_.-]{1,128})|,trim|,lower|,nfc)*$`)

func validIndexTag(tag string) bool {
	if !indexTagRE.MatchString(tag) {
		return false
	}
	seen := map[string]bool{}
	for _, opt := range strings.Split(tag, ",")[1:] {
		key, _, _ := strings.Cut(opt, "=")
		if seen[key] {
			return false
		}
		seen[key] = true
	}
	return true
}

// fuzzRecord is the small record FuzzDecrypt fills with arbitrary contents.
type fuzzRecord struct {
	ID     string            `zonekey:"subject"`
	Region string            `zonekey:"zone"`
	A      string            `zonekey:"encrypt"`
	B      []byte            `zonekey:"encrypt"`
	L      []string          `zonekey:"encrypt"`
	M      map[string]string `zonekey:"encrypt"`
	Plain  string
}

const fuzzSecret = "fuzz-secret-value"

// FuzzDecrypt decrypts records with arbitrary field contents: raw strings,
// and (since each fuzzing process has its own keystore) ciphertexts made in
// the process and then mutated at a fuzzed position. Decrypt must never
// panic, must leave the record unchanged when it fails, and must never put a
// plaintext in an error.
func FuzzDecrypt(f *testing.F) {
	e := newEnv(f)
	seal := func(subject string) *fuzzRecord {
		r := &fuzzRecord{ID: subject, Region: "eu", A: fuzzSecret, B: []byte(fuzzSecret),
			L: []string{fuzzSecret}, M: map[string]string{"k": fuzzSecret}}
		require.NoError(f, e.c.Encrypt(ctx, r))
		return r
	}
	mine, other := seal("fuzz-subject"), seal("fuzz-other")

	f.Add("", []byte(nil), "", "", uint8(0), uint16(0), byte(0))
	f.Add("zk1.", []byte("zk1."), "zk1.", "k", uint8(0), uint16(0), byte(0))
	f.Add("", []byte(nil), "", "k", uint8(0x0f), uint16(0), byte(0)) // every field a valid ciphertext
	f.Add("", []byte(nil), "", "k", uint8(0x1f), uint16(0), byte(0)) // of another subject
	f.Add("x", []byte("y"), "z", "k", uint8(0x2f), uint16(30), byte('B'))
	f.Add("", []byte(nil), "", "k", uint8(0x4f), uint16(40), byte(0))
	f.Add("tail", []byte(nil), "", "k", uint8(0x6f), uint16(20), byte('='))
	f.Add("legacy", []byte("legacy"), "legacy", "k", uint8(0x80), uint16(0), byte(0))

	f.Fuzz(func(t *testing.T, a string, b []byte, l, mkey string, mode uint8, pos uint16, x byte) {
		// mode: bits 0-3 take A, B, L[0] and M[mkey] from a ciphertext
		// instead of the raw input; bit 4 takes them from another
		// subject's record; bits 5-6 mutate them (1: set the character at
		// pos to x, 2: cut at pos, 3: insert x at pos); bit 7 passes
		// AllowPlaintext.
		src := mine
		if mode&0x10 != 0 {
			src = other
		}
		mutate := func(s string) string {
			if len(s) == 0 {
				return s
			}
			i := int(pos) % (len(s) + 1)
			switch mode >> 5 & 3 {
			case 1:
				if i < len(s) {
					return s[:i] + string([]byte{x}) + s[i+1:]
				}
			case 2:
				return s[:i]
			case 3:
				return s[:i] + string([]byte{x}) + s[i:]
			}
			return s
		}
		r := &fuzzRecord{ID: "fuzz-subject", Region: "eu", A: a, B: b, L: []string{l}, Plain: a}
		if mkey != "" || mode&0x08 != 0 {
			r.M = map[string]string{mkey: a}
		}
		if mode&0x01 != 0 {
			r.A = mutate(src.A)
		}
		if mode&0x02 != 0 {
			r.B = []byte(mutate(string(src.B)))
		}
		if mode&0x04 != 0 {
			r.L[0] = mutate(src.L[0])
		}
		if mode&0x08 != 0 {
			r.M[mkey] = mutate(src.M["k"])
		}
		var opts []fieldcrypt.CallOption
		if mode&0x80 != 0 {
			opts = append(opts, fieldcrypt.AllowPlaintext())
		}
		before := deepCopy(r)
		err := e.c.Decrypt(ctx, r, opts...)
		if err != nil {
			require.Equal(t, before, r, "a failed Decrypt changed the record: %v", err)
			var fe *fieldcrypt.FieldError
			require.ErrorAs(t, err, &fe)
			require.NotContains(t, err.Error(), fuzzSecret)
			return
		}
		// Success: the untagged field is untouched, and each tagged one
		// is empty, the sealed secret, or (with AllowPlaintext only) a
		// plaintext left as it was.
		require.Equal(t, a, r.Plain)
		if mode&0x80 == 0 {
			for _, s := range []string{r.A, string(r.B), r.L[0], r.M[mkey]} {
				require.Contains(t, []string{"", fuzzSecret}, s)
			}
		}
	})
}
