package fieldcrypt_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/keystore"
)

// five has five encrypted fields of different kinds.
type five struct {
	ID     string            `zonekey:"subject"`
	Region string            `zonekey:"zone"`
	A      string            `zonekey:"encrypt"`
	B      []byte            `zonekey:"encrypt"`
	C      string            `zonekey:"encrypt"`
	D      []string          `zonekey:"encrypt"`
	E      map[string]string `zonekey:"encrypt"`
}

func newFive(id, region string) *five {
	return &five{ID: id, Region: region, A: "SECRET-a", B: []byte("SECRET-b"), C: "SECRET-c",
		D: []string{"SECRET-d0", "SECRET-d1"}, E: map[string]string{"k": "SECRET-e"}}
}

// TestEncryptAllOrNothing: when the third of five fields cannot be
// encrypted, none is.
func TestEncryptAllOrNothing(t *testing.T) {
	e := newEnv(t)
	foreign := newEnv(t)
	otherSubject := newFive("u-2", "eu")
	require.NoError(t, e.c.Encrypt(ctx, otherSubject))
	foreignRec := newFive("u-1", "eu")
	require.NoError(t, foreign.c.Encrypt(ctx, foreignRec))
	mine := newFive("u-1", "eu")
	require.NoError(t, e.c.Encrypt(ctx, mine))

	tests := []struct {
		name string
		c    string
		want error
	}{
		{"another subject's ciphertext", otherSubject.C, fieldcrypt.ErrTampered},
		{"a ciphertext of this subject from another field", mine.A, fieldcrypt.ErrTampered},
		{"another keystore's ciphertext", foreignRec.C, fieldcrypt.ErrUnknownKey},
		{"a damaged ciphertext of this subject", mine.C[:len(mine.C)-4], fieldcrypt.ErrTampered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newFive("u-1", "eu")
			v.C = tc.c
			before := deepCopy(v)
			err := e.c.Encrypt(ctx, v)
			require.ErrorIs(t, err, tc.want)
			requireFieldError(t, err, "C", "eu", "SECRET")
			require.Equal(t, before, v, "a failed Encrypt must leave every field as it was")
		})
	}
}

// TestDecryptAllOrNothing: when one field does not open, no field is
// decrypted, wherever the field is in the walk.
func TestDecryptAllOrNothing(t *testing.T) {
	e := newEnv(t)
	for _, field := range []string{"A", "B", "C", "D", "E"} {
		t.Run(field, func(t *testing.T) {
			v := newFive("u-1", "eu")
			require.NoError(t, e.c.Encrypt(ctx, v))
			switch field {
			case "A":
				v.A = flip(v.A, 40)
			case "B":
				v.B = []byte(flip(string(v.B), 40))
			case "C":
				v.C = flip(v.C, 40)
			case "D":
				v.D[1] = flip(v.D[1], 40)
			case "E":
				v.E["k"] = flip(v.E["k"], 40)
			}
			before := deepCopy(v)
			err := e.c.Decrypt(ctx, v)
			requireIsAny(t, err, fieldcrypt.ErrTampered, fieldcrypt.ErrFormat)
			requireFieldError(t, err, "", "eu", "SECRET")
			require.Equal(t, before, v)
		})
	}
}

func TestIdempotentEncrypt(t *testing.T) {
	e := newEnv(t)
	u := sealedUser(t, e, "u-1", "eu")
	first := deepCopy(u)
	require.NoError(t, e.c.Encrypt(ctx, u))
	require.Equal(t, first, u, "a second Encrypt must leave the ciphertexts as they are")

	// A new plaintext in one field is sealed; the others stay.
	u.Name = "SECRET-new-name"
	require.NoError(t, e.c.Encrypt(ctx, u))
	require.NotEqual(t, first.Name, u.Name)
	require.True(t, envelope.IsText(u.Name))
	first.Name = u.Name
	require.Equal(t, first, u)

	require.NoError(t, e.c.Decrypt(ctx, u))
	require.Equal(t, "SECRET-new-name", u.Name)
	require.Equal(t, secretEmail, u.Email)
}

