// # Rotation
//
// Rotation never touches data: a ciphertext names only its DEK, and a DEK's
// secret never changes. Rotation changes which key wraps a stored row, and
// replaces each row with a compare-and-swap ([RotationStore]), so that
// rotations running at the same time in several processes never overwrite
// each other's work. The store is the only state of a rotation: a rotation
// that stopped (cancelled, crashed, custodian unreachable) is finished by
// running it again.
//
// KEK rotation ([Keyring.RotateKEK]) makes a new KEK version at the zone's
// custodian, which must implement [kms.KeyManager], then rewraps every
// zone-key row of the zone (a handful) under it with the custodian's Rewrap.
// Custodians that can rewrap server-side (Vault Transit) never expose the
// zone key to this process. A row that another process has already rewrapped
// to the same or a newer KEK version is left as it is, so concurrent KEK
// rotations all succeed and leave every row under a live version.
// [Keyring.RewrapZoneKeys] does the rewrap alone, toward the custodian's
// primary version: it finishes an interrupted RotateKEK. Once no row needs
// the older versions, [Keyring.RetireKEKBelow] makes the custodian refuse
// them; it refuses with a [*KEKInUseError] while a row still needs one.
//
// Zone-key rotation ([Keyring.RotateZoneKey]) makes zone-key version
// latest+1, wrapped by the custodian under its primary KEK version, and
// rewraps every DEK row of the zone under it, locally and in batches: each
// DEK is unwrapped with the zone-key version that wraps it and wrapped again
// under the new one, bound to its id, zone, subject, generation and the new
// version, as at creation. The rotating keyring creates new DEKs under the
// new version at once. A run that finds DEK rows below the latest version
// (left by an interrupted run) resumes toward that version instead of making
// another; two runs that race make one new version, the loser of the create
// adopting the winner's, and share the rewrap.
//
// Other processes learn of a new zone-key version only when their view of
// the zone's current version expires, up to [Config.ZoneKeyTTL] after the
// rotation; until then they keep creating DEKs under the previous version.
// RotateZoneKey ends with a verification scan that reports those DEKs
// ([ZoneKeyRotationResult.Remaining]). Running RotateZoneKey again once
// ZoneKeyTTL has passed since the new version was made resumes toward the
// same version, rewraps them, and completes the rotation (Remaining 0).
//
// A rewrapped DEK keeps its secret, so the DEKs that any process holds in its
// cache stay valid; so do cached zone keys when their rows are rewrapped
// under a new KEK version.
//
// Rotation runs under the keyring's [Policy] like any key access: the
// operator's process must be allowed in the zone, or the keyring must have a
// nil Policy. It records an [audit.Rotate] event for each KEK or zone-key
// rotation (and for a retirement of KEK versions), and an [audit.Rewrap]
// event for each row it rewraps (zone key: its version and the new KEK
// version; DEK: its id, subject and the new zone-key version), before the
// row is replaced, so that no row changes unrecorded. With an audit file the
// events of a page of rewraps are made durable with one sync
// (audit.BatchSink) before the page is written.
package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/kms"
)

// DefaultRotationBatch is the number of DEK rows RotateZoneKey reads per
// batch when ZoneKeyRotation.BatchSize is zero.
const DefaultRotationBatch = 500

// countBatch is the page size of the counting and verification scans.
const countBatch = 1000

// maxCASAttempts bounds how often a rotation re-reads and retries a row
// whose compare-and-swap lost to another process.
const maxCASAttempts = 4

// KEKRotation is the result of RotateKEK and RewrapZoneKeys.
type KEKRotation struct {
	// Zone is the zone whose KEK was rotated.
	Zone string
	// KEKVersion is the version the zone-key rows were rewrapped to: the
	// version RotateKEK made, or the custodian's primary version for
	// RewrapZoneKeys.
	KEKVersion uint32
	// Rewrapped counts the zone-key rows this call rewrapped.
	Rewrapped int
	// Skipped counts the rows that were already wrapped under KEKVersion
	// or a newer version, by an earlier run or a concurrent one.
	Skipped int
}

