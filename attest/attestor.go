package attest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRefreshInterval is how often an Attestor asks its Source for the
// evidence again when RefreshInterval is zero.
const DefaultRefreshInterval = time.Second

// An Attestor binds a Source to a Verifier and caches the current Location
// of this process. Current is the hot path: when nothing changed, it is an
// atomic load and two time comparisons. The Source is asked again at most
// once per RefreshInterval, or as soon as the cached Location expires or
// the evidence is due to be verified again. The token is verified again
// when it changed, and otherwise when the Verifier would look its key up
// again (its key set is older than an hour; see Verifier.Verify), so
// evidence whose key the issuer withdrew stops being served within that
// bound too. It is safe for concurrent use.
type Attestor struct {
	// RefreshInterval bounds how often the Source is asked for the
	// evidence; zero means DefaultRefreshInterval. Set it before the first
	// call to Current.
	RefreshInterval time.Duration

	src Source
	v   *Verifier
	now func() time.Time // the clock; the Verifier's

	state    atomic.Pointer[attestState]
	mu       sync.Mutex   // serializes refreshes
	verifies atomic.Int64 // Verify calls, for tests
}

// attestState is one immutable observation of the Source.
type attestState struct {
	loc       Location
	token     string
	recheck   time.Time // verify token again from this instant
	err       error     // the refresh failed; returned until nextCheck
	nextCheck time.Time // ask the Source again from this instant
}

// NewAttestor returns an Attestor that proves this process's location with
// the evidence src yields, as v verifies it.
func NewAttestor(src Source, v *Verifier) *Attestor {
	return &Attestor{src: src, v: v, now: v.now}
}

// Current returns the verified Location of this process and the raw token
// that proves it (to present to a custodian). An error wraps ErrAttestation;
// a failed refresh is remembered for RefreshInterval, so a broken Source is
// not asked on every call. While a valid Location is cached, a Source error
// or a new token that does not verify is reported only once the cached
// Location expires, or its evidence no longer verifies when it is verified
// again: the evidence at hand still proves the location until then, and the
// new token is tried again every RefreshInterval.
func (a *Attestor) Current(ctx context.Context) (Location, string, error) {
	loc, token, _, err := a.CurrentUntil(ctx)
	return loc, token, err
}

// CurrentUntil is Current, and with a Location also the instant until which
// Current returns the same Location and token without asking the Source or
// verifying anything: the earlier of the next refresh (which comes early if
// the evidence is due to be verified again) and the evidence's expiry, by
// the Verifier's clock. A decision made on the Location holds until then
// (keystore.RegionPolicy reuses its decisions so long). With an error the
// instant is zero.
func (a *Attestor) CurrentUntil(ctx context.Context) (Location, string, time.Time, error) {
	now := a.now()
	if s := a.state.Load(); s != nil && now.Before(s.nextCheck) {
		if s.err != nil {
			return Location{}, "", time.Time{}, s.err
		}
		if now.Before(s.loc.Expiry) {
			return s.loc, s.token, s.until(), nil
		}
	}
	s, err := a.refresh(ctx)
	if err != nil {
		return Location{}, "", time.Time{}, err
	}
	return s.loc, s.token, s.until(), nil
}

// until is when the Location of a successful observation stops being
// returned as it is: the next refresh or the evidence's expiry.
func (s *attestState) until() time.Time {
	if s.loc.Expiry.Before(s.nextCheck) {
		return s.loc.Expiry
	}
	return s.nextCheck
}

// refresh observes the Source again, unless another caller just did, and
// returns the observation in force: a successful one (err is nil).
func (a *Attestor) refresh(ctx context.Context) (*attestState, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	old := a.state.Load()
	if old != nil && now.Before(old.nextCheck) { // refreshed while we waited
		if old.err != nil {
			return nil, old.err
		}
		if now.Before(old.loc.Expiry) {
			return old, nil
		}
	}
	interval := a.RefreshInterval
	if interval <= 0 {
		interval = DefaultRefreshInterval
	}
	next := now.Add(interval)
	// held is whether old is evidence that may still stand.
	held := old != nil && old.err == nil && now.Before(old.loc.Expiry)

	tok, err := a.src.Token(ctx)
	if err != nil {
		if !errors.Is(err, ErrAttestation) {
			err = fmt.Errorf("%w: attestation source: %w", ErrAttestation, err)
		}
	} else if !held || tok != old.token {
		a.verifies.Add(1)
		loc, recheck, verr := a.v.check(ctx, tok)
		if verr == nil {
			return a.store(loc, tok, recheck, next), nil
		}
		err = verr
	}
	// The Source failed, or yielded the evidence held, or a new token that
	// does not verify (yet: its kid may be one the JWKS refetch rate limit
	// has not let in). The evidence held stands while it is valid; a new
	// token is tried again next interval.
	if held {
		s, kerr := a.keep(ctx, old, now, next)
		if kerr == nil {
			return s, nil
		}
		if err == nil { // the Source yielded the token held
			err = kerr
		}
	}
	a.fail(ctx, err, next)
	return nil, err
}

// keep serves the evidence old holds again, until next. Once old is due to
// be verified again (its key set has aged past jwksMaxAge), it is, and an
// error says it no longer verifies.
func (a *Attestor) keep(ctx context.Context, old *attestState, now, next time.Time) (*attestState, error) {
	loc, recheck := old.loc, old.recheck
	if !now.Before(recheck) {
		a.verifies.Add(1)
		var err error
		loc, recheck, err = a.v.check(ctx, old.token)
		if err != nil {
			return nil, err
		}
	}
	return a.store(loc, old.token, recheck, next), nil
}

// store makes verified evidence the observation in force: the Source is
// asked again at next, or at recheck if that comes first.
func (a *Attestor) store(loc Location, token string, recheck, next time.Time) *attestState {
	s := &attestState{loc: loc, token: token, recheck: recheck, nextCheck: next}
	if recheck.Before(next) {
		s.nextCheck = recheck
	}
	a.state.Store(s)
	return s
}

// fail remembers a failed refresh until next, unless it failed because the
// caller's ctx ended: one caller's cancellation must not fail the others.
func (a *Attestor) fail(ctx context.Context, err error, next time.Time) {
	if ctx.Err() != nil {
		return
	}
	a.state.Store(&attestState{err: err, nextCheck: next})
}