// TestLooksLikeAnEnvelope: plaintexts that start with the envelope prefix
// are data like any other.
func TestLooksLikeAnEnvelope(t *testing.T) {
	e := newEnv(t)
	for _, s := range []string{
		"zk1.",
		"zk1.hello",
		"zk1." + strings.Repeat("A", 100),   // header decodes to version 0
		"zk1.AQE" + strings.Repeat("x", 20), // a valid header, too short for an envelope
		"zk1.AQEAAAAAAAAAAAAAAAAAAAAA" + "!" + "AAAA", // a valid header, not base64 after it
	} {
		t.Run(s, func(t *testing.T) {
			u := &User{ID: "u-1", Region: "eu", Name: s, Notes: []byte(s)}
			require.NoError(t, e.c.Encrypt(ctx, u))
			require.NotEqual(t, s, u.Name)
			_, err := envelope.ParseText(u.Name)
			require.NoError(t, err)
			require.NoError(t, e.c.Decrypt(ctx, u))
			require.Equal(t, s, u.Name)
			require.Equal(t, []byte(s), u.Notes)
		})
	}
}

func TestDecryptPlaintext(t *testing.T) {
	e := newEnv(t)
	u := sealedUser(t, e, "u-1", "eu")
	u.Email = "legacy@example.eu" // a row written before encryption
	u.Attrs["legacy"] = "SECRET-legacy"
	before := deepCopy(u)

	err := e.c.Decrypt(ctx, u)
	require.ErrorIs(t, err, fieldcrypt.ErrNotEncrypted)
	requireFieldError(t, err, "Email", "eu", "legacy@example.eu", secretName)
	require.Equal(t, before, u)

	require.NoError(t, e.c.Decrypt(ctx, u, fieldcrypt.AllowPlaintext()))
	want := newUser("u-1", "eu")
	want.Email = "legacy@example.eu"
	want.Attrs["legacy"] = "SECRET-legacy"
	require.Equal(t, want, u)

	// With AllowPlaintext a legacy value that merely starts with the
	// prefix is a plaintext too; a well-formed envelope is still checked.
	u = sealedUser(t, e, "u-1", "eu")
	u.Name = "zk1.hello"
	require.NoError(t, e.c.Decrypt(ctx, u, fieldcrypt.AllowPlaintext()))
	require.Equal(t, "zk1.hello", u.Name)
	u = sealedUser(t, e, "u-1", "eu")
	u.Name = flip(u.Name, 50)
	require.ErrorIs(t, e.c.Decrypt(ctx, u, fieldcrypt.AllowPlaintext()), fieldcrypt.ErrTampered)
}

func TestInvalidValue(t *testing.T) {
	e := newEnv(t)
	var nilUser *User
	var nilAny any
	u := newUser("u-1", "eu")
	str := "x"
	for _, tc := range []struct {
		name string
		v    any
	}{
		{"struct by value", *u},
		{"nil pointer", nilUser},
		{"nil interface", nilAny},
		{"pointer to string", &str},
		{"pointer to pointer", &u},
		{"slice", []User{*u}},
		{"map", map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, e.c.Encrypt(ctx, tc.v), fieldcrypt.ErrInvalidValue)
			require.ErrorIs(t, e.c.Decrypt(ctx, tc.v), fieldcrypt.ErrInvalidValue)
		})
	}
	require.Equal(t, newUser("u-1", "eu"), u)
}

func TestRecordIdentity(t *testing.T) {
	e := newEnv(t)
	t.Run("empty subject", func(t *testing.T) {
		u := newUser("", "eu")
		err := e.c.Encrypt(ctx, u)
		require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
		requireNoSecrets(t, err, allSecrets...)
		require.Equal(t, newUser("", "eu"), u)
		require.ErrorIs(t, e.c.Decrypt(ctx, u), fieldcrypt.ErrInvalidValue)
	})
	t.Run("no zone", func(t *testing.T) {
		u := newUser("u-1", "")
		require.ErrorIs(t, e.c.Encrypt(ctx, u), fieldcrypt.ErrInvalidValue)
		require.Equal(t, newUser("u-1", ""), u)
	})
	t.Run("unknown zone", func(t *testing.T) {
		u := newUser("u-1", "ap")
		err := e.c.Encrypt(ctx, u)
		require.ErrorIs(t, err, fieldcrypt.ErrUnknownZone)
		requireFieldError(t, err, "", "ap", allSecrets...)
		require.Equal(t, newUser("u-1", "ap"), u)
	})
	t.Run("no zone needed to decrypt", func(t *testing.T) {
		u := sealedUser(t, e, "u-1", "us")
		u.Region = ""
		require.NoError(t, e.c.Decrypt(ctx, u))
		require.Equal(t, newUser("u-1", ""), u)
	})
}

// plainRecord has no zone or subject tag.
type plainRecord struct {
	Owner string
	Where string
	Body  string `zonekey:"encrypt"`
}