// ZoneKeyRotation configures RotateZoneKey.
type ZoneKeyRotation struct {
	// BatchSize is the number of DEK rows read and rewrapped per batch.
	// Zero or less means DefaultRotationBatch.
	BatchSize int
	// Progress, if set, is called after each batch with the number of DEK
	// rows of the zone passed so far and the number the zone held when the
	// rotation began (raised if more appear). Both only grow. It is called
	// on the rotating goroutine; a slow Progress slows the rotation.
	Progress func(done, total int)
}

// ZoneKeyRotationResult is the result of RotateZoneKey.
type ZoneKeyRotationResult struct {
	// Zone is the zone whose zone key was rotated.
	Zone string
	// Version is the zone-key version the DEKs were rewrapped to.
	Version uint32
	// Created reports whether this call made Version. It is false when
	// the call resumed an interrupted rotation, or adopted the version a
	// concurrent rotation made.
	Created bool
	// Scanned counts the DEK rows of the zone the rewrap passed.
	Scanned int
	// Rewrapped counts the DEK rows this call rewrapped.
	Rewrapped int
	// Remaining counts the DEK rows still below Version at the final
	// verification scan: DEKs that other processes created under the
	// previous version before they learnt of the new one (see the
	// package documentation). Run RotateZoneKey again once ZoneKeyTTL has
	// passed to rewrap them.
	Remaining int
}

// ZoneKeyStatus describes one version of a zone's key.
type ZoneKeyStatus struct {
	Zone       string
	Version    uint32
	ID         string    // the zone key's unique id
	KEKVersion uint32    // the KEK version that wraps it
	Created    time.Time // creation time (UTC)
	DEKs       int       // number of DEKs wrapped under this version
}

// KEKInUseError is returned by RetireKEKBelow when zone-key rows of the
// zone are still wrapped under a KEK version it would retire. Nothing was
// changed. RewrapZoneKeys moves the rows to the primary KEK version.
type KEKInUseError struct {
	Zone  string
	Below uint32 // the version asked for
	// ZoneKeyVersions lists, ascending, the zone-key versions whose rows
	// are wrapped under a KEK version below Below.
	ZoneKeyVersions []uint32
	// PendingDEKs counts the DEK rows moved in from another zone
	// (DEKRow.Pending) that are wrapped directly under a KEK version below
	// Below: the zone adopts them under its zone key on their first use or
	// at its next zone-key rotation (RotateZoneKey) or epoch.
	PendingDEKs int
	// OldestKEKVersion is the oldest KEK version these rows use.
	OldestKEKVersion uint32
}

// Error implements error.
func (e *KEKInUseError) Error() string {
	var what, fix []string
	if len(e.ZoneKeyVersions) > 0 {
		vs := make([]string, len(e.ZoneKeyVersions))
		for i, v := range e.ZoneKeyVersions {
			vs[i] = fmt.Sprintf("v%d", v)
		}
		what = append(what, "zone-key rows "+strings.Join(vs, ", "))
		fix = append(fix, "rewrap them (RewrapZoneKeys)")
	}
	if e.PendingDEKs > 0 {
		what = append(what, fmt.Sprintf("%d DEK rows moved in from another zone", e.PendingDEKs))
		fix = append(fix, "adopt the moved DEKs (RotateZoneKey)")
	}
	return fmt.Sprintf("keystore: zone %q: cannot retire KEK versions below %d: %s are still wrapped under KEK versions from %d; first %s",
		e.Zone, e.Below, strings.Join(what, " and "), e.OldestKEKVersion, strings.Join(fix, " and "))
}

// rotation is what an operation on a zone's keys works with.
type rotation struct {
	k      *Keyring
	zone   string
	zs     *zoneState
	cust   kms.Custodian
	rs     RotationStore
	caller Caller
}

