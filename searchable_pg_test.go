package zonekey_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
)

// pgUser is a users-table row: the email is encrypted, and two blind indexes
// of it are stored next to it, one normalised (lower-case, trimmed, 10 bits:
// many users per term, by design) and one of the exact value with 64 bits
// (practically one user per term).
type pgUser struct {
	ID       string `zonekey:"subject"`
	Region   string `zonekey:"zone"`
	Email    string `zonekey:"encrypt"`
	EmailIdx string `zonekey:"index=Email,bits=10,lower,trim"`
	EmailRaw string `zonekey:"index=Email,bits=64"`
}

const pgIndexBits = 10

// pgEnv is a client whose keystore is in a fresh PostgreSQL schema, with
// the application's users table in the same schema.
type pgEnv struct {
	c      *zonekey.Client
	pool   *pgxpool.Pool
	schema string
}

func newPGEnv(t *testing.T) *pgEnv {
	t.Helper()
	ctx := t.Context()
	dsn := pgDSN()
	schema := fmt.Sprintf("zk_search_%d", time.Now().UnixNano())
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() {
		pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		pool.Close()
	})
	c, err := zonekey.Open(ctx, zonekey.Config{
		StoreURL:     withSchema(dsn, schema),
		Zones:        zonekey.LocalZones(t.TempDir(), "eu", "us"),
		DEKCacheSize: 20000,
	})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = pool.Exec(ctx, `CREATE TABLE `+schema+`.users (
		id text PRIMARY KEY, region text NOT NULL, email text NOT NULL, email_idx text NOT NULL, email_raw text NOT NULL)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE INDEX ON `+schema+`.users (region, email_idx)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE INDEX ON `+schema+`.users (region, email_raw)`)
	require.NoError(t, err)
	return &pgEnv{c: c, pool: pool, schema: schema}
}

