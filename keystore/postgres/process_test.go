package postgres_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/fieldcrypt"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
	"github.com/zonekey/zonekey/kms"
	_ "github.com/zonekey/zonekey/kms/localkms" // the local:// custodian
)

// The environment of a helper process (TestHelperProcess).
const (
	helperEnv    = "ZONEKEY_PG_HELPER" // "encrypt" or "decrypt"
	envDSN       = "ZONEKEY_PG_HELPER_DSN"
	envSchema    = "ZONEKEY_PG_HELPER_SCHEMA"
	envKEK       = "ZONEKEY_PG_HELPER_KEK"
	envDir       = "ZONEKEY_PG_HELPER_DIR"
	envWorker    = "ZONEKEY_PG_HELPER_WORKER"
	envSubjects  = "ZONEKEY_PG_HELPER_SUBJECTS"
	raceWorkers  = 5
	raceSubjects = 50
	recordsPer   = 2 // records per subject per worker
)

// record is what the workers encrypt.
type record struct {
	Subject string `zonekey:"subject"`
	Zone    string `zonekey:"zone"`
	Secret  string `zonekey:"encrypt"`
	Worker  int
	Seq     int
}

func secretOf(subject string, worker, seq int) string {
	return fmt.Sprintf("SECRET of %q from worker %d #%d", subject, worker, seq)
}

// raceSubject returns the i-th subject of the race; some hold NUL bytes
// and non-ASCII characters.
func raceSubject(i int) string {
	if i%10 == 3 {
		return fmt.Sprintf("ü-%02d\x00nul", i)
	}
	return fmt.Sprintf("user-%02d@example.com", i)
}

// workerOutput is the file a worker writes in the encrypt phase.
type workerOutput struct {
	Records []record
	// Lost counts the creates of this worker that lost a race to another
	// (the store answered ErrExists and the keyring read the winner's row).
	LostDEKs, LostZoneKeys int64
}

// TestMultiProcessRace: several OS processes, each a keyring over its own
// pool on one schema, encrypt records of the same fresh subjects at once.
// Every subject ends with exactly one DEK, the zone with exactly one key, and
// every record decrypts in every process.
func TestMultiProcessRace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	schema := freshSchema(t)
	s := openStore(t, schema, appName()) // migrated here, not in the race
	dir := t.TempDir()
	kek := kekFile(t) // made before the race: no process creates it
	env := []string{
		envDSN + "=" + testDSN,
		envSchema + "=" + schema,
		envKEK + "=" + kek,
		envDir + "=" + dir,
		envSubjects + "=" + strconv.Itoa(raceSubjects),
	}

	start := time.Now()
	runWorkers(t, "encrypt", env)
	t.Logf("%d processes encrypted %d records each in %v", raceWorkers, raceSubjects*recordsPer, time.Since(start).Round(time.Millisecond))

	// One DEK per subject, generation 1; one zone key.
	rows, err := admin.Query(t.Context(), "SELECT zone, subject, generation FROM "+table(schema, "deks"))
	require.NoError(t, err)
	type dekKey struct {
		zone, subject string
		gen           int64
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (dekKey, error) {
		var zone, subject []byte
		var k dekKey
		err := r.Scan(&zone, &subject, &k.gen)
		k.zone, k.subject = string(zone), string(subject)
		return k, err
	})
	require.NoError(t, err)
	want := map[dekKey]int{}
	for i := range raceSubjects {
		want[dekKey{"eu", raceSubject(i), 1}] = 1
	}
	got := map[dekKey]int{}
	for _, k := range keys {
		got[k]++
	}
	require.Equal(t, want, got, "DEK rows by (zone, subject, generation)")
	var zoneKeys int
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT count(*) FROM "+table(schema, "zone_keys")).Scan(&zoneKeys))
	require.Equal(t, 1, zoneKeys, "zone keys")

	// Every record decrypts here.
	var lostDEKs, lostZoneKeys int64
	all := readRecords(t, dir)
	require.Len(t, all, raceWorkers*raceSubjects*recordsPer)
	kr := newKeyring(t, s, kek, nil)
	c := fieldcrypt.New(kr)
	for _, r := range all {
		require.NotContains(t, r.Secret, "SECRET", "a record was written unencrypted")
		require.NoError(t, c.Decrypt(t.Context(), &r))
		require.Equal(t, secretOf(r.Subject, r.Worker, r.Seq), r.Secret)
	}
	for w := range raceWorkers {
		out := readOutput(t, dir, w)
		lostDEKs += out.LostDEKs
		lostZoneKeys += out.LostZoneKeys
	}
	t.Logf("creates that lost a race and read the winner's row: %d DEKs, %d zone keys", lostDEKs, lostZoneKeys)
	require.Positive(t, lostDEKs, "no create lost a race: the processes did not race, and the test proved nothing")

	// And in every process.
	runWorkers(t, "decrypt", env)
	for w := range raceWorkers {
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("decrypted-%d", w)))
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(len(all)), string(data), "records worker %d decrypted", w)
	}
}

