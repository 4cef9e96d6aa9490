package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Limits on what a key set may hold and how often it is fetched.
const (
	maxJWKSBytes = 1 << 20 // a JWKS document larger than this is refused
	maxJWKSKeys  = 100     // a JWKS with more keys than this is refused
	minRSABits   = 2048

	// refetchInterval bounds how often an issuer's JWKS is fetched again
	// once a set is loaded: an unknown kid triggers a refetch at most this
	// often, so a flood of tokens with made-up kids costs the issuer one
	// request per interval.
	refetchInterval = 30 * time.Second
	// retryInterval bounds how often a fetch is retried while no set has
	// ever been loaded (the issuer was unreachable at start).
	retryInterval = time.Second
	// jwksMaxAge is how long a fetched set is used without a refetch, so
	// that a key the issuer withdraws stops verifying within this bound
	// (once the withdrawal has been loaded) even if no unknown kid ever
	// appears. It bounds cached verifications too: a cached token whose
	// key was last found in a set older than this has its key looked up
	// again (see Verifier.Verify and Attestor.Current).
	jwksMaxAge   = time.Hour
	fetchTimeout = 10 * time.Second
)

// verKey is one usable verification key of an issuer.
type verKey struct {
	alg string // the JWK's own "alg", if it names one
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// accepts reports whether the key may verify a signature made with alg: the
// key type must be the one alg requires (and for ECDSA the curve), and a key
// that names its algorithm must name this one.
func (k verKey) accepts(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch alg {
	case string(jose.RS256), string(jose.RS384), string(jose.RS512),
		string(jose.PS256), string(jose.PS384), string(jose.PS512):
		_, ok := k.key.(*rsa.PublicKey)
		return ok
	case string(jose.ES256):
		return isCurve(k.key, elliptic.P256())
	case string(jose.ES384):
		return isCurve(k.key, elliptic.P384())
	case string(jose.ES512):
		return isCurve(k.key, elliptic.P521())
	case string(jose.EdDSA):
		_, ok := k.key.(ed25519.PublicKey)
		return ok
	}
	return false
}

// equal reports whether k is the public key pub.
func (k verKey) equal(pub any) bool {
	e, ok := k.key.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(pub)
}

func isCurve(key any, c elliptic.Curve) bool {
	pk, ok := key.(*ecdsa.PublicKey)
	return ok && pk.Curve == c
}

// keySet is an immutable snapshot of an issuer's usable keys by kid. A set
// loaded from a well-formed document without any usable key is empty: the
// issuer withdrew all its keys.
type keySet struct {
	keys    map[string][]verKey
	fetched time.Time
}

// newKeySet keeps the keys of set that can verify signatures: asymmetric,
// with a kid, not marked for encryption only, RSA of at least 2048 bits,
// ECDSA on P-256, P-384 or P-521. Private keys contribute their public half.
// A set without any usable key is errNoUsableKeys.
func newKeySet(set *jose.JSONWebKeySet, now time.Time) (*keySet, error) {
	if set == nil {
		return nil, errors.New("no JWKS")
	}
	if len(set.Keys) > maxJWKSKeys {
		return nil, fmt.Errorf("JWKS has %d keys; the limit is %d", len(set.Keys), maxJWKSKeys)
	}
	ks := &keySet{keys: make(map[string][]verKey), fetched: now}
	for _, k := range set.Keys {
		if k.KeyID == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		pub := publicKey(k.Key)
		if pub == nil {
			continue
		}
		ks.keys[k.KeyID] = append(ks.keys[k.KeyID], verKey{alg: k.Algorithm, key: pub})
	}
	if len(ks.keys) == 0 {
		return nil, errNoUsableKeys
	}
	return ks, nil
}

// errNoUsableKeys is newKeySet's error for a well-formed key set without a
// usable key. Loaded again from an issuer's JWKS, such a set is no failure
// to load: the issuer withdrew every key it had.
var errNoUsableKeys = errors.New("JWKS has no usable signature verification key (asymmetric, with a kid)")

// publicKey returns the public verification key of k, or nil if k is not a
// usable asymmetric key.
func publicKey(k any) any {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil || k.N.BitLen() < minRSABits {
			return nil
		}
		return k
	case *rsa.PrivateKey:
		if k == nil {
			return nil
		}
		return publicKey(&k.PublicKey)
	case *ecdsa.PublicKey:
		if k == nil {
			return nil
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k
		}
		return nil
	case *ecdsa.PrivateKey:
		if k == nil {
			return nil
		}
		return publicKey(&k.PublicKey)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil
		}
		return k
	case ed25519.PrivateKey:
		if len(k) != ed25519.PrivateKeySize {
			return nil
		}
		return k.Public()
	}
	return nil
}

