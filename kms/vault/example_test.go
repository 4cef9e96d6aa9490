package vault_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"

	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/vault"
)

// A zone's custodian is named by URL in the zone's configuration. With
// auth=jwt every call logs in to Vault with the attestation of the caller
// that the context carries (the keystore puts it there), so Vault itself
// refuses callers outside the zone. This example needs a Vault set up as
// docs/vault.md describes.
func Example() {
	ctx := context.Background()
	c, err := kms.Open(ctx, "vault://vault.eu.example:8200/transit/keys/eu-users?auth=jwt&role=eu")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The keystore does this with the caller its Policy verified.
	ctx = kms.WithCaller(ctx, kms.Caller{Region: "europe-west1", Token: "<attestation JWT>"})

	zoneKey := make([]byte, 32)
	rand.Read(zoneKey)
	b := kms.Binding{Zone: "eu", KeyID: "zk-1", Version: 1}
	w, err := c.Wrap(ctx, zoneKey, b)
	switch {
	case errors.Is(err, kms.ErrDenied):
		log.Fatal("Vault refused this caller: is it attested in the zone's region? ", err)
	case errors.Is(err, kms.ErrUnavailable):
		log.Fatal("Vault is unreachable or sealed; retry later: ", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Printf("wrapped under KEK version %d: %s\n", w.KEKVersion, w.Ciphertext)
}

// Rotation and shredding use the custodian's own token, not a caller's
// attestation.
func ExampleCustodian_Rotate() {
	ctx := context.Background()
	cfg, err := vault.ParseURL("vault://vault.eu.example:8200/transit/keys/eu-users?token_file=/run/zonekey/vault-token")
	if err != nil {
		log.Fatal(err)
	}
	c, err := vault.Open(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	v, err := c.Rotate(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("new KEK version:", v)
}

func ExampleParseURL() {
	for _, u := range []string{
		"vault://vault.eu.example:8200/eu/transit/keys/eu-users?auth=jwt&role=eu",
		"vault://127.0.0.1:8200/transit/keys/dev?token_file=/tmp/token",
	} {
		cfg, err := vault.ParseURL(u)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s mount=%s key=%s auth=%q role=%q\n", cfg.Address, cfg.Mount, cfg.Key, cfg.Auth, cfg.Role)
	}
	// Output:
	// https://vault.eu.example:8200 mount=eu/transit key=eu-users auth="jwt" role="eu"
	// http://127.0.0.1:8200 mount=transit key=dev auth="" role=""
}
