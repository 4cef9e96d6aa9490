package fieldcrypt_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/kms"
	_ "github.com/zonekey/zonekey/kms/localkms" // the local:// custodian
)

// switchable is a real custodian with a switch that makes it fail as an
// unreachable one would, and counters of the calls that reached it.
type switchable struct {
	kms.Custodian
	down    atomic.Bool
	wraps   atomic.Int64
	unwraps atomic.Int64
}

func (s *switchable) Wrap(ctx context.Context, key []byte, b kms.Binding) (kms.Wrapped, error) {
	if s.down.Load() {
		return kms.Wrapped{}, fmt.Errorf("test: custodian switched off: %w", kms.ErrUnavailable)
	}
	s.wraps.Add(1)
	return s.Custodian.Wrap(ctx, key, b)
}

func (s *switchable) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	if s.down.Load() {
		return nil, fmt.Errorf("test: custodian switched off: %w", kms.ErrUnavailable)
	}
	s.unwraps.Add(1)
	return s.Custodian.Unwrap(ctx, w, b)
}

// env is the embedded stack: a bbolt keystore in dir, one local custodian
// per zone (KEK files in dir), a keyring and a Crypter over it.
type env struct {
	dir   string
	store *boltstore.Store
	cust  map[string]*switchable
	keys  *keystore.Keyring
	c     *fieldcrypt.Crypter
}

var defaultZones = []string{"eu", "us"}

// newEnv opens the stack in a new temporary directory.
func newEnv(t testing.TB, opts ...fieldcrypt.Option) *env {
	t.Helper()
	return openEnv(t, t.TempDir(), opts...)
}

// openEnv opens the stack in dir, creating what is missing. It is closed
// when the test ends (closing it earlier is fine).
func openEnv(t testing.TB, dir string, opts ...fieldcrypt.Option) *env {
	t.Helper()
	return openEnvWithStore(t, dir, nil, opts...)
}

// openEnvWithStore is openEnv over an open store (nil: open dir's).
func openEnvWithStore(t testing.TB, dir string, store *boltstore.Store, opts ...fieldcrypt.Option) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{dir: dir, cust: map[string]*switchable{}}
	custodians := map[string]kms.Custodian{}
	for _, z := range defaultZones {
		c, err := kms.Open(ctx, "local://"+filepath.Join(dir, z+".kek")+"?create=1")
		require.NoError(t, err)
		s := &switchable{Custodian: c}
		e.cust[z] = s
		custodians[z] = s
		t.Cleanup(func() { c.Close() })
	}
	var err error
	e.store = store
	if store == nil {
		e.store, err = boltstore.Open(filepath.Join(dir, "keystore.db"), nil)
		require.NoError(t, err)
		t.Cleanup(func() { e.store.Close() })
	}
	e.keys, err = keystore.New(keystore.Config{Store: e.store, Custodians: custodians})
	require.NoError(t, err)
	t.Cleanup(func() { e.keys.Close() })
	e.c = fieldcrypt.New(e.keys, opts...)
	return e
}

// close closes the keyring and the store, so that another env (or process)
// can open dir.
func (e *env) close(t testing.TB) {
	t.Helper()
	require.NoError(t, e.keys.Close())
	require.NoError(t, e.store.Close())
}

// deepCopy returns a pointer to a deep copy of *v, unexported fields
// included, sharing no memory with it (strings aside, which are immutable).
func deepCopy[T any](v *T) *T {
	out := new(T)
	copyValue(reflect.ValueOf(out).Elem(), reflect.ValueOf(v).Elem())
	return out
}

// settable makes a copy target writable even when it was reached through an
// unexported field.
func settable(v reflect.Value) reflect.Value {
	if v.CanSet() {
		return v
	}
	return reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem()
}