// parseJWKS decodes a JWKS document key by key, skipping keys this package
// cannot parse (a new key type next to usable ones must not take the whole
// set down). A document without a "keys" array is an error, not an empty
// set: an empty set withdraws all of an issuer's keys, and a stray JSON
// answer (an error object, null) must not.
func parseJWKS(data []byte) (*jose.JSONWebKeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("JWKS is not valid JSON: %w", err)
	}
	if raw.Keys == nil {
		return nil, errors.New(`JWKS has no "keys" array`)
	}
	if len(raw.Keys) > maxJWKSKeys {
		return nil, fmt.Errorf("JWKS has %d keys; the limit is %d", len(raw.Keys), maxJWKSKeys)
	}
	set := &jose.JSONWebKeySet{}
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil {
			continue
		}
		set.Keys = append(set.Keys, k)
	}
	return set, nil
}

func loadJWKSFile(path string) (*jose.JSONWebKeySet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS file %s is larger than %d bytes", path, maxJWKSBytes)
	}
	return parseJWKS(data)
}

// allowedJWKSURL reports whether u may serve keys: https, or plain http to a
// loopback address (tests, a local sidecar).
func allowedJWKSURL(u *url.URL) bool {
	if u.Host == "" || u.User != nil {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		host := u.Hostname()
		if host == "localhost" {
			return true
		}
		ip := net.ParseIP(host)
		return ip != nil && ip.IsLoopback()
	}
	return false
}

func fetchJWKS(ctx context.Context, client *http.Client, u string) (*jose.JSONWebKeySet, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if !allowedJWKSURL(resp.Request.URL) {
		return nil, fmt.Errorf("JWKS request was redirected to %s, which is neither https nor loopback", resp.Request.URL.Redacted())
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS endpoint %s answered %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS from %s is larger than %d bytes", u, maxJWKSBytes)
	}
	return parseJWKS(data)
}

// issuer is one trusted issuer with its keys.
type issuer struct {
	name        string
	audiences   []string
	algs        map[string]bool
	skew        time.Duration
	maxLifetime time.Duration
	profile     Profile
	// load fetches the key set again; nil for a fixed JWKS.
	load func(context.Context) (*jose.JSONWebKeySet, error)
	// source names where the keys come from, for errors.
	source string
	// maxStale bounds the age of a set kept after failed loads; 0: none.
	maxStale time.Duration

	set atomic.Pointer[keySet]

	fetchMu     sync.Mutex // serializes fetches; guards lastAttempt
	lastAttempt time.Time
	fetches     atomic.Int64 // fetch attempts, for tests
}

