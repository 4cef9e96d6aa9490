package fieldcrypt_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/fieldcrypt"
)

type withZone struct {
	Zone string `zonekey:"zone"`
	Data string `zonekey:"encrypt"`
}

type withSubject struct {
	ID string `zonekey:"subject"`
}

type intMapValue struct {
	Secret string `zonekey:"encrypt"`
}

type SelfSlice []SelfSlice

type SelfMap map[string]SelfMap

type SelfIntMap map[int]SelfIntMap

type SelfPtr *SelfPtr

func TestPlanRejects(t *testing.T) {
	tests := []struct {
		name string
		v    any
		path string // field path the *PlanError must name
	}{
		{"int", &struct {
			N int `zonekey:"encrypt"`
		}{}, "N"},
		{"bool", &struct {
			B bool `zonekey:"encrypt"`
		}{}, "B"},
		{"float", &struct {
			F float64 `zonekey:"encrypt"`
		}{}, "F"},
		{"time.Time", &struct {
			At time.Time `zonekey:"encrypt"`
		}{}, "At"},
		{"interface", &struct {
			I any `zonekey:"encrypt"`
		}{}, "I"},
		{"chan", &struct {
			C chan string `zonekey:"encrypt"`
		}{}, "C"},
		{"func", &struct {
			F func() string `zonekey:"encrypt"`
		}{}, "F"},
		{"[]int", &struct {
			L []int `zonekey:"encrypt"`
		}{}, "L[]"},
		{"map of ints", &struct {
			M map[string]int `zonekey:"encrypt"`
		}{}, "M{}"},
		{"byte array", &struct {
			A [16]byte `zonekey:"encrypt"`
		}{}, "A"},
		{"int-keyed map tagged", &struct {
			M map[int]string `zonekey:"encrypt"`
		}{}, "M"},
		{"int-keyed map holding tagged values", &struct {
			M map[int]intMapValue
		}{}, "M"},
		{"int-keyed map holding tagged values deeper", &struct {
			M map[int][]*intMapValue
		}{}, "M"},
		{"struct with a non-string leaf", &struct {
			In struct {
				S string
				N int
			} `zonekey:"encrypt"`
		}{}, "In.N"},
		{"unknown role", &struct {
			S string `zonekey:"encrpyt"`
		}{}, "S"},
		{"unknown option", &struct {
			S string `zonekey:"encrypt,determinstic"`
		}{}, "S"},
		{"trailing comma", &struct {
			S string `zonekey:"encrypt,"`
		}{}, "S"},
		{"option on zone", &struct {
			Z string `zonekey:"zone,deterministic"`
		}{}, "Z"},
		{"upper case", &struct {
			S string `zonekey:"Encrypt"`
		}{}, "S"},
		// Built at run time: go vet rightly refuses such a tag in source.
		{"malformed struct tag", reflect.New(reflect.StructOf([]reflect.StructField{{
			Name: "S", Type: reflect.TypeFor[string](), Tag: `json:"s" zonekey:encrypt`,
		}})).Interface(), "S"},
		{"zone on an int", &struct {
			Z int `zonekey:"zone"`
		}{}, "Z"},
		{"subject on []byte", &struct {
			ID []byte `zonekey:"subject"`
		}{}, "ID"},
		{"zone on a pointer", &struct {
			Z *string `zonekey:"zone"`
		}{}, "Z"},
		{"zone in a nested struct", &struct {
			In withZone
		}{}, "In.Zone"},
		{"subject through an embedded pointer", &struct {
			*withSubject
		}{}, "withSubject.ID"},
		{"zone in a slice element", &struct {
			L []withZone
		}{}, "L[].Zone"},
		{"two zone fields", &struct {
			A string `zonekey:"zone"`
			B string `zonekey:"zone"`
		}{}, "B"},
		{"two subject fields, one embedded", &struct {
			withSubject
			ID2 string `zonekey:"subject"`
		}{}, "ID2"},
		{"unexported encrypted field", &struct {
			secret string `zonekey:"encrypt"`
		}{}, "secret"},
		{"unexported zone field", &struct {
			zone string `zonekey:"zone"`
		}{}, "zone"},
		{"unexported field under encrypt", &struct {
			In struct {
				Pub  string
				priv string
			} `zonekey:"encrypt"`
		}{}, "In"},
		{"deterministic on a slice", &struct {
			S []string `zonekey:"encrypt,deterministic"`
		}{}, "S"},
		{"deterministic on a map", &struct {
			M map[string]string `zonekey:"encrypt,deterministic"`
		}{}, "M"},
		{"deterministic on a struct", &struct {
			In struct{ S string } `zonekey:"encrypt,deterministic"`
		}{}, "In"},
		{"deterministic on an int", &struct {
			N int `zonekey:"encrypt,deterministic"`
		}{}, "N"},
		{"deterministic deep inside, on a byte array", &struct {
			L []struct {
				A [4]byte `zonekey:"encrypt,deterministic"`
			}
		}{}, "L[].A"},
		{"index of a missing field", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Mail"`
		}{}, "EmailIdx"},
		{"index of a non-string field", &struct {
			Notes    []byte `zonekey:"encrypt"`
			NotesIdx string `zonekey:"index=Notes"`
		}{}, "NotesIdx"},
		{"index of a string pointer", &struct {
			Email    *string `zonekey:"encrypt"`
			EmailIdx string  `zonekey:"index=Email"`
		}{}, "EmailIdx"},
		{"index of a plaintext field", &struct {
			Email    string
			EmailIdx string `zonekey:"index=Email"`
		}{}, "EmailIdx"},
		{"index of a field of an embedded struct", &struct {
			withZone
			DataIdx string `zonekey:"index=Data"`
		}{}, "DataIdx"},
		{"index in a nested struct naming an outer field", &struct {
			Email string `zonekey:"encrypt"`
			In    struct {
				EmailIdx string `zonekey:"index=Email"`
			}
		}{}, "In.EmailIdx"},
		{"index field not a string", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx []byte `zonekey:"index=Email"`
		}{}, "EmailIdx"},
		{"index field unexported", &struct {
			Email    string `zonekey:"encrypt"`
			emailIdx string `zonekey:"index=Email"`
		}{}, "emailIdx"},
		{"index inside an encrypted struct", &struct {
			In struct {
				Email    string
				EmailIdx string `zonekey:"index=Email"`
			} `zonekey:"encrypt"`
		}{}, "In.EmailIdx"},
		{"index bits 0", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,bits=0"`
		}{}, "EmailIdx"},
		{"index bits too many", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,bits=129"`
		}{}, "EmailIdx"},
		{"index bits not a number", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,bits=sixteen"`
		}{}, "EmailIdx"},
		{"unknown normaliser", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,lower,casefold"`
		}{}, "EmailIdx"},
		{"normaliser twice", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,trim,trim"`
		}{}, "EmailIdx"},
		{"bad index name", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,name=a b"`
		}{}, "EmailIdx"},
		{"deterministic on an index", &struct {
			Email    string `zonekey:"encrypt"`
			EmailIdx string `zonekey:"index=Email,deterministic"`
		}{}, "EmailIdx"},
		{"recursive slice type tagged", &struct {
			S SelfSlice `zonekey:"encrypt"`
		}{}, "S[]"},
		{"recursive pointer type tagged", &struct {
			P SelfPtr `zonekey:"encrypt"`
		}{}, "P"},
	}
	e := newEnv(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := cloneAny(tc.v)
			for _, op := range []func() error{
				func() error { return e.c.Encrypt(ctx, tc.v, fieldcrypt.Zone("eu")) },
				func() error { return e.c.Decrypt(ctx, tc.v) },
			} {
				err := op()
				require.ErrorIs(t, err, fieldcrypt.ErrUnsupportedField)
				var pe *fieldcrypt.PlanError
				require.ErrorAs(t, err, &pe)
				require.Equal(t, tc.path, pe.Path, "%v", err)
				require.Equal(t, reflect.TypeOf(tc.v).Elem(), pe.Type)
				require.Contains(t, err.Error(), tc.path)
			}
			require.Equal(t, before, tc.v)
		})
	}
}

