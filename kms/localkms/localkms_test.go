package localkms_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/kmstest"
	"github.com/zonekey/zonekey/kms/localkms"
)

// harness makes custodians over fresh KEK files in a temporary directory,
// opened with localkms.Open or, with viaURL, with kms.Open.
type harness struct {
	dir    string
	viaURL bool
	n      int
}

func (h *harness) open(ctx context.Context) (kms.Custodian, error) {
	h.n++
	path := filepath.Join(h.dir, fmt.Sprintf("kek-%d.kek", h.n))
	if h.viaURL {
		return kms.Open(ctx, "local://"+filepath.ToSlash(path)+"?create=1")
	}
	if err := localkms.CreateKEKFile(path); err != nil {
		return nil, err
	}
	return localkms.Open(path)
}

func (h *harness) MakeCustodians(ctx context.Context) (kms.Custodian, kms.Custodian, error) {
	c1, err := h.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	c2, err := h.open(ctx)
	if err != nil {
		c1.Close()
		return nil, nil, err
	}
	return c1, c2, nil
}

func (h *harness) Rotate(ctx context.Context, c kms.Custodian) (uint32, error) {
	lc, ok := c.(*localkms.Custodian)
	if !ok {
		return 0, fmt.Errorf("not a local custodian: %T", c)
	}
	return lc.Rotate(ctx)
}

// Reopen opens the file of c again, as another process would.
func (h *harness) Reopen(ctx context.Context, c kms.Custodian) (kms.Custodian, error) {
	lc, ok := c.(*localkms.Custodian)
	if !ok {
		return nil, fmt.Errorf("not a local custodian: %T", c)
	}
	if h.viaURL {
		return kms.Open(ctx, "local://"+filepath.ToSlash(lc.Path())+"?create=1")
	}
	return localkms.Open(lc.Path())
}

func (h *harness) Close() {}

var (
	_ kmstest.Rotator  = (*harness)(nil)
	_ kmstest.Reopener = (*harness)(nil)
)

func TestConformance(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		return &harness{dir: t.TempDir()}, nil
	})
}

func TestConformanceURL(t *testing.T) {
	kmstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (kmstest.Harness, error) {
		return &harness{dir: t.TempDir(), viaURL: true}, nil
	})
}

// newKEKFile creates a KEK file in a new temporary directory.
func newKEKFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eu.kek")
	require.NoError(t, localkms.CreateKEKFile(path))
	return path
}

func open(t *testing.T, path string) *localkms.Custodian {
	t.Helper()
	c, err := localkms.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

var testBinding = kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}

func wrap(t *testing.T, c kms.Custodian) ([]byte, kms.Wrapped) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	w, err := c.Wrap(t.Context(), key, testBinding)
	require.NoError(t, err)
	return key, w
}

func requireUnwraps(t *testing.T, c kms.Custodian, key []byte, w kms.Wrapped) {
	t.Helper()
	got, err := c.Unwrap(t.Context(), w, testBinding)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

func requireMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, want, fi.Mode().Perm(), "mode of %s", path)
}

// fileJSON is the KEK file format as the tests read it.
type fileJSON struct {
	Format   string `json:"format"`
	Primary  uint32 `json:"primary"`
	Versions []struct {
		Version uint32 `json:"version"`
		Key     []byte `json:"key"`
		Created string `json:"created"`
	} `json:"versions"`
}

