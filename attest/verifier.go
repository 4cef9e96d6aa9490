package attest

import (
	"github.com/zonekey/zonekey/internal/coarse"

	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	defaultSkew = 60 * time.Second
	maxSkew     = 5 * time.Minute
	// maxTokenBytes bounds the evidence accepted for parsing. GCP identity
	// tokens and JWT-SVIDs are around a kilobyte.
	maxTokenBytes = 16 << 10
	// cacheSize bounds the verified-token cache.
	cacheSize = 1024
)

// defaultAlgorithms are the algorithms an issuer may sign with when its
// IssuerConfig names none.
var defaultAlgorithms = []string{string(jose.RS256), string(jose.ES256)}

// asymmetricAlgs are the signature algorithms an issuer may be configured
// with. HMAC algorithms are absent on purpose: with a JWKS, an HMAC "key"
// would be public.
var asymmetricAlgs = map[string]bool{
	string(jose.RS256): true, string(jose.RS384): true, string(jose.RS512): true,
	string(jose.PS256): true, string(jose.PS384): true, string(jose.PS512): true,
	string(jose.ES256): true, string(jose.ES384): true, string(jose.ES512): true,
	string(jose.EdDSA): true,
}

// IssuerConfig describes one trusted attestation issuer.
type IssuerConfig struct {
	// Issuer is the exact iss the issuer's tokens carry. Required.
	Issuer string
	// Audiences lists the aud values this deployment accepts; a token's aud
	// must contain one of them. Required: an audience specific to zonekey
	// keeps tokens minted for other services out.
	Audiences []string

	// Exactly one of JWKSFile, JWKSURL and JWKS says where the issuer's
	// public keys come from. Tokens name their key by kid; a kid that is
	// not in the set, or a set older than an hour, makes the Verifier load
	// the file or fetch the URL again, at most once per 30 seconds (once
	// per second until a first load succeeded). If that fails (the file or
	// URL cannot be read, or what it holds is not a JWKS), the keys
	// already loaded keep verifying. A key the issuer withdraws stops
	// verifying, and the cached tokens it signed are dropped, at the next
	// successful load, and so within an hour while loads succeed: a cached
	// token whose key was last checked against a set older than an hour
	// has it checked again. A loaded JWKS without any usable key
	// withdraws all the issuer's keys: its tokens are refused until it
	// publishes keys again. A JWKS value is fixed; NewVerifier refuses a
	// JWKSFile or JWKS without any usable key.
	JWKSFile string
	// JWKSURL must be https, or http to a loopback address (tests, a local
	// sidecar); a redirect to anything else is refused.
	JWKSURL string
	// JWKS is a fixed key set.
	JWKS *jose.JSONWebKeySet

	// Algorithms lists the signature algorithms the issuer uses, from
	// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 and
	// EdDSA; default RS256 and ES256. HMAC algorithms and "none" are
	// refused.
	Algorithms []string
	// Profile maps the verified claims to a Location; default
	// RegionClaim("region").
	Profile Profile
	// MaxSkew is the clock difference tolerated for nbf and iat; default
	// 60s, at most 5m (larger values are capped). exp has no leeway.
	MaxSkew time.Duration
	// MaxLifetime, if positive, refuses tokens whose exp is more than this
	// after their iat: a bound on how long a stolen token can be replayed.
	MaxLifetime time.Duration
	// MaxStale, if positive, bounds how long keys loaded from JWKSFile or
	// JWKSURL keep verifying while the set cannot be loaded again,
	// counted from their last successful load: past it, the issuer's
	// tokens are refused until a load succeeds. Zero keeps them (an
	// unreachable JWKS must not stop a running fleet). Set it, to a few
	// hours or more, when a key the issuer withdraws must stop verifying
	// even where its JWKS cannot be reached: whoever can block the fetch
	// otherwise keeps a withdrawn key alive. At least an hour (smaller
	// values are raised): a set is loaded again hourly.
	MaxStale time.Duration
	// HTTPClient fetches JWKSURL; default a client with a 10s timeout.
	HTTPClient *http.Client
}

// A Verifier checks attestation tokens against a fixed list of trusted
// issuers and maps them to Locations. It is safe for concurrent use.
type Verifier struct {
	issuers map[string]*issuer
	algs    []jose.SignatureAlgorithm // union over issuers, for parsing

	now func() time.Time // the clock; replaced in tests

	mu    sync.RWMutex
	cache map[[sha256.Size]byte]cacheEntry
}