// TestPlanAccepts: types that look odd but are fine, because nothing in
// them is tagged or they only hold tags fieldcrypt ignores.
func TestPlanAccepts(t *testing.T) {
	tests := []struct {
		name string
		v    any
	}{
		{"untagged exotic fields", &struct {
			Zone string `zonekey:"zone"`
			S    string `zonekey:"encrypt"`
			I    any
			C    chan int
			F    func()
			M    map[int]string
			MS   map[int]struct{ X string }
			A    [4]byte
			T    time.Time
			priv struct {
				X string `zonekey:"encrypt"` // unexported and untagged: not walked
			}
		}{Zone: "eu", S: "x"}},
		{"int-keyed map of a type with only skipped fields", &struct {
			Zone string `zonekey:"zone"`
			M    map[int]struct {
				X string `zonekey:"-"`
			}
		}{Zone: "eu"}},
		{"recursive composite types untagged", &struct {
			Zone string `zonekey:"zone"`
			S    SelfSlice
			M    SelfMap
			IM   SelfIntMap
			P    SelfPtr
		}{Zone: "eu", S: SelfSlice{nil, {}}, M: SelfMap{"a": {"b": nil}}}},
		{"zone and subject in an embedded struct", &struct {
			withSubject
			withZone
		}{withSubject{"s1"}, withZone{"eu", "x"}}},
		{"skipped field of any type", &struct {
			Zone string         `zonekey:"zone"`
			N    int            `zonekey:"-"`
			M    map[int]string `zonekey:"-"`
			In   withZone       `zonekey:"-"`
		}{Zone: "eu"}},
	}
	e := newEnv(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, e.c.Encrypt(ctx, tc.v))
			require.NoError(t, e.c.Decrypt(ctx, tc.v))
		})
	}
}

