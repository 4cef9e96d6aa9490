package attest_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/zonekey/zonekey/attest"
)

// A development issuer mints a token placing a workload in europe-west1; a
// Verifier that trusts the issuer turns the token into a Location.
func Example() {
	ctx := context.Background()
	dev, err := attest.NewDevIssuer("https://attest.example.com")
	if err != nil {
		log.Fatal(err)
	}
	v, err := attest.NewVerifier(dev.IssuerConfig("zonekey"))
	if err != nil {
		log.Fatal(err)
	}
	token, err := dev.Token("zonekey", "europe-west1", "spiffe://example.com/billing", 5*time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	loc, err := v.Verify(ctx, token)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(loc.Region, loc.Workload)

	// A token for another audience is refused.
	other, err := dev.Token("another-service", "europe-west1", "spiffe://example.com/billing", 5*time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	_, err = v.Verify(ctx, other)
	fmt.Println(errors.Is(err, attest.ErrAttestation))
	// Output:
	// europe-west1 spiffe://example.com/billing
	// true
}

// An Attestor caches the process's current Location: the keystore asks it
// on every key access.
func ExampleAttestor() {
	dev, err := attest.NewDevIssuer("https://attest.example.com")
	if err != nil {
		log.Fatal(err)
	}
	v, err := attest.NewVerifier(dev.IssuerConfig("zonekey"))
	if err != nil {
		log.Fatal(err)
	}
	token, err := dev.Token("zonekey", "us-east1", "billing", 10*time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	a := attest.NewAttestor(attest.StaticSource(token), v)
	loc, _, err := a.Current(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(loc.Region)
	// Output: us-east1
}

// GCPProfile reads the zone a GCP instance identity token names.
func ExampleGCPProfile() {
	loc, err := attest.GCPProfile.Locate(map[string]any{
		"sub": "112233445566778899000",
		"google": map[string]any{"compute_engine": map[string]any{
			"zone":        "europe-west1-b",
			"instance_id": "4455667788990011223",
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(loc.Region, loc.Zone, loc.Workload)
	// Output: europe-west1 europe-west1-b 4455667788990011223
}