type cacheEntry struct {
	loc Location
	// until is when a hit stops being answered from the entry alone: the
	// token's exp, or earlier, when the key set its key was last found in
	// turns older than jwksMaxAge (see issuer.recheckAt). A hit from then
	// on until exp looks the key up again.
	until time.Time
	iss   *issuer
	kid   string
	alg   string
	key   any // the public key the signature verified under
}

// NewVerifier returns a Verifier that trusts the given issuers. Each
// issuer's configuration is checked, and a JWKSFile or JWKS is loaded; a
// JWKSURL is first fetched by the first Verify that needs it.
func NewVerifier(issuers ...IssuerConfig) (*Verifier, error) {
	if len(issuers) == 0 {
		return nil, failf("no issuer configured")
	}
	v := &Verifier{
		issuers: make(map[string]*issuer, len(issuers)),
		now:     coarse.Now, // expiry checks on the hot path cost an atomic load
		cache:   make(map[[sha256.Size]byte]cacheEntry),
	}
	for i, c := range issuers {
		is, err := newIssuer(c)
		if err != nil {
			return nil, fmt.Errorf("%w: issuer %d (%q): %v", ErrAttestation, i, c.Issuer, err)
		}
		if v.issuers[is.name] != nil {
			return nil, failf("issuer %q is configured twice", is.name)
		}
		v.issuers[is.name] = is
		for alg := range is.algs {
			if !slices.Contains(v.algs, jose.SignatureAlgorithm(alg)) {
				v.algs = append(v.algs, jose.SignatureAlgorithm(alg))
			}
		}
	}
	slices.Sort(v.algs)
	return v, nil
}

func newIssuer(c IssuerConfig) (*issuer, error) {
	if c.Issuer == "" {
		return nil, errors.New("the Issuer field is empty")
	}
	if len(c.Audiences) == 0 {
		return nil, errors.New("the Audiences field is empty")
	}
	if slices.Contains(c.Audiences, "") {
		return nil, errors.New("the Audiences field contains an empty audience")
	}
	is := &issuer{
		name:        c.Issuer,
		audiences:   slices.Clone(c.Audiences),
		algs:        make(map[string]bool),
		skew:        c.MaxSkew,
		maxLifetime: c.MaxLifetime,
		profile:     c.Profile,
	}
	if c.MaxStale > 0 {
		is.maxStale = max(c.MaxStale, jwksMaxAge)
	}
	algs := c.Algorithms
	if len(algs) == 0 {
		algs = defaultAlgorithms
	}
	for _, a := range algs {
		if !asymmetricAlgs[a] {
			return nil, fmt.Errorf("algorithm %q is not allowed (asymmetric signature algorithms only)", a)
		}
		is.algs[a] = true
	}
	switch {
	case is.skew < 0:
		return nil, errors.New("MaxSkew is negative")
	case is.skew == 0:
		is.skew = defaultSkew
	case is.skew > maxSkew:
		is.skew = maxSkew
	}
	if is.maxLifetime < 0 {
		return nil, errors.New("MaxLifetime is negative")
	}
	if is.profile == nil {
		is.profile = RegionClaim("region")
	}

	n := 0
	for _, set := range []bool{c.JWKSFile != "", c.JWKSURL != "", c.JWKS != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("exactly one of JWKSFile, JWKSURL and JWKS must be set")
	}
	switch {
	case c.JWKS != nil:
		ks, err := newKeySet(c.JWKS, time.Now())
		if err != nil {
			return nil, err
		}
		is.set.Store(ks)
		is.source = "the configured JWKS"
	case c.JWKSFile != "":
		path := c.JWKSFile
		set, err := loadJWKSFile(path)
		if err != nil {
			return nil, err
		}
		ks, err := newKeySet(set, time.Now())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		is.set.Store(ks)
		is.load = func(context.Context) (*jose.JSONWebKeySet, error) { return loadJWKSFile(path) }
		is.source = path
	default:
		u, err := url.Parse(c.JWKSURL)
		if err != nil {
			return nil, fmt.Errorf("JWKSURL: %w", err)
		}
		if !allowedJWKSURL(u) {
			return nil, fmt.Errorf("JWKSURL %s must be https (or http to a loopback address)", u.Redacted())
		}
		client := c.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: fetchTimeout}
		}
		raw := u.String()
		is.load = func(ctx context.Context) (*jose.JSONWebKeySet, error) { return fetchJWKS(ctx, client, raw) }
		is.source = u.Redacted()
	}
	return is, nil
}

// failf returns an error wrapping ErrAttestation.
func failf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrAttestation}, args...)...)
}

