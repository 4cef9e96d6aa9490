// Command quickstart shows zonekey on its embedded defaults: it encrypts a
// few users of the zones "eu" and "us", prints what an application would
// store, and decrypts them again.
//
//	go run ./examples/quickstart            # keys and keystore in a temp dir
//	go run ./examples/quickstart -dir DIR   # ... in DIR, kept between runs
//
// With -dir, run it twice: the second run opens the same keystore and KEK
// files and reads back the records the first run wrote (records.json).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/audit"
)

// User is an application's record. Tags mark what zonekey does with each
// field.
type User struct {
	ID     string            `zonekey:"subject"` // whose data: selects the subject's key
	Region string            `zonekey:"zone"`    // custody zone of the record
	Name   string            `zonekey:"encrypt"`
	Email  string            `zonekey:"encrypt"`
	Phones []string          `zonekey:"encrypt"`
	Notes  []byte            `zonekey:"encrypt"`
	Attrs  map[string]string `zonekey:"encrypt"`
	Plan   string            // not sensitive: stored as is
}

func main() {
	dir := flag.String("dir", "", "directory for the keystore and KEK files (default: a new temp dir)")
	flag.Parse()
	if err := run(context.Background(), os.Stdout, *dir); err != nil {
		log.Fatal(err)
	}
}

// audience is what the quickstart's attestation tokens are minted for.
const audience = "zonekey-quickstart"

// run is the tour, printed to out. With an empty dir it works in a new
// temporary directory and removes it at the end.
func run(ctx context.Context, out io.Writer, dir string) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "zonekey-quickstart-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	fmt.Fprintf(out, "keystore and KEKs in %s\n\n", dir)

	// Custody is decided by where a process runs, as an attestation issuer
	// vouches for it. In production that is the cloud platform (a GCP
	// instance identity token) or a workload identity system; here a
	// development issuer stands in and mints a token for each "process".
	issuer, err := attest.NewDevIssuer("https://dev-attest.zonekey.local")
	if err != nil {
		return err
	}
	verifier, err := attest.NewVerifier(issuer.IssuerConfig(audience))
	if err != nil {
		return err
	}
	zones := map[string]zonekey.ZoneConfig{
		"eu": {KEK: zonekey.LocalKEK(filepath.Join(dir, "eu.kek")), Regions: []string{"europe-west1", "europe-west4"}},
		"us": {KEK: zonekey.LocalKEK(filepath.Join(dir, "us.kek")), Regions: []string{"us-east1", "us-west1"}},
	}
	// Audit events go to out as log lines, shown in the custody part.
	auditOut := &gate{w: out}
	sink := audit.NewSlogSink(slog.New(slog.NewTextHandler(auditOut, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "time" {
				return slog.Attr{}
			}
			return a
		},
	})))
	// open opens a client for a process attested in region.
	open := func(region string) (*zonekey.Client, error) {
		token, err := issuer.Token(audience, region, "quickstart@"+region, 10*time.Minute)
		if err != nil {
			return nil, err
		}
		return zonekey.Open(ctx, zonekey.Config{
			Dir:      dir,
			Zones:    zones,
			Attestor: attest.NewAttestor(attest.StaticSource(token), verifier),
			Audit:    sink,
		})
	}
	// One application process in each zone's region.
	apps := map[string]*zonekey.Client{}
	for zone, region := range map[string]string{"eu": "europe-west1", "us": "us-east1"} {
		c, err := open(region)
		if err != nil {
			return err
		}
		defer c.Close()
		apps[zone] = c
	}

	stored := filepath.Join(dir, "records.json")
	if data, err := os.ReadFile(stored); err == nil {
		var old []User
		if err := json.Unmarshal(data, &old); err != nil {
			return err
		}
		fmt.Fprintf(out, "== %d records stored by an earlier run, decrypted in this process\n", len(old))
		for i := range old {
			if err := apps[old[i].Region].Decrypt(ctx, &old[i]); err != nil {
				return err
			}
			fmt.Fprintf(out, "%s (%s): %s <%s>\n", old[i].ID, old[i].Region, old[i].Name, old[i].Email)
		}
		fmt.Fprintln(out)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	users := []User{
		{ID: "u-1001", Region: "eu", Name: "Ada Lovelace", Email: "ada@example.eu", Phones: []string{"+44 20 7946 0000"}, Notes: []byte("prefers post"), Attrs: map[string]string{"dob": "1815-12-10"}, Plan: "pro"},
		{ID: "u-1002", Region: "eu", Name: "Émilie du Châtelet", Email: "emilie@example.fr", Plan: "free"},
		{ID: "u-2001", Region: "us", Name: "Grace Hopper", Email: "grace@example.com", Phones: []string{"+1 202 555 0100", "+1 202 555 0101"}, Plan: "team"},
	}
	for i := range users {
		if err := apps[users[i].Region].Encrypt(ctx, &users[i]); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(users, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "== what the application stores (encrypted fields are envelopes)")
	fmt.Fprintln(out, string(data))
	if err := os.WriteFile(stored, data, 0o600); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n== decrypted, each in its own zone")
	for i := range users {
		if err := apps[users[i].Region].Decrypt(ctx, &users[i]); err != nil {
			return err
		}
		u := users[i]
		fmt.Fprintf(out, "%s (%s): %s <%s> phones=%v notes=%q attrs=%v plan=%s\n", u.ID, u.Region, u.Name, u.Email, u.Phones, u.Notes, u.Attrs, u.Plan)
	}

	var fresh []User
	if err := json.Unmarshal(data, &fresh); err != nil {
		return err
	}
	fmt.Fprintln(out, "\n== custody: Ada's record (zone eu) read by a new process attested in europe-west1, then by the process in us-east1")
	auditOut.on = true
	reader, err := open("europe-west1")
	if err != nil {
		return err
	}
	defer reader.Close()
	ada := fresh[0]
	if err := reader.Decrypt(ctx, &ada); err != nil {
		return err
	}
	fmt.Fprintf(out, "europe-west1: allowed: %s <%s>\n", ada.Name, ada.Email)
	ada = fresh[0]
	err = apps["us"].Decrypt(ctx, &ada)
	if !errors.Is(err, zonekey.ErrOutsideCustody) {
		return fmt.Errorf("a read from outside the zone was not refused: %v", err)
	}
	fmt.Fprintf(out, "us-east1: refused: %v (ErrOutsideCustody: %t)\n", err, errors.Is(err, zonekey.ErrOutsideCustody))
	auditOut.on = false

	// A ciphertext moved to another subject's record does not open.
	moved := fresh[1]
	moved.Email = fresh[0].Email
	err = apps["eu"].Decrypt(ctx, &moved)
	if !errors.Is(err, zonekey.ErrTampered) {
		return fmt.Errorf("a ciphertext moved to another subject's record was not refused: %v", err)
	}
	fmt.Fprintf(out, "\n== Ada's email pasted into Émilie's record: %v (ErrTampered: %t)\n", err, errors.Is(err, zonekey.ErrTampered))
	return nil
}

// gate passes writes to w while on is set (the tour shows audit events only
// in its custody part).
type gate struct {
	w  io.Writer
	on bool
}

func (g *gate) Write(p []byte) (int, error) {
	if !g.on {
		return len(p), nil
	}
	return g.w.Write(p)
}
