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
	"os"
	"path/filepath"

	"github.com/zonekey/zonekey"
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

	c, err := zonekey.Open(ctx, zonekey.Config{
		Dir:   dir,
		Zones: zonekey.LocalZones(dir, "eu", "us"),
	})
	if err != nil {
		return err
	}
	defer c.Close()

	stored := filepath.Join(dir, "records.json")
	if data, err := os.ReadFile(stored); err == nil {
		var old []User
		if err := json.Unmarshal(data, &old); err != nil {
			return err
		}
		fmt.Fprintf(out, "== %d records stored by an earlier run, decrypted in this process\n", len(old))
		for i := range old {
			if err := c.Decrypt(ctx, &old[i]); err != nil {
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
		if err := c.Encrypt(ctx, &users[i]); err != nil {
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

	fmt.Fprintln(out, "\n== decrypted")
	for i := range users {
		if err := c.Decrypt(ctx, &users[i]); err != nil {
			return err
		}
		u := users[i]
		fmt.Fprintf(out, "%s (%s): %s <%s> phones=%v notes=%q attrs=%v plan=%s\n", u.ID, u.Region, u.Name, u.Email, u.Phones, u.Notes, u.Attrs, u.Plan)
	}

	// A ciphertext moved to another subject's record does not open.
	var moved []User
	if err := json.Unmarshal(data, &moved); err != nil {
		return err
	}
	moved[1].Email = moved[0].Email
	err = c.Decrypt(ctx, &moved[1])
	if !errors.Is(err, zonekey.ErrTampered) {
		return fmt.Errorf("a ciphertext moved to another subject's record was not refused: %v", err)
	}
	fmt.Fprintf(out, "\n== Ada's email pasted into Émilie's record: %v (ErrTampered: %t)\n", err, errors.Is(err, zonekey.ErrTampered))
	return nil
}
