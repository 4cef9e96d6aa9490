package zonekey_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/fieldcrypt"
)

// User is an application's record; the tags tell zonekey what each field is.
type User struct {
	ID     string `zonekey:"subject"` // whose data: selects the subject's key
	Region string `zonekey:"zone"`    // custody zone of the record
	Email  string `zonekey:"encrypt"` // sealed in place
	Notes  []byte `zonekey:"encrypt"`
	Plan   string // not sensitive: left as is
}

func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	c, err := zonekey.Open(ctx, zonekey.Config{
		Dir:   dir,                                 // the embedded keystore
		Zones: zonekey.LocalZones(dir, "eu", "us"), // development KEK files
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	u := User{ID: "u-1001", Region: "eu", Email: "ada@example.eu", Notes: []byte("prefers post"), Plan: "pro"}
	if err := c.Encrypt(ctx, &u); err != nil {
		log.Fatal(err)
	}
	fmt.Println("Email sealed:", strings.HasPrefix(u.Email, "zk1."))
	fmt.Println("Plan:", u.Plan)

	// ... store u, load it again ...

	if err := c.Decrypt(ctx, &u); err != nil {
		log.Fatal(err)
	}
	fmt.Println("Email:", u.Email)
	fmt.Printf("Notes: %s\n", u.Notes)
	// Output:
	// Email sealed: true
	// Plan: pro
	// Email: ada@example.eu
	// Notes: prefers post
}

// A ciphertext copied into another subject's record does not open: Decrypt
// fails with ErrTampered, names the field, and leaves the record unchanged.
func ExampleClient_Decrypt_tampered() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ada := User{ID: "u-1001", Region: "eu", Email: "ada@example.eu"}
	eve := User{ID: "u-6666", Region: "eu", Email: "eve@example.eu"}
	for _, u := range []*User{&ada, &eve} {
		if err := c.Encrypt(ctx, u); err != nil {
			log.Fatal(err)
		}
	}

	eve.Email = ada.Email // pasted into another subject's record
	stored := eve
	err = c.Decrypt(ctx, &eve)
	fmt.Println("tampered:", errors.Is(err, zonekey.ErrTampered))
	var fe *fieldcrypt.FieldError
	if errors.As(err, &fe) {
		fmt.Printf("field %s, zone %s\n", fe.Path, fe.Zone)
	}
	fmt.Println("record unchanged:", eve.Email == stored.Email)
	fmt.Println("plaintext in the error:", strings.Contains(err.Error(), "ada@example.eu"))
	// Output:
	// tampered: true
	// field Email, zone eu
	// record unchanged: true
	// plaintext in the error: false
}

// Errors wrap sentinels with a contract: some call for a fix, some for a
// retry, some for an incident.
func ExampleClient_Encrypt_errors() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := zonekey.Open(ctx, zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for _, v := range []any{
		&User{ID: "u-1", Region: "ap", Email: "x"}, // a zone this Client has no custodian for
		&User{Region: "eu", Email: "x"},            // no subject
		&struct {
			Age int `zonekey:"encrypt"`
		}{},
	} {
		err := c.Encrypt(ctx, v)
		switch {
		case errors.Is(err, zonekey.ErrUnknownZone):
			fmt.Println("unknown zone")
		case errors.Is(err, zonekey.ErrInvalidValue):
			fmt.Println("invalid record")
		case errors.Is(err, zonekey.ErrUnsupportedField):
			fmt.Println("unsupported field")
		case errors.Is(err, zonekey.ErrKMSUnavailable):
			fmt.Println("custodian down: retry later")
		}
	}
	// Output:
	// unknown zone
	// invalid record
	// unsupported field
}
