package fieldcrypt_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Strings marked "SECRET" must be sealed by Encrypt; strings marked "PLAIN"
// must be left as they are (see requireSealed).

type Name string

type Blob []byte

type Inner struct {
	Secret string `zonekey:"encrypt"`
	Note   string
}

type Address struct {
	Street string
	City   string
	Lines  []string
	Extra  map[string]string
}

type Contact struct {
	Email string `zonekey:"encrypt"`
	Kind  string
}

type Meta struct {
	Memo string `zonekey:"encrypt"`
	Tag  string
}

type hidden struct {
	Fax string `zonekey:"encrypt"`
}

type hiddenPtr struct {
	Pager string `zonekey:"encrypt"`
}

type Tree struct {
	ID       string `zonekey:"subject"`
	Region   string `zonekey:"zone"`
	Label    string `zonekey:"encrypt"`
	Kind     string
	Children []*Tree
	Left     *Tree
}

// Node is a recursive type without zone or subject: a linked list.
type Node struct {
	Label string `zonekey:"encrypt"`
	Next  *Node
}

func strp(s string) *string { return &s }

func bytesp(b []byte) *[]byte { return &b }

// Kitchen has a field of every supported kind.
type Kitchen struct {
	ID     string `zonekey:"subject"`
	Region string `zonekey:"zone"`

	S   string    `zonekey:"encrypt"`
	B   []byte    `zonekey:"encrypt"`
	PS  *string   `zonekey:"encrypt"`
	PB  *[]byte   `zonekey:"encrypt"`
	N   Name      `zonekey:"encrypt"`
	NB  Blob      `zonekey:"encrypt"`
	In  Inner     // untagged: walked
	PIn *Inner    // untagged pointer: walked
	Arr [2]string `zonekey:"encrypt"`

	Contact    // embedded by value
	*Meta      // embedded by pointer
	hidden     // unexported, embedded by value
	*hiddenPtr // unexported, embedded by pointer

	SS  []string                     `zonekey:"encrypt"`
	BB  [][]byte                     `zonekey:"encrypt"`
	SP  []*string                    `zonekey:"encrypt"`
	SI  []Inner                      // walked
	SIP []*Inner                     // walked
	MS  map[string]string            `zonekey:"encrypt"`
	MB  map[string][]byte            `zonekey:"encrypt"`
	MI  map[string]Inner             // walked
	MIP map[string]*Inner            // walked
	MM  map[string]map[string]string `zonekey:"encrypt"`

	Addr Address `zonekey:"encrypt"` // every leaf sealed

	Skip  string `zonekey:"-"`
	Plain string
	Count int
	Any   any
}

