package fieldcrypt_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
)

func manyUsers(n int) []*User {
	users := make([]*User, n)
	for i := range users {
		zone := "eu"
		if i%3 == 0 {
			zone = "us"
		}
		users[i] = newUser(fmt.Sprintf("u-%d", i), zone)
		users[i].Name = fmt.Sprintf("SECRET-name-%d", i)
	}
	return users
}

// TestReopen: records encrypted by one keyring decrypt with another opened
// later on the same directory (KEK files and keystore), in this process.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, dir)
	users := manyUsers(10)
	for _, u := range users {
		require.NoError(t, e.c.Encrypt(ctx, u))
	}
	e.close(t)

	e2 := openEnv(t, dir)
	want := manyUsers(10)
	for i, u := range users {
		require.NoError(t, e2.c.Decrypt(ctx, u))
		require.Equal(t, want[i], u)
	}
	// New records of known subjects use the stored DEKs, not new ones.
	u := newUser("u-1", "eu")
	require.NoError(t, e2.c.Encrypt(ctx, u))
	id1, err := envelope.TextKeyID(u.Email)
	require.NoError(t, err)
	require.NoError(t, e2.c.Encrypt(ctx, want[1]))
	id2, err := envelope.TextKeyID(want[1].Email)
	require.NoError(t, err)
	require.Equal(t, id1, id2)
}

const helperEnv = "ZONEKEY_FIELDCRYPT_HELPER_DIR"

// TestOtherProcess: records encrypted here decrypt in another process that
// opens the same directory after this one closed it.
func TestOtherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dir := t.TempDir()
	e := openEnv(t, dir)
	users := manyUsers(10)
	for _, u := range users {
		require.NoError(t, e.c.Encrypt(ctx, u))
	}
	data, err := json.Marshal(users)
	require.NoError(t, err)
	require.NotContains(t, string(data), "SECRET")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sealed.json"), data, 0o600))
	e.close(t) // the embedded store serves one process at a time

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "helper process: %s", out)

	data, err = os.ReadFile(filepath.Join(dir, "opened.json"))
	require.NoError(t, err)
	var got []*User
	require.NoError(t, json.Unmarshal(data, &got))
	require.Equal(t, manyUsers(10), got)
}

// TestHelperProcess is the other process of TestOtherProcess; it does
// nothing unless started by it.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("run by TestOtherProcess")
	}
	e := openEnv(t, dir)
	data, err := os.ReadFile(filepath.Join(dir, "sealed.json"))
	require.NoError(t, err)
	var users []*User
	require.NoError(t, json.Unmarshal(data, &users))
	for _, u := range users {
		require.NoError(t, e.c.Decrypt(ctx, u))
	}
	data, err = json.Marshal(users)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "opened.json"), data, 0o600))
}

// TestConcurrent encrypts and decrypts records of several types from many
// goroutines at once, with subjects shared between goroutines so that they
// race to create the same first DEK. Run it with -race.
func TestConcurrent(t *testing.T) {
	const (
		goroutines = 16
		records    = 200
		subjects   = 40
	)
	e := newEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- concurrentWork(e, g, records, subjects)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// One DEK per (zone, subject), whoever created it first.
	for i := range subjects {
		for _, zone := range defaultZones {
			u := &User{ID: fmt.Sprintf("s-%d", i), Region: zone, Name: "x"}
			require.NoError(t, e.c.Encrypt(ctx, u))
			id, err := envelope.TextKeyID(u.Name)
			require.NoError(t, err)
			row, err := e.store.LatestDEK(ctx, zone, u.ID)
			require.NoError(t, err)
			require.Equal(t, row.ID, id)
			require.EqualValues(t, 1, row.Generation)
		}
	}
}

func concurrentWork(e *env, g, records, subjects int) error {
	check := func(ok bool, format string, args ...any) error {
		if !ok {
			return fmt.Errorf("goroutine %d: "+format, append([]any{g}, args...)...)
		}
		return nil
	}
	for i := range records {
		zone := defaultZones[(g+i)%len(defaultZones)]
		subject := fmt.Sprintf("s-%d", (g*7+i)%subjects)
		var v, want any
		switch i % 3 {
		case 0:
			u := newUser(subject, zone)
			u.Name = fmt.Sprintf("SECRET-%d-%d", g, i)
			v, want = u, deepCopy(u)
		case 1:
			f := newFive(subject, zone)
			f.D = append(f.D, fmt.Sprint(g, i))
			v, want = f, deepCopy(f)
		default:
			k := newKitchen()
			k.ID, k.Region, k.S = subject, zone, fmt.Sprintf("SECRET-%d-%d", g, i)
			v, want = k, cloneAny(k)
		}
		if err := e.c.Encrypt(ctx, v); err != nil {
			return check(false, "encrypt: %v", err)
		}
		for _, s := range texts(v) {
			if err := check(!containsSecret(s), "secret left in the clear"); err != nil {
				return err
			}
		}
		if err := e.c.Decrypt(ctx, v); err != nil {
			return check(false, "decrypt: %v", err)
		}
		if err := check(equal(want, v), "round trip of %T changed it", v); err != nil {
			return err
		}
	}
	return nil
}

func containsSecret(s string) bool { return strings.Contains(s, "SECRET") }

func equal(a, b any) bool { return reflect.DeepEqual(a, b) }
