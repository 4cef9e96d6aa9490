// Command epoch measures a key epoch (keystore.Keyring.Epoch) over a zone of
// many subjects: it creates the subjects' DEKs in a fresh keystore, shreds
// one, and times the epoch that makes the shred final in backups.
//
//	go run ./bench/epoch -subjects 100000                  # embedded (bbolt) keystore
//	go run ./bench/epoch -subjects 100000 -postgres DSN    # PostgreSQL keystore, in a fresh schema
//	go run ./bench/epoch -subjects 100000 -audit           # with an audit file
//
// The KEK is a local file; a Vault or Cloud KMS custodian adds one
// round trip per step (rotate, wrap, destroy), not per subject.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
	"github.com/zonekey/zonekey/keystore/postgres"
	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

func main() {
	subjects := flag.Int("subjects", 100000, "number of subjects in the zone")
	workers := flag.Int("workers", 16, "concurrent DEK creations while filling the zone")
	batch := flag.Int("batch", keystore.DefaultRotationBatch, "DEK rows per batch of the epoch's rewrap")
	dsn := flag.String("postgres", "", "PostgreSQL `DSN`: use a PostgreSQL keystore in a fresh schema instead of bbolt")
	withAudit := flag.Bool("audit", false, "record audit events to a file (synced per event, per page of rewraps), as in production")
	flag.Parse()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-epoch-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	var store keystore.Store
	what := "bbolt"
	if *dsn != "" {
		schema := fmt.Sprintf("zk_epoch_%d", time.Now().UnixNano())
		sep := "?"
		if strings.Contains(*dsn, "?") {
			sep = "&"
		}
		ps, err := postgres.Open(ctx, *dsn+sep+"zonekey_schema="+schema)
		if err != nil {
			log.Fatal(err)
		}
		defer ps.Close()
		defer func() {
			conn, err := pgx.Connect(ctx, *dsn)
			if err == nil {
				_, err = conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
				conn.Close(ctx)
			}
			if err != nil {
				log.Printf("dropping schema %s: %v", schema, err)
			}
		}()
		store, what = ps, "PostgreSQL"
	} else {
		bs, err := boltstore.Open(filepath.Join(dir, "keystore.db"), nil)
		if err != nil {
			log.Fatal(err)
		}
		defer bs.Close()
		store = bs
	}
	kek, err := localkms.Open(filepath.Join(dir, "eu.kek"), localkms.WithCreate())
	if err != nil {
		log.Fatal(err)
	}
	defer kek.Close()
	cfg := keystore.Config{Store: store, Custodians: map[string]kms.Custodian{"eu": kek}, DEKCacheSize: 1024}
	if *withAudit {
		f, err := audit.OpenFile(filepath.Join(dir, "audit.log"))
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		cfg.Audit, what = f, what+" with an audit file"
	}
	k, err := keystore.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer k.Close()

	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, *workers)
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*subjects) {
					return
				}
				if _, err := k.DataKey(ctx, "eu", fmt.Sprintf("subject-%07d", i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		log.Fatal(err)
	}
	fill := time.Since(start)
	if _, err := k.ShredSubject(ctx, "eu", "subject-0000000"); err != nil {
		log.Fatal(err)
	}

	start = time.Now()
	res, err := k.Epoch(ctx, "eu", keystore.EpochOptions{BatchSize: *batch, Settle: -1})
	if err != nil {
		log.Fatal(err)
	}
	took := time.Since(start)
	fmt.Printf("keystore %s, %d subjects (filled in %s), GOMAXPROCS %d\n", what, *subjects, fill.Round(time.Millisecond), runtime.GOMAXPROCS(0))
	fmt.Printf("epoch %d: %d DEKs scanned, %d rewrapped, %d zone keys deleted, in %s (%.0f DEKs/s)\n",
		res.Number, res.Scanned, res.Rewrapped, res.ZoneKeysDeleted, took.Round(time.Millisecond), float64(res.Rewrapped)/took.Seconds())
}
