package localkms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/localkms"
)

func Example() {
	dir, err := os.MkdirTemp("", "localkms-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	// In development, create=1 makes the KEK file on first use. In
	// production the file must already exist, with mode 0600.
	url := "local://" + filepath.ToSlash(filepath.Join(dir, "eu.kek")) + "?create=1"
	c, err := kms.Open(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	zoneKey := make([]byte, 32)
	rand.Read(zoneKey)
	b := kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}
	w, err := c.Wrap(ctx, zoneKey, b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrapped under KEK version", w.KEKVersion)

	got, err := c.Unwrap(ctx, w, b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("unwrapped the same key:", bytes.Equal(got, zoneKey))

	// A wrapped key relabelled to another zone does not unwrap.
	_, err = c.Unwrap(ctx, w, kms.Binding{Zone: "us", KeyID: "zk-1", Version: 1})
	fmt.Println("relabelled:", errors.Is(err, kms.ErrTampered))

	// Output:
	// wrapped under KEK version 1
	// unwrapped the same key: true
	// relabelled: true
}

func ExampleCustodian_Rotate() {
	dir, err := os.MkdirTemp("", "localkms-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	path := filepath.Join(dir, "eu.kek")
	if err := localkms.CreateKEKFile(path); err != nil {
		log.Fatal(err)
	}
	c, err := localkms.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	b := kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}
	old, err := c.Wrap(ctx, make([]byte, 32), b)
	if err != nil {
		log.Fatal(err)
	}

	// New wraps use the new version; the old one still unwraps.
	v, err := c.Rotate(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("new primary version:", v, "versions:", c.Versions())
	_, err = c.Unwrap(ctx, old, b)
	fmt.Println("old wrap unwraps:", err == nil)

	// Once every wrapped key has been rewrapped under version 2, version 1
	// can be destroyed; keys still wrapped under it are then lost.
	if err := c.DestroyBelow(ctx, v); err != nil {
		log.Fatal(err)
	}
	_, err = c.Unwrap(ctx, old, b)
	fmt.Println("versions:", c.Versions(), "old wrap:", errors.Is(err, kms.ErrUnknownKey))

	// Output:
	// new primary version: 2 versions: [1 2]
	// old wrap unwraps: true
	// versions: [2] old wrap: true
}