// startRotation checks the keyring, the zone, the store and the caller's
// custody. The returned context carries the caller to the custodian.
func (k *Keyring) startRotation(ctx context.Context, zone string) (context.Context, *rotation, error) {
	if k.closed.Load() {
		return ctx, nil, ErrClosed
	}
	caller, err := k.authorize(ctx, zone, "", nil)
	if err != nil {
		return ctx, nil, err
	}
	zs, cust, err := k.zone(zone)
	if err != nil {
		return ctx, nil, err
	}
	rs, ok := k.store.(RotationStore)
	if !ok {
		return ctx, nil, fmt.Errorf("keystore: zone %q: the store (%T) does not implement keystore.RotationStore: %w", zone, k.store, errors.ErrUnsupported)
	}
	return kms.WithCaller(ctx, caller), &rotation{k: k, zone: zone, zs: zs, cust: cust, rs: rs, caller: caller}, nil
}

func (r *rotation) keyManager() (kms.KeyManager, error) {
	km, ok := r.cust.(kms.KeyManager)
	if !ok {
		return nil, fmt.Errorf("%w: zone %q: its custodian (%T) cannot manage KEK versions (it does not implement kms.KeyManager)", kms.ErrConfig, r.zone, r.cust)
	}
	return km, nil
}

// record records e for the rotation's caller.
func (r *rotation) record(ctx context.Context, e audit.Event) error {
	e.Zone = r.zone
	return r.k.record(ctx, r.caller, e)
}

// recordFailure records e as a denial or an error, best-effort: err is
// returned anyway.
func (r *rotation) recordFailure(ctx context.Context, e audit.Event, err error) {
	e.Decision, e.Reason = audit.Error, err.Error()
	if errors.Is(err, kms.ErrDenied) || errors.Is(err, ErrOutsideCustody) {
		e.Decision = audit.Deny
	}
	r.record(ctx, e)
}

// RotateKEK makes a new KEK version the primary one at the zone's custodian,
// then rewraps every zone-key row of the zone wrapped under an older version
// (see the package documentation). The custodian must implement
// kms.KeyManager; otherwise the error wraps kms.ErrConfig. If the rewrap
// fails part-way, the KEK stays rotated and RewrapZoneKeys finishes the job;
// the result then counts the rows done so far.
func (k *Keyring) RotateKEK(ctx context.Context, zone string) (KEKRotation, error) {
	res := KEKRotation{Zone: zone}
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return res, err
	}
	km, err := r.keyManager()
	if err != nil {
		return res, err
	}
	v, err := km.Rotate(ctx)
	if err != nil {
		err = fmt.Errorf("zone %q: rotating the KEK: %w", zone, err)
		r.recordFailure(ctx, audit.Event{Action: audit.Rotate}, err)
		return res, err
	}
	res.KEKVersion = v
	if err := r.record(ctx, audit.Event{Action: audit.Rotate, Decision: audit.Allow, KEKVersion: v}); err != nil {
		return res, fmt.Errorf("zone %q: the KEK was rotated to v%d, but %w", zone, v, err)
	}
	return r.rewrapZoneKeys(ctx, km, res)
}

// RewrapZoneKeys rewraps every zone-key row of the zone that is wrapped
// under a KEK version older than the custodian's primary version: the second
// half of RotateKEK, to finish one that was interrupted. The custodian must
// implement kms.KeyManager.
func (k *Keyring) RewrapZoneKeys(ctx context.Context, zone string) (KEKRotation, error) {
	res := KEKRotation{Zone: zone}
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return res, err
	}
	km, err := r.keyManager()
	if err != nil {
		return res, err
	}
	_, primary, err := km.KEKVersions(ctx)
	if err != nil {
		return res, fmt.Errorf("zone %q: reading the KEK versions: %w", zone, err)
	}
	res.KEKVersion = primary
	return r.rewrapZoneKeys(ctx, km, res)
}

