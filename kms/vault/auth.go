package vault

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/zonekey/zonekey/kms"
)

// tokenKey names a cached Vault token: SHA-256 of the JWT mount, the role
// and the caller's attestation token.
type tokenKey [sha256.Size]byte

type tokenEntry struct {
	token     string
	refreshAt time.Time // log in again from then on
}

// login is a JWT login in progress, which concurrent callers with the same
// attestation wait for instead of logging in themselves.
type login struct {
	done  chan struct{}
	token string
	err   error
}

// credential is the Vault token a call uses and where it came from.
type credential struct {
	token  string
	cached bool     // taken from the JWT cache: Vault may have revoked it
	key    tokenKey // its cache key, for AuthJWT
}

// withToken runs fn with the Vault token for the caller in ctx. If Vault
// answers 403 to a token that came from a cache (a JWT login's token that
// was revoked or expired early, or a token file that an agent has since
// rewritten), the token is dropped, a fresh one obtained once, and fn run
// once more.
//
// An error saying that the key does not exist makes the next call check the
// key again (ensureKey), so that a key deleted and created anew under the
// same name, perhaps not derived, is never used unchecked.
func (c *Custodian) withToken(ctx context.Context, op string, fn func(token string) error) error {
	err := c.withTokenOnce(ctx, op, fn)
	if keyGone(err) {
		c.checked.Store(false)
	}
	return err
}

func (c *Custodian) withTokenOnce(ctx context.Context, op string, fn func(token string) error) error {
	cred, err := c.credential(ctx, op)
	if err != nil {
		return err
	}
	err = fn(cred.token)
	if !isForbidden(err) {
		return err
	}
	switch c.auth {
	case AuthJWT:
		if !cred.cached {
			return err
		}
		c.forget(cred.key, cred.token)
		cred, lerr := c.credential(ctx, op)
		if lerr != nil {
			return lerr
		}
		return fn(cred.token)
	default:
		if c.tokenFile == "" {
			return err
		}
		tok, ferr := readTokenFile(c.tokenFile)
		if ferr != nil {
			return err
		}
		c.mu.Lock()
		changed := tok != c.static && !c.closed.Load()
		if changed {
			c.static = tok
		}
		c.mu.Unlock()
		if !changed {
			return err
		}
		return fn(tok)
	}
}

// credential returns the token to use for the caller in ctx: the static
// token, a cached one, or a new one from a JWT login.
func (c *Custodian) credential(ctx context.Context, op string) (credential, error) {
	if c.auth != AuthJWT {
		c.mu.Lock()
		tok := c.static
		c.mu.Unlock()
		if tok == "" {
			return credential{}, c.closedError(op)
		}
		return credential{token: tok}, nil
	}
	caller, ok := kms.CallerFrom(ctx)
	if !ok || caller.Token == "" {
		return credential{}, fmt.Errorf("%w: vault: %s: the caller has no attestation to log in to Vault with (auth=jwt needs a kms.Caller with its token in the context)", kms.ErrDenied, op)
	}
	key := c.tokenKey(caller.Token)
	for {
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			return credential{}, c.closedError(op)
		}
		if e, ok := c.tokens[key]; ok {
			if time.Now().Before(e.refreshAt) {
				c.mu.Unlock()
				return credential{token: e.token, cached: true, key: key}, nil
			}
			delete(c.tokens, key)
		}
		if l, ok := c.inflight[key]; ok {
			c.mu.Unlock()
			select {
			case <-l.done:
			case <-ctx.Done():
				return credential{}, fmt.Errorf("vault: %s: %w", op, ctx.Err())
			}
			if l.err == nil {
				return credential{token: l.token, key: key}, nil
			}
			if errors.Is(l.err, context.Canceled) || errors.Is(l.err, context.DeadlineExceeded) {
				continue // that caller gave up; log in for this one
			}
			return credential{}, l.err
		}
		l := &login{done: make(chan struct{})}
		c.inflight[key] = l
		c.mu.Unlock()

		tok, refreshAt, err := c.login(ctx, caller.Token)
		l.token, l.err = tok, err
		c.mu.Lock()
		delete(c.inflight, key)
		if err == nil && !refreshAt.IsZero() && !c.closed.Load() {
			c.remember(key, tokenEntry{token: tok, refreshAt: refreshAt})
		}
		c.mu.Unlock()
		close(l.done)
		if err != nil {
			return credential{}, err
		}
		return credential{token: tok, key: key}, nil
	}
}

