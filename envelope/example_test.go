package envelope_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/zonekey/zonekey/envelope"
)

func Example() {
	// In zonekey the keystore supplies DEKs; here one is made on the spot.
	secret := make([]byte, envelope.KeySize)
	rand.Read(secret)
	key, err := envelope.NewKey(envelope.NewKeyID(), secret)
	if err != nil {
		log.Fatal(err)
	}

	// The binding says where the value lives and whose it is.
	b := envelope.Binding{Path: "Email", Subject: "user-42"}
	text, err := key.SealString("alice@example.com", b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.HasPrefix(text, envelope.Prefix))

	plaintext, err := key.OpenString(text, b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(plaintext)

	// Copied into another field, the envelope does not open.
	_, err = key.OpenString(text, envelope.Binding{Path: "Phone", Subject: "user-42"})
	fmt.Println(errors.Is(err, envelope.ErrTampered))
	// Output:
	// true
	// alice@example.com
	// true
}

func ExampleTextKeyID() {
	secret := make([]byte, envelope.KeySize)
	rand.Read(secret)
	key, err := envelope.NewKey(envelope.NewKeyID(), secret)
	if err != nil {
		log.Fatal(err)
	}
	text, err := key.SealString("+1 555 0100", envelope.Binding{Path: "Phone"})
	if err != nil {
		log.Fatal(err)
	}

	// Before opening, find which DEK to fetch.
	id, err := envelope.TextKeyID(text)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id == key.ID())
	// Output: true
}

// A Scratch serves the values of one record, claimed once for all of them.
func ExampleScratch() {
	secret := make([]byte, envelope.KeySize)
	rand.Read(secret)
	key, err := envelope.NewKey(envelope.NewKeyID(), secret)
	if err != nil {
		log.Fatal(err)
	}
	record := map[string]string{"Email": "alice@example.com", "Phone": "+49 30 1234"}

	var sc envelope.Scratch
	defer sc.Release()
	for _, path := range []string{"Email", "Phone"} {
		b := envelope.Binding{Path: path, Subject: "user-42"}
		text, err := key.SealStringWith(&sc, record[path], b)
		if err != nil {
			log.Fatal(err)
		}
		plaintext, err := envelope.OpenStringFuncWith(&sc, text, b, func(envelope.KeyID) (*envelope.Key, error) { return key, nil })
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(path, plaintext)
	}
	// Output:
	// Email alice@example.com
	// Phone +49 30 1234
}
