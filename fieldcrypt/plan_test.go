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
		{"deterministic (not yet available)", &struct {
			S string `zonekey:"encrypt,deterministic"`
		}{}, "S"},
		{"deterministic deep inside", &struct {
			L []struct {
				S string `zonekey:"encrypt,deterministic"`
			}
		}{}, "L[].S"},
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
}