func readFileJSON(t *testing.T, path string) fileJSON {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var f fileJSON
	require.NoError(t, json.Unmarshal(data, &f))
	return f
}

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	require.NoError(t, os.Mkdir("keys", 0o700))
	existing := filepath.Join(dir, "keys", "eu.kek")
	require.NoError(t, localkms.CreateKEKFile(existing))
	abs := filepath.ToSlash(existing)

	for _, tc := range []struct {
		name     string
		url      string
		wantPath string // on success
		created  bool   // the file did not exist before
	}{
		{name: "absolute", url: "local://" + abs, wantPath: existing},
		{name: "absolute single slash", url: "local:" + abs, wantPath: existing},
		{name: "relative", url: "local://keys/eu.kek", wantPath: existing},
		{name: "relative dot", url: "local://./keys/eu.kek", wantPath: existing},
		{name: "create on existing keeps it", url: "local://keys/eu.kek?create=1", wantPath: existing},
		{name: "create=false on existing", url: "local://keys/eu.kek?create=false", wantPath: existing},
		{name: "create relative", url: "local://keys/new1.kek?create=1", wantPath: filepath.Join(dir, "keys", "new1.kek"), created: true},
		{name: "create host only", url: "local://new2.kek?create=true", wantPath: filepath.Join(dir, "new2.kek"), created: true},
		{name: "create absolute", url: "local://" + filepath.ToSlash(filepath.Join(dir, "new3.kek")) + "?create=1", wantPath: filepath.Join(dir, "new3.kek"), created: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before kms.Wrapped
			var key []byte
			if !tc.created {
				c := open(t, tc.wantPath)
				key, before = wrap(t, c)
			}
			c, err := kms.Open(t.Context(), tc.url)
			require.NoError(t, err)
			defer c.Close()
			lc, ok := c.(*localkms.Custodian)
			require.True(t, ok, "kms.Open returned %T", c)
			require.Equal(t, tc.wantPath, lc.Path())
			require.Equal(t, []uint32{1}, lc.Versions())
			requireMode(t, tc.wantPath, 0o600)
			if !tc.created {
				// The same KEK: nothing was overwritten.
				requireUnwraps(t, c, key, before)
			}
		})
	}

	for _, tc := range []struct {
		name    string
		url     string
		notHere bool   // error also wraps fs.ErrNotExist
		msg     string // in the error
	}{
		{name: "missing file", url: "local://keys/missing.kek", notHere: true, msg: filepath.Join(dir, "keys", "missing.kek")},
		{name: "missing file create=0", url: "local://keys/missing.kek?create=0", notHere: true, msg: "create"},
		{name: "create in missing directory", url: "local://nodir/eu.kek?create=1", msg: "nodir"},
		{name: "empty", url: "local://", msg: "no file path"},
		{name: "opaque", url: "local:keys/eu.kek", msg: "missing //"},
		{name: "port", url: "local://keys:8200/eu.kek", msg: "host:port"},
		{name: "empty port", url: "local://keys:/eu.kek", msg: "host:port"},
		{name: "ipv6 host", url: "local://[::1]/eu.kek", msg: "host:port"},
		{name: "user info", url: "local://me@keys/eu.kek", msg: "user information"},
		{name: "password redacted", url: "local://me:hunter2@keys/eu.kek", msg: "user information"},
		{name: "fragment", url: "local://keys/eu.kek#v1", msg: "fragment"},
		{name: "bad create value", url: "local://keys/eu.kek?create=maybe", msg: "create"},
		{name: "create twice", url: "local://keys/eu.kek?create=1&create=0", msg: "2 times"},
		{name: "unknown parameter", url: "local://keys/eu.kek?creat=1", msg: `"creat"`},
		{name: "malformed query", url: "local://keys/eu.kek?create=%zz", msg: "malformed query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := kms.Open(t.Context(), tc.url)
			require.ErrorIs(t, err, kms.ErrConfig)
			require.Nil(t, c)
			require.Contains(t, err.Error(), tc.msg)
			require.NotContains(t, err.Error(), "hunter2")
			if tc.notHere {
				require.ErrorIs(t, err, fs.ErrNotExist)
			}
		})
	}

	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := kms.Open(ctx, "local://keys/eu.kek")
		require.ErrorIs(t, err, context.Canceled)
	})
}

func TestOpen(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "eu.kek")
		_, err := localkms.Open(path)
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.Contains(t, err.Error(), path)
		_, err = os.Stat(path)
		require.ErrorIs(t, err, fs.ErrNotExist, "Open without WithCreate must not create the file")
	})
	t.Run("create", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "eu.kek")
		c, err := localkms.Open(path, localkms.WithCreate())
		require.NoError(t, err)
		defer c.Close()
		requireMode(t, path, 0o600)
		key, w := wrap(t, c)
		requireUnwraps(t, open(t, path), key, w)
	})
	t.Run("empty path", func(t *testing.T) {
		_, err := localkms.Open("")
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorIs(t, localkms.CreateKEKFile(""), kms.ErrConfig)
	})
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.Chmod(dir, 0o700))
		_, err := localkms.Open(dir)
		require.ErrorIs(t, err, kms.ErrConfig)
		require.Contains(t, err.Error(), "not a regular file")
	})
}