func TestOptionsAndResolver(t *testing.T) {
	t.Run("options", func(t *testing.T) {
		e := newEnv(t)
		r := &plainRecord{Owner: "PLAIN-o", Body: "SECRET"}
		require.ErrorIs(t, e.c.Encrypt(ctx, r), fieldcrypt.ErrInvalidValue, "no zone")
		require.NoError(t, e.c.Encrypt(ctx, r, fieldcrypt.Zone("eu"), fieldcrypt.Subject("s-1")))
		requireSealed(t, &plainRecord{Owner: "PLAIN-o", Body: "SECRET"}, r)

		// The subject is bound: opening as another subject, or with
		// none, fails.
		sealed := deepCopy(r)
		require.ErrorIs(t, e.c.Decrypt(ctx, r, fieldcrypt.Subject("s-2")), fieldcrypt.ErrTampered)
		require.ErrorIs(t, e.c.Decrypt(ctx, r), fieldcrypt.ErrTampered)
		require.Equal(t, sealed, r)
		require.NoError(t, e.c.Decrypt(ctx, r, fieldcrypt.Subject("s-1")))
		require.Equal(t, "SECRET", r.Body)
	})
	t.Run("resolver", func(t *testing.T) {
		calls := 0
		resolve := func(v any) (string, string, error) {
			calls++
			switch r := v.(type) {
			case *plainRecord:
				if r.Where == "nowhere" {
					return "", "", errors.New("test: cannot resolve")
				}
				return r.Where, r.Owner, nil
			case *User:
				t.Error("the resolver was called for a type that has both tags")
			}
			return "", "", nil
		}
		e := newEnv(t, fieldcrypt.WithResolver(resolve))
		r := &plainRecord{Owner: "s-1", Where: "us", Body: "SECRET"}
		require.NoError(t, e.c.Encrypt(ctx, r))
		require.NoError(t, e.c.Decrypt(ctx, r))
		require.Equal(t, &plainRecord{Owner: "s-1", Where: "us", Body: "SECRET"}, r)
		require.Equal(t, 2, calls)

		// Options take precedence over the resolver.
		require.NoError(t, e.c.Encrypt(ctx, r, fieldcrypt.Subject("s-9")))
		require.ErrorIs(t, e.c.Decrypt(ctx, r), fieldcrypt.ErrTampered)
		require.NoError(t, e.c.Decrypt(ctx, r, fieldcrypt.Subject("s-9")))

		r.Where = "nowhere"
		require.Error(t, e.c.Encrypt(ctx, r))
		require.Equal(t, "SECRET", r.Body)

		u := newUser("u-1", "eu")
		require.NoError(t, e.c.Encrypt(ctx, u))
		require.NoError(t, e.c.Decrypt(ctx, u))
	})
	t.Run("option for a tagged type", func(t *testing.T) {
		e := newEnv(t)
		u := newUser("u-1", "eu")
		require.ErrorIs(t, e.c.Encrypt(ctx, u, fieldcrypt.Zone("us")), fieldcrypt.ErrInvalidValue)
		require.ErrorIs(t, e.c.Encrypt(ctx, u, fieldcrypt.Subject("u-2")), fieldcrypt.ErrInvalidValue)
		require.ErrorIs(t, e.c.Decrypt(ctx, u, fieldcrypt.Subject("u-2")), fieldcrypt.ErrInvalidValue)
		require.Equal(t, newUser("u-1", "eu"), u)
	})
}

// TestCustodianUnavailable: the first record of a zone needs the zone's
// custodian; when it is down, nothing is written, neither to the record nor
// to the keystore.
func TestCustodianUnavailable(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.c.Encrypt(ctx, newUser("u-1", "eu"))) // eu works

	e.cust["us"].down.Store(true)
	u := newUser("u-2", "us")
	err := e.c.Encrypt(ctx, u)
	require.ErrorIs(t, err, fieldcrypt.ErrKMSUnavailable)
	requireFieldError(t, err, "", "us", allSecrets...)
	require.Equal(t, newUser("u-2", "us"), u)

	// Nothing was stored for the zone: no zone key, no DEK.
	_, err = e.store.ZoneKey(ctx, "us", 0)
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	_, err = e.store.LatestDEK(ctx, "us", "u-2")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)
	// A fresh keyring over the same store (with the custodian back)
	// finds nothing either, and creates the zone's first key itself.
	fresh := newEnvOver(t, e)
	_, err = fresh.store.LatestDEK(ctx, "us", "u-2")
	require.ErrorIs(t, err, keystore.ErrUnknownKey)

	// The same client recovers once the custodian is back.
	e.cust["us"].down.Store(false)
	require.NoError(t, e.c.Encrypt(ctx, u))
	require.NoError(t, e.c.Decrypt(ctx, u))
	require.Equal(t, newUser("u-2", "us"), u)

	// Decrypting needs the custodian only when the zone key is not
	// cached: a fresh keyring with the custodian down fails and changes
	// nothing.
	require.NoError(t, e.c.Encrypt(ctx, u))
	fresh.cust["us"].down.Store(true)
	before := deepCopy(u)
	err = fresh.c.Decrypt(ctx, u)
	require.ErrorIs(t, err, fieldcrypt.ErrKMSUnavailable)
	requireFieldError(t, err, "Name", "us", allSecrets...)
	require.Equal(t, before, u)
	fresh.cust["us"].down.Store(false)
	require.NoError(t, fresh.c.Decrypt(ctx, u))
	require.Equal(t, newUser("u-2", "us"), u)
}

