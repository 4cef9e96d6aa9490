package zonekey_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/fieldcrypt"
)

type searchable struct {
	ID       string `zonekey:"subject"`
	Region   string `zonekey:"zone"`
	Email    string `zonekey:"encrypt"`
	EmailIdx string `zonekey:"index=Email,lower,trim"`
	TaxID    string `zonekey:"encrypt,deterministic"`
}

// Computing a term or a deterministic ciphertext needs the zone's key: a
// caller outside the zone is refused, as for a decrypt, and audited.
func TestSearchCustody(t *testing.T) {
	ctx := t.Context()
	clients, auditFile := custodyClients(t, "europe-west1", "us-east1")
	eu, us := clients["europe-west1"], clients["us-east1"]

	r := &searchable{ID: "p-1", Region: "eu", Email: "alice@example.com", TaxID: "DE-1"}
	require.NoError(t, eu.Encrypt(ctx, r))
	terms, err := eu.IndexTerms(ctx, "eu", searchable{}, "EmailIdx", "Alice@Example.com ")
	require.NoError(t, err)
	require.Equal(t, []string{r.EmailIdx}, terms)
	dets, err := eu.DeterministicTerms(ctx, "eu", searchable{}, "TaxID", "DE-1")
	require.NoError(t, err)
	require.Equal(t, []string{r.TaxID}, dets)

	appended, err := eu.AppendIndexTerms(ctx, nil, "eu", searchable{}, "EmailIdx", "alice@example.com")
	require.NoError(t, err)
	require.Equal(t, terms, appended)

	kept := []string{"kept"}
	out, err := us.AppendIndexTerms(ctx, kept, "eu", searchable{}, "EmailIdx", "alice@example.com")
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	require.Equal(t, kept, out)
	_, err = us.IndexTerms(ctx, "eu", searchable{}, "EmailIdx", "alice@example.com")
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	var fe *fieldcrypt.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "EmailIdx", fe.Path)
	require.Equal(t, "eu", fe.Zone)
	require.NotContains(t, err.Error(), "alice")
	_, err = us.DeterministicTerms(ctx, "eu", searchable{}, "TaxID", "DE-1")
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	_, err = us.RotateSearchKey(ctx, "eu", searchable{}, "EmailIdx")
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	require.ErrorIs(t, us.RetireSearchKeys(ctx, "eu", searchable{}, "EmailIdx", 1), zonekey.ErrOutsideCustody)
	stored := *r
	_, err = us.Reindex(ctx, r)
	require.ErrorIs(t, err, zonekey.ErrOutsideCustody)
	require.Equal(t, stored, *r)

	// Its own zone is served, with unrelated terms for the same value.
	usTerms, err := us.IndexTerms(ctx, "us", searchable{}, "EmailIdx", "alice@example.com")
	require.NoError(t, err)
	require.NotEqual(t, terms, usTerms)

	log, err := os.ReadFile(auditFile)
	require.NoError(t, err)
	require.Contains(t, string(log), `"action":"access","decision":"deny"`)
	require.NotContains(t, string(log), "alice")
}

func TestSearchClosedClient(t *testing.T) {
	dir := t.TempDir()
	c, err := zonekey.Open(t.Context(), zonekey.Config{Dir: dir, Zones: zonekey.LocalZones(dir, "eu")})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	ctx := t.Context()
	_, err = c.IndexTerms(ctx, "eu", searchable{}, "EmailIdx", "x")
	require.ErrorIs(t, err, zonekey.ErrClosed)
	_, err = c.AppendIndexTerms(ctx, nil, "eu", searchable{}, "EmailIdx", "x")
	require.ErrorIs(t, err, zonekey.ErrClosed)
	_, err = c.DeterministicTerms(ctx, "eu", searchable{}, "TaxID", "x")
	require.ErrorIs(t, err, zonekey.ErrClosed)
	_, err = c.Reindex(ctx, &searchable{})
	require.ErrorIs(t, err, zonekey.ErrClosed)
	_, err = c.RotateSearchKey(ctx, "eu", searchable{}, "EmailIdx")
	require.ErrorIs(t, err, zonekey.ErrClosed)
	require.ErrorIs(t, c.RetireSearchKeys(ctx, "eu", searchable{}, "EmailIdx", 1), zonekey.ErrClosed)
}

