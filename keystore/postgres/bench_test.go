package postgres_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// The latencies of the store against the test server, one call at a time:
//
//	go test -run '^$' -bench . ./keystore/postgres/

// BenchmarkStoreCreateDEK: one durable DEK row (an INSERT committed).
func BenchmarkStoreCreateDEK(b *testing.B) {
	s := openStore(b, freshSchema(b), appName())
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := s.CreateDEK(b.Context(), newDEK("eu", fmt.Sprintf("subject-%d", i), 1)); err != nil {
			b.Fatal(err)
		}
	}
}

// storedDEKs creates n DEKs through a keyring over s and returns their ids.
func storedDEKs(b *testing.B, s keystore.Store, kek string, n int) []envelope.KeyID {
	kr := newKeyring(b, s, kek, nil)
	ids := make([]envelope.KeyID, n)
	for i := range ids {
		d, err := kr.DataKey(b.Context(), "eu", fmt.Sprintf("subject-%d", i))
		require.NoError(b, err)
		ids[i] = d.ID()
	}
	return ids
}

// BenchmarkStoreDEK: reading one DEK row by id.
func BenchmarkStoreDEK(b *testing.B) {
	s := openStore(b, freshSchema(b), appName())
	ids := storedDEKs(b, s, kekFile(b), 1000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.DEK(b.Context(), ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreDEKs100: reading 100 DEK rows in one query.
func BenchmarkStoreDEKs100(b *testing.B) {
	s := openStore(b, freshSchema(b), appName())
	ids := storedDEKs(b, s, kekFile(b), 1000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		j := (i * 100) % len(ids)
		rows, err := s.DEKs(b.Context(), ids[j:j+100])
		if err != nil || len(rows) != 100 {
			b.Fatal(len(rows), err)
		}
	}
}

// BenchmarkKeyringDataKeyCreate: a subject's first DEK through the keyring,
// zone key cached: LatestDEK (none), wrap, CreateDEK.
func BenchmarkKeyringDataKeyCreate(b *testing.B) {
	s := openStore(b, freshSchema(b), appName())
	kr := newKeyring(b, s, kekFile(b), nil)
	_, err := kr.DataKey(b.Context(), "eu", "warm-up") // creates and caches the zone key
	require.NoError(b, err)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := kr.DataKey(b.Context(), "eu", fmt.Sprintf("subject-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKeyringKeyCold: Keyring.Key of a DEK that is not cached, zone key
// cached: a Store.DEK read and a local unwrap.
func BenchmarkKeyringKeyCold(b *testing.B) {
	s := openStore(b, freshSchema(b), appName())
	kek := kekFile(b)
	ids := storedDEKs(b, s, kek, 1000)
	// A cache of one DEK: every Key of the next id misses.
	kr := newKeyring(b, s, kek, func(cfg *keystore.Config) { cfg.DEKCacheSize = 1 })
	_, err := kr.Key(b.Context(), ids[0]) // unwraps and caches the zone key
	require.NoError(b, err)
	b.ReportAllocs()
	for i := 1; b.Loop(); i++ {
		if _, err := kr.Key(b.Context(), ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}