// Verify checks token and returns the Location it attests.
//
// The token must be a compact JWS signed with one of its issuer's allowed
// algorithms, under a key of that issuer named by the kid header whose type
// fits the algorithm; iss must be a configured issuer, aud must contain one
// of its audiences, exp and iat are required, exp must be in the future (no
// leeway), and nbf and iat must not be in the future by more than the
// issuer's MaxSkew. The issuer's Profile then maps the claims to the
// Location; Issuer and Expiry come from iss and exp.
//
// A verified token is cached until its exp (in a cache of 1024 entries keyed
// by the token's SHA-256), so verifying the same token again is a map
// lookup; a cached token past its exp is refused. Once the key set the
// token's key was last found in is older than an hour (for a JWKSFile or
// JWKSURL), a hit looks the key up again, in a set loaded anew if need be
// (under the refetch limits of IssuerConfig.JWKSFile): a token whose key
// the issuer withdrew is refused, and one whose kid now names another key
// is verified afresh. Every error wraps ErrAttestation and says what
// failed; none contains the token. ctx bounds a JWKS fetch, if one is
// needed.
func (v *Verifier) Verify(ctx context.Context, token string) (Location, error) {
	loc, _, err := v.check(ctx, token)
	return loc, err
}

// check is Verify, and also returns until when a Verify of the same token
// is answered from the cache without any other check: the token's exp, or
// earlier, when its key must be looked up again.
func (v *Verifier) check(ctx context.Context, token string) (Location, time.Time, error) {
	if token == "" {
		return Location{}, time.Time{}, failf("empty token")
	}
	if len(token) > maxTokenBytes {
		return Location{}, time.Time{}, failf("token is %d bytes; the limit is %d", len(token), maxTokenBytes)
	}
	now := v.now()
	key := sha256.Sum256([]byte(token))
	v.mu.RLock()
	e, ok := v.cache[key]
	v.mu.RUnlock()
	if ok {
		if now.Before(e.until) {
			return e.loc, e.until, nil
		}
		if !now.Before(e.loc.Expiry) {
			v.mu.Lock()
			delete(v.cache, key)
			v.mu.Unlock()
			return Location{}, time.Time{}, failf("token expired at %s", e.loc.Expiry.UTC().Format(time.RFC3339))
		}
		re, still, err := v.recheck(ctx, key, e, now)
		switch {
		case err != nil:
			return Location{}, time.Time{}, fmt.Errorf("%w: %w", ErrAttestation, err)
		case still:
			return re.loc, re.until, nil
		}
		// The kid now names other keys: verify afresh, under those.
	}

	e, err := v.verify(ctx, token, now)
	if err != nil {
		return Location{}, time.Time{}, err
	}
	v.remember(key, e, now)
	return e.loc, e.until, nil
}

// recheck looks up again the key of the cached entry e, of the token whose
// hash is key, in a set no older than jwksMaxAge (loaded again if need be,
// under the refetch limits; a stale set if that fails, as for a token not
// in the cache). If the key is still there, the entry's until is moved on.
// If not, the entry is dropped, with the error of the lookup if the kid is
// gone, or none (still false) if the kid now names other keys.
func (v *Verifier) recheck(ctx context.Context, key [sha256.Size]byte, e cacheEntry, now time.Time) (_ cacheEntry, still bool, _ error) {
	keys, set, err := e.iss.keys(ctx, e.kid, now, func(ks *keySet) { v.forgetWithdrawn(e.iss, ks) })
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil || !slices.ContainsFunc(keys, func(k verKey) bool { return k.accepts(e.alg) && k.equal(e.key) }) {
		delete(v.cache, key)
		return cacheEntry{}, false, err
	}
	e.until = earlier(e.loc.Expiry, e.iss.recheckAt(set, now))
	// An entry forgetWithdrawn dropped meanwhile (a set without the key
	// was loaded after keys returned) is not put back.
	if _, ok := v.cache[key]; ok {
		v.cache[key] = e
	}
	return e, true, nil
}

// earlier returns the earlier of exp and recheck, and exp if recheck is zero.
func earlier(exp, recheck time.Time) time.Time {
	if !recheck.IsZero() && recheck.Before(exp) {
		return recheck
	}
	return exp
}

