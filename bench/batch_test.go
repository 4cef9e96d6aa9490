package bench_test

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/bench"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

// batchSize is the number of records, each of its own subject, in a batch.
const batchSize = 1000

// countingScheme is the local custodian behind a counter of Unwrap calls,
// so the batch benchmarks can report custodian calls per batch.
const countingScheme = "benchlocal"

var unwraps atomic.Int64

type countingCustodian struct{ kms.Custodian }

func (c countingCustodian) Unwrap(ctx context.Context, w kms.Wrapped, b kms.Binding) ([]byte, error) {
	unwraps.Add(1)
	return c.Custodian.Unwrap(ctx, w, b)
}

func init() {
	kms.Register(countingScheme, func(ctx context.Context, u *url.URL) (kms.Custodian, error) {
		c, err := localkms.Open(u.Path, localkms.WithCreate())
		if err != nil {
			return nil, err
		}
		return countingCustodian{c}, nil
	})
}

// batchSet is one batch: batchSize records of batchSize subjects, in
// plaintext and sealed, and the DEK id of each sealed record.
type batchSet struct {
	plain, sealed []bench.Record
	ids           []envelope.KeyID
}

// batch is the keystore of the batch benchmarks, made once per process: two
// disjoint batches whose subjects all have a stored DEK.
var batch struct {
	once sync.Once
	dir  string
	sets [2]batchSet
	err  error
}

// openBatch opens a Client on the batch keystore; dekCacheSize 0 keeps the
// default.
func openBatch(ctx context.Context, dekCacheSize int) (*zonekey.Client, error) {
	// The development zone of LocalZones, with its KEK behind the counter.
	zones := zonekey.LocalZones(batch.dir, bench.Zone)
	zc := zones[bench.Zone]
	zc.KEK = (&url.URL{Scheme: countingScheme, Path: filepath.Join(batch.dir, bench.Zone+".kek")}).String()
	zones[bench.Zone] = zc
	return zonekey.Open(ctx, zonekey.Config{Dir: batch.dir, Zones: zones, DEKCacheSize: dekCacheSize})
}

// batchFixture makes the batch keystore on first use: 2×batchSize DEKs,
// each created with an fsync, so this takes a few seconds once.
func batchFixture(b *testing.B) *[2]batchSet {
	batch.once.Do(func() {
		ctx := context.Background()
		batch.dir, batch.err = os.MkdirTemp(tmpRoot, "batch-")
		if batch.err != nil {
			return
		}
		c, err := openBatch(ctx, 0)
		if err != nil {
			batch.err = err
			return
		}
		defer c.Close()
		for s := range batch.sets {
			set := &batch.sets[s]
			for i := range batchSize {
				r := bench.NewRecord(bench.Subject(1+s*batchSize+i), i)
				set.plain = append(set.plain, r)
				if err := c.Encrypt(ctx, &r); err != nil {
					batch.err = err
					return
				}
				id, err := envelope.TextKeyID(r.Name)
				if err != nil {
					batch.err = err
					return
				}
				set.sealed = append(set.sealed, r)
				set.ids = append(set.ids, id)
			}
		}
	})
	if batch.err != nil {
		b.Fatal(batch.err)
	}
	return &batch.sets
}

// batchOp is what a batch benchmark does to the records of one set.
type batchOp func(ctx context.Context, b *testing.B, c *zonekey.Client, set *batchSet, recs []bench.Record)