// newEnvOver returns a second keyring and Crypter over e's store and KEK
// files, with its own switchable custodians and empty caches.
func newEnvOver(t *testing.T, e *env) *env {
	t.Helper()
	f := openEnvWithStore(t, e.dir, e.store)
	return f
}

// TestOneCustodianCallPerZone: records of many subjects cost one custodian
// call per zone key, not one per record.
func TestOneCustodianCallPerZone(t *testing.T) {
	e := newEnv(t)
	for i := range 20 {
		require.NoError(t, e.c.Encrypt(ctx, newUser(fmt.Sprintf("u-%d", i), "eu")))
	}
	require.EqualValues(t, 1, e.cust["eu"].wraps.Load())
	require.EqualValues(t, 0, e.cust["eu"].unwraps.Load())
	require.EqualValues(t, 0, e.cust["us"].wraps.Load())
}

func TestAliasedValues(t *testing.T) {
	type rec struct {
		ID     string   `zonekey:"subject"`
		Region string   `zonekey:"zone"`
		A      *string  `zonekey:"encrypt"`
		B      *string  `zonekey:"encrypt"`
		L      []string `zonekey:"encrypt"`
		M      []string `zonekey:"encrypt"`
		P      map[string]*Inner
		Q      map[string]*Inner
	}
	e := newEnv(t)
	shared := "SECRET"
	r := &rec{ID: "s1", Region: "eu", A: &shared, B: &shared}
	err := e.c.Encrypt(ctx, r)
	require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
	requireFieldError(t, err, "B", "eu", "SECRET")
	require.Equal(t, "SECRET", shared)

	l := []string{"SECRET-0", "SECRET-1"}
	r = &rec{ID: "s1", Region: "eu", L: l, M: l[1:]}
	require.ErrorIs(t, e.c.Encrypt(ctx, r), fieldcrypt.ErrInvalidValue)
	require.Equal(t, []string{"SECRET-0", "SECRET-1"}, l)

	in := &Inner{Secret: "SECRET"}
	r = &rec{ID: "s1", Region: "eu", P: map[string]*Inner{"a": in}, Q: map[string]*Inner{"b": in}}
	require.ErrorIs(t, e.c.Encrypt(ctx, r), fieldcrypt.ErrInvalidValue)
	require.Equal(t, "SECRET", in.Secret)

	// Many slice elements, to take the sorted path of the check.
	big := make([]string, 100)
	for i := range big {
		big[i] = fmt.Sprintf("SECRET-%d", i)
	}
	r = &rec{ID: "s1", Region: "eu", L: big, M: big[50:60]}
	require.ErrorIs(t, e.c.Encrypt(ctx, r), fieldcrypt.ErrInvalidValue)
	require.Equal(t, "SECRET-0", big[0])

	// A node shared within a recursive type is bound to one path: fine.
	leaf := &Tree{Label: "SECRET-leaf"}
	tree := &Tree{ID: "s1", Region: "eu", Label: "SECRET-root", Children: []*Tree{leaf, leaf}}
	require.NoError(t, e.c.Encrypt(ctx, tree))
	require.NoError(t, e.c.Decrypt(ctx, tree))
	require.Equal(t, "SECRET-leaf", leaf.Label)
}