// rewrapZoneKeys rewraps the zone-key rows below res.KEKVersion.
func (r *rotation) rewrapZoneKeys(ctx context.Context, km kms.KeyManager, res KEKRotation) (KEKRotation, error) {
	rows, err := r.rs.ZoneKeys(ctx, r.zone)
	if err != nil {
		return res, fmt.Errorf("zone %q: listing zone keys: %w", r.zone, err)
	}
	for _, row := range rows {
		done, err := r.rewrapZoneKey(ctx, km, row, res.KEKVersion)
		if err != nil {
			return res, err
		}
		if done {
			res.Rewrapped++
		} else {
			res.Skipped++
		}
	}
	return res, nil
}

// rewrapZoneKey rewraps one zone-key row under KEK version target or newer.
// It reports false if the row was already there.
func (r *rotation) rewrapZoneKey(ctx context.Context, km kms.KeyManager, row ZoneKeyRow, target uint32) (bool, error) {
	version := row.Version
	for attempt := 1; ; attempt++ {
		if row.Zone != r.zone || row.Version != version {
			return false, fmt.Errorf("%w: store returned zone key %q v%d for %q v%d", ErrTampered, row.Zone, row.Version, r.zone, version)
		}
		if row.KEKVersion >= target {
			return false, nil
		}
		ev := audit.Event{Action: audit.Rewrap, ZoneKeyVersion: version}
		w, err := km.Rewrap(ctx, kms.Wrapped{Ciphertext: row.Wrapped, KEKVersion: row.KEKVersion}, kms.Binding{Zone: r.zone, KeyID: row.ID, Version: version})
		if err == nil && w.KEKVersion < target {
			err = fmt.Errorf("%w: the custodian rewrapped under KEK v%d, older than v%d", kms.ErrConfig, w.KEKVersion, target)
		}
		if err != nil {
			err = fmt.Errorf("zone %q key v%d: rewrapping under KEK v%d: %w", r.zone, version, target, err)
			r.recordFailure(ctx, ev, err)
			return false, err
		}
		ev.Decision, ev.KEKVersion = audit.Allow, w.KEKVersion
		if err := r.record(ctx, ev); err != nil {
			return false, err
		}
		err = r.rs.UpdateZoneKeyWrap(ctx, r.zone, version, row.Wrapped, w.Ciphertext, w.KEKVersion)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == maxCASAttempts {
			return false, fmt.Errorf("zone %q key v%d: %w", r.zone, version, err)
		}
		// Another process rewrapped it: look again.
		if row, err = r.k.store.ZoneKey(ctx, r.zone, version); err != nil {
			return false, fmt.Errorf("zone %q key v%d: %w", r.zone, version, err)
		}
	}
}