func newKitchen() *Kitchen {
	return &Kitchen{
		ID: "PLAIN-subject-1", Region: "eu",
		S:   "SECRET-s",
		B:   []byte("SECRET-b"),
		PS:  strp("SECRET-ps"),
		PB:  bytesp([]byte("SECRET-pb")),
		N:   "SECRET-n",
		NB:  Blob("SECRET-nb"),
		In:  Inner{Secret: "SECRET-in", Note: "PLAIN-in"},
		PIn: &Inner{Secret: "SECRET-pin", Note: "PLAIN-pin"},
		Arr: [2]string{"SECRET-arr0", "SECRET-arr1"},

		Contact:   Contact{Email: "SECRET-email", Kind: "PLAIN-kind"},
		Meta:      &Meta{Memo: "SECRET-memo", Tag: "PLAIN-tag"},
		hidden:    hidden{Fax: "SECRET-fax"},
		hiddenPtr: &hiddenPtr{Pager: "SECRET-pager"},

		SS:  []string{"SECRET-ss0", "", "SECRET-ss2"},
		BB:  [][]byte{[]byte("SECRET-bb0"), nil, {}},
		SP:  []*string{strp("SECRET-sp0"), nil},
		SI:  []Inner{{Secret: "SECRET-si0", Note: "PLAIN-si0"}, {}},
		SIP: []*Inner{{Secret: "SECRET-sip0"}, nil},
		MS:  map[string]string{"PLAIN-a": "SECRET-msa", "PLAIN-b": "SECRET-msb", "PLAIN-empty": ""},
		MB:  map[string][]byte{"PLAIN-a": []byte("SECRET-mba")},
		MI:  map[string]Inner{"PLAIN-a": {Secret: "SECRET-mia", Note: "PLAIN-mia"}},
		MIP: map[string]*Inner{"PLAIN-a": {Secret: "SECRET-mipa"}, "PLAIN-nil": nil},
		MM:  map[string]map[string]string{"PLAIN-o": {"PLAIN-i": "SECRET-mm"}},

		Addr: Address{Street: "SECRET-street", City: "SECRET-city", Lines: []string{"SECRET-l0"}, Extra: map[string]string{"PLAIN-x": "SECRET-x"}},

		Skip:  "PLAIN-skip",
		Plain: "PLAIN-plain",
		Count: 7,
		Any:   &Inner{Secret: "PLAIN-not-walked"},
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		new  func() any
	}{
		{"string", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				V      string `zonekey:"encrypt"`
			}{"s1", "eu", "SECRET"}
		}},
		{"[]byte", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				V      []byte `zonekey:"encrypt"`
			}{"s1", "eu", []byte("SECRET\x00\xff")}
		}},
		{"*string", func() any {
			return &struct {
				ID     string  `zonekey:"subject"`
				Region string  `zonekey:"zone"`
				V      *string `zonekey:"encrypt"`
			}{"s1", "eu", strp("SECRET")}
		}},
		{"*[]byte", func() any {
			return &struct {
				ID     string  `zonekey:"subject"`
				Region string  `zonekey:"zone"`
				V      *[]byte `zonekey:"encrypt"`
			}{"s1", "eu", bytesp([]byte("SECRET"))}
		}},
		{"named string and []byte", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				N      Name   `zonekey:"encrypt"`
				B      Blob   `zonekey:"encrypt"`
			}{"s1", "eu", "SECRET-n", Blob("SECRET-b")}
		}},
		{"nested struct", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				In     Inner
				PIn    *Inner
			}{"s1", "eu", Inner{"SECRET-1", "PLAIN-1"}, &Inner{"SECRET-2", "PLAIN-2"}}
		}},
		{"embedded by value", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				Contact
			}{"s1", "eu", Contact{"SECRET", "PLAIN"}}
		}},
		{"embedded by pointer", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				*Meta
			}{"s1", "eu", &Meta{"SECRET", "PLAIN"}}
		}},
		{"embedded unexported by value", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				hidden
			}{"s1", "eu", hidden{"SECRET"}}
		}},
		{"embedded unexported by pointer", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				*hiddenPtr
			}{"s1", "eu", &hiddenPtr{"SECRET"}}
		}},
		{"shadowed promoted field", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				Email  string `zonekey:"encrypt"`
				Contact
			}{"s1", "eu", "SECRET-outer", Contact{"SECRET-inner", "PLAIN"}}
		}},
		{"slices", func() any {
			return &struct {
				ID     string    `zonekey:"subject"`
				Region string    `zonekey:"zone"`
				SS     []string  `zonekey:"encrypt"`
				BB     [][]byte  `zonekey:"encrypt"`
				SP     []*string `zonekey:"encrypt"`
				SI     []Inner
				SIP    []*Inner
			}{"s1", "eu",
				[]string{"SECRET-0", "SECRET-1"},
				[][]byte{[]byte("SECRET-0"), []byte("SECRET-1")},
				[]*string{strp("SECRET-0"), nil, strp("SECRET-2")},
				[]Inner{{"SECRET-0", "PLAIN-0"}, {"SECRET-1", "PLAIN-1"}},
				[]*Inner{{"SECRET-0", "PLAIN-0"}, nil},
			}
		}},
		{"array", func() any {
			return &struct {
				ID     string    `zonekey:"subject"`
				Region string    `zonekey:"zone"`
				A      [2]string `zonekey:"encrypt"`
				AI     [2]Inner
			}{"s1", "eu", [2]string{"SECRET-0", "SECRET-1"}, [2]Inner{{"SECRET-2", "PLAIN"}, {}}}
		}},
		{"maps", func() any {
			return &struct {
				ID     string            `zonekey:"subject"`
				Region string            `zonekey:"zone"`
				MS     map[string]string `zonekey:"encrypt"`
				MB     map[string][]byte `zonekey:"encrypt"`
				MI     map[string]Inner
				MIP    map[string]*Inner
			}{"s1", "eu",
				map[string]string{"PLAIN-a": "SECRET-a", "PLAIN-b": "SECRET-b"},
				map[string][]byte{"PLAIN-a": []byte("SECRET-a")},
				map[string]Inner{"PLAIN-a": {"SECRET-a", "PLAIN-note"}},
				map[string]*Inner{"PLAIN-a": {"SECRET-a", "PLAIN-note"}, "PLAIN-nil": nil},
			}
		}},
		{"encrypt on a struct seals every leaf", func() any {
			return &struct {
				ID     string    `zonekey:"subject"`
				Region string    `zonekey:"zone"`
				Addr   Address   `zonekey:"encrypt"`
				PAddr  *Address  `zonekey:"encrypt"`
				Addrs  []Address `zonekey:"encrypt"`
			}{"s1", "eu",
				Address{"SECRET-street", "SECRET-city", []string{"SECRET-l0", "SECRET-l1"}, map[string]string{"PLAIN-k": "SECRET-v"}},
				&Address{Street: "SECRET-street2"},
				[]Address{{City: "SECRET-city3"}},
			}
		}},
		{"recursive type", func() any {
			return &Tree{ID: "s1", Region: "eu", Label: "SECRET-root", Kind: "PLAIN-root",
				Children: []*Tree{
					{Label: "SECRET-c0", Kind: "PLAIN-c0", Left: &Tree{Label: "SECRET-c0-left"}},
					nil,
					{Label: "SECRET-c2", Children: []*Tree{{Label: "SECRET-c2-0"}}},
				},
				Left: &Tree{Label: "SECRET-left"},
			}
		}},
		{"nil pointers, maps and slices are left alone", func() any {
			return &struct {
				ID     string            `zonekey:"subject"`
				Region string            `zonekey:"zone"`
				PS     *string           `zonekey:"encrypt"`
				PB     *[]byte           `zonekey:"encrypt"`
				B      []byte            `zonekey:"encrypt"`
				SS     []string          `zonekey:"encrypt"`
				MS     map[string]string `zonekey:"encrypt"`
				PIn    *Inner
				*Meta
				List *Node
			}{ID: "s1", Region: "eu"}
		}},
		{"empty values stay empty", func() any {
			return &struct {
				ID     string            `zonekey:"subject"`
				Region string            `zonekey:"zone"`
				S      string            `zonekey:"encrypt"`
				PS     *string           `zonekey:"encrypt"`
				B      []byte            `zonekey:"encrypt"`
				SS     []string          `zonekey:"encrypt"`
				MS     map[string]string `zonekey:"encrypt"`
			}{"s1", "eu", "", strp(""), []byte{}, []string{"", ""}, map[string]string{}}
		}},
		{"untagged and skipped fields are untouched", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				V      string `zonekey:"encrypt"`
				Plain  string
				Skip   string `zonekey:"-"`
				SkipIn Inner  `zonekey:"-"`
				Bytes  []byte
				Count  int
				Any    any
			}{"s1", "eu", "SECRET", "PLAIN-1", "PLAIN-2", Inner{"PLAIN-3", "PLAIN-4"}, []byte("PLAIN-5"), 3, &Inner{"PLAIN-6", ""}}
		}},
		{"plaintexts that look like envelopes", func() any {
			return &struct {
				ID     string `zonekey:"subject"`
				Region string `zonekey:"zone"`
				A      string `zonekey:"encrypt"`
				B      string `zonekey:"encrypt"`
				C      []byte `zonekey:"encrypt"`
				D      string `zonekey:"encrypt"`
			}{"s1", "eu", "zk1.SECRET", "zk1." + strings.Repeat("A", 80) + "SECRET", []byte("zk1.SECRET"), "zk1."}
		}},
		{"every kind at once", func() any { return newKitchen() }},
	}
	e := newEnv(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, want := tc.new(), tc.new()
			require.NoError(t, e.c.Encrypt(ctx, v))
			if tc.name == "plaintexts that look like envelopes" {
				// "zk1." alone is not a secret mark; count it by hand.
				for _, s := range texts(v)[2:] {
					require.True(t, strings.HasPrefix(s, "zk1.") && len(s) > 60, "%q was not sealed", s)
				}
			} else {
				requireSealed(t, want, v)
			}

			// Encrypting again changes nothing: the ciphertexts are this
			// record's already.
			sealed := cloneAny(v)
			require.NoError(t, e.c.Encrypt(ctx, v))
			require.Equal(t, sealed, v)

			require.NoError(t, e.c.Decrypt(ctx, v))
			require.Equal(t, want, v)
		})
	}
}

// TestRoundTripWithoutSubject: records of a type without a subject use the
// zone's rolling DEK.
func TestRoundTripWithoutSubject(t *testing.T) {
	type event struct {
		Region string `zonekey:"zone"`
		Body   string `zonekey:"encrypt"`
	}
	e := newEnv(t)
	v := &event{Region: "us", Body: "SECRET"}
	require.NoError(t, e.c.Encrypt(ctx, v))
	requireSealed(t, &event{Region: "us", Body: "SECRET"}, v)
	require.NoError(t, e.c.Decrypt(ctx, v))
	require.Equal(t, "SECRET", v.Body)
}
