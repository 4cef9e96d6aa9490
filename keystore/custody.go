package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zonekey/zonekey/attest"
	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Custody errors, the same values as the sentinels of package zonekey.
var (
	// ErrOutsideCustody reports a caller whose attested region may not use
	// the zone's keys. It is decided before any custodian call.
	ErrOutsideCustody = errs.OutsideCustody
	// ErrAttestation reports a caller whose evidence was rejected.
	ErrAttestation = errs.Attestation
	// ErrAudit reports that an event could not be recorded; the keyring
	// then refuses the key operation it was about.
	ErrAudit = errs.Audit
)

// Caller is a caller as a Policy verified it.
type Caller = kms.Caller

// Policy decides whether the current caller may use the keys of a zone. The
// keyring asks it on every DataKey and Key call, cache hits included, before
// any custodian call and before any key is unwrapped; it must be cheap in
// the steady state. (Key, AuxKeyByID and Prefetch read the wrapped row from
// the store first, to learn its zone.)
// The one exception is RegionPolicy: on a cache hit the keyring reuses its
// last allow for the zone while that decision's inputs hold, at most one
// second (see RegionPolicy).
type Policy interface {
	// Authorize returns the verified caller if it may use keys of zone,
	// or an error wrapping ErrOutsideCustody or ErrAttestation. The
	// returned Caller is also returned with a denial when it is known.
	Authorize(ctx context.Context, zone string) (Caller, error)
}

// AnyRegion in a RegionPolicy's list allows callers from every region, and
// callers without attestation. It is meant for development zones.
const AnyRegion = "*"

// Attestor yields the verified location of the current process;
// *attest.Attestor implements it.
type Attestor interface {
	Current(ctx context.Context) (attest.Location, string, error)
}

// RegionPolicy allows a caller to use a zone's keys when its attested
// region is one the zone lists.
//
// A keyring reuses a RegionPolicy's allow for a zone on cache hits while it
// holds: with an *attest.Attestor until the Attestor's next refresh or the
// evidence's expiry, without an Attestor while Regions is unchanged, and in
// every case at most one second. Denials are never reused. Regions must not
// be changed while a keyring uses the policy.
type RegionPolicy struct {
	// Regions lists, for each zone, the attested regions (such as
	// "europe-west1") whose callers may use the zone's keys. A zone that
	// is not listed, or lists no region, is closed to everyone; AnyRegion
	// opens it to every caller.
	Regions map[string][]string
	// Issuers optionally lists, for each zone, the issuers (the verified
	// iss of the caller's evidence) whose evidence counts for the zone. A
	// zone without a list accepts every issuer the Attestor's Verifier
	// trusts. List them when the Verifier trusts issuers of unequal
	// standing, such as a development issuer beside the production one:
	// otherwise any of them can vouch for any region. A zone open to
	// AnyRegion needs no evidence, and ignores its list.
	Issuers map[string][]string
	// Attestor verifies the caller. It may be nil only if every zone is
	// open to AnyRegion.
	Attestor Attestor
}

// Check reports configuration errors: a zone that needs attestation when
// there is no Attestor.
func (p *RegionPolicy) Check() error {
	for zone, regions := range p.Regions {
		if len(regions) == 0 {
			return fmt.Errorf("%w: zone %q lists no allowed region", ErrOutsideCustody, zone)
		}
		if !slices.Contains(regions, AnyRegion) && p.Attestor == nil {
			return fmt.Errorf("%w: zone %q is restricted to regions %v but no attestation is configured", ErrAttestation, zone, regions)
		}
	}
	return nil
}

// Authorize implements Policy.
func (p *RegionPolicy) Authorize(ctx context.Context, zone string) (Caller, error) {
	if p.Attestor == nil {
		return p.decide(zone, attest.Location{}, "", nil)
	}
	loc, token, err := p.Attestor.Current(ctx)
	return p.decide(zone, loc, token, err)
}

// decisionTTL bounds how long the keyring reuses a RegionPolicy's allow
// decision. It is attest.DefaultRefreshInterval: an Attestor with the
// default interval does not look at new evidence more often.
const decisionTTL = attest.DefaultRefreshInterval

// authorizeUntil implements decisionPolicy. A decision holds while its
// inputs do: the Regions (read again every decisionTTL) and the Attestor's
// answer, which an *attest.Attestor keeps until it asks its Source again or
// the evidence expires. With any other Attestor it holds for no time.
func (p *RegionPolicy) authorizeUntil(ctx context.Context, zone string, now time.Time) (Caller, time.Time, error) {
	until := now.Add(decisionTTL)
	var loc attest.Location
	var token string
	var err error
	switch a := p.Attestor.(type) {
	case nil:
	case *attest.Attestor:
		// The type itself, not any Attestor with a CurrentUntil: a
		// wrapper that embeds *attest.Attestor to add a check of its
		// own in Current would also have the embedded CurrentUntil,
		// which does not make that check.
		var valid time.Time
		loc, token, valid, err = a.CurrentUntil(ctx)
		if valid.Before(until) {
			until = valid
		}
	default:
		c, err := p.Authorize(ctx, zone)
		return c, time.Time{}, err
	}
	c, err := p.decide(zone, loc, token, err)
	if err != nil {
		return c, time.Time{}, err
	}
	return c, until, nil
}