// RetireKEKBelow makes the zone's KEK versions older than v refuse to unwrap
// at its custodian (kms.KeyManager.RetireBelow; Vault's
// min_decryption_version). It refuses with a *KEKInUseError, changing
// nothing, while a zone-key row of the zone, or a DEK row moved in from
// another zone and not yet adopted (wrapped by the KEK itself), is wrapped
// under such a version, and with ErrInvalidValue a v above the custodian's
// primary version. Looking for moved rows scans the zone's DEK rows.
//
// The check and the retirement are two steps: a process that creates a zone
// key in between, through a custodian that has not yet seen the new primary
// version, can still wrap it under a retired version. Retire after the
// rotation has settled, and check with ZoneKeyStatus.
func (k *Keyring) RetireKEKBelow(ctx context.Context, zone string, v uint32) error {
	if v == 0 {
		return fmt.Errorf("%w: zone %q: KEK versions start at 1", ErrInvalidValue, zone)
	}
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return err
	}
	km, err := r.keyManager()
	if err != nil {
		return err
	}
	_, primary, err := km.KEKVersions(ctx)
	if err != nil {
		return fmt.Errorf("zone %q: reading the KEK versions: %w", zone, err)
	}
	if v > primary {
		return fmt.Errorf("%w: zone %q: cannot retire KEK versions below %d: the primary version is %d", ErrInvalidValue, zone, v, primary)
	}
	rows, err := r.rs.ZoneKeys(ctx, zone)
	if err != nil {
		return fmt.Errorf("zone %q: listing zone keys: %w", zone, err)
	}
	inUse := &KEKInUseError{Zone: zone, Below: v}
	oldest := func(kv uint32) {
		if inUse.OldestKEKVersion == 0 || kv < inUse.OldestKEKVersion {
			inUse.OldestKEKVersion = kv
		}
	}
	for _, row := range rows {
		if row.KEKVersion < v {
			inUse.ZoneKeyVersions = append(inUse.ZoneKeyVersions, row.Version)
			oldest(row.KEKVersion)
		}
	}
	// DEK rows moved in and not yet adopted are wrapped by the KEK itself.
	for cursor := ""; ; {
		page, next, err := r.rs.ScanDEKs(ctx, zone, cursor, countBatch)
		if err != nil {
			return fmt.Errorf("zone %q: looking for moved DEKs: %w", zone, err)
		}
		for _, row := range page {
			if row.Pending() && row.KEKVersion < v {
				inUse.PendingDEKs++
				oldest(row.KEKVersion)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(inUse.ZoneKeyVersions) > 0 || inUse.PendingDEKs > 0 {
		return inUse
	}
	ev := audit.Event{Action: audit.Rotate, KEKVersion: v}
	if err := km.RetireBelow(ctx, v); err != nil {
		err = fmt.Errorf("zone %q: retiring KEK versions below %d: %w", zone, v, err)
		r.recordFailure(ctx, ev, err)
		return err
	}
	ev.Decision, ev.Reason = audit.Allow, fmt.Sprintf("KEK versions below %d retired", v)
	return r.record(ctx, ev)
}

// RotateZoneKey makes a new version of the zone's key and rewraps every DEK
// row of the zone under it, in batches; or, if DEK rows below the latest
// version exist (an interrupted rotation), resumes toward the latest version
// without making another. See the package documentation, in particular for
// the DEKs that other processes create under the previous version for up to
// ZoneKeyTTL, which the result counts as Remaining.
//
// On error (ctx cancelled, custodian or store failure) the rows rewrapped so
// far stay rewrapped, the result counts them, and calling RotateZoneKey
// again resumes.
func (k *Keyring) RotateZoneKey(ctx context.Context, zone string, opts ZoneKeyRotation) (ZoneKeyRotationResult, error) {
	res := ZoneKeyRotationResult{Zone: zone}
	batch := opts.BatchSize
	if batch <= 0 {
		batch = DefaultRotationBatch
	}
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return res, err
	}
	var latest uint32
	switch row, err := k.store.ZoneKey(ctx, zone, 0); {
	case err == nil:
		latest = row.Version
	case !errors.Is(err, ErrUnknownKey):
		return res, fmt.Errorf("zone %q: %w", zone, err)
	}
	counts, total, err := r.countDEKs(ctx)
	if err != nil {
		return res, err
	}
	target := latest
	if latest == 0 || belowCount(counts, latest) == 0 {
		if target, res.Created, err = r.newZoneKeyVersion(ctx, latest+1); err != nil {
			return res, err
		}
	}
	res.Version = target
	r.advance(target)
	if err := r.record(ctx, audit.Event{Action: audit.Rotate, Decision: audit.Allow, ZoneKeyVersion: target}); err != nil {
		return res, err
	}

	for cursor := ""; ; {
		if k.closed.Load() {
			return res, ErrClosed
		}
		rows, next, err := r.rs.ScanDEKs(ctx, zone, cursor, batch)
		if err != nil {
			return res, fmt.Errorf("zone %q: rotating to zone key v%d: %w", zone, target, err)
		}
		n, err := r.rewrapDEKs(ctx, rows, target)
		res.Rewrapped += n
		if err != nil {
			return res, fmt.Errorf("zone %q: rotating to zone key v%d: %w", zone, target, err)
		}
		res.Scanned += len(rows)
		total = max(total, res.Scanned)
		if opts.Progress != nil {
			opts.Progress(res.Scanned, total)
		}
		if next == "" {
			break
		}
		cursor = next
	}

	counts, _, err = r.countDEKs(ctx)
	if err != nil {
		return res, err
	}
	res.Remaining = belowCount(counts, target)
	return res, nil
}

// newZoneKeyVersion makes zone-key version v. If a concurrent rotation made
// it first, it returns the zone's latest version instead, and created false.
func (r *rotation) newZoneKeyVersion(ctx context.Context, v uint32) (version uint32, created bool, err error) {
	r.zs.mu.Lock()
	_, err = r.k.createZoneKeyLocked(ctx, r.zs, r.cust, r.zone, v)
	r.zs.mu.Unlock()
	if err == nil {
		return v, true, nil
	}
	if !errors.Is(err, ErrExists) {
		return 0, false, fmt.Errorf("zone %q: %w", r.zone, err)
	}
	row, err := r.k.store.ZoneKey(ctx, r.zone, 0)
	if err != nil {
		return 0, false, fmt.Errorf("zone %q: reading the zone key another process created: %w", r.zone, err)
	}
	return row.Version, false, nil
}

// advance makes v the zone's current version in this keyring, so that it
// creates new DEKs under v.
func (r *rotation) advance(v uint32) {
	r.zs.mu.Lock()
	defer r.zs.mu.Unlock()
	if r.zs.current <= v {
		r.zs.current, r.zs.currentExpires = v, r.k.now().Add(r.k.cfg.ZoneKeyTTL)
	}
}

// rewrapDEKs rewraps the DEK rows of a page under zone-key version target
// and returns how many it rewrapped (rows already at target or newer, or
// deleted or moved to another zone meanwhile, are not). With a
// BatchRotationStore the page is written in one transaction: the rows' new
// wraps are computed and their events audited first (in one batch,
// audit.RecordBatch), as rewrapDEK does for one, then all are updated at
// once, and a row some other process rewrapped meanwhile goes through
// rewrapDEK again from what the store now holds, unless it has left the
// zone (reread).
func (r *rotation) rewrapDEKs(ctx context.Context, rows []DEKRow, target uint32) (int, error) {
	bs, ok := r.rs.(BatchRotationStore)
	if !ok || len(rows) < 2 {
		n := 0
		for _, row := range rows {
			done, err := r.rewrapDEK(ctx, row, target)
			if err != nil {
				return n, err
			}
			if done {
				n++
			}
		}
		return n, nil
	}
	var (
		updates []DEKWrapUpdate
		events  []audit.Event
	)
	for _, row := range rows {
		u, ev, ok, err := r.prepareRewrap(ctx, row, target)
		if err != nil {
			return 0, err
		}
		if ok {
			updates, events = append(updates, u), append(events, ev)
		}
	}
	if len(updates) == 0 {
		return 0, nil
	}
	// Audited before written, as one row's rewrap is, in one sync.
	if err := r.k.recordBatch(ctx, r.caller, events); err != nil {
		return 0, err
	}
	results, err := bs.UpdateDEKWraps(ctx, updates)
	if err != nil {
		for i := range events {
			events[i].Decision, events[i].Reason = audit.Error, notApplied+err.Error()
		}
		r.k.recordBatch(ctx, r.caller, events) // best effort: the error is returned
		return 0, err
	}
	if len(results) != len(updates) {
		return 0, fmt.Errorf("%w: store returned %d results for %d DEK rewraps", ErrStore, len(results), len(updates))
	}
	n := 0
	for i, err := range results {
		id := updates[i].ID
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrUnknownKey):
			// deleted meanwhile (a shred): nothing to rewrap
			r.notApplied(ctx, events[i], err)
		case errors.Is(err, ErrConflict):
			r.notApplied(ctx, events[i], err)
			row, gone, err := r.reread(ctx, id)
			if err != nil {
				return n, err
			}
			if gone {
				continue
			}
			done, err := r.rewrapDEK(ctx, row, target)
			if err != nil {
				return n, err
			}
			if done {
				n++
			}
		default:
			r.notApplied(ctx, events[i], err)
			return n, fmt.Errorf("DEK %s: %w", id, err)
		}
	}
	return n, nil
}

