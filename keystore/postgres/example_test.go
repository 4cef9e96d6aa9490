package postgres_test

import (
	"context"
	"log"
	"time"

	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/postgres"
	"github.com/zonekey/zonekey/kms"
)

// Every instance of a service opens the same schema; they share one keyring.
// With the zonekey facade, pass the store as zonekey.Config.Store.
func ExampleOpen() {
	ctx := context.Background()
	store, err := postgres.Open(ctx, "postgres://zonekey@db.internal:5432/app?sslmode=verify-full&zonekey_schema=zonekey")
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close() // a keyring does not close its store

	eu, err := kms.Open(ctx, "local:///etc/myapp/eu.kek")
	if err != nil {
		log.Fatal(err)
	}
	defer eu.Close()
	keyring, err := keystore.New(keystore.Config{
		Store:      store,
		Custodians: map[string]kms.Custodian{"eu": eu},
		// The bound on how long an instance may still use a DEK that
		// another instance shredded.
		DEKTTL: time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer keyring.Close()
}
