package zonekey_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/zonekey/zonekey"
)

// Erasing a user: after Shred, every copy of the user's encrypted data fails
// with ErrKeyShredded, and new data needs Reinstate (a returning user starts
// afresh; the old data stays unreadable).
func ExampleClient_Shred() {
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

	u := User{ID: "u-1001", Region: "eu", Email: "ada@example.eu"}
	if err := c.Encrypt(ctx, &u); err != nil {
		log.Fatal(err)
	}
	backup := u // a copy somewhere else

	res, err := c.Shred(ctx, "eu", "u-1001")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("DEKs deleted:", len(res.DEKs))
	err = c.Decrypt(ctx, &backup)
	fmt.Println("copy readable:", !errors.Is(err, zonekey.ErrKeyShredded))
	err = c.Encrypt(ctx, &User{ID: "u-1001", Region: "eu", Email: "new@example.eu"})
	fmt.Println("new data without Reinstate:", errors.Is(err, zonekey.ErrKeyShredded))

	if err := c.Reinstate(ctx, "eu", "u-1001"); err != nil {
		log.Fatal(err)
	}
	err = c.Encrypt(ctx, &User{ID: "u-1001", Region: "eu", Email: "new@example.eu"})
	fmt.Println("new data after Reinstate:", err == nil)
	// Output:
	// DEKs deleted: 1
	// copy readable: false
	// new data without Reinstate: true
	// new data after Reinstate: true
}
