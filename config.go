package zonekey

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/zonekey/zonekey/attest"
)

// FileConfig is the JSON form of a Config, as LoadConfig reads it:
//
//	{
//	  "dir": "/var/lib/myapp/zonekey",   (or "store": "postgres://...")
//	  "zones": {
//	    "eu": {"kek": "vault://vault.eu.internal:8200/transit/keys/eu-users?auth=jwt&role=eu",
//	           "regions": ["europe-west1", "europe-west4"]},
//	    "us": {"kek": "gcpkms://projects/p/locations/us-east1/keyRings/r/cryptoKeys/us-users",
//	           "regions": ["us-east1"]}
//	  },
//	  "attestation": {
//	    "issuers": [{"issuer": "https://accounts.google.com",
//	                 "audiences": ["https://zonekey.example.com"],
//	                 "jwks_url": "https://www.googleapis.com/oauth2/v3/certs",
//	                 "algorithms": ["RS256"], "profile": "gcp", "projects": ["my-project"]}],
//	    "source": {"gcp_metadata": {"audience": "https://zonekey.example.com"}}
//	  },
//	  "audit": {"file": "/var/log/myapp/zonekey-audit.jsonl", "slog": true},
//	  "zone_key_ttl": "10m", "dek_ttl": "5m", "dek_cache_size": 10000
//	}
//
// Unknown fields are refused, so that a misspelt setting is an error rather
// than a silently weaker configuration.
type FileConfig struct {
	Dir          string                    `json:"dir,omitempty"`
	Store        string                    `json:"store,omitempty"`
	Zones        map[string]FileZoneConfig `json:"zones"`
	Attestation  *FileAttestation          `json:"attestation,omitempty"`
	Audit        *FileAudit                `json:"audit,omitempty"`
	ZoneKeyTTL   string                    `json:"zone_key_ttl,omitempty"`
	DEKTTL       string                    `json:"dek_ttl,omitempty"`
	DEKCacheSize int                       `json:"dek_cache_size,omitempty"`
}

// FileZoneConfig is the JSON form of a ZoneConfig.
type FileZoneConfig struct {
	KEK     string   `json:"kek"`
	Regions []string `json:"regions"`
	Issuers []string `json:"issuers,omitempty"`
}

// FileAttestation configures how this process proves its location.
type FileAttestation struct {
	Issuers []FileIssuer `json:"issuers"`
	Source  FileSource   `json:"source"`
}

// FileIssuer is the JSON form of an attest.IssuerConfig. Profile is "gcp"
// (GCP instance identity tokens, restricted to Projects when given),
// "region" (a top-level "region" claim) or "claim:NAME" (a top-level claim
// NAME).
type FileIssuer struct {
	Issuer      string   `json:"issuer"`
	Audiences   []string `json:"audiences"`
	JWKSFile    string   `json:"jwks_file,omitempty"`
	JWKSURL     string   `json:"jwks_url,omitempty"`
	Algorithms  []string `json:"algorithms,omitempty"`
	Profile     string   `json:"profile,omitempty"`
	Projects    []string `json:"projects,omitempty"`
	MaxSkew     string   `json:"max_skew,omitempty"`
	MaxLifetime string   `json:"max_lifetime,omitempty"`
	MaxStale    string   `json:"max_stale,omitempty"`
}

// FileSource names this process's evidence: exactly one of a token file
// (re-read when it changes), the GCP metadata server, or a fixed token.
type FileSource struct {
	TokenFile   string           `json:"token_file,omitempty"`
	GCPMetadata *FileGCPMetadata `json:"gcp_metadata,omitempty"`
	Token       string           `json:"token,omitempty"`
}

// FileGCPMetadata configures attest.GCPMetadataSource.
type FileGCPMetadata struct {
	Audience string `json:"audience"`
	BaseURL  string `json:"base_url,omitempty"`
}

// FileAudit configures where audit events go.
type FileAudit struct {
	File string `json:"file,omitempty"`
	Slog bool   `json:"slog,omitempty"`
}