// encryptAll encrypts users with a few workers.
func (e *pgEnv) encryptAll(t *testing.T, users []*pgUser) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(users); i += 4 {
				if err := e.c.Encrypt(context.Background(), users[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	require.NoError(t, <-errs)
}

func (e *pgEnv) insert(t *testing.T, users []*pgUser) {
	t.Helper()
	rows := make([][]any, len(users))
	for i, u := range users {
		rows[i] = []any{u.ID, u.Region, u.Email, u.EmailIdx, u.EmailRaw}
	}
	n, err := e.pool.CopyFrom(t.Context(), pgx.Identifier{e.schema, "users"},
		[]string{"id", "region", "email", "email_idx", "email_raw"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	require.Equal(t, int64(len(users)), n)
}

// lookup is one query: the candidates of the terms of value in zone, by
// the given index column.
type lookup struct {
	zone, column string
	terms        []string
	cands        []*pgUser
}

// run runs the lookups in batches of queries.
func (e *pgEnv) run(t *testing.T, ls []*lookup) {
	t.Helper()
	const batchSize = 500
	for start := 0; start < len(ls); start += batchSize {
		b := &pgx.Batch{}
		part := ls[start:min(start+batchSize, len(ls))]
		for _, l := range part {
			b.Queue(`SELECT id, region, email, email_idx, email_raw FROM `+e.schema+`.users WHERE region = $1 AND `+l.column+` = ANY($2)`,
				l.zone, l.terms)
		}
		br := e.pool.SendBatch(t.Context(), b)
		for _, l := range part {
			rows, err := br.Query()
			require.NoError(t, err)
			for rows.Next() {
				u := &pgUser{}
				require.NoError(t, rows.Scan(&u.ID, &u.Region, &u.Email, &u.EmailIdx, &u.EmailRaw))
				l.cands = append(l.cands, u)
			}
			require.NoError(t, rows.Err())
		}
		require.NoError(t, br.Close())
	}
}

// match decrypts the candidates of l and returns the ids of those whose
// email, normalised as the index is, equals want.
func (e *pgEnv) match(t *testing.T, l *lookup, want string, normalise bool) []string {
	t.Helper()
	var ids []string
	for _, u := range l.cands {
		require.NoError(t, e.c.Decrypt(t.Context(), u))
		got := u.Email
		if normalise {
			got, want = strings.ToLower(strings.TrimSpace(got)), strings.ToLower(strings.TrimSpace(want))
		}
		if got == want {
			ids = append(ids, u.ID)
		}
	}
	return ids
}

func emailOf(i int) string { return fmt.Sprintf("user%05d@example.com", i) }

// 10,000 users of two zones in a PostgreSQL table with blind-index columns:
// every user is found by its terms, the false positives are as many as the
// configured bits predict, normalisation works as tagged, zones do not mix,
// and a key rotation with a resumable re-index keeps every user findable.
func TestBlindIndexPostgres(t *testing.T) {
	e := newPGEnv(t)
	ctx := t.Context()
	start := time.Now()
	const perZone = 5000
	zones := []string{"eu", "us"}
	var users []*pgUser
	for _, z := range zones {
		for i := range perZone {
			// The same emails in both zones: the zones must still not
			// mix.
			users = append(users, &pgUser{ID: fmt.Sprintf("%s-%05d", z, i), Region: z, Email: emailOf(i)})
		}
	}
	e.encryptAll(t, users)
	e.insert(t, users)
	t.Logf("encrypted and stored %d users in %v", len(users), time.Since(start))

	// One lookup per user by the normalised index; half of them with the
	// email as a user might type it.
	ls := make([]*lookup, len(users))
	typed := make([]string, len(users))
	for i, u := range users {
		typed[i] = emailOf(i % perZone)
		if i%2 == 1 {
			typed[i] = "  " + strings.ToUpper(typed[i][:1]) + typed[i][1:] + " "
		}
		terms, err := e.c.IndexTerms(ctx, u.Region, pgUser{}, "EmailIdx", typed[i])
		require.NoError(t, err)
		require.Len(t, terms, 1)
		ls[i] = &lookup{zone: u.Region, column: "email_idx", terms: terms}
	}
	e.run(t, ls)
	falsePositives := 0
	for i, l := range ls {
		require.Equal(t, []string{users[i].ID}, e.match(t, l, typed[i], true), "lookup of %q in %s", typed[i], l.zone)
		falsePositives += len(l.cands) - 1
	}

	// Each zone's users have distinct emails, so a candidate other than the
	// user is a term collision. For N users and b bits, the number of
	// colliding ordered pairs has mean N(N-1)/2^b and, the collisions of
	// distinct pairs being pairwise independent, variance
	// 2 N(N-1) p(1-p) with p = 2^-b.
	p := math.Pow(2, -pgIndexBits)
	pairs := float64(len(zones)) * perZone * (perZone - 1)
	mean := pairs * p
	sd := math.Sqrt(2 * pairs * p * (1 - p))
	rate := float64(falsePositives) / pairs
	t.Logf("false positives: %d over %d lookups (%.2f per lookup), expected %.0f ± %.0f; rate %.5f, expected 2^-%d = %.5f",
		falsePositives, len(ls), float64(falsePositives)/float64(len(ls)), mean, sd, rate, pgIndexBits, p)
	require.InDelta(t, mean, float64(falsePositives), 5*sd, "the false-positive rate must match the configured bits")

	// Without normalisation (EmailRaw), the typed variants find nothing,
	// the exact emails find their user; the us terms of an email find
	// nothing among eu users and the reverse.
	var raw []*lookup
	for i := 0; i < perZone; i += 50 {
		for _, v := range []struct{ zone, termZone, email string }{
			{"eu", "eu", emailOf(i)},
			{"eu", "eu", " " + strings.ToUpper(emailOf(i))},
			{"us", "eu", emailOf(i)}, // an eu term looked for in us
		} {
			terms, err := e.c.IndexTerms(ctx, v.termZone, pgUser{}, "EmailRaw", v.email)
			require.NoError(t, err)
			raw = append(raw, &lookup{zone: v.zone, column: "email_raw", terms: terms})
		}
	}
	e.run(t, raw)
	for j := 0; j < len(raw); j += 3 {
		i := j / 3 * 50
		require.Equal(t, []string{fmt.Sprintf("eu-%05d", i)}, e.match(t, raw[j], emailOf(i), false))
		require.Empty(t, raw[j+1].cands, "no normalisation: the typed variant has another term")
		require.Empty(t, raw[j+2].cands, "an eu term finds nothing in us")
	}
	euTerm, err := e.c.IndexTerms(ctx, "eu", pgUser{}, "EmailIdx", emailOf(7))
	require.NoError(t, err)
	usTerm, err := e.c.IndexTerms(ctx, "us", pgUser{}, "EmailIdx", emailOf(7))
	require.NoError(t, err)
	require.NotEqual(t, euTerm, usTerm)
	t.Logf("lookups done at %v", time.Since(start))

	testRotationAndReindex(t, e, perZone)
	t.Logf("total %v", time.Since(start))
}

// testRotationAndReindex rotates eu's EmailIdx key, adds users under the new
// version, re-indexes the table in resumable batches (interrupted once), and
// retires the old version. Every user is findable at every step.
func testRotationAndReindex(t *testing.T, e *pgEnv, perZone int) {
	ctx := t.Context()
	v, err := e.c.RotateSearchKey(ctx, "eu", pgUser{}, "EmailIdx")
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)

	var fresh []*pgUser
	for i := range 100 {
		fresh = append(fresh, &pgUser{ID: fmt.Sprintf("eu-new-%03d", i), Region: "eu", Email: fmt.Sprintf("new%03d@example.com", i)})
	}
	e.encryptAll(t, fresh)
	require.True(t, strings.HasPrefix(fresh[0].EmailIdx, "2:"))
	e.insert(t, fresh)

	// findAll looks up a sample of old users and every new one, and
	// returns the versions the queries used.
	findAll := func() int {
		var ls []*lookup
		var want []string
		for i := 0; i < perZone; i += 25 {
			want = append(want, emailOf(i))
		}
		for _, u := range fresh {
			want = append(want, fmt.Sprintf("new%s@example.com", u.ID[len("eu-new-"):]))
		}
		versions := 0
		for _, w := range want {
			terms, err := e.c.IndexTerms(ctx, "eu", pgUser{}, "EmailIdx", w)
			require.NoError(t, err)
			versions = len(terms)
			ls = append(ls, &lookup{zone: "eu", column: "email_idx", terms: terms})
		}
		e.run(t, ls)
		for i, l := range ls {
			require.Len(t, e.match(t, l, want[i], true), 1, "lookup of %q", want[i])
		}
		return versions
	}
	require.Equal(t, 2, findAll(), "old and new versions are both searched")

	// The re-index: batches in primary-key order from a checkpoint; the
	// first run stops after two batches, the second resumes.
	checkpoint := ""
	reindex := func(maxBatches int) (changed int) {
		for range maxBatches {
			rows, err := e.pool.Query(ctx, `SELECT id, region, email, email_idx, email_raw FROM `+e.schema+`.users
				WHERE region = 'eu' AND id > $1 ORDER BY id LIMIT 1000`, checkpoint)
			require.NoError(t, err)
			var batch []*pgUser
			for rows.Next() {
				u := &pgUser{}
				require.NoError(t, rows.Scan(&u.ID, &u.Region, &u.Email, &u.EmailIdx, &u.EmailRaw))
				batch = append(batch, u)
			}
			require.NoError(t, rows.Err())
			if len(batch) == 0 {
				return changed
			}
			updates := &pgx.Batch{}
			for _, u := range batch {
				ch, err := e.c.Reindex(ctx, u)
				require.NoError(t, err)
				if ch {
					changed++
					updates.Queue(`UPDATE `+e.schema+`.users SET email = $2, email_idx = $3, email_raw = $4 WHERE id = $1`,
						u.ID, u.Email, u.EmailIdx, u.EmailRaw)
				}
			}
			require.NoError(t, e.pool.SendBatch(ctx, updates).Close())
			checkpoint = batch[len(batch)-1].ID // saved with the batch in a real application
		}
		return changed
	}
	first := reindex(2)
	require.Equal(t, 2, findAll(), "during the re-index both versions are searched")
	second := reindex(math.MaxInt)
	require.Equal(t, perZone, first+second, "every old eu user changed once; the new ones did not")
	checkpoint = ""
	require.Zero(t, reindex(math.MaxInt), "a finished re-index changes nothing")
	var stale int
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM `+e.schema+`.users WHERE region = 'eu' AND email_idx NOT LIKE '2:%'`).Scan(&stale))
	require.Zero(t, stale)

	// Retire version 1: one term per query, every user still found.
	require.NoError(t, e.c.RetireSearchKeys(ctx, "eu", pgUser{}, "EmailIdx", 1))
	require.Equal(t, 1, findAll())
	terms, err := e.c.IndexTerms(ctx, "eu", pgUser{}, "EmailIdx", emailOf(1))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(terms[0], "2:"))
	// us was not rotated.
	terms, err = e.c.IndexTerms(ctx, "us", pgUser{}, "EmailIdx", emailOf(1))
	require.NoError(t, err)
	require.Equal(t, []string{terms[0]}, terms)
	require.True(t, strings.HasPrefix(terms[0], "1:"))
}