// keys returns the keys of the issuer named kid and the set they come from.
// A kid that is not in the current set, or a set older than jwksMaxAge,
// causes a refetch, at most once per refetchInterval (retryInterval until a
// set was ever loaded). When a refetch fails (the source cannot be read, or
// its document cannot be parsed), a known kid keeps verifying with the
// stale set: an unreachable JWKS endpoint must not stop a running fleet.
// A refetch that yields a well-formed set without any usable key replaces
// the set with an empty one: the issuer withdrew all its keys, and nothing
// verifies until it publishes keys again. While another caller loads the
// set, a kid of the current set is answered from it without waiting.
// Stale keys serve only up to the issuer's MaxStale. onRefresh is called
// with each newly loaded set, empty ones included.
func (is *issuer) keys(ctx context.Context, kid string, now time.Time, onRefresh func(*keySet)) ([]verKey, *keySet, error) {
	s := is.set.Load()
	fresh := func(s *keySet) ([]verKey, bool) {
		if s == nil {
			return nil, false
		}
		ks, ok := s.keys[kid]
		return ks, ok && (is.load == nil || now.Sub(s.fetched) < jwksMaxAge)
	}
	if ks, ok := fresh(s); ok {
		return ks, s, nil
	}
	if is.load == nil {
		return nil, nil, is.notAKey(s, kid, "")
	}

	if !is.fetchMu.TryLock() {
		// Another caller is loading the set: rather than wait up to
		// the fetch's timeout, use the keys at hand if they hold kid.
		if s != nil && !is.tooStale(s, now) {
			if ks, ok := s.keys[kid]; ok {
				return ks, s, nil
			}
		}
		is.fetchMu.Lock()
	}
	defer is.fetchMu.Unlock()
	s = is.set.Load() // another caller may have fetched meanwhile
	if ks, ok := fresh(s); ok {
		return ks, s, nil
	}
	stale := func() ([]verKey, bool) {
		if s == nil || is.tooStale(s, now) {
			return nil, false
		}
		ks, ok := s.keys[kid]
		return ks, ok
	}
	interval := refetchInterval
	if s == nil {
		interval = retryInterval
	}
	if !is.lastAttempt.IsZero() && now.Sub(is.lastAttempt) < interval && !now.Before(is.lastAttempt) {
		if ks, ok := stale(); ok {
			return ks, s, nil
		}
		if s != nil && is.tooStale(s, now) {
			return nil, nil, is.staleErr(s, errors.New("the last load failed, and the next is rate-limited"))
		}
		note := fmt.Sprintf(" (no key set could be loaded yet; the next try is allowed at %s)", is.lastAttempt.Add(interval).UTC().Format(time.RFC3339))
		if s != nil {
			note = fmt.Sprintf(" (not in its keys loaded at %s; they are loaded again at most once per %s)", s.fetched.UTC().Format(time.RFC3339), interval)
		}
		return nil, nil, is.notAKey(s, kid, note)
	}
	prev := is.lastAttempt
	is.lastAttempt = now
	is.fetches.Add(1)
	set, err := is.load(ctx)
	var ns *keySet
	if err == nil {
		ns, err = newKeySet(set, now)
		if errors.Is(err, errNoUsableKeys) {
			// The source answered with a well-formed set: an empty one
			// withdraws every key, unlike a failure to load.
			ns, err = &keySet{keys: map[string][]verKey{}, fetched: now}, nil
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			// The caller gave up; that says nothing about the issuer, so
			// the attempt does not count against the rate limit.
			is.lastAttempt = prev
		}
		if ks, ok := stale(); ok {
			return ks, s, nil
		}
		if s != nil && is.tooStale(s, now) {
			return nil, nil, is.staleErr(s, err)
		}
		return nil, nil, fmt.Errorf("loading the keys of issuer %q from %s: %w", is.name, is.source, err)
	}
	is.set.Store(ns)
	if onRefresh != nil {
		onRefresh(ns)
	}
	if ks, ok := ns.keys[kid]; ok {
		return ks, ns, nil
	}
	return nil, nil, is.notAKey(ns, kid, "")
}

// tooStale reports whether s, loaded from the issuer's source, is older
// than its MaxStale allows.
func (is *issuer) tooStale(s *keySet, now time.Time) bool {
	return is.maxStale > 0 && is.load != nil && now.Sub(s.fetched) >= is.maxStale
}

// staleErr is the error for a token of the issuer whose keys, s, are past
// MaxStale and could not be loaded again, because of err.
func (is *issuer) staleErr(s *keySet, err error) error {
	return fmt.Errorf("the keys of issuer %q were last loaded from %s at %s, longer ago than its MaxStale of %s, and cannot be loaded again: %w",
		is.name, is.source, s.fetched.UTC().Format(time.RFC3339), is.maxStale, err)
}

// notAKey is the error for a kid that the issuer's set s does not hold;
// note says why no refetch was tried. If s is empty (the issuer's last
// loaded JWKS held no usable key) the error says so, and wraps
// errNoUsableKeys.
func (is *issuer) notAKey(s *keySet, kid, note string) error {
	if s != nil && len(s.keys) == 0 {
		return fmt.Errorf("issuer %q publishes no keys, so none of its tokens verifies: its %w (loaded from %s at %s)",
			is.name, errNoUsableKeys, is.source, s.fetched.UTC().Format(time.RFC3339))
	}
	return fmt.Errorf("kid %.64q is not a key of issuer %q%s", kid, is.name, note)
}

// recheckAt returns the instant from which a token verified under a key of
// s, the set keys returned at now, must have its key looked up again: when
// s turns older than jwksMaxAge, or, if it already is (a refetch failed or
// was rate-limited, and the stale set was kept), one refetchInterval from
// now. A fixed JWKS never changes: the zero time.
func (is *issuer) recheckAt(s *keySet, now time.Time) time.Time {
	if is.load == nil {
		return time.Time{}
	}
	if t := s.fetched.Add(jwksMaxAge); now.Before(t) {
		return t
	}
	return now.Add(refetchInterval)
}