// LoadConfig reads a JSON configuration file (see FileConfig).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("zonekey: reading config: %w", err)
	}
	return ParseConfig(data)
}

// ParseConfig parses a JSON configuration (see FileConfig).
func ParseConfig(data []byte) (Config, error) {
	var fc FileConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return Config{}, fmt.Errorf("%w: config: %v", ErrInvalidConfig, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("%w: config: data after the JSON object", ErrInvalidConfig)
	}
	return fc.Config()
}

// Config converts fc into a Config, building the attestation verifier and
// source it names.
func (fc FileConfig) Config() (Config, error) {
	cfg := Config{Dir: fc.Dir, StoreURL: fc.Store, Zones: map[string]ZoneConfig{}, DEKCacheSize: fc.DEKCacheSize}
	for name, z := range fc.Zones {
		cfg.Zones[name] = ZoneConfig(z)
	}
	var err error
	if cfg.ZoneKeyTTL, err = parseDuration("zone_key_ttl", fc.ZoneKeyTTL); err != nil {
		return Config{}, err
	}
	if cfg.DEKTTL, err = parseDuration("dek_ttl", fc.DEKTTL); err != nil {
		return Config{}, err
	}
	if fc.Audit != nil {
		cfg.AuditFile = fc.Audit.File
		cfg.AuditSlog = fc.Audit.Slog
	}
	if fc.Attestation != nil {
		a, err := fc.Attestation.attestor()
		if err != nil {
			return Config{}, err
		}
		cfg.Attestor = a
	}
	return cfg, nil
}

func parseDuration(name, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%w: config: %s %q is not a duration such as \"10m\"", ErrInvalidConfig, name, s)
	}
	return d, nil
}

func (fa *FileAttestation) attestor() (*attest.Attestor, error) {
	if len(fa.Issuers) == 0 {
		return nil, fmt.Errorf("%w: config: attestation lists no issuer", ErrInvalidConfig)
	}
	var issuers []attest.IssuerConfig
	for i, fi := range fa.Issuers {
		ic := attest.IssuerConfig{
			Issuer: fi.Issuer, Audiences: fi.Audiences, JWKSFile: fi.JWKSFile, JWKSURL: fi.JWKSURL,
			Algorithms: fi.Algorithms,
		}
		switch p := fi.Profile; {
		case p == "gcp" && len(fi.Projects) > 0:
			ic.Profile = attest.GCPProfileForProjects(fi.Projects...)
		case p == "gcp":
			ic.Profile = attest.GCPProfile
		case p == "" || p == "region":
			ic.Profile = attest.RegionClaim("region")
		case strings.HasPrefix(p, "claim:") && len(p) > len("claim:"):
			ic.Profile = attest.RegionClaim(strings.TrimPrefix(p, "claim:"))
		default:
			return nil, fmt.Errorf("%w: config: issuer %d: unknown profile %q (want gcp, region or claim:NAME)", ErrInvalidConfig, i, p)
		}
		var err error
		if ic.MaxSkew, err = parseDuration("max_skew", fi.MaxSkew); err != nil {
			return nil, err
		}
		if ic.MaxLifetime, err = parseDuration("max_lifetime", fi.MaxLifetime); err != nil {
			return nil, err
		}
		if ic.MaxStale, err = parseDuration("max_stale", fi.MaxStale); err != nil {
			return nil, err
		}
		issuers = append(issuers, ic)
	}
	v, err := attest.NewVerifier(issuers...)
	if err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrInvalidConfig, err)
	}
	s := fa.Source
	n := 0
	var src attest.Source
	if s.TokenFile != "" {
		n++
		src = attest.FileSource(s.TokenFile)
	}
	if s.GCPMetadata != nil {
		n++
		src = &attest.GCPMetadataSource{Audience: s.GCPMetadata.Audience, BaseURL: s.GCPMetadata.BaseURL}
	}
	if s.Token != "" {
		n++
		src = attest.StaticSource(s.Token)
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: config: attestation source must name exactly one of token_file, gcp_metadata and token", ErrInvalidConfig)
	}
	return attest.NewAttestor(src, v), nil
}
