package gcpkms

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/zonekey/zonekey/kms"
)

// Resource name syntax. Project IDs are 6 to 30 characters of lowercase
// letters, digits and hyphens, optionally behind a domain ("example.com:");
// project numbers are digits. Key ring and key IDs are 1 to 63 characters
// of letters, digits, underscores and hyphens. Locations are lowercase
// region or multi-region names ("europe-west1", "europe", "global").
var (
	projectRE  = regexp.MustCompile(`^([a-z0-9][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z0-9][a-z0-9-]{0,62}$`)
	locationRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,61}[a-z0-9]$`)
	idRE       = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
)

// keyName is a parsed CryptoKey resource name.
type keyName struct {
	full     string // projects/P/locations/L/keyRings/R/cryptoKeys/K
	location string
}

// parseKeyName checks that name is the resource name of a CryptoKey (not of
// a key ring or a key version).
func parseKeyName(name string) (keyName, error) {
	bad := func(why string) (keyName, error) {
		return keyName{}, fmt.Errorf("%w: gcpkms: key name %q: %s (want projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY)",
			kms.ErrConfig, name, why)
	}
	if name == "" {
		return bad("empty")
	}
	parts := strings.Split(name, "/")
	if len(parts) == 10 && parts[8] == "cryptoKeyVersions" {
		return bad("names a key version; give the key itself, whose primary version is used for wrapping")
	}
	if len(parts) != 8 || parts[0] != "projects" || parts[2] != "locations" || parts[4] != "keyRings" || parts[6] != "cryptoKeys" {
		return bad("not a CryptoKey resource name")
	}
	switch {
	case !projectRE.MatchString(parts[1]):
		return bad(fmt.Sprintf("malformed project %q", parts[1]))
	case !locationRE.MatchString(parts[3]):
		return bad(fmt.Sprintf("malformed location %q", parts[3]))
	case !idRE.MatchString(parts[5]):
		return bad(fmt.Sprintf("malformed key ring %q", parts[5]))
	case !idRE.MatchString(parts[7]):
		return bad(fmt.Sprintf("malformed key %q", parts[7]))
	}
	return keyName{full: name, location: parts[3]}, nil
}

// checkResidency refuses a key whose location is not one of allowed.
func checkResidency(k keyName, allowed []string) error {
	if len(allowed) == 0 {
		return fmt.Errorf("%w: gcpkms: key %s: no allowed locations configured; list the Cloud KMS locations where this zone's KEK may live",
			kms.ErrConfig, k.full)
	}
	for _, l := range allowed {
		if !locationRE.MatchString(l) {
			return fmt.Errorf("%w: gcpkms: allowed location %q is not a Cloud KMS location name", kms.ErrConfig, l)
		}
	}
	if !slices.Contains(allowed, k.location) {
		return fmt.Errorf("%w: gcpkms: key %s is in location %q, which is not among the allowed locations %s",
			kms.ErrConfig, k.full, k.location, strings.Join(allowed, ", "))
	}
	return nil
}

// versionOf returns the number N of a CryptoKeyVersion resource name
// k/cryptoKeyVersions/N of key k.
func (k keyName) versionOf(name string) (uint32, error) {
	rest, ok := strings.CutPrefix(name, k.full+"/cryptoKeyVersions/")
	if !ok {
		return 0, fmt.Errorf("%w: gcpkms: Cloud KMS named key version %q, which is not a version of %s", kms.ErrUnavailable, name, k.full)
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil || n == 0 || rest[0] == '0' {
		return 0, fmt.Errorf("%w: gcpkms: Cloud KMS named key version %q, whose number is not a version number", kms.ErrUnavailable, name)
	}
	return uint32(n), nil
}

// versionName returns the resource name of version n of k.
func (k keyName) versionName(n uint32) string {
	return k.full + "/cryptoKeyVersions/" + strconv.FormatUint(uint64(n), 10)
}

// parseURL turns gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K
// [?allowed_locations=L1,L2] into a Config.
func parseURL(u *url.URL) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: gcpkms: URL %s: %s (want %s://projects/P/locations/L/keyRings/R/cryptoKeys/K[?allowed_locations=L1,L2])",
			kms.ErrConfig, kms.RedactedURL(u), fmt.Sprintf(format, args...), Scheme)
	}
	switch {
	case u.Scheme != Scheme:
		return bad("scheme is not %q", Scheme)
	case u.Opaque != "":
		return bad("missing // after the scheme")
	case u.User != nil:
		return bad("user information is not allowed")
	case u.Host != "projects":
		return bad("the key name must start with projects/")
	case u.Fragment != "":
		return bad("a fragment is not allowed")
	case u.RawPath != "":
		return bad("escaped characters are not allowed in the key name")
	}
	cfg := Config{KeyName: u.Host + u.Path}
	k, err := parseKeyName(cfg.KeyName)
	if err != nil {
		return Config{}, err
	}
	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("malformed query")
	}
	for p, vs := range query {
		switch p {
		case "allowed_locations":
			if len(vs) != 1 {
				return bad("parameter allowed_locations given %d times; separate locations with commas", len(vs))
			}
			for _, l := range strings.Split(vs[0], ",") {
				cfg.AllowedLocations = append(cfg.AllowedLocations, strings.TrimSpace(l))
			}
		default:
			return bad("unknown parameter %q", p)
		}
	}
	if cfg.AllowedLocations == nil {
		// The URL states the location itself; it is the one allowed.
		cfg.AllowedLocations = []string{k.location}
	}
	return cfg, nil
}
