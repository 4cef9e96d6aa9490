package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DevIssuer is a local attestation issuer for development and tests. It
// holds ECDSA P-256 keys, each named by a random kid, publishes their public
// halves as a JWKS, and mints ES256 tokens with whatever claims it is told:
// a DevIssuer proves nothing about where anything runs. Never trust one in
// production. It is safe for concurrent use.
type DevIssuer struct {
	issuer string
	now    func() time.Time // the clock; replaced in tests

	mu   sync.Mutex
	keys []devKey // the last one signs
}

type devKey struct {
	kid  string
	priv *ecdsa.PrivateKey
}

// NewDevIssuer returns a DevIssuer whose tokens carry iss = issuer.
func NewDevIssuer(issuer string) (*DevIssuer, error) {
	if issuer == "" {
		return nil, errors.New("attest: DevIssuer needs an issuer name")
	}
	d := &DevIssuer{issuer: issuer, now: time.Now}
	if err := d.Rotate(); err != nil {
		return nil, err
	}
	return d, nil
}

// Issuer returns the iss of the DevIssuer's tokens.
func (d *DevIssuer) Issuer() string { return d.issuer }

// Rotate makes a new signing key with a new kid. Earlier keys stay in the
// JWKS, so tokens they signed still verify.
func (d *DevIssuer) Rotate() error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("attest: generating a DevIssuer key: %w", err)
	}
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("attest: generating a kid: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.keys = append(d.keys, devKey{kid: "dev-" + base64.RawURLEncoding.EncodeToString(id[:]), priv: priv})
	return nil
}

// KeyID returns the kid of the current signing key.
func (d *DevIssuer) KeyID() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.keys[len(d.keys)-1].kid
}

// JWKS returns the public keys of the issuer, current and rotated out.
func (d *DevIssuer) JWKS() *jose.JSONWebKeySet {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := &jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(d.keys))}
	for _, k := range d.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key:       &k.priv.PublicKey,
			KeyID:     k.kid,
			Algorithm: string(jose.ES256),
			Use:       "sig",
		})
	}
	return set
}

// WriteJWKS writes the JWKS to path (mode 0644), replacing the file
// atomically.
func (d *DevIssuer) WriteJWKS(path string) error {
	data, err := json.MarshalIndent(d.JWKS(), "", "  ")
	if err != nil {
		return fmt.Errorf("attest: encoding JWKS: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".jwks-*")
	if err != nil {
		return fmt.Errorf("attest: writing JWKS: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("attest: writing JWKS: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("attest: writing JWKS: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("attest: writing JWKS: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("attest: writing JWKS: %w", err)
	}
	return nil
}

// PublicKeysPEM returns the public keys as PEM "PUBLIC KEY" blocks, the form
// Vault's JWT auth method takes in jwt_validation_pubkeys.
func (d *DevIssuer) PublicKeysPEM() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.keys))
	for _, k := range d.keys {
		der, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("attest: encoding a public key: %w", err)
		}
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	}
	return out, nil
}

// ServeHTTP serves the current JWKS as JSON, so that a DevIssuer can stand
// behind an IssuerConfig.JWKSURL (an httptest server, or Vault's jwks_url).
func (d *DevIssuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, err := json.Marshal(d.JWKS())
	if err != nil {
		http.Error(w, "encoding JWKS", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(data)
}

// Mint signs claims as they are, with the current key (ES256, kid in the
// header). Nothing is added or checked: tests use it to make bad tokens.
func (d *DevIssuer) Mint(claims map[string]any) (string, error) {
	d.mu.Lock()
	k := d.keys[len(d.keys)-1]
	d.mu.Unlock()
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: k.priv},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), k.kid),
	)
	if err != nil {
		return "", fmt.Errorf("attest: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("attest: signing: %w", err)
	}
	return tok, nil
}

// Token mints a token for audience that places workload (sub) in region,
// valid from now for ttl: claims iss, aud, sub, iat, nbf, exp and region.
func (d *DevIssuer) Token(audience, region, workload string, ttl time.Duration) (string, error) {
	now := d.now()
	return d.Mint(map[string]any{
		"iss":    d.issuer,
		"aud":    audience,
		"sub":    workload,
		"iat":    now.Unix(),
		"nbf":    now.Unix(),
		"exp":    now.Add(ttl).Unix(),
		"region": region,
	})
}

// IssuerConfig returns an IssuerConfig that trusts this issuer for audience,
// with RegionClaim("region") and ES256. Its JWKS is a snapshot of the current
// keys: after Rotate, make a new config, or serve the DevIssuer over HTTP and
// set JWKSURL instead.
func (d *DevIssuer) IssuerConfig(audience string) IssuerConfig {
	return IssuerConfig{
		Issuer:     d.issuer,
		Audiences:  []string{audience},
		JWKS:       d.JWKS(),
		Algorithms: []string{string(jose.ES256)},
		Profile:    RegionClaim("region"),
	}
}