func TestCreateKEKFile(t *testing.T) {
	path := newKEKFile(t)
	requireMode(t, path, 0o600)
	f := readFileJSON(t, path)
	require.Equal(t, localkms.Format, f.Format)
	require.Equal(t, uint32(1), f.Primary)
	require.Len(t, f.Versions, 1)
	require.Equal(t, uint32(1), f.Versions[0].Version)
	require.Len(t, f.Versions[0].Key, 32)
	require.NotEqual(t, make([]byte, 32), f.Versions[0].Key)
	require.NotEmpty(t, f.Versions[0].Created)

	before, err := os.ReadFile(path)
	require.NoError(t, err)
	err = localkms.CreateKEKFile(path)
	require.ErrorIs(t, err, kms.ErrConfig)
	require.ErrorIs(t, err, fs.ErrExist)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "CreateKEKFile overwrote an existing file")

	// Two files never share a key.
	other := readFileJSON(t, newKEKFile(t))
	require.NotEqual(t, f.Versions[0].Key, other.Versions[0].Key)

	// Nothing but the KEK file is left behind.
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1)
}

func TestPermissions(t *testing.T) {
	for _, tc := range []struct {
		mode fs.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o644, false},
		{0o640, false},
		{0o604, false},
		{0o660, false},
		{0o602, false},
		{0o610, false},
		{0o601, false},
		{0o777, false},
	} {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			path := newKEKFile(t)
			require.NoError(t, os.Chmod(path, tc.mode))
			c, err := localkms.Open(path)
			if tc.ok {
				require.NoError(t, err)
				c.Close()
				return
			}
			require.ErrorIs(t, err, kms.ErrConfig)
			require.Nil(t, c)
			msg := err.Error()
			require.Contains(t, msg, path)
			require.Contains(t, msg, fmt.Sprintf("%04o", tc.mode))
			require.Contains(t, msg, "chmod 600")
		})
	}

	t.Run("loosened after open", func(t *testing.T) {
		path := newKEKFile(t)
		c := open(t, path)
		require.NoError(t, os.Chmod(path, 0o644))
		_, err := c.Rotate(t.Context())
		require.ErrorIs(t, err, kms.ErrConfig)
		require.Contains(t, err.Error(), "chmod 600")
	})
}