// verify does the full check of a token not in the cache.
func (v *Verifier) verify(ctx context.Context, token string, now time.Time) (cacheEntry, error) {
	tok, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		return cacheEntry{}, failf("malformed token or disallowed algorithm: %v", err)
	}
	if len(tok.Headers) != 1 {
		return cacheEntry{}, failf("token has %d signatures; want 1", len(tok.Headers))
	}
	hdr := tok.Headers[0]
	if hdr.KeyID == "" {
		return cacheEntry{}, failf("token header has no kid")
	}
	alg := hdr.Algorithm

	// The unverified iss only selects which configured issuer's keys the
	// signature must verify under; it is checked again once verified.
	var unverified struct {
		Issuer string `json:"iss"`
	}
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return cacheEntry{}, failf("malformed claims: %v", err)
	}
	is := v.issuers[unverified.Issuer]
	if is == nil {
		return cacheEntry{}, failf("issuer %.64q is not trusted", unverified.Issuer)
	}
	if !is.algs[alg] {
		return cacheEntry{}, failf("algorithm %s is not allowed for issuer %q", alg, is.name)
	}
	keys, set, err := is.keys(ctx, hdr.KeyID, now, func(ks *keySet) { v.forgetWithdrawn(is, ks) })
	if err != nil {
		return cacheEntry{}, fmt.Errorf("%w: %w", ErrAttestation, err)
	}

	var (
		std      jwt.Claims
		claims   map[string]any
		verified bool
		usable   bool
		used     verKey
	)
	for _, k := range keys {
		if !k.accepts(alg) {
			continue
		}
		usable = true
		err := tok.Claims(k.key, &std, &claims)
		if err == nil {
			verified, used = true, k
			break
		}
		if !errors.Is(err, jose.ErrCryptoFailure) {
			return cacheEntry{}, failf("token rejected: %v", err)
		}
	}
	switch {
	case !usable:
		return cacheEntry{}, failf("key %.64q of issuer %q cannot verify %s signatures", hdr.KeyID, is.name, alg)
	case !verified:
		return cacheEntry{}, failf("signature does not verify under key %.64q of issuer %q", hdr.KeyID, is.name)
	}

	if std.Expiry == nil {
		return cacheEntry{}, failf("token has no exp")
	}
	if std.IssuedAt == nil {
		return cacheEntry{}, failf("token has no iat")
	}
	exp, iat := std.Expiry.Time(), std.IssuedAt.Time()
	err = std.ValidateWithLeeway(jwt.Expected{Issuer: is.name, AnyAudience: is.audiences, Time: now}, is.skew)
	switch {
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return cacheEntry{}, failf("iss does not match issuer %q", is.name)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return cacheEntry{}, failf("aud contains none of the audiences %q accepted for issuer %q", is.audiences, is.name)
	case errors.Is(err, jwt.ErrNotValidYet):
		return cacheEntry{}, failf("token not valid before %s (nbf)", std.NotBefore.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return cacheEntry{}, failf("token issued in the future (iat %s), beyond the allowed skew of %s", iat.UTC().Format(time.RFC3339), is.skew)
	case err != nil && !errors.Is(err, jwt.ErrExpired):
		return cacheEntry{}, failf("invalid claims: %v", err)
	}
	if !now.Before(exp) {
		return cacheEntry{}, failf("token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if is.maxLifetime > 0 && exp.Sub(iat) > is.maxLifetime {
		return cacheEntry{}, failf("token lifetime %s exceeds the maximum of %s for issuer %q", exp.Sub(iat), is.maxLifetime, is.name)
	}

	loc, err := is.profile.Locate(claims)
	if err != nil {
		return cacheEntry{}, failf("claims of issuer %q do not name a location: %v", is.name, err)
	}
	loc.Issuer = is.name
	loc.Expiry = exp.UTC()
	return cacheEntry{
		loc:   loc,
		until: earlier(loc.Expiry, is.recheckAt(set, now)),
		iss:   is,
		kid:   hdr.KeyID,
		alg:   alg,
		key:   used.key,
	}, nil
}

// remember caches a verified token. When the cache is full, expired entries
// are dropped, and if none was, the entry closest to expiry.
func (v *Verifier) remember(key [sha256.Size]byte, e cacheEntry, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.cache[key]; !ok && len(v.cache) >= cacheSize {
		var (
			victim [sha256.Size]byte
			soon   time.Time
		)
		for k, old := range v.cache {
			if !now.Before(old.loc.Expiry) {
				delete(v.cache, k)
				continue
			}
			if soon.IsZero() || old.loc.Expiry.Before(soon) {
				victim, soon = k, old.loc.Expiry
			}
		}
		if len(v.cache) >= cacheSize {
			delete(v.cache, victim)
		}
	}
	v.cache[key] = e
}

// forgetWithdrawn drops cached verifications made under keys of is that
// its newly loaded key set no longer holds.
func (v *Verifier) forgetWithdrawn(is *issuer, ks *keySet) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k, e := range v.cache {
		if e.iss == is {
			if _, ok := ks.keys[e.kid]; !ok {
				delete(v.cache, k)
			}
		}
	}
}