// notApplied is the reason of the event that follows the audited rewrap of
// a row whose write did not happen.
const notApplied = "rewrap not applied: "

// notApplied records, after the event ev of a rewrap was recorded and its
// write failed with err (the row was deleted, moved or rewrapped by another
// process meanwhile, or the store failed), that it was not applied: ev
// again, as an error with err as the reason. Best effort, like
// recordFailure: the rotation goes on or fails on its own terms.
func (r *rotation) notApplied(ctx context.Context, ev audit.Event, err error) {
	ev.Decision, ev.Reason = audit.Error, notApplied+err.Error()
	r.record(ctx, ev)
}

// rewrapDEK rewraps one DEK row under zone-key version target. It reports
// false if there was nothing to do: the row was already at target or newer
// (rewrapped by a concurrent rotation), or has been deleted or moved to
// another zone.
func (r *rotation) rewrapDEK(ctx context.Context, row DEKRow, target uint32) (bool, error) {
	id := row.ID
	for attempt := 1; ; attempt++ {
		u, ev, ok, err := r.prepareRewrap(ctx, row, target)
		if err != nil || !ok {
			return false, err
		}
		if err := r.record(ctx, ev); err != nil {
			return false, err
		}
		err = r.rs.UpdateDEKWrap(ctx, id, u.PrevZoneKeyVersion, u.PrevWrapped, u.Wrapped, u.ZoneKeyVersion)
		if err != nil {
			r.notApplied(ctx, ev, err)
		}
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, ErrUnknownKey):
			return false, nil
		case !errors.Is(err, ErrConflict) || attempt == maxCASAttempts:
			return false, fmt.Errorf("DEK %s: %w", id, err)
		}
		// Another process rewrapped it, or moved it: look again.
		var gone bool
		row, gone, err = r.reread(ctx, id)
		if err != nil || gone {
			return false, err
		}
	}
}