func (c *Custodian) tokenKey(jwt string) tokenKey {
	h := sha256.New()
	h.Write([]byte(c.jwtMount))
	h.Write([]byte{0})
	h.Write([]byte(c.role))
	h.Write([]byte{0})
	h.Write([]byte(jwt))
	var k tokenKey
	h.Sum(k[:0])
	return k
}

// remember caches e under key, evicting expired entries and then the one
// due soonest when the cache is full. c.mu is held.
func (c *Custodian) remember(key tokenKey, e tokenEntry) {
	if _, ok := c.tokens[key]; !ok && len(c.tokens) >= c.cacheSize {
		now := time.Now()
		for k, old := range c.tokens {
			if !now.Before(old.refreshAt) {
				delete(c.tokens, k)
			}
		}
		for len(c.tokens) >= c.cacheSize {
			var (
				victim tokenKey
				first  = true
				soon   time.Time
			)
			for k, old := range c.tokens {
				if first || old.refreshAt.Before(soon) {
					victim, soon, first = k, old.refreshAt, false
				}
			}
			delete(c.tokens, victim)
		}
	}
	if c.cacheSize > 0 {
		c.tokens[key] = e
	}
}

// forget drops the cached token of key if it is still tok.
func (c *Custodian) forget(key tokenKey, tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.tokens[key]; ok && e.token == tok {
		delete(c.tokens, key)
	}
}

// login logs in to the JWT auth method with the caller's attestation and
// returns the Vault token and when to stop using it from the cache (zero:
// do not cache it).
func (c *Custodian) login(ctx context.Context, jwt string) (string, time.Time, error) {
	op := fmt.Sprintf("JWT login to role %q", c.role)
	start := time.Now()
	resp, err := c.send(ctx, op, "", http.MethodPut, "auth/"+c.jwtMount+"/login",
		map[string]string{"role": c.role, "jwt": jwt}, retryTransient)
	if err != nil {
		var ve *vaultError
		if errors.As(err, &ve) && ve.status >= 400 && ve.status < 500 && ve.status != http.StatusTooManyRequests {
			switch {
			case ve.status == http.StatusNotFound:
				ve.class = kms.ErrConfig
				ve.detail = fmt.Sprintf("no JWT auth method at auth/%s: %s", c.jwtMount, ve.detail)
			case strings.Contains(ve.detail, "could not be found"):
				ve.class = kms.ErrConfig
			default:
				// Bound claims, audience, issuer, signature or
				// expiry rejected: Vault refuses this caller.
				ve.class = kms.ErrDenied
			}
		}
		return "", time.Time{}, err
	}
	defer clear(resp.body)
	var out struct {
		Auth *struct {
			ClientToken   string `json:"client_token"`
			LeaseDuration int64  `json:"lease_duration"`
		} `json:"auth"`
	}
	if err := json.Unmarshal(resp.body, &out); err != nil || out.Auth == nil || out.Auth.ClientToken == "" {
		return "", time.Time{}, &vaultError{class: kms.ErrUnavailable, op: op, status: resp.status, detail: "the answer holds no token"}
	}
	if err := checkToken(out.Auth.ClientToken); err != nil {
		return "", time.Time{}, &vaultError{class: kms.ErrUnavailable, op: op, status: resp.status, detail: "the answer holds a malformed token"}
	}
	return out.Auth.ClientToken, refreshTime(start, time.Duration(out.Auth.LeaseDuration)*time.Second, jwtExpiry(jwt)), nil
}

// refreshTime returns when to stop using a token issued at start with the
// given TTL (0: no expiry), shortly before it expires and not after the
// attestation it came from expires. Zero means the token is too short-lived
// to cache.
func refreshTime(start time.Time, ttl time.Duration, attestationExpiry time.Time) time.Time {
	if ttl <= 0 || ttl > maxTokenLifetime {
		ttl = maxTokenLifetime
	}
	margin := min(max(ttl/10, time.Second), time.Minute)
	at := start.Add(ttl - margin)
	if !attestationExpiry.IsZero() && attestationExpiry.Before(at) {
		at = attestationExpiry
	}
	if !at.After(time.Now()) {
		return time.Time{}
	}
	return at
}

// jwtExpiry returns the exp claim of a JWT without verifying it (Vault
// verifies it), or zero. It only shortens how long a token is cached.
func jwtExpiry(jwt string) time.Time {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 || len(parts[1]) > 64<<10 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil || *claims.Exp <= 0 || *claims.Exp > 1<<40 {
		return time.Time{}
	}
	return time.Unix(int64(*claims.Exp), 0)
}