func encryptAll(ctx context.Context, b *testing.B, c *zonekey.Client, set *batchSet, recs []bench.Record) {
	copy(recs, set.plain)
	for i := range recs {
		if err := c.Encrypt(ctx, &recs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

func decryptAll(ctx context.Context, b *testing.B, c *zonekey.Client, set *batchSet, recs []bench.Record) {
	copy(recs, set.sealed)
	for i := range recs {
		if err := c.Decrypt(ctx, &recs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// prefetchDecryptAll reads the batch's DEK rows with one Keyring.Prefetch,
// as a bulk reader should, then decrypts.
func prefetchDecryptAll(ctx context.Context, b *testing.B, c *zonekey.Client, set *batchSet, recs []bench.Record) {
	copy(recs, set.sealed)
	ids := make([]envelope.KeyID, 0, len(recs))
	for i := range recs {
		id, err := envelope.TextKeyID(recs[i].Name)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := c.Keyring().Prefetch(ctx, ids); err != nil {
		b.Fatal(err)
	}
	for i := range recs {
		if err := c.Decrypt(ctx, &recs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

func reportBatch(b *testing.B, calls int64) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/record")
	b.ReportMetric(float64(calls)/float64(b.N), "unwraps/op")
}

// dekCold runs op over batches whose DEKs are not cached while the zone key
// is: the client's DEK cache holds exactly one batch, and iterations
// alternate between two disjoint batches, so each evicts the other.
func dekCold(op batchOp) func(b *testing.B) {
	return func(b *testing.B) {
		sets := batchFixture(b)
		ctx := context.Background()
		c, err := openBatch(ctx, batchSize)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		recs := make([]bench.Record, batchSize)
		decryptAll(ctx, b, c, &sets[1], recs) // caches the zone key and batch 1's DEKs
		b.ReportAllocs()
		b.SetBytes(int64(batchSize * bench.RecordBytes()))
		before := unwraps.Load()
		i := 0
		for b.Loop() {
			op(ctx, b, c, &sets[i%2], recs)
			i++
		}
		reportBatch(b, unwraps.Load()-before)
	}
}

// fullyCold runs op with a new Client on the same keystore each
// iteration: nothing cached, one custodian call for the zone key.
func fullyCold(op batchOp) func(b *testing.B) {
	return func(b *testing.B) {
		sets := batchFixture(b)
		ctx := context.Background()
		recs := make([]bench.Record, batchSize)
		b.ReportAllocs()
		b.SetBytes(int64(batchSize * bench.RecordBytes()))
		before := unwraps.Load()
		for b.Loop() {
			c, err := openBatch(ctx, 0)
			if err != nil {
				b.Fatal(err)
			}
			op(ctx, b, c, &sets[0], recs)
			if err := c.Close(); err != nil {
				b.Fatal(err)
			}
		}
		reportBatch(b, unwraps.Load()-before)
	}
}

// BenchmarkBatchEncrypt encrypts 1,000 Records of 1,000 subjects whose DEKs
// are stored: "dek-cold" with the zone key cached and no DEK cached (each
// record costs a keystore read and a local unwrap), "cold" with a new
// Client per batch (Open and Close included).
func BenchmarkBatchEncrypt(b *testing.B) {
	b.Run("dek-cold", dekCold(encryptAll))
	b.Run("cold", fullyCold(encryptAll))
}

// BenchmarkBatchDecrypt decrypts 1,000 Records of 1,000 subjects, as
// BenchmarkBatchEncrypt; the "-prefetch" variants first load the batch's
// DEKs with one Keyring.Prefetch (one keystore read for the batch).
func BenchmarkBatchDecrypt(b *testing.B) {
	b.Run("dek-cold", dekCold(decryptAll))
	b.Run("dek-cold-prefetch", dekCold(prefetchDecryptAll))
	b.Run("cold", fullyCold(decryptAll))
	b.Run("cold-prefetch", fullyCold(prefetchDecryptAll))
}

// BenchmarkEncryptNewSubject encrypts a Record of a subject seen for the
// first time: its DEK is made, wrapped and durably stored (an fsync) before
// the record is sealed.
func BenchmarkEncryptNewSubject(b *testing.B) {
	ctx := context.Background()
	c, err := bench.Open(ctx, tempDir(b, "new-subject"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	warm := bench.NewRecord(bench.Subject(0), 0)
	if err := c.Encrypt(ctx, &warm); err != nil { // creates the zone key
		b.Fatal(err)
	}
	plain := bench.NewRecord("", 0)
	b.ReportAllocs()
	b.SetBytes(int64(bench.RecordBytes()))
	i := 0
	for b.Loop() {
		i++
		r := plain
		r.ID = bench.Subject(i)
		if err := c.Encrypt(ctx, &r); err != nil {
			b.Fatal(err)
		}
	}
}
