package bench_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/zonekey/zonekey/bench"
	"github.com/zonekey/zonekey/internal/vaulttest"
)

// vaultBatchSize is the number of values in one batch_input request.
const vaultBatchSize = 1000

const vaultKeyName = "zonekey-bench"

// transit is a Transit key of a Vault server for the baselines.
type transit struct {
	c     *api.Client
	mount string
}

// vaultTransit returns a Transit key of a Vault server, or skips the
// benchmark when no Vault is at hand. It uses, in this order:
//
//   - the server at ZONEKEY_VAULT_ADDR with the token ZONEKEY_VAULT_TOKEN,
//     Transit mounted at ZONEKEY_VAULT_TRANSIT (default "transit", mounted
//     if missing), and a key "zonekey-bench" there (created if missing);
//   - a dev server started with package internal/vaulttest, when a Vault
//     binary is already built (ZONEKEY_VAULT_BIN, or the cache that
//     scripts/build-vault.sh fills). A benchmark never builds Vault itself:
//     that takes minutes.
func vaultTransit(b *testing.B) *transit {
	ctx := context.Background()
	var t transit
	switch addr, token := os.Getenv("ZONEKEY_VAULT_ADDR"), os.Getenv("ZONEKEY_VAULT_TOKEN"); {
	case addr != "" && token != "":
		c, err := api.NewClient(&api.Config{Address: addr})
		if err != nil {
			b.Fatalf("Vault client for %s: %v", addr, err)
		}
		c.SetToken(token)
		t = transit{c: c, mount: "transit"}
		if m := os.Getenv("ZONEKEY_VAULT_TRANSIT"); m != "" {
			t.mount = strings.Trim(m, "/")
		}
		err = c.Sys().MountWithContext(ctx, t.mount, &api.MountInput{Type: "transit"})
		if err != nil && !strings.Contains(err.Error(), "path is already in use") {
			b.Fatalf("mounting Transit at %s/%s: %v", addr, t.mount, err)
		}
	case vaultBinaryBuilt():
		s := vaulttest.Start(b)
		s.EnableTransit(b)
		t = transit{c: s.Client(b), mount: "transit"}
	default:
		b.Skip("no Vault: set ZONEKEY_VAULT_ADDR and ZONEKEY_VAULT_TOKEN, or ZONEKEY_VAULT_BIN, or build one with scripts/build-vault.sh")
	}
	if _, err := t.c.Logical().WriteWithContext(ctx, t.mount+"/keys/"+vaultKeyName, map[string]any{"type": "aes256-gcm96"}); err != nil {
		b.Fatalf("creating Transit key %s: %v", vaultKeyName, err)
	}
	return &t
}

// vaultBinaryBuilt reports whether internal/vaulttest would find a Vault
// binary without building one: ZONEKEY_VAULT_BIN, or the binary in the cache
// directory that it and scripts/build-vault.sh share.
func vaultBinaryBuilt() bool {
	if p := os.Getenv("ZONEKEY_VAULT_BIN"); p != "" {
		return true // vaulttest reports it if it is not a Vault binary
	}
	dir := os.Getenv("ZONEKEY_VAULT_DIR")
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return false
			}
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "zonekey", "vault-v"+vaulttest.Version)
	}
	fi, err := os.Stat(filepath.Join(dir, "vault"))
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func b64(p []byte) string { return base64.StdEncoding.EncodeToString(p) }

func (t *transit) encrypt(ctx context.Context, pt, ad []byte) (string, error) {
	s, err := t.c.Logical().WriteWithContext(ctx, t.mount+"/encrypt/"+vaultKeyName,
		map[string]any{"plaintext": b64(pt), "associated_data": b64(ad)})
	if err != nil {
		return "", err
	}
	ct, _ := s.Data["ciphertext"].(string)
	if ct == "" {
		return "", errors.New("transit encrypt returned no ciphertext")
	}
	return ct, nil
}

func (t *transit) decrypt(ctx context.Context, ct string, ad []byte) ([]byte, error) {
	s, err := t.c.Logical().WriteWithContext(ctx, t.mount+"/decrypt/"+vaultKeyName,
		map[string]any{"ciphertext": ct, "associated_data": b64(ad)})
	if err != nil {
		return nil, err
	}
	pt, _ := s.Data["plaintext"].(string)
	return base64.StdEncoding.DecodeString(pt)
}

// batch sends one batch_input request of items to op ("encrypt" or
// "decrypt") and returns the field of each result.
func (t *transit) batch(ctx context.Context, op string, items []map[string]any, field string) ([]string, error) {
	s, err := t.c.Logical().WriteWithContext(ctx, t.mount+"/"+op+"/"+vaultKeyName, map[string]any{"batch_input": items})
	if err != nil {
		return nil, err
	}
	results, _ := s.Data["batch_results"].([]any)
	if len(results) != len(items) {
		return nil, fmt.Errorf("transit %s returned %d results for %d items", op, len(results), len(items))
	}
	out := make([]string, len(results))
	for i, r := range results {
		m, _ := r.(map[string]any)
		if e, _ := m["error"].(string); e != "" {
			return nil, fmt.Errorf("transit %s item %d: %s", op, i, e)
		}
		out[i], _ = m[field].(string)
	}
	return out, nil
}

// BenchmarkVaultTransit is the remote-KMS baseline: what encrypting each
// field at Vault Transit costs (AES-256-GCM key, FieldSize-byte values, the
// same associated-data size as zonekey's), one request per field
// ("encrypt", "decrypt") and 1,000 values per batch_input request
// ("batch-encrypt", "batch-decrypt", with ns/value). It uses a Vault given
// by ZONEKEY_VAULT_ADDR and ZONEKEY_VAULT_TOKEN, or starts a dev server if a
// Vault binary is built (see scripts/build-vault.sh), and skips otherwise.
func BenchmarkVaultTransit(b *testing.B) {
	t := vaultTransit(b)
	ctx := context.Background()
	pt := []byte(bench.Text(bench.FieldSize, 0))
	ad := make([]byte, bench.ADSize(bench.OneFieldPath, bench.Subject(0)))
	rand.Read(ad)
	ct, err := t.encrypt(ctx, pt, ad)
	if err != nil {
		b.Fatal(err)
	}
	encItems := make([]map[string]any, vaultBatchSize)
	decItems := make([]map[string]any, vaultBatchSize)
	for i := range encItems {
		encItems[i] = map[string]any{"plaintext": b64(pt), "associated_data": b64(ad)}
		decItems[i] = map[string]any{"ciphertext": ct, "associated_data": b64(ad)}
	}

	b.Run("encrypt", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, err := t.encrypt(ctx, pt, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decrypt", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			got, err := t.decrypt(ctx, ct, ad)
			if err != nil {
				b.Fatal(err)
			}
			if len(got) != len(pt) {
				b.Fatalf("Transit decrypt returned %d bytes, want %d", len(got), len(pt))
			}
		}
	})
	batchRun := func(op string, items []map[string]any, field string) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(pt) * vaultBatchSize))
			for b.Loop() {
				if _, err := t.batch(ctx, op, items, field); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*vaultBatchSize), "ns/value")
		}
	}
	b.Run("batch-encrypt", batchRun("encrypt", encItems, "ciphertext"))
	b.Run("batch-decrypt", batchRun("decrypt", decItems, "plaintext"))
}
