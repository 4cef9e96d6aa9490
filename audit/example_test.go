package audit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/zonekey/zonekey/audit"
)

func ExampleFileSink() {
	dir, err := os.MkdirTemp("", "audit")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.log")

	sink, err := audit.OpenFile(path)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	// A decrypt from outside the zone, refused before any key was touched.
	err = sink.Record(ctx, audit.Event{
		Time: at, Action: audit.Access, Decision: audit.Deny,
		Reason: "region us-east1 is not allowed in zone eu",
		Zone:   "eu", Subject: "user-42",
		Workload: "spiffe://prod/billing", Region: "us-east1", Issuer: "https://attest.example",
	})
	if err != nil {
		log.Fatal(err) // fail closed: the access is refused
	}
	if err := sink.Close(); err != nil {
		log.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	head, err := audit.VerifyHead(f)
	fmt.Println(head.Seq, head.Hash, err)

	b, _ := os.ReadFile(path)
	fmt.Print(string(b))
	// Output:
	// 1 ced32f793a2ef342f5a70e1eef04fdfe41d949ccd05c70b8dd196fd7d80a7bcf <nil>
	// {"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","event":{"time":"2025-03-01T12:00:00Z","action":"access","decision":"deny","reason":"region us-east1 is not allowed in zone eu","zone":"eu","subject":"user-42","workload":"spiffe://prod/billing","region":"us-east1","issuer":"https://attest.example"},"hash":"ced32f793a2ef342f5a70e1eef04fdfe41d949ccd05c70b8dd196fd7d80a7bcf"}
}

func ExampleVerify() {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	dir, err := os.MkdirTemp("", "audit")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.log")
	sink, err := audit.OpenFile(path)
	if err != nil {
		log.Fatal(err)
	}
	for _, subject := range []string{"user-1", "user-2", "user-3"} {
		e := audit.Event{Time: at, Action: audit.DEKUnwrap, Decision: audit.Allow, Zone: "eu", Subject: subject}
		if err := sink.Record(context.Background(), e); err != nil {
			log.Fatal(err)
		}
	}
	if err := sink.Close(); err != nil {
		log.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}

	n, err := audit.Verify(bytes.NewReader(b))
	fmt.Println(n, err)

	// Someone rewrites who was given the key.
	b = bytes.Replace(b, []byte("user-2"), []byte("user-9"), 1)
	n, err = audit.Verify(bytes.NewReader(b))
	var ce *audit.ChainError
	if errors.As(err, &ce) {
		fmt.Println(n, "valid lines; first bad line", ce.Line)
	}
	fmt.Println(errors.Is(err, audit.ErrBrokenChain))
	// Output:
	// 3 <nil>
	// 1 valid lines; first bad line 2
	// true
}

func ExampleNewSlogSink() {
	logger := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	sink := audit.NewSlogSink(logger)
	err := sink.Record(context.Background(), audit.Event{
		Time:   time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
		Action: audit.ZoneKeyUnwrap, Decision: audit.Allow,
		Zone: "eu", ZoneKeyVersion: 2, KEKVersion: 5, Region: "europe-west1",
	})
	fmt.Println(err)
	// Output:
	// {"time":"2025-03-01T12:00:00Z","level":"INFO","msg":"audit","action":"zonekey.unwrap","decision":"allow","zone":"eu","zone_key_version":2,"kek_version":5,"region":"europe-west1"}
	// <nil>
}
