package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
// any store read or custodian call; it must be cheap in the steady state.
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
type RegionPolicy struct {
	// Regions lists, for each zone, the attested regions (such as
	// "europe-west1") whose callers may use the zone's keys. A zone that
	// is not listed, or lists no region, is closed to everyone; AnyRegion
	// opens it to every caller.
	Regions map[string][]string
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
	regions := p.Regions[zone]
	open := slices.Contains(regions, AnyRegion)
	if p.Attestor == nil {
		if open {
			return Caller{}, nil
		}
		return Caller{}, fmt.Errorf("%w: zone %q requires an attested caller and none is configured", ErrAttestation, zone)
	}
	loc, token, err := p.Attestor.Current(ctx)
	if err != nil {
		if open {
			return Caller{}, nil
		}
		if !errors.Is(err, ErrAttestation) {
			err = fmt.Errorf("%w: %w", ErrAttestation, err)
		}
		return Caller{}, err
	}
	c := Caller{Region: loc.Region, Workload: loc.Workload, Issuer: loc.Issuer, Token: token}
	if open || slices.Contains(regions, loc.Region) {
		return c, nil
	}
	if len(regions) == 0 {
		return c, fmt.Errorf("%w: zone %q is open to no region", ErrOutsideCustody, zone)
	}
	return c, fmt.Errorf("%w: caller attested in region %q may not use keys of zone %q (allowed: %v)", ErrOutsideCustody, loc.Region, zone, regions)
}

// authorize checks that zone is configured and asks the policy, recording a
// denial. dek names the DEK concerned, if known.
func (k *Keyring) authorize(ctx context.Context, zone, subject string, dek *envelope.KeyID) (Caller, error) {
	if _, ok := k.custodians[zone]; !ok {
		return Caller{}, fmt.Errorf("%w: %q (configured: %v)", ErrUnknownZone, zone, k.Zones())
	}
	return k.authorizeKnown(ctx, zone, subject, dek)
}

// authorizeKnown is authorize for a zone known to be configured: that of a
// cached DEK, which was only ever loaded for a configured zone (the
// custodians never change after New). It still asks the policy.
func (k *Keyring) authorizeKnown(ctx context.Context, zone, subject string, dek *envelope.KeyID) (Caller, error) {
	if k.policy == nil {
		return Caller{}, nil
	}
	c, err := k.policy.Authorize(ctx, zone)
	if err != nil {
		ev := audit.Event{Action: audit.Access, Decision: audit.Deny, Reason: err.Error(), Zone: zone, Subject: subject}
		if dek != nil {
			ev.DEK = dek.String()
		}
		k.record(ctx, c, ev)
		return c, err
	}
	return c, nil
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
		return fmt.Errorf("%w: %v", ErrAudit, err)
	}
	return nil
}