func TestMalformedFile(t *testing.T) {
	secret := bytes.Repeat([]byte("K"), 32)
	key := base64.StdEncoding.EncodeToString(secret)
	ver := func(v int, k string) string {
		return fmt.Sprintf(`{"version":%d,"key":%q,"created":"2025-01-02T03:04:05Z"}`, v, k)
	}
	doc := func(primary int, versions ...string) string {
		return fmt.Sprintf(`{"format":%q,"primary":%d,"versions":[%s]}`, localkms.Format, primary, strings.Join(versions, ","))
	}
	valid := doc(1, ver(1, key))
	destroyed := func(primary int, versions string) string {
		return fmt.Sprintf(`{"format":%q,"primary":%d,"destroyed":"2025-07-01T00:00:00Z","versions":[%s]}`, localkms.Format, primary, versions)
	}

	for _, tc := range []struct {
		name    string
		content string
		msg     string
	}{
		{"valid", valid, ""},
		{"valid without created", fmt.Sprintf(`{"format":%q,"primary":1,"versions":[{"version":1,"key":%q}]}`, localkms.Format, key), ""},
		{"valid unsorted", doc(1, ver(2, key), ver(1, key)), ""},
		{"empty", "", "malformed"},
		{"not JSON", "KEK=" + key, "invalid JSON at offset"},
		{"null", "null", "format"},
		{"array", "[]", "cannot unmarshal"},
		{"wrong format", strings.Replace(valid, localkms.Format, "zonekey-local-kek/v2", 1), "format"},
		{"no format", fmt.Sprintf(`{"primary":1,"versions":[%s]}`, ver(1, key)), "format"},
		{"no versions", doc(1), "no KEK versions"},
		{"primary missing", doc(2, ver(1, key)), "primary KEK version 2"},
		{"primary zero", doc(0, ver(1, key)), "primary KEK version 0"},
		{"version zero", doc(1, ver(0, key), ver(1, key)), "version 0"},
		{"negative version", doc(1, ver(-1, key)), "cannot unmarshal"},
		{"version too large", doc(1, ver(1<<32, key)), "cannot unmarshal"},
		{"duplicate version", doc(1, ver(1, key), ver(1, key)), "twice"},
		{"short key", doc(1, ver(1, base64.StdEncoding.EncodeToString(secret[:16]))), "16 bytes"},
		{"long key", doc(1, ver(1, base64.StdEncoding.EncodeToString(append(secret, 'K')))), "33 bytes"},
		{"empty key", doc(1, ver(1, "")), "0 bytes"},
		{"null key", fmt.Sprintf(`{"format":%q,"primary":1,"versions":[{"version":1,"key":null}]}`, localkms.Format), "0 bytes"},
		{"key not base64", doc(1, ver(1, "!"+key[1:])), "base64"},
		{"bad created", strings.Replace(valid, "2025-01-02T03:04:05Z", "yesterday", 1), "yesterday"},
		{"unknown field", strings.Replace(valid, `"primary"`, `"comment":"x","primary"`, 1), "unknown field"},
		{"trailing object", valid + "{}", "data after"},
		{"trailing bracket", valid + "]", "data after"},
		{"truncated", valid[:len(valid)-1], "malformed"},
		{"too large", valid + strings.Repeat(" ", 1<<20), "bytes"},
		{"valid destroyed", destroyed(0, ""), ""},
		{"destroyed with a version", destroyed(0, ver(1, key)), "marked destroyed"},
		{"destroyed with a primary", destroyed(1, ""), "marked destroyed"},
		{"destroyed with min_decrypt", strings.Replace(destroyed(0, ""), `"primary"`, `"min_decrypt":1,"primary"`, 1), "marked destroyed"},
		{"bad destroyed", strings.Replace(destroyed(0, ""), "2025-07-01T00:00:00Z", "never", 1), "never"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "eu.kek")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
			c, err := localkms.Open(path)
			if tc.msg == "" {
				require.NoError(t, err)
				c.Close()
				return
			}
			require.ErrorIs(t, err, kms.ErrConfig)
			require.Nil(t, c)
			msg := err.Error()
			require.Contains(t, msg, path)
			require.Contains(t, msg, tc.msg)
			require.NotContains(t, msg, key[:8], "error quotes key material")
			require.NotContains(t, msg, "KKKK", "error quotes key material")
		})
	}
}

// TestCiphertextLayout checks the documented format against an independent
// AES-GCM open with the KEK read from the file.
func TestCiphertextLayout(t *testing.T) {
	path := newKEKFile(t)
	c := open(t, path)
	_, err := c.Rotate(t.Context())
	require.NoError(t, err)
	key, w := wrap(t, c)

	ct := w.Ciphertext
	require.Len(t, ct, 1+4+12+32+16)
	require.Equal(t, byte(0x01), ct[0])
	require.Equal(t, uint32(2), w.KEKVersion)
	require.Equal(t, w.KEKVersion, binary.BigEndian.Uint32(ct[1:5]))

	f := readFileJSON(t, path)
	require.Equal(t, uint32(2), f.Primary)
	var kek []byte
	for _, v := range f.Versions {
		if v.Version == 2 {
			kek = v.Key
		}
	}
	block, err := aes.NewCipher(kek)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	ad := append(append([]byte{}, ct[:5]...), testBinding.Bytes()...)
	got, err := gcm.Open(nil, ct[5:17], ct[17:], ad)
	require.NoError(t, err)
	require.Equal(t, key, got)

	// KEKVersion 0 means "take the version from the ciphertext".
	requireUnwraps(t, c, key, kms.Wrapped{Ciphertext: ct})
}