// reread reads DEK row id again after a rewrap of it lost its
// compare-and-swap. It reports gone if the row has left the zone
// meanwhile: deleted (a shred), or of another zone (a move, which keeps
// the row's id); either way there is nothing to rewrap, and nothing to
// audit. A row of another zone is tampering only when the zone's own scan
// returns it (prepareRewrap), not when it is found by id after a move.
func (r *rotation) reread(ctx context.Context, id envelope.KeyID) (row DEKRow, gone bool, err error) {
	row, err = r.k.store.DEK(ctx, id)
	switch {
	case errors.Is(err, ErrUnknownKey):
		return row, true, nil
	case err != nil:
		return row, false, fmt.Errorf("DEK %s: %w", id, err)
	case row.ID != id:
		return row, false, fmt.Errorf("%w: store returned DEK %s for DEK %s", ErrTampered, row.ID, id)
	case row.Zone != r.zone:
		return row, true, nil
	}
	return row, false, nil
}

// prepareRewrap returns the update that rewraps row under zone-key version
// target and the event that audits it, or ok false if row is at target or
// newer already. A row of another zone is ErrTampered: prepareRewrap is
// given the rows of the zone's scan, and reread's rows of the zone.
func (r *rotation) prepareRewrap(ctx context.Context, row DEKRow, target uint32) (u DEKWrapUpdate, ev audit.Event, ok bool, err error) {
	if row.Zone != r.zone {
		return u, ev, false, fmt.Errorf("%w: store returned DEK %s of zone %q in zone %q", ErrTampered, row.ID, row.Zone, r.zone)
	}
	if row.ZoneKeyVersion >= target {
		return u, ev, false, nil
	}
	wrapped, err := r.rewrapDEKSecret(ctx, row, target)
	if err != nil {
		return u, ev, false, err
	}
	u = DEKWrapUpdate{ID: row.ID, PrevZoneKeyVersion: row.ZoneKeyVersion, PrevWrapped: row.Wrapped, Wrapped: wrapped, ZoneKeyVersion: target}
	ev = audit.Event{Action: audit.Rewrap, Decision: audit.Allow, Zone: r.zone, Subject: row.Subject, DEK: row.ID.String(), ZoneKeyVersion: target}
	return u, ev, true, nil
}