// decide is Authorize given what the Attestor (if any) returned.
func (p *RegionPolicy) decide(zone string, loc attest.Location, token string, attErr error) (Caller, error) {
	regions := p.Regions[zone]
	open := slices.Contains(regions, AnyRegion)
	if p.Attestor == nil {
		if open {
			return Caller{}, nil
		}
		return Caller{}, fmt.Errorf("%w: zone %q requires an attested caller and none is configured", ErrAttestation, zone)
	}
	if attErr != nil {
		if open {
			return Caller{}, nil
		}
		if !errors.Is(attErr, ErrAttestation) {
			attErr = fmt.Errorf("%w: %w", ErrAttestation, attErr)
		}
		return Caller{}, attErr
	}
	c := Caller{Region: loc.Region, Workload: loc.Workload, Issuer: loc.Issuer, Token: token}
	if open {
		return c, nil
	}
	if issuers := p.Issuers[zone]; len(issuers) > 0 && !slices.Contains(issuers, loc.Issuer) {
		return c, fmt.Errorf("%w: evidence of issuer %q does not count for zone %q (accepted: %v)", ErrAttestation, loc.Issuer, zone, issuers)
	}
	if slices.Contains(regions, loc.Region) {
		return c, nil
	}
	if len(regions) == 0 {
		return c, fmt.Errorf("%w: zone %q is open to no region", ErrOutsideCustody, zone)
	}
	return c, fmt.Errorf("%w: caller attested in region %q may not use keys of zone %q (allowed: %v)", ErrOutsideCustody, loc.Region, zone, regions)
}

// decisionPolicy is a Policy whose allow decisions hold for a known time:
// authorizeUntil is Authorize, and with an allow it also returns the instant
// (by the keyring's clock, now) up to which Authorize would allow the zone
// again with the same Caller. RegionPolicy implements it.
type decisionPolicy interface {
	authorizeUntil(ctx context.Context, zone string, now time.Time) (Caller, time.Time, error)
}

// authorize checks that zone is configured and asks the policy, recording a
// denial. dek names the DEK concerned, if known. It never reuses a decision:
// it serves the paths that go on to the store or the custodian, which get
// the Caller as the policy returns it now.
func (k *Keyring) authorize(ctx context.Context, zone, subject string, dek *envelope.KeyID) (Caller, error) {
	if _, ok := k.custodians[zone]; !ok {
		return Caller{}, fmt.Errorf("%w: %q (configured: %v)", ErrUnknownZone, zone, k.Zones())
	}
	return k.ask(ctx, zone, subject, dek)
}

// authorizeHit is authorize for a hit of the cached entry e at now, whose
// own decision (entry.allowed) no longer holds: the zone is that of a cached
// DEK, which was only ever loaded for a configured zone (the custodians
// never change after New). It consults the policy through the decision the
// policy last gave for the zone while that holds (see decisionPolicy), else
// by asking it again, and has e remember the decision. A hit hands no key to
// a custodian, so it needs no Caller.
func (k *Keyring) authorizeHit(ctx context.Context, e *entry, dek *envelope.KeyID, now time.Time) error {
	d := k.cache.decisions.lookup(e.zone, now)
	if d == nil {
		if _, err := k.ask(ctx, e.zone, e.subject, dek); err != nil {
			return err
		}
		d = k.cache.decisions.lookup(e.zone, now) // nil if the policy gives no lasting decision
	}
	e.auth.Store(d)
	return nil
}

// ask asks the policy about zone, records a denial, and remembers an allow
// for as long as the policy says it holds.
func (k *Keyring) ask(ctx context.Context, zone, subject string, dek *envelope.KeyID) (Caller, error) {
	if k.policy == nil {
		return Caller{}, nil
	}
	dp, cacheable := k.policy.(decisionPolicy)
	if !cacheable {
		c, err := k.policy.Authorize(ctx, zone)
		if err != nil {
			k.deny(ctx, c, err, zone, subject, dek)
		}
		return c, err
	}
	gen := k.cache.decisions.generation()
	c, until, err := dp.authorizeUntil(ctx, zone, k.now())
	if err != nil {
		k.cache.decisions.forget(zone)
		k.deny(ctx, c, err, zone, subject, dek)
		return c, err
	}
	k.cache.decisions.remember(gen, zone, until)
	return c, nil
}