func TestWrapLimits(t *testing.T) {
	c := open(t, newKEKFile(t))
	_, err := c.Wrap(t.Context(), make([]byte, localkms.MaxKeySize+1), testBinding)
	require.ErrorIs(t, err, errs.InvalidValue)

	long := kms.Binding{Zone: strings.Repeat("e", 1<<16), KeyID: "zk-1", Version: 1}
	_, err = c.Wrap(t.Context(), make([]byte, 32), long)
	require.ErrorIs(t, err, kms.ErrConfig, "a binding that Binding.Bytes cannot encode unambiguously")
	_, w := wrap(t, c)
	_, err = c.Unwrap(t.Context(), w, long)
	require.ErrorIs(t, err, kms.ErrTampered)
}

func TestRotateAndDestroy(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	c := open(t, path)
	require.Equal(t, []uint32{1}, c.Versions())
	key1, w1 := wrap(t, c)
	require.Equal(t, uint32(1), w1.KEKVersion)

	v, err := c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)
	require.Equal(t, []uint32{1, 2}, c.Versions())
	key2, w2 := wrap(t, c)
	require.Equal(t, uint32(2), w2.KEKVersion)
	requireUnwraps(t, c, key1, w1)
	requireUnwraps(t, c, key2, w2)
	requireMode(t, path, 0o600)

	before, err := os.ReadFile(path)
	require.NoError(t, err)
	v1Key := base64.StdEncoding.EncodeToString(readFileJSON(t, path).Versions[0].Key)

	// Refused: would destroy the primary version.
	err = c.DestroyBelow(ctx, 3)
	require.ErrorIs(t, err, errs.InvalidValue)
	require.Contains(t, err.Error(), "primary")
	require.Equal(t, []uint32{1, 2}, c.Versions())

	// Nothing below version 1.
	require.NoError(t, c.DestroyBelow(ctx, 1))
	require.Equal(t, []uint32{1, 2}, c.Versions())
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "refused or empty DestroyBelow changed the file")

	require.NoError(t, c.DestroyBelow(ctx, 2))
	require.Equal(t, []uint32{2}, c.Versions())
	_, err = c.Unwrap(ctx, w1, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	requireUnwraps(t, c, key2, w2)
	requireMode(t, path, 0o600)

	// The file no longer holds version 1's key.
	f := readFileJSON(t, path)
	require.Equal(t, uint32(2), f.Primary)
	require.Len(t, f.Versions, 1)
	require.Equal(t, uint32(2), f.Versions[0].Version)
	require.Contains(t, string(before), v1Key)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(raw), v1Key)

	// A custodian opened now sees the same.
	c2 := open(t, path)
	require.Equal(t, []uint32{2}, c2.Versions())
	_, err = c2.Unwrap(ctx, w1, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	requireUnwraps(t, c2, key2, w2)
	_, w := wrap(t, c2)
	require.Equal(t, uint32(2), w.KEKVersion)

	// Rotation goes on from the highest version.
	v, err = c.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(3), v)
	require.Equal(t, []uint32{2, 3}, c.Versions())

	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	// The KEK file and its lock file, nothing else.
	require.Len(t, entries, 2, "temporary files left behind: %v", entries)
	require.True(t, strings.HasSuffix(entries[1].Name(), ".lock"), "%v", entries)
}

func TestReopenAfterRotation(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	c := open(t, path)
	var keys [][]byte
	var ws []kms.Wrapped
	for i := range 3 {
		if i > 0 {
			_, err := c.Rotate(ctx)
			require.NoError(t, err)
		}
		k, w := wrap(t, c)
		require.Equal(t, uint32(i+1), w.KEKVersion)
		keys, ws = append(keys, k), append(ws, w)
	}
	before := readFileJSON(t, path)

	c2 := open(t, path)
	require.Equal(t, []uint32{1, 2, 3}, c2.Versions())
	require.Equal(t, before, readFileJSON(t, path), "opening changed the file")
	for i := range ws {
		requireUnwraps(t, c2, keys[i], ws[i])
	}
	_, w := wrap(t, c2)
	require.Equal(t, uint32(3), w.KEKVersion)
}