func copyValue(dst, src reflect.Value) {
	dst = settable(dst)
	switch src.Kind() {
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		p := reflect.New(src.Type().Elem())
		copyValue(p.Elem(), src.Elem())
		dst.Set(p)
	case reflect.Struct:
		for i := 0; i < src.NumField(); i++ {
			copyValue(dst.Field(i), src.Field(i))
		}
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		s := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		for i := 0; i < src.Len(); i++ {
			copyValue(s.Index(i), src.Index(i))
		}
		dst.Set(s)
	case reflect.Array:
		for i := 0; i < src.Len(); i++ {
			copyValue(dst.Index(i), src.Index(i))
		}
	case reflect.Map:
		if src.IsNil() {
			return
		}
		m := reflect.MakeMapWithSize(src.Type(), src.Len())
		it := src.MapRange()
		for it.Next() {
			k := reflect.New(src.Type().Key()).Elem()
			copyValue(k, it.Key())
			val := reflect.New(src.Type().Elem()).Elem()
			copyValue(val, it.Value())
			m.SetMapIndex(k, val)
		}
		dst.Set(m)
	default:
		if src.CanInterface() {
			dst.Set(src)
		} else {
			dst.Set(reflect.NewAt(src.Type(), unsafe.Pointer(src.UnsafeAddr())).Elem())
		}
	}
}

// texts returns every string and []byte (as a string) reachable from v,
// unexported fields included, in a deterministic order.
func texts(v any) []string {
	var out []string
	var walk func(reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.String:
			out = append(out, v.String())
		case reflect.Pointer, reflect.Interface:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				walk(v.Field(i))
			}
		case reflect.Slice, reflect.Array:
			if v.Type().Elem().Kind() == reflect.Uint8 {
				b := make([]byte, v.Len())
				for i := range b {
					b[i] = byte(v.Index(i).Uint())
				}
				out = append(out, string(b))
				return
			}
			for i := 0; i < v.Len(); i++ {
				walk(v.Index(i))
			}
		case reflect.Map:
			it := v.MapRange()
			for it.Next() {
				walk(it.Key())
				walk(it.Value())
			}
		}
	}
	walk(reflect.ValueOf(v))
	return out
}

// requireSealed checks that enc, the encrypted form of a value whose
// strings mark the sensitive ones with "SECRET" and the others with
// "PLAIN", holds no secret, keeps every plain value, and holds exactly one
// envelope per secret.
func requireSealed(t *testing.T, plain, enc any) {
	t.Helper()
	var secrets, plains int
	for _, s := range texts(plain) {
		secrets += strings.Count(s, "SECRET")
		plains += strings.Count(s, "PLAIN")
	}
	var envelopes, plainsLeft int
	for _, s := range texts(enc) {
		require.NotContains(t, s, "SECRET", "a secret was left in the clear")
		plainsLeft += strings.Count(s, "PLAIN")
		if envelope.IsText(s) {
			envelopes++
			_, err := envelope.ParseText(s)
			require.NoError(t, err, "not a well-formed envelope: %q", s)
		}
	}
	require.Equal(t, secrets, envelopes, "one envelope per secret")
	require.Equal(t, plains, plainsLeft, "untagged values must be left as they are")
}

// requireFieldError checks that err is a *FieldError for path ("" for any
// path) and zone, and that its text holds none of the secrets.
func requireFieldError(t *testing.T, err error, path, zone string, secrets ...string) *fieldcrypt.FieldError {
	t.Helper()
	var fe *fieldcrypt.FieldError
	require.ErrorAs(t, err, &fe)
	if path != "" {
		require.Equal(t, path, fe.Path, "FieldError.Path of %v", err)
	}
	require.Equal(t, zone, fe.Zone, "FieldError.Zone of %v", err)
	requireNoSecrets(t, err, secrets...)
	return fe
}

// requireNoSecrets checks that the text of err holds none of the secrets.
func requireNoSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		require.NotContains(t, err.Error(), s, "an error must never hold a plaintext")
	}
}

// requireIsAny checks that err wraps one of wants.
func requireIsAny(t *testing.T, err error, wants ...error) {
	t.Helper()
	require.Error(t, err)
	for _, w := range wants {
		if errors.Is(err, w) {
			return
		}
	}
	require.Failf(t, "wrong error class", "%v wraps none of %v", err, wants)
}

var ctx = context.Background()

// cloneAny is deepCopy for a pointer held in an interface.
func cloneAny(v any) any {
	src := reflect.ValueOf(v)
	out := reflect.New(src.Type().Elem())
	copyValue(out.Elem(), src.Elem())
	return out.Interface()
}
