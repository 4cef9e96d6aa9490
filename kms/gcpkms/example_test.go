package gcpkms_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"

	"github.com/zonekey/zonekey/kms"
	"github.com/zonekey/zonekey/kms/gcpkms"
)

// The custodian of zone "eu": a key in europe-west1, in a zone whose KEK may
// live in europe-west1, europe-west4 or the europe multi-region.
// Credentials are Application Default Credentials.
func ExampleOpen() {
	ctx := context.Background()
	c, err := gcpkms.Open(ctx, gcpkms.Config{
		KeyName:          "projects/acme-prod/locations/europe-west1/keyRings/zonekey/cryptoKeys/eu",
		AllowedLocations: []string{"europe-west1", "europe-west4", "europe"},
	})
	if err != nil {
		log.Fatal(err) // a key in us-east1 would be refused here, wrapping kms.ErrConfig
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
}

// Opening by URL, as a zone's configuration names its custodian.
func Example_openByURL() {
	ctx := context.Background()
	c, err := kms.Open(ctx, "gcpkms://projects/acme-prod/locations/europe/keyRings/zonekey/cryptoKeys/eu?allowed_locations=europe-west1,europe")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// A KEK rotation: a new primary version, the zone keys rewrapped under it,
// then the old versions destroyed (after the key's scheduled-destruction
// delay, Cloud KMS erases them).
func ExampleCustodian_Rotate() {
	ctx := context.Background()
	c, err := gcpkms.Open(ctx, gcpkms.Config{
		KeyName:          "projects/acme-prod/locations/europe-west1/keyRings/zonekey/cryptoKeys/eu",
		AllowedLocations: []string{"europe-west1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	v, err := c.Rotate(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var rows []kms.Wrapped // the zone-key rows of the zone, from the keystore
	for i, w := range rows {
		b := kms.Binding{Zone: "eu", KeyID: fmt.Sprintf("zk-%d", i+1), Version: 1}
		if rows[i], err = c.Rewrap(ctx, w, b); err != nil {
			log.Fatal(err)
		}
	}
	if err := c.DestroyBelow(ctx, v); err != nil {
		log.Fatal(err)
	}
}