func TestParseTag(t *testing.T) {
	tests := []struct {
		tag  string
		want fieldcrypt.Tag
		ok   bool
	}{
		{"", fieldcrypt.Tag{}, true},
		{"-", fieldcrypt.Tag{Role: fieldcrypt.RoleSkip}, true},
		{"zone", fieldcrypt.Tag{Role: fieldcrypt.RoleZone}, true},
		{"subject", fieldcrypt.Tag{Role: fieldcrypt.RoleSubject}, true},
		{"encrypt", fieldcrypt.Tag{Role: fieldcrypt.RoleEncrypt}, true},
		{"encrypt,deterministic", fieldcrypt.Tag{Role: fieldcrypt.RoleEncrypt, Deterministic: true}, true},
		{"encrpyt", fieldcrypt.Tag{}, false},
		{"encrypt,determinstic", fieldcrypt.Tag{}, false},
		{"encrypt,deterministic,deterministic", fieldcrypt.Tag{}, false},
		{"encrypt,", fieldcrypt.Tag{}, false},
		{"encrypt,,deterministic", fieldcrypt.Tag{}, false},
		{",", fieldcrypt.Tag{}, false},
		{",deterministic", fieldcrypt.Tag{}, false},
		{"-,", fieldcrypt.Tag{}, false},
		{"zone,deterministic", fieldcrypt.Tag{}, false},
		{"subject,", fieldcrypt.Tag{}, false},
		{" encrypt", fieldcrypt.Tag{}, false},
		{"encrypt ", fieldcrypt.Tag{}, false},
		{"ENCRYPT", fieldcrypt.Tag{}, false},
		{"index=Email", fieldcrypt.Tag{Role: fieldcrypt.RoleIndex, Source: "Email"}, true},
		{"index=Email,bits=24,name=email.v2,trim,lower,nfc", fieldcrypt.Tag{Role: fieldcrypt.RoleIndex, Source: "Email", Bits: 24,
			Name: "email.v2", Normalize: fieldcrypt.NormTrim | fieldcrypt.NormLower | fieldcrypt.NormNFC}, true},
		{"index=Email,lower", fieldcrypt.Tag{Role: fieldcrypt.RoleIndex, Source: "Email", Normalize: fieldcrypt.NormLower}, true},
		{"index=Email,bits=1", fieldcrypt.Tag{Role: fieldcrypt.RoleIndex, Source: "Email", Bits: 1}, true},
		{"index=Email,bits=128", fieldcrypt.Tag{Role: fieldcrypt.RoleIndex, Source: "Email", Bits: 128}, true},
		{"index=", fieldcrypt.Tag{}, false},
		{"index=email", fieldcrypt.Tag{}, false},
		{"index=Email,bits=0", fieldcrypt.Tag{}, false},
		{"index=Email,bits=129", fieldcrypt.Tag{}, false},
		{"index=Email,bits=016", fieldcrypt.Tag{}, false},
		{"index=Email,bits=-1", fieldcrypt.Tag{}, false},
		{"index=Email,bits=8,bits=8", fieldcrypt.Tag{}, false},
		{"index=Email,name=", fieldcrypt.Tag{}, false},
		{"index=Email,name=x,name=y", fieldcrypt.Tag{}, false},
		{"index=Email,upper", fieldcrypt.Tag{}, false},
		{"index=Email,lower,lower", fieldcrypt.Tag{}, false},
		{"index=Email,", fieldcrypt.Tag{}, false},
		{"index=Email,deterministic", fieldcrypt.Tag{}, false},
		{"index=Email,trim=1", fieldcrypt.Tag{}, false},
		{"encrypt,lower", fieldcrypt.Tag{}, false},
		{"index", fieldcrypt.Tag{}, false},
	}
	for _, tc := range tests {
		got, err := fieldcrypt.ParseTag(tc.tag)
		if !tc.ok {
			require.ErrorIs(t, err, fieldcrypt.ErrUnsupportedField, "tag %q", tc.tag)
			continue
		}
		require.NoError(t, err, "tag %q", tc.tag)
		require.Equal(t, tc.want, got, "tag %q", tc.tag)
		require.Equal(t, tc.tag, got.String())
	}
	// Normalisers may come in any order; the canonical form lists them as
	// they are applied.
	got, err := fieldcrypt.ParseTag("index=Email,nfc,lower,trim,bits=8")
	require.NoError(t, err)
	require.Equal(t, "index=Email,bits=8,trim,lower,nfc", got.String())
}