// Two custodians of one file, as two processes have: each change re-reads
// the file, and Wrap and Unwrap take up what the other changed.
func TestTwoCustodiansOneFile(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	a, b := open(t, path), open(t, path)
	key1, w1 := wrap(t, a)

	va, err := a.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(2), va)
	// b re-reads the file: no version is lost or numbered twice.
	vb, err := b.Rotate(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(3), vb)
	require.Equal(t, []uint32{1, 2, 3}, b.Versions())
	require.Equal(t, []uint32{1, 2}, a.Versions(), "Versions does not re-read the file")

	// a's next Unwrap finds the file replaced and takes up b's version.
	key3, w3 := wrap(t, b)
	require.Equal(t, uint32(3), w3.KEKVersion)
	requireUnwraps(t, a, key3, w3)
	require.Equal(t, []uint32{1, 2, 3}, a.Versions())
	_, w := wrap(t, a)
	require.Equal(t, uint32(3), w.KEKVersion, "a wraps under b's primary")

	require.NoError(t, a.DestroyBelow(ctx, 1)) // no change, but a re-reads the file
	require.Equal(t, []uint32{1, 2, 3}, a.Versions())
	require.Len(t, readFileJSON(t, path).Versions, 3)

	// Versions destroyed by b stop unwrapping in a at once, without a
	// reopen: another process cannot keep a destroyed KEK in use.
	requireUnwraps(t, a, key1, w1)
	require.NoError(t, b.DestroyBelow(ctx, 3))
	_, err = a.Unwrap(ctx, w1, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	requireUnwraps(t, a, key3, w3)

	// So does the whole KEK.
	require.NoError(t, b.Destroy(ctx))
	_, err = a.Unwrap(ctx, w3, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
	_, err = a.Wrap(ctx, key3, testBinding)
	require.ErrorIs(t, err, kms.ErrUnknownKey)
}

// A KEK file that disappears or turns unreadable under an open custodian
// fails its Wrap and Unwrap: it does not go on with keys the file may no
// longer hold.
func TestKEKFileGone(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	c := open(t, path)
	key, w := wrap(t, c)
	requireUnwraps(t, c, key, w)
	require.NoError(t, os.Rename(path, path+".moved"))
	_, err := c.Unwrap(ctx, w, testBinding)
	require.ErrorIs(t, err, kms.ErrConfig)
	_, err = c.Wrap(ctx, key, testBinding)
	require.ErrorIs(t, err, kms.ErrConfig)
	require.NoError(t, os.Rename(path+".moved", path))
	requireUnwraps(t, c, key, w)
}

func TestClosed(t *testing.T) {
	ctx := t.Context()
	path := newKEKFile(t)
	c, err := localkms.Open(path)
	require.NoError(t, err)
	_, w := wrap(t, c)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())

	_, err = c.Wrap(ctx, make([]byte, 32), testBinding)
	require.ErrorIs(t, err, errs.Closed)
	_, err = c.Unwrap(ctx, w, testBinding)
	require.ErrorIs(t, err, errs.Closed)
	_, err = c.Unwrap(ctx, kms.Wrapped{}, testBinding)
	require.ErrorIs(t, err, errs.Closed)
	_, err = c.Rotate(ctx)
	require.ErrorIs(t, err, errs.Closed)
	require.ErrorIs(t, c.DestroyBelow(ctx, 1), errs.Closed)
	require.Nil(t, c.Versions())
	require.Equal(t, []uint32{1}, open(t, path).Versions(), "operations after Close changed the file")
}

