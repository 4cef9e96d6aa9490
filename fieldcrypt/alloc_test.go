package fieldcrypt_test

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// hot has five encrypted fields, the shape of a typical record.
type hot struct {
	ID     string `zonekey:"subject"`
	Region string `zonekey:"zone"`
	Name   string `zonekey:"encrypt"`
	Email  string `zonekey:"encrypt"`
	Phone  string `zonekey:"encrypt"`
	Street string `zonekey:"encrypt"`
	Notes  []byte `zonekey:"encrypt"`
	Plan   string
}

// Measured with the DEK cached: Encrypt and Decrypt of hot allocate exactly
// one object per encrypted field (its new value) and nothing else.
const (
	encryptAllocs = 5
	decryptAllocs = 5
)

func TestAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	e := newEnv(t)
	plain := hot{ID: "u-1", Region: "eu", Name: "Ada Lovelace", Email: "ada@example.eu",
		Phone: "+44 20 7946 0000", Street: "12 St James's Square", Notes: []byte("prefers post"), Plan: "pro"}
	v := plain
	require.NoError(t, e.c.Encrypt(ctx, &v)) // builds the plan, caches the DEK
	sealed := v
	require.NoError(t, e.c.Decrypt(ctx, &v))
	require.Equal(t, plain, v)

	enc := testing.AllocsPerRun(200, func() {
		v = plain
		if err := e.c.Encrypt(ctx, &v); err != nil {
			t.Fatal(err)
		}
	})
	dec := testing.AllocsPerRun(200, func() {
		v = sealed
		if err := e.c.Decrypt(ctx, &v); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations per call: Encrypt %.1f, Decrypt %.1f", enc, dec)
	require.LessOrEqual(t, enc, float64(encryptAllocs), "Encrypt allocations")
	require.LessOrEqual(t, dec, float64(decryptAllocs), "Decrypt allocations")
}

func BenchmarkEncrypt(b *testing.B) {
	e := newEnv(b)
	plain := hot{ID: "u-1", Region: "eu", Name: "Ada Lovelace", Email: "ada@example.eu",
		Phone: "+44 20 7946 0000", Street: "12 St James's Square", Notes: []byte("prefers post")}
	v := plain
	require.NoError(b, e.c.Encrypt(ctx, &v))
	b.ReportAllocs()
	for b.Loop() {
		v = plain
		if err := e.c.Encrypt(ctx, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	e := newEnv(b)
	v := hot{ID: "u-1", Region: "eu", Name: "Ada Lovelace", Email: "ada@example.eu",
		Phone: "+44 20 7946 0000", Street: "12 St James's Square", Notes: []byte("prefers post")}
	require.NoError(b, e.c.Encrypt(ctx, &v))
	sealed := v
	b.ReportAllocs()
	for b.Loop() {
		v = sealed
		if err := e.c.Decrypt(ctx, &v); err != nil {
			b.Fatal(err)
		}
	}
}
