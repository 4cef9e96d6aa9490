package attest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// FuzzVerify checks that no input makes Verify panic, and that every
// rejection wraps ErrAttestation. The seeds include well-formed tokens of a
// trusted issuer, so that mutations reach the claim checks and the Profile.
func FuzzVerify(f *testing.F) {
	clk := newClock()
	dev := newDev(f, testIssuer, clk)
	gcp := newDev(f, gcpIssuer, clk)
	gcpCfg := gcp.IssuerConfig(testAudience)
	gcpCfg.Profile = GCPProfile
	cfg := dev.IssuerConfig(testAudience)
	cfg.Algorithms = []string{"RS256", "ES256", "EdDSA"}
	v := newVerifier(f, clk, cfg, gcpCfg)
	now := clk.Now()

	valid, err := dev.Token(testAudience, "europe-west1", "w", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	gcpTok, err := gcp.Mint(gcpClaims(now, "europe-west1-b"))
	if err != nil {
		f.Fatal(err)
	}
	badZone, err := gcp.Mint(gcpClaims(now, "x-y"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(gcpTok)
	f.Add(badZone)
	f.Add(unsigned(f, dev.KeyID(), validClaims(now)))
	f.Add(sign(f, jose.HS256, []byte("0123456789abcdef0123456789abcdef"), dev.KeyID(), validClaims(now)))
	f.Add(strings.Join(strings.Split(valid, ".")[:2], "."))

	f.Fuzz(func(t *testing.T, token string) {
		loc, err := v.Verify(context.Background(), token)
		if err != nil {
			if !errors.Is(err, ErrAttestation) {
				t.Fatalf("error does not wrap ErrAttestation: %v", err)
			}
			if loc != (Location{}) {
				t.Fatalf("Location %+v returned with an error", loc)
			}
			return
		}
		// Only a genuine token of a trusted issuer can verify.
		if loc.Issuer != testIssuer && loc.Issuer != gcpIssuer || loc.Region == "" {
			t.Fatalf("unexpected Location %+v", loc)
		}
	})
}