func TestCanceledAdmin(t *testing.T) {
	path := newKEKFile(t)
	c := open(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := c.Rotate(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, c.DestroyBelow(ctx, 1), context.Canceled)
	require.Equal(t, []uint32{1}, open(t, path).Versions())
}

func TestRotateThroughSymlink(t *testing.T) {
	target := newKEKFile(t)
	link := filepath.Join(t.TempDir(), "eu.kek")
	require.NoError(t, os.Symlink(target, link))
	c := open(t, link)
	_, err := c.Rotate(t.Context())
	require.NoError(t, err)

	fi, err := os.Lstat(link)
	require.NoError(t, err)
	require.Equal(t, fs.ModeSymlink, fi.Mode().Type(), "Rotate replaced the link instead of its target")
	require.Len(t, readFileJSON(t, target).Versions, 2)
	entries, err := os.ReadDir(filepath.Dir(target))
	require.NoError(t, err)
	// The KEK file and its lock file, nothing else.
	require.Len(t, entries, 2, "temporary files left behind: %v", entries)
	require.True(t, strings.HasSuffix(entries[1].Name(), ".lock"), "%v", entries)
}

func FuzzUnwrap(f *testing.F) {
	c, err := localkms.Open(filepath.Join(f.TempDir(), "eu.kek"), localkms.WithCreate())
	require.NoError(f, err)
	f.Cleanup(func() { c.Close() })
	key := make([]byte, 32)
	w, err := c.Wrap(context.Background(), key, testBinding)
	require.NoError(f, err)
	f.Add(w.Ciphertext, uint32(1))
	f.Add(w.Ciphertext, uint32(0))
	f.Add(w.Ciphertext[:20], uint32(1))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, ct []byte, v uint32) {
		got, err := c.Unwrap(context.Background(), kms.Wrapped{Ciphertext: ct, KEKVersion: v}, testBinding)
		if err == nil {
			require.Equal(t, w.Ciphertext, ct, "a ciphertext other than the one wrapped was accepted")
			require.Equal(t, key, got)
			return
		}
		require.Nil(t, got)
		if !errors.Is(err, kms.ErrTampered) && !errors.Is(err, kms.ErrUnknownKey) {
			t.Fatalf("error %v is neither ErrTampered nor ErrUnknownKey", err)
		}
	})
}

// TestChangeWithSameMetadata: a custodian takes up a change another one
// made even when the file looks unchanged to stat (the same inode, size
// and modification time, as a reused inode on a file system with coarse
// timestamps gives): it compares the file's content.
func TestChangeWithSameMetadata(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	p := filepath.Join(dir, "eu.kek")
	require.NoError(t, localkms.CreateKEKFile(p))
	b, err := localkms.Open(p)
	require.NoError(t, err)
	defer b.Close()
	bind := kms.Binding{Zone: "eu", KeyID: "k", Version: 1}
	w, err := b.Wrap(ctx, make([]byte, 32), bind)
	require.NoError(t, err)
	before, err := os.Stat(p)
	require.NoError(t, err)

	// Another custodian runs an epoch's KEK steps on a copy; its result
	// is then written over the file in place, and the file's times put
	// back.
	cp := filepath.Join(dir, "copy.kek")
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cp, data, 0o600))
	a, err := localkms.Open(cp)
	require.NoError(t, err)
	_, err = a.Rotate(ctx)
	require.NoError(t, err)
	require.NoError(t, a.DestroyBelow(ctx, 2))
	require.NoError(t, a.Close())
	changed, err := os.ReadFile(cp)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, changed, 0o600))
	require.NoError(t, os.Chtimes(p, before.ModTime(), before.ModTime()))
	after, err := os.Stat(p)
	require.NoError(t, err)
	require.True(t, os.SameFile(before, after))

	_, err = b.Unwrap(ctx, w, bind)
	require.ErrorIs(t, err, kms.ErrUnknownKey, "version 1 was destroyed")
	nw, err := b.Wrap(ctx, make([]byte, 32), kms.Binding{Zone: "eu", KeyID: "k2", Version: 2})
	require.NoError(t, err)
	require.Equal(t, uint32(2), nw.KEKVersion, "new keys are wrapped under the new primary")
}

// TestKEKPathNotARegularFile: a KEK path that is a named pipe is refused
// with ErrConfig at once; opening it would block until a writer comes.
func TestKEKPathNotARegularFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "eu.kek")
	if err := mkfifo(p); err != nil {
		t.Skipf("no named pipes here: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := localkms.Open(p); done <- err }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, kms.ErrConfig)
		require.ErrorContains(t, err, "not a regular file")
	case <-time.After(10 * time.Second):
		t.Fatal("Open of a named pipe blocked")
	}
}