// learnDecision asks the policy about zone only to remember a lasting
// allow, for a caller that was just authorized another way (AuxKeys asks
// the policy without remembering). A denial is not recorded here: the
// call it would concern has been authorized, and the next one asks again.
func (k *Keyring) learnDecision(ctx context.Context, zone string) {
	dp, ok := k.policy.(decisionPolicy)
	if !ok {
		return
	}
	gen := k.cache.decisions.generation()
	if _, until, err := dp.authorizeUntil(ctx, zone, k.now()); err == nil {
		k.cache.decisions.remember(gen, zone, until)
	}
}

// deny records the policy's refusal of c in zone.
func (k *Keyring) deny(ctx context.Context, c Caller, err error, zone, subject string, dek *envelope.KeyID) {
	ev := audit.Event{Action: audit.Access, Decision: audit.Deny, Reason: err.Error(), Zone: zone, Subject: subject}
	if dek != nil {
		ev.DEK = dek.String()
	}
	k.record(ctx, c, ev)
}

// record sends an event to the audit sink. The error is ErrAudit-wrapped,
// for operations that must not proceed unrecorded.
func (k *Keyring) record(ctx context.Context, c Caller, e audit.Event) error {
	if k.audit == nil {
		return nil
	}
	e.Time = k.now().UTC()
	e.Workload, e.Region, e.Issuer = c.Workload, c.Region, c.Issuer
	if err := k.audit.Record(context.WithoutCancel(ctx), e); err != nil {
		return fmt.Errorf("%w: %w", ErrAudit, err)
	}
	return nil
}

// recordBatch is record for several events at once, made durable together
// (audit.RecordBatch).
func (k *Keyring) recordBatch(ctx context.Context, c Caller, events []audit.Event) error {
	if k.audit == nil || len(events) == 0 {
		return nil
	}
	now := k.now().UTC()
	for i := range events {
		events[i].Time = now
		events[i].Workload, events[i].Region, events[i].Issuer = c.Workload, c.Region, c.Issuer
	}
	if err := audit.RecordBatch(context.WithoutCancel(ctx), k.audit, events); err != nil {
		return fmt.Errorf("%w: %w", ErrAudit, err)
	}
	return nil
}

// decisionCache holds the policy's latest allow decision of each zone that
// asked for one, while it holds. Zones are few, so it is a copy-on-write
// list scanned without a lock; a change copies it under mu.
//
// A decision that leaves the list (replaced by a newer one, dropped by
// forget or purge) is revoked, so that the entries remembering it (entry)
// stop using it: only the decisions in the list are ever used.
type decisionCache struct {
	mu  sync.Mutex
	all atomic.Pointer[[]*decision]
	gen atomic.Uint64 // advanced by every forget and purge
}

// decision is one allow decision of a zone.
type decision struct {
	zone    string
	until   int64       // Unix nanoseconds by the keyring's clock; the decision does not hold from then on
	revoked atomic.Bool // it has left the cache
}

// lookup returns the decision of zone if it holds at now, or nil.
func (c *decisionCache) lookup(zone string, now time.Time) *decision {
	all := c.all.Load()
	if all == nil {
		return nil
	}
	for _, d := range *all {
		if d.zone == zone {
			if now.UnixNano() < d.until {
				return d
			}
			return nil
		}
	}
	return nil
}

// generation returns a value to pass to remember: a decision asked for
// before a forget or purge is not remembered after it.
func (c *decisionCache) generation() uint64 { return c.gen.Load() }

// remember stores an allow decision of zone until the instant until (no
// decision if until is zero), unless the cache was changed by forget or
// purge since gen was read.
func (c *decisionCache) remember(gen uint64, zone string, until time.Time) {
	if until.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	c.replaceLocked(zone, &decision{zone: zone, until: unixNano(until)})
}

// forget drops the decision of zone.
func (c *decisionCache) forget(zone string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	c.replaceLocked(zone, nil)
}

// replaceLocked stores a copy of the list with zone's decision replaced by
// d (removed if d is nil), and revokes the one it replaces. c.mu is held.
func (c *decisionCache) replaceLocked(zone string, d *decision) {
	var next []*decision
	if all := c.all.Load(); all != nil {
		next = make([]*decision, 0, len(*all)+1)
		for _, old := range *all {
			if old.zone == zone {
				old.revoked.Store(true)
				continue
			}
			next = append(next, old)
		}
	}
	if d != nil {
		next = append(next, d)
	}
	c.all.Store(&next)
}

// purge drops every decision.
func (c *decisionCache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	if all := c.all.Load(); all != nil {
		for _, d := range *all {
			d.revoked.Store(true)
		}
	}
	c.all.Store(nil)
}