// runWorkers runs raceWorkers helper processes in phase and waits for them.
// They start together: each opens its keyring, reports ready on one pipe, and
// waits for the parent to close another.
func runWorkers(t *testing.T, phase string, env []string) {
	t.Helper()
	goR, goW, err := os.Pipe()
	require.NoError(t, err)
	readyR, readyW, err := os.Pipe()
	require.NoError(t, err)
	defer goW.Close()
	defer readyR.Close()

	cmds := make([]*exec.Cmd, raceWorkers)
	outs := make([]*bytes.Buffer, raceWorkers)
	for w := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=2m")
		cmd.Env = append(os.Environ(), append(env, helperEnv+"="+phase, envWorker+"="+strconv.Itoa(w))...)
		cmd.ExtraFiles = []*os.File{goR, readyW} // fd 3 and 4 in the child
		outs[w] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[w], outs[w]
		require.NoError(t, cmd.Start())
		cmds[w] = cmd
	}
	goR.Close()
	readyW.Close()
	dump := func() {
		for w, out := range outs {
			t.Logf("worker %d (%s):\n%s", w, phase, out)
		}
	}

	// Wait until every worker is ready (a worker that dies first closes
	// its end, so this cannot hang), then release them all.
	buf := make([]byte, raceWorkers)
	n, _ := readFull(readyR, buf)
	goW.Close()
	var failed bool
	for w, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker %d (%s): %v", w, phase, err)
			failed = true
		}
	}
	if failed || n != raceWorkers {
		dump()
		t.Fatalf("%s phase: %d of %d workers became ready", phase, n, raceWorkers)
	}
}

func readFull(f *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func readOutput(t testing.TB, dir string, worker int) workerOutput {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("records-%d.json", worker)))
	require.NoError(t, err)
	var out workerOutput
	require.NoError(t, json.Unmarshal(data, &out))
	return out
}

func readRecords(t testing.TB, dir string) []record {
	t.Helper()
	var all []record
	for w := range raceWorkers {
		all = append(all, readOutput(t, dir, w).Records...)
	}
	return all
}

// lossCounter counts the creates that lost a race.
type lossCounter struct {
	keystore.Store
	deks, zoneKeys atomic.Int64
}

func (l *lossCounter) CreateDEK(ctx context.Context, row keystore.DEKRow) error {
	err := l.Store.CreateDEK(ctx, row)
	if errors.Is(err, keystore.ErrExists) {
		l.deks.Add(1)
	}
	return err
}

func (l *lossCounter) CreateZoneKey(ctx context.Context, row keystore.ZoneKeyRow) error {
	err := l.Store.CreateZoneKey(ctx, row)
	if errors.Is(err, keystore.ErrExists) {
		l.zoneKeys.Add(1)
	}
	return err
}

// TestHelperProcess is a worker of TestMultiProcessRace; it does nothing
// unless started by it.
func TestHelperProcess(t *testing.T) {
	phase := os.Getenv(helperEnv)
	if phase == "" {
		return
	}
	ctx := t.Context()
	worker, err := strconv.Atoi(os.Getenv(envWorker))
	require.NoError(t, err)
	subjects, err := strconv.Atoi(os.Getenv(envSubjects))
	require.NoError(t, err)
	dir := os.Getenv(envDir)

	store, err := postgres.Open(ctx, withParams(os.Getenv(envDSN), map[string]string{"application_name": fmt.Sprintf("zonekey-test-worker-%d", worker)}),
		postgres.WithSchema(os.Getenv(envSchema)))
	require.NoError(t, err)
	defer store.Close()
	counter := &lossCounter{Store: store}
	kekURL := url.URL{Scheme: "local", Path: os.Getenv(envKEK), RawQuery: "create=1"}
	cust, err := kms.Open(ctx, kekURL.String())
	require.NoError(t, err)
	defer cust.Close()
	kr, err := keystore.New(keystore.Config{Store: counter, Custodians: map[string]kms.Custodian{"eu": cust}})
	require.NoError(t, err)
	defer kr.Close()
	c := fieldcrypt.New(kr)

	// Ready; wait for the parent's signal (EOF on fd 3).
	ready, start := os.NewFile(4, "ready"), os.NewFile(3, "go")
	_, err = ready.Write([]byte{1})
	require.NoError(t, err)
	ready.Close()
	_, _ = start.Read(make([]byte, 1))
	start.Close()

	switch phase {
	case "encrypt":
		var recs []*record
		for seq := range recordsPer {
			for i := range subjects {
				s := raceSubject(i)
				recs = append(recs, &record{Subject: s, Zone: "eu", Secret: secretOf(s, worker, seq), Worker: worker, Seq: seq})
			}
		}
		// Each worker in its own order, all at once.
		rand.New(rand.NewPCG(uint64(worker), 1)).Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
		errs := make([]error, len(recs))
		var wg sync.WaitGroup
		for i, r := range recs {
			wg.Go(func() { errs[i] = c.Encrypt(ctx, r) })
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		out := workerOutput{LostDEKs: counter.deks.Load(), LostZoneKeys: counter.zoneKeys.Load()}
		for _, r := range recs {
			out.Records = append(out.Records, *r)
		}
		data, err := json.Marshal(out)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("records-%d.json", worker)), data, 0o600))

	case "decrypt":
		all := readRecords(t, dir)
		ids := make([]envelope.KeyID, 0, len(all))
		for _, r := range all {
			id, err := envelope.TextKeyID(r.Secret)
			require.NoError(t, err)
			ids = append(ids, id)
		}
		require.NoError(t, kr.Prefetch(ctx, ids))
		for _, r := range all {
			require.NoError(t, c.Decrypt(ctx, &r), "record of worker %d", r.Worker)
			if want := secretOf(r.Subject, r.Worker, r.Seq); r.Secret != want {
				t.Fatalf("decrypted %q, want %q", r.Secret, want)
			}
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("decrypted-%d", worker)), []byte(strconv.Itoa(len(all))), 0o600))

	default:
		t.Fatalf("unknown phase %q", strings.TrimSpace(phase))
	}
}