func TestCyclicValues(t *testing.T) {
	e := newEnv(t)
	t.Run("pointer", func(t *testing.T) {
		root := &Tree{ID: "s1", Region: "eu", Label: "SECRET-root"}
		child := &Tree{Label: "SECRET-child"}
		root.Left, child.Left = child, root
		err := e.c.Encrypt(ctx, root)
		require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
		require.Equal(t, "SECRET-root", root.Label)
		require.Equal(t, "SECRET-child", child.Label)
	})
	t.Run("slice", func(t *testing.T) {
		kids := make([]*Tree, 1)
		root := &Tree{ID: "s1", Region: "eu", Label: "SECRET-root", Children: kids}
		kids[0] = &Tree{Label: "SECRET-kid", Children: kids}
		require.ErrorIs(t, e.c.Encrypt(ctx, root), fieldcrypt.ErrInvalidValue)
		require.Equal(t, "SECRET-kid", kids[0].Label)
	})
	t.Run("long list is not a cycle", func(t *testing.T) {
		r := newList(3000)
		require.NoError(t, e.c.Encrypt(ctx, r))
		require.True(t, envelope.IsText(r.List.Next.Next.Label))
		require.NoError(t, e.c.Decrypt(ctx, r))
		require.Equal(t, "SECRET-2997", r.List.Next.Next.Label)
	})
	t.Run("too deep a list is refused, not a stack overflow", func(t *testing.T) {
		r := newList(20000)
		err := e.c.Encrypt(ctx, r)
		require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
		require.ErrorContains(t, err, "deep")
		require.Equal(t, "SECRET-19999", r.List.Label, "unchanged")
	})
}

// listRecord is a record holding a linked list.
type listRecord struct {
	ID     string `zonekey:"subject"`
	Region string `zonekey:"zone"`
	List   *Node
}

// newList returns a record whose list has n nodes, labelled SECRET-<n-1>
// at its head down to SECRET-0.
func newList(n int) *listRecord {
	r := &listRecord{ID: "s1", Region: "eu"}
	for i := range n {
		r.List = &Node{Label: fmt.Sprint("SECRET-", i), Next: r.List}
	}
	return r
}

// TestSharedNodes: a value whose nodes are shared many times over (each
// node's Left and only child are the next node: 2^depth paths through 41
// nodes) is walked once per node and binding, not once per path: it seals
// and opens in moments, and each shared label once.
func TestSharedNodes(t *testing.T) {
	e := newEnv(t)
	var next *Tree
	var nodes []*Tree
	for i := range 40 {
		next = &Tree{Label: fmt.Sprint("SECRET-", i), Left: next, Children: []*Tree{next}}
		nodes = append(nodes, next)
	}
	root := &Tree{ID: "s1", Region: "eu", Label: "SECRET-root", Left: next, Children: []*Tree{next}}
	require.NoError(t, e.c.Encrypt(ctx, root))
	for _, n := range nodes {
		require.True(t, envelope.IsText(n.Label), "sealed")
	}
	require.NoError(t, e.c.Decrypt(ctx, root))
	for i, n := range nodes {
		require.Equal(t, fmt.Sprint("SECRET-", i), n.Label)
	}

	t.Run("shared between map entries", func(t *testing.T) {
		// Past the point where the walk remembers what it walked, a
		// value reached under two map keys is refused, as the alias
		// check refuses it before that point.
		type rec struct {
			ID     string `zonekey:"subject"`
			Region string `zonekey:"zone"`
			ByKey  map[string]*Node
		}
		r := &rec{ID: "s1", Region: "eu", ByKey: map[string]*Node{}}
		for i := range 2000 {
			r.ByKey[fmt.Sprint("k", i)] = &Node{Label: "SECRET"}
		}
		shared := &Node{Label: "SECRET-shared"}
		r.ByKey["a"], r.ByKey["b"] = shared, shared
		err := e.c.Encrypt(ctx, r)
		require.ErrorIs(t, err, fieldcrypt.ErrInvalidValue)
		require.Equal(t, "SECRET-shared", shared.Label, "unchanged")
	})
}

// TestErrorText: errors name the type, path and zone, never a value.
func TestErrorText(t *testing.T) {
	e := newEnv(t)
	u := sealedUser(t, e, "u-1", "eu")
	u.Attrs["dob"] = flip(u.Attrs["dob"], 40)
	err := e.c.Decrypt(ctx, u)
	require.Error(t, err)
	require.Contains(t, err.Error(), `fieldcrypt_test.User.Attrs{}["dob"]`)
	require.Contains(t, err.Error(), `(zone "eu")`)
	requireNoSecrets(t, err, allSecrets...)

	e.cust["us"].down.Store(true)
	err = e.c.Encrypt(ctx, newUser("u-2", "us"))
	require.Error(t, err)
	require.True(t, strings.HasPrefix(err.Error(), `zonekey: encrypt fieldcrypt_test.User (zone "us"): `), err.Error())
}