func TestSearchKeysThroughClient(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	c := open(t, dir)
	r := &searchable{ID: "p-1", Region: "eu", Email: "alice@example.com", TaxID: "DE-1"}
	require.NoError(t, c.Encrypt(ctx, r))
	_, err := c.RotateSearchKey(ctx, "eu", searchable{}, "Email")
	require.ErrorIs(t, err, zonekey.ErrInvalidValue, "Email is neither indexed nor deterministic")
	v, err := c.RotateSearchKey(ctx, "eu", searchable{}, "TaxID")
	require.NoError(t, err)
	require.Equal(t, uint32(2), v)
	dets, err := c.DeterministicTerms(ctx, "eu", searchable{}, "TaxID", "DE-1")
	require.NoError(t, err)
	require.Len(t, dets, 2)
	require.Equal(t, r.TaxID, dets[1])
	changed, err := c.Reindex(ctx, r)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, dets[0], r.TaxID)
	require.ErrorIs(t, c.RetireSearchKeys(ctx, "eu", searchable{}, "TaxID", 2), zonekey.ErrInvalidValue)
	require.NoError(t, c.RetireSearchKeys(ctx, "eu", searchable{}, "TaxID", 1))
	dets, err = c.DeterministicTerms(ctx, "eu", searchable{}, "TaxID", "DE-1")
	require.NoError(t, err)
	require.Equal(t, []string{r.TaxID}, dets)

	// Erasure: the searchable fields are blanked, the rest is left to the
	// shred of the subject's key.
	require.NoError(t, zonekey.BlankSearchable(r))
	require.Empty(t, r.EmailIdx)
	require.Empty(t, r.TaxID)
	require.True(t, strings.HasPrefix(r.Email, "zk1."))
}

// Customer has an encrypted email with a blind index next to it.
type Customer struct {
	ID       string `zonekey:"subject"`
	Region   string `zonekey:"zone"`
	Email    string `zonekey:"encrypt"`
	EmailIdx string `zonekey:"index=Email,bits=16,lower,trim"` // stored in an indexed column
}

func ExampleClient_IndexTerms() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := zonekey.Open(ctx, zonekey.Config{Dir: filepath.Join(dir, "ks"), Zones: zonekey.LocalZones(dir, "eu")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	u := Customer{ID: "c-1", Region: "eu", Email: "Alice@Example.com"}
	if err := c.Encrypt(ctx, &u); err != nil { // sets u.EmailIdx
		log.Fatal(err)
	}

	// Later, to find the customer by email: compute the terms and select
	// the rows whose email_idx is one of them, then decrypt the candidates
	// and compare (other emails share the term, by design).
	terms, err := c.IndexTerms(ctx, "eu", Customer{}, "EmailIdx", " alice@example.com")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(terms), terms[0] == u.EmailIdx)
	// Output: 1 true
}

// A lookup service computes terms for many values: one slice, reused, and
// only the terms themselves are allocated.
func ExampleClient_AppendIndexTerms() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "zonekey-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := zonekey.Open(ctx, zonekey.Config{Dir: filepath.Join(dir, "ks"), Zones: zonekey.LocalZones(dir, "eu")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var terms []string
	for _, email := range []string{"alice@example.com", "bob@example.com"} {
		terms, err = c.AppendIndexTerms(ctx, terms[:0], "eu", Customer{}, "EmailIdx", email)
		if err != nil {
			log.Fatal(err)
		}
		// SELECT … WHERE region = 'eu' AND email_idx = ANY(terms); decrypt
		// the candidates and compare.
		fmt.Println(email, len(terms))
	}
	// Output:
	// alice@example.com 1
	// bob@example.com 1
}