// rewrapDEKSecret unwraps row's DEK and wraps it under zone-key version
// target, bound to the row with its new version.
func (r *rotation) rewrapDEKSecret(ctx context.Context, row DEKRow, target uint32) ([]byte, error) {
	to, err := r.k.zoneKey(ctx, r.zs, r.cust, r.zone, target)
	if err != nil {
		return nil, err
	}
	var secret []byte
	if row.Pending() {
		// A moved DEK, wrapped by the zone's KEK: adopted here.
		secret, err = r.cust.Unwrap(ctx, kms.Wrapped{Ciphertext: row.Wrapped, KEKVersion: row.KEKVersion}, pendingBinding(row))
		if err != nil {
			err = fmt.Errorf("DEK %s (moved, awaiting adoption): %w", row.ID, err)
			r.recordFailure(ctx, audit.Event{Action: audit.Rewrap, Subject: row.Subject, DEK: row.ID.String(), KEKVersion: row.KEKVersion}, err)
			return nil, err
		}
	} else {
		from, zerr := r.k.zoneKey(ctx, r.zs, r.cust, r.zone, row.ZoneKeyVersion)
		if zerr != nil {
			return nil, fmt.Errorf("DEK %s: %w", row.ID, zerr)
		}
		secret, err = from.aead.Open(nil, nil, row.Wrapped, dekAD(row))
	}
	if err != nil {
		err = fmt.Errorf("%w: DEK %s of zone %q does not authenticate under zone key v%d (altered or relabelled row)", ErrTampered, row.ID, r.zone, row.ZoneKeyVersion)
		r.recordFailure(ctx, audit.Event{Action: audit.Rewrap, Subject: row.Subject, DEK: row.ID.String(), ZoneKeyVersion: row.ZoneKeyVersion}, err)
		return nil, err
	}
	defer clear(secret)
	next := row
	next.ZoneKeyVersion, next.KEKVersion = target, 0
	return to.aead.Seal(nil, nil, secret, dekAD(next)), nil
}

// countDEKs counts the zone's DEKs by zone-key version.
func (r *rotation) countDEKs(ctx context.Context) (map[uint32]int, int, error) {
	counts := map[uint32]int{}
	total := 0
	for cursor := ""; ; {
		rows, next, err := r.rs.ScanDEKs(ctx, r.zone, cursor, countBatch)
		if err != nil {
			return nil, 0, fmt.Errorf("zone %q: counting DEKs: %w", r.zone, err)
		}
		for _, row := range rows {
			counts[row.ZoneKeyVersion]++
		}
		total += len(rows)
		if next == "" {
			return counts, total, nil
		}
		cursor = next
	}
}

// belowCount sums the counts of the versions below v.
func belowCount(counts map[uint32]int, v uint32) int {
	n := 0
	for version, c := range counts {
		if version < v {
			n += c
		}
	}
	return n
}

// ZoneKeyStatus describes every version of the zone's key, by ascending
// version, with the number of DEKs wrapped under each. It reads only rows;
// no key is unwrapped.
func (k *Keyring) ZoneKeyStatus(ctx context.Context, zone string) ([]ZoneKeyStatus, error) {
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return nil, err
	}
	rows, err := r.rs.ZoneKeys(ctx, zone)
	if err != nil {
		return nil, fmt.Errorf("zone %q: listing zone keys: %w", zone, err)
	}
	counts, _, err := r.countDEKs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ZoneKeyStatus, 0, len(rows))
	for _, row := range rows {
		out = append(out, ZoneKeyStatus{
			Zone: row.Zone, Version: row.Version, ID: row.ID, KEKVersion: row.KEKVersion,
			Created: row.Created.UTC(), DEKs: counts[row.Version],
		})
	}
	slices.SortFunc(out, func(a, b ZoneKeyStatus) int {
		switch {
		case a.Version < b.Version:
			return -1
		case a.Version > b.Version:
			return 1
		}
		return 0
	})
	return out, nil
}
