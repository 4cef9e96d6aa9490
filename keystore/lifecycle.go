// # Shredding, moving subjects and key epochs
//
// A subject's data is erased by destroying its keys, never by finding its
// ciphertexts: [Keyring.ShredSubject] deletes the subject's DEK rows and
// leaves a [Tombstone]. From then on a ciphertext of the subject fails with
// ErrKeyShredded: at once in the shredding process, and in other processes
// once the DEK leaves their cache, at most [Config.DEKTTL] later. The
// subject gets no new DEK unless the caller asks for one with
// [Keyring.Reinstate] (a returning user is a new generation of the subject,
// whose old data stays unreadable).
//
// Deleting a row does not erase it from a backup of the store taken earlier.
// A key epoch ([Keyring.Epoch]) closes that hole: it rotates the zone's KEK
// at the custodian, makes a zone-key version wrapped only under the new KEK
// version, rewraps every living DEK of the zone under it, deletes the older
// zone-key rows, and destroys every older KEK version at the custodian.
// After that, no copy of the store older than the epoch opens anything: its
// zone keys are wrapped only under destroyed KEK versions, and the live
// store holds none of them. A shred is therefore final in backups at the
// zone's next epoch (and once running processes' zone-key caches expire,
// [Config.ZoneKeyTTL]). Backups taken before an epoch become unreadable as a
// whole: take a new backup after each epoch.
//
// [Keyring.ShredZone] destroys the zone's KEK itself: every record of the
// zone, in every copy, becomes unreadable.
//
// [Keyring.MoveSubject] puts a subject's DEKs under another zone without
// touching its data, and without any process holding the key of a zone it
// is not in: the process in the source zone unwraps each DEK and wraps it
// directly for the target zone's custodian (a wrap-only permission there is
// enough), and one store transaction replaces the rows. The target zone
// adopts a moved DEK under its zone key on its first use there, or at its
// next zone-key rotation or epoch. The subject's stored DEKs are in
// exactly one zone at every moment (other processes of the source zone that
// cached one keep it until it expires, at most DEKTTL, as after a shred),
// and a move that stopped is completed by running it again.
package keystore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/kms"
)

// Defaults of EpochOptions.
const (
	DefaultEpochLease = 2 * time.Minute
)

// ShredResult is the result of ShredSubject.
type ShredResult struct {
	Zone, Subject string
	// DEKs lists the ids of the DEKs this call deleted; empty when the
	// subject had been shredded already (AlreadyShredded).
	DEKs            []envelope.KeyID
	AlreadyShredded bool
	// Tombstone is the subject's tombstone after the shred.
	Tombstone Tombstone
	// LastEpoch is the zone's latest key epoch at the time of the shred
	// (Number 0 if it never had one). The shred is final in backups of the
	// store once an epoch that starts after it has finished.
	LastEpoch EpochRow
	// FinishedEpoch is the zone's latest finished key epoch (LastEpoch if
	// it has finished, else the one before; Number 0 if none): the shred
	// is final in backups if it started after the shred.
	FinishedEpoch EpochRow
}

// lifecycle returns the store as a LifecycleStore, or an error naming what
// is missing.
func (k *Keyring) lifecycle(zone string) (LifecycleStore, RotationStore, error) {
	ls, ok := k.store.(LifecycleStore)
	rs, ok2 := k.store.(RotationStore)
	if !ok || !ok2 {
		return nil, nil, fmt.Errorf("keystore: zone %q: the store (%T) does not implement keystore.LifecycleStore and RotationStore: %w", zone, k.store, errors.ErrUnsupported)
	}
	return ls, rs, nil
}

// checkSubject refuses a subject that cannot be shredded, moved or
// reinstated: the rolling DEK's "" and the keyring's own reserved subjects.
func checkSubject(subject string) error {
	switch {
	case subject == "":
		return fmt.Errorf("%w: empty subject (a zone's rolling DEK is not a subject's)", ErrInvalidValue)
	case IsReserved(subject):
		return fmt.Errorf("%w: subjects starting with %q are reserved for the keyring's own keys", ErrInvalidValue, ReservedPrefix)
	case len(subject) > MaxSubject:
		return fmt.Errorf("%w: subject of %d bytes, longer than the %d allowed", ErrInvalidValue, len(subject), MaxSubject)
	}
	return nil
}

// ShredSubject deletes every DEK of subject in zone and records a tombstone
// (see the package documentation). The DEKs leave this keyring's cache at
// once. Shredding a subject that is already shredded changes nothing and
// reports AlreadyShredded; a subject that never had a DEK in the zone is
// ErrUnknownKey, one moved away ErrSubjectMoved, and nothing is changed.
//
// The caller must be allowed in the zone by the keyring's Policy (or the
// keyring has none, as in the custodian's tools). The shred is recorded in
// the audit log before the rows are deleted.
func (k *Keyring) ShredSubject(ctx context.Context, zone, subject string) (ShredResult, error) {
	res := ShredResult{Zone: zone, Subject: subject}
	if k.closed.Load() {
		return res, ErrClosed
	}
	if err := checkSubject(subject); err != nil {
		return res, err
	}
	if _, _, err := k.zone(zone); err != nil {
		return res, err
	}
	ls, _, err := k.lifecycle(zone)
	if err != nil {
		return res, err
	}
	caller, err := k.authorize(ctx, zone, subject, nil)
	if err != nil {
		return res, err
	}
	if res.LastEpoch, err = latestEpoch(ctx, ls, zone); err != nil {
		return res, err
	}
	if res.FinishedEpoch, err = finishedEpoch(ctx, ls, res.LastEpoch); err != nil {
		return res, err
	}
	rows, err := ls.SubjectDEKs(ctx, zone, subject)
	if err != nil {
		return res, fmt.Errorf("zone %q: %w", zone, err)
	}
	if len(rows) == 0 {
		t, err := k.tombstoneError(ctx, ls, zone, subject)
		if errors.Is(err, ErrKeyShredded) {
			res.AlreadyShredded, res.Tombstone = true, t
			return res, nil
		}
		return res, err
	}
	ev := audit.Event{Action: audit.Shred, Decision: audit.Allow, Zone: zone, Subject: subject,
		Reason: fmt.Sprintf("%d DEKs of the subject deleted; final in backups after the zone's next epoch", len(rows))}
	if err := k.record(ctx, caller, ev); err != nil {
		return res, err
	}
	t, ids, err := ls.ShredSubject(ctx, zone, subject, k.now().UTC())
	k.forgetSubject(zone, subject)
	if errors.Is(err, ErrUnknownKey) {
		// Shredded by another process since the listing.
		t, err = k.tombstoneError(ctx, ls, zone, subject)
		if errors.Is(err, ErrKeyShredded) {
			res.AlreadyShredded, res.Tombstone = true, t
			return res, nil
		}
		return res, err
	}
	if err != nil {
		return res, fmt.Errorf("zone %q: shredding subject: %w", zone, err)
	}
	res.DEKs, res.Tombstone = ids, t
	return res, nil
}

// forgetSubject drops the subject's DEKs from the cache.
func (k *Keyring) forgetSubject(zone, subject string) {
	k.cache.forget(func(d *DEK) bool { return d.Zone == zone && d.Subject == subject })
}

// latestEpoch returns the zone's latest epoch, or a zero row (Number 0).
func latestEpoch(ctx context.Context, ls LifecycleStore, zone string) (EpochRow, error) {
	e, err := ls.LatestEpoch(ctx, zone)
	if errors.Is(err, ErrUnknownKey) {
		return EpochRow{Zone: zone}, nil
	}
	if err != nil {
		return EpochRow{}, fmt.Errorf("zone %q: reading key epochs: %w", zone, err)
	}
	return e, nil
}

// finishedEpoch returns the latest finished epoch of a zone whose latest
// epoch is last: last itself once finished, else the one before (epochs of
// a zone run one at a time), or a zero row if there is none.
func finishedEpoch(ctx context.Context, ls LifecycleStore, last EpochRow) (EpochRow, error) {
	switch {
	case !last.Finished.IsZero():
		return last, nil
	case last.Number <= 1:
		return EpochRow{Zone: last.Zone}, nil
	}
	e, err := ls.Epoch(ctx, last.Zone, last.Number-1)
	if err != nil {
		return EpochRow{}, fmt.Errorf("zone %q: reading key epoch %d: %w", last.Zone, last.Number-1, err)
	}
	return e, nil
}

// tombstoneError explains why (zone, subject) has no DEK row: an error
// wrapping ErrKeyShredded or ErrSubjectMoved with its tombstone, or
// ErrUnknownKey for a subject that never had a key in the zone.
func (k *Keyring) tombstoneError(ctx context.Context, ls LifecycleStore, zone, subject string) (Tombstone, error) {
	t, err := ls.Tombstone(ctx, zone, subject)
	switch {
	case errors.Is(err, ErrUnknownKey):
		return Tombstone{}, fmt.Errorf("%w: subject %q has no key in zone %q; nothing changed", ErrUnknownKey, subject, zone)
	case err != nil:
		return Tombstone{}, fmt.Errorf("zone %q: reading tombstone: %w", zone, err)
	case t.Kind == Moved:
		return t, fmt.Errorf("%w: subject %q moved from zone %q to zone %q at %s", ErrSubjectMoved, subject, zone, t.To, t.Created.Format(time.RFC3339))
	default:
		return t, fmt.Errorf("%w: subject %q of zone %q was shredded at %s", ErrKeyShredded, subject, zone, t.Created.Format(time.RFC3339))
	}
}

// zoneShredded reports, as an error wrapping ErrKeyShredded, whether the
// zone has been shredded. Stores without LifecycleStore have no shredded
// zones.
func (k *Keyring) zoneShredded(ctx context.Context, zone string) error {
	ls, ok := k.store.(LifecycleStore)
	if !ok {
		return nil
	}
	t, err := ls.Tombstone(ctx, zone, "")
	switch {
	case errors.Is(err, ErrUnknownKey):
		return nil
	case err != nil:
		return fmt.Errorf("zone %q: reading tombstone: %w", zone, err)
	case t.Kind == ZoneShredded:
		return fmt.Errorf("%w: zone %q was shredded at %s", ErrKeyShredded, zone, t.Created.Format(time.RFC3339))
	}
	return nil
}

// beforeCreate is asked before the keyring creates the first DEK of a
// subject: a shredded or moved subject, or a shredded zone, gets none.
func (k *Keyring) beforeCreate(ctx context.Context, zone, subject string) error {
	if err := k.zoneShredded(ctx, zone); err != nil {
		return err
	}
	ls, ok := k.store.(LifecycleStore)
	if !ok || subject == "" {
		return nil
	}
	_, err := k.tombstoneError(ctx, ls, zone, subject)
	if errors.Is(err, ErrUnknownKey) {
		return nil
	}
	if err != nil && (errors.Is(err, ErrKeyShredded) || errors.Is(err, ErrSubjectMoved)) {
		return fmt.Errorf("%w (Reinstate gives the subject a new DEK)", err)
	}
	return err
}

// unknownDEK explains a DEK id the store does not hold: an error wrapping
// ErrKeyShredded if it was shredded (after the caller's custody of its zone
// is checked), else err.
func (k *Keyring) unknownDEK(ctx context.Context, id envelope.KeyID, err error) error {
	ls, ok := k.store.(LifecycleStore)
	if !ok {
		return err
	}
	t, terr := ls.ShreddedDEK(ctx, id)
	if errors.Is(terr, ErrUnknownKey) {
		return err
	}
	if terr != nil {
		return fmt.Errorf("DEK %s: reading tombstone: %w", id, terr)
	}
	if _, aerr := k.authorize(ctx, t.Zone, t.Subject, &id); aerr != nil {
		return aerr
	}
	return fmt.Errorf("%w: DEK %s of a subject of zone %q was shredded (subject shredded at %s)", ErrKeyShredded, id, t.Zone, t.Created.Format(time.RFC3339))
}

// Reinstate gives a shredded (or moved-away) subject a new DEK in zone, of
// a generation after every one it had: data encrypted from now on is
// readable, data from before the shred stays unreadable. It returns the new
// DEK, which DataKey then returns for the subject. A subject that has a
// living DEK in the zone gets it back unchanged; one that never had a key
// there is ErrUnknownKey.
func (k *Keyring) Reinstate(ctx context.Context, zone, subject string) (*DEK, error) {
	if k.closed.Load() {
		return nil, ErrClosed
	}
	if err := checkSubject(subject); err != nil {
		return nil, err
	}
	zs, cust, err := k.zone(zone)
	if err != nil {
		return nil, err
	}
	ls, _, err := k.lifecycle(zone)
	if err != nil {
		return nil, err
	}
	caller, err := k.authorize(ctx, zone, subject, nil)
	if err != nil {
		return nil, err
	}
	ctx = kms.WithCaller(ctx, caller)
	if err := k.zoneShredded(ctx, zone); err != nil {
		return nil, err
	}
	return k.currentDEK(ctx, zs, cust, zone, subject, func() (*DEK, error) {
		t, err := k.tombstoneError(ctx, ls, zone, subject)
		if !errors.Is(err, ErrKeyShredded) && !errors.Is(err, ErrSubjectMoved) {
			return nil, err
		}
		return k.createDEK(ctx, zs, cust, zone, subject, t.Generation+1)
	})
}

// ShredZone destroys the zone's KEK at its custodian, which must implement
// kms.Destroyer: every record of the zone, in every copy of the store,
// becomes unreadable for good, and the zone gets no new key. confirm must
// be the zone's name again, so that a slip does not destroy a zone.
//
// A first shred checks that the custodian holds the KEK (with a
// kms.KeyManager: KEKVersions), and refuses with kms.ErrUnknownKey one
// that does not, writing nothing: the zone's URL may name the wrong key.
// The zone's tombstone is stored first, so that no process creates keys
// under a zone being destroyed; then the KEK is destroyed. If the destroy
// fails, running ShredZone again completes it. Processes that hold the
// zone's key in memory can use it for up to ZoneKeyTTL.
func (k *Keyring) ShredZone(ctx context.Context, zone, confirm string) (Tombstone, error) {
	if k.closed.Load() {
		return Tombstone{}, ErrClosed
	}
	zs, cust, err := k.zone(zone)
	if err != nil {
		return Tombstone{}, err
	}
	if confirm != zone {
		return Tombstone{}, fmt.Errorf("%w: shredding zone %q destroys all of its data: confirm with the zone's name (got %q)", ErrInvalidValue, zone, confirm)
	}
	ls, _, err := k.lifecycle(zone)
	if err != nil {
		return Tombstone{}, err
	}
	d, ok := cust.(kms.Destroyer)
	if !ok {
		return Tombstone{}, fmt.Errorf("%w: zone %q: the custodian (%T) cannot destroy its KEK", kms.ErrConfig, zone, cust)
	}
	caller, err := k.authorize(ctx, zone, "", nil)
	if err != nil {
		return Tombstone{}, err
	}
	ctx = kms.WithCaller(ctx, caller)
	// A first shred checks that the custodian has the KEK: destroying a
	// key that does not exist succeeds (so that a shred can be run again
	// after a lost answer), and would report a zone destroyed whose real
	// KEK a mistyped URL or another custodian address left intact.
	if km, ok := cust.(kms.KeyManager); ok && k.zoneShredded(ctx, zone) == nil {
		if _, _, err := km.KEKVersions(ctx); err != nil {
			if errors.Is(err, kms.ErrUnknownKey) {
				err = fmt.Errorf("zone %q: the custodian has no KEK where the zone's configuration points, so there is nothing to destroy; check the zone's KEK URL: %w", zone, err)
			} else {
				err = fmt.Errorf("zone %q: checking the KEK before destroying it: %w", zone, err)
			}
			return Tombstone{}, err
		}
	}
	ev := audit.Event{Action: audit.Shred, Decision: audit.Allow, Zone: zone, Reason: "zone shredded: its KEK is destroyed at the custodian"}
	if err := k.record(ctx, caller, ev); err != nil {
		return Tombstone{}, err
	}
	t, err := ls.ShredZone(ctx, zone, k.now().UTC())
	if err != nil {
		return Tombstone{}, fmt.Errorf("zone %q: recording the shred: %w", zone, err)
	}
	k.forgetZone(zs, zone)
	if err := d.Destroy(ctx); err != nil {
		err = fmt.Errorf("zone %q: the zone is marked shredded, but destroying its KEK failed (run the shred again): %w", zone, err)
		ev.Decision, ev.Reason = audit.Error, err.Error()
		k.record(ctx, caller, ev)
		return t, err
	}
	return t, nil
}

// forgetZone drops the zone's keys from memory.
func (k *Keyring) forgetZone(zs *zoneState, zone string) {
	k.cache.forget(func(d *DEK) bool { return d.Zone == zone })
	zs.mu.Lock()
	zs.versions = map[uint32]*zoneKey{}
	zs.current, zs.rolling = 0, nil
	zs.mu.Unlock()
	k.aux.purge()
}

// MoveResult is the result of MoveSubject.
type MoveResult struct {
	Subject, From, To string
	// DEKs lists the ids of the DEKs this call moved; empty when the
	// subject had been moved already (AlreadyMoved).
	DEKs         []envelope.KeyID
	AlreadyMoved bool
}

// maxMoveAttempts bounds how often MoveSubject starts again after the
// subject's rows changed under it.
const maxMoveAttempts = 4

// MoveSubject moves the DEKs of subject from zone from to zone to; the data
// is not touched (see the package documentation). The caller must be in
// from's custody; to's custodian is asked only to wrap (Wrap), which is all
// the permission the process needs there. Afterwards the subject's records
// decrypt for callers in to and are refused to callers only in from, and a
// new DEK of the subject in from is refused with ErrSubjectMoved unless
// Reinstate is asked. Moving a subject that was already moved to to
// reports AlreadyMoved and changes nothing. A subject id names one subject
// in every zone: DEKs it already has in to stay, the moved ones become its
// newest there, and a later move out of to takes them all.
//
// Errors: ErrInvalidValue for from == to or a bad subject, ErrUnknownZone
// for an unconfigured zone, ErrUnknownKey for a subject without keys in
// from, ErrKeyShredded for a shredded one, ErrSubjectMoved for one moved to
// a third zone; in each case nothing changed.
func (k *Keyring) MoveSubject(ctx context.Context, subject, from, to string) (MoveResult, error) {
	res := MoveResult{Subject: subject, From: from, To: to}
	if k.closed.Load() {
		return res, ErrClosed
	}
	if err := checkSubject(subject); err != nil {
		return res, err
	}
	zsFrom, custFrom, err := k.zone(from)
	if err != nil {
		return res, err
	}
	_, custTo, err := k.zone(to)
	if err != nil {
		return res, err
	}
	if from == to {
		return res, fmt.Errorf("%w: subject %q is already in zone %q", ErrInvalidValue, subject, to)
	}
	ls, _, err := k.lifecycle(from)
	if err != nil {
		return res, err
	}
	caller, err := k.authorize(ctx, from, subject, nil)
	if err != nil {
		return res, err
	}
	ctx = kms.WithCaller(ctx, caller)
	if err := k.zoneShredded(ctx, to); err != nil {
		return res, err
	}
	for attempt := 1; ; attempt++ {
		rows, err := ls.SubjectDEKs(ctx, from, subject)
		if err != nil {
			return res, fmt.Errorf("zone %q: %w", from, err)
		}
		if len(rows) == 0 {
			t, err := k.tombstoneError(ctx, ls, from, subject)
			if errors.Is(err, ErrSubjectMoved) && t.To == to {
				res.AlreadyMoved = true
				return res, nil
			}
			return res, err
		}
		moved, err := k.wrapForZone(ctx, ls, zsFrom, custFrom, custTo, to, rows)
		if err != nil {
			return res, err
		}
		ev := audit.Event{Action: audit.Migrate, Decision: audit.Allow, Zone: from, Subject: subject,
			Reason: fmt.Sprintf("%d DEKs moved to zone %q", len(moved), to)}
		if err := k.record(ctx, caller, ev); err != nil {
			return res, err
		}
		err = ls.MoveDEKs(ctx, from, moved, k.now().UTC())
		k.forgetSubject(from, subject)
		if err == nil {
			for _, r := range moved {
				res.DEKs = append(res.DEKs, r.ID)
			}
			return res, nil
		}
		if (errors.Is(err, ErrConflict) || errors.Is(err, ErrExists)) && attempt < maxMoveAttempts {
			continue // the subject's rows changed under us: list them again
		}
		return res, fmt.Errorf("moving subject %q from zone %q to zone %q: %w", subject, from, to, err)
	}
}

// wrapForZone unwraps each of rows (of one subject) and wraps it directly
// for zone to's custodian, as pending rows of to with fresh generations.
func (k *Keyring) wrapForZone(ctx context.Context, ls LifecycleStore, zsFrom *zoneState, custFrom, custTo kms.Custodian, to string, rows []DEKRow) ([]DEKRow, error) {
	subject := rows[0].Subject
	base := uint32(0)
	switch row, err := k.store.LatestDEK(ctx, to, subject); {
	case err == nil:
		base = row.Generation
	case !errors.Is(err, ErrUnknownKey):
		return nil, fmt.Errorf("zone %q: %w", to, err)
	}
	switch t, err := ls.Tombstone(ctx, to, subject); {
	case err == nil:
		base = max(base, t.Generation)
	case !errors.Is(err, ErrUnknownKey):
		return nil, fmt.Errorf("zone %q: reading tombstone: %w", to, err)
	}
	out := make([]DEKRow, 0, len(rows))
	for i, row := range rows {
		secret, err := k.unwrapKeyRow(ctx, zsFrom, custFrom, row)
		if err != nil {
			return nil, err
		}
		next := DEKRow{ID: row.ID, Zone: to, Subject: subject, Generation: base + uint32(i) + 1, Created: row.Created}
		w, err := custTo.Wrap(ctx, secret, pendingBinding(next))
		clear(secret)
		if err != nil {
			return nil, fmt.Errorf("DEK %s: wrapping for zone %q: %w", row.ID, to, err)
		}
		next.Wrapped, next.KEKVersion = w.Ciphertext, w.KEKVersion
		out = append(out, next)
	}
	return out, nil
}

// pendingBinding is the binding under which a moved DEK is wrapped by its
// new zone's KEK until adopted: the DEK's id, a digest of its subject (a
// binding's strings are sent to the custodian; the subject need not be) and
// its generation.
func pendingBinding(row DEKRow) kms.Binding {
	h := sha256.Sum256([]byte(row.Subject))
	return kms.Binding{Zone: row.Zone, KeyID: "dek:" + row.ID.String() + ":" + hex.EncodeToString(h[:16]), Version: row.Generation}
}

// unwrapPending unwraps a pending DEK row at its zone's custodian and, when
// the store can, adopts it under the zone's current zone key, so that the
// custodian is asked once per moved DEK. It returns the secret, which the
// caller must clear.
func (k *Keyring) unwrapPending(ctx context.Context, zs *zoneState, cust kms.Custodian, row DEKRow) ([]byte, error) {
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.DEKUnwrap, Decision: audit.Allow, Zone: row.Zone, Subject: row.Subject, DEK: row.ID.String(), KEKVersion: row.KEKVersion, Reason: "moved DEK, wrapped by the zone's KEK"}
	secret, err := cust.Unwrap(ctx, kms.Wrapped{Ciphertext: row.Wrapped, KEKVersion: row.KEKVersion}, pendingBinding(row))
	if err != nil {
		err = fmt.Errorf("DEK %s of zone %q (moved, awaiting adoption): %w", row.ID, row.Zone, err)
		ev.Decision, ev.Reason = audit.Error, err.Error()
		if errors.Is(err, kms.ErrDenied) || errors.Is(err, ErrOutsideCustody) {
			ev.Decision = audit.Deny
		}
		k.record(ctx, caller, ev)
		return nil, err
	}
	if err := k.record(ctx, caller, ev); err != nil {
		clear(secret)
		return nil, err
	}
	if len(secret) != envelope.KeySize {
		clear(secret)
		return nil, fmt.Errorf("%w: moved DEK %s is %d bytes", ErrTampered, row.ID, len(secret))
	}
	rs, ok := k.store.(RotationStore)
	if !ok {
		return secret, nil
	}
	zs.mu.Lock()
	zk, err := k.currentZoneKeyLocked(ctx, zs, cust, row.Zone)
	zs.mu.Unlock()
	if err != nil {
		// Readable all the same; adoption is retried on the next use.
		return secret, nil
	}
	next := row
	next.ZoneKeyVersion, next.KEKVersion = zk.version, 0
	wrapped := zk.aead.Seal(nil, nil, secret, dekAD(next))
	aev := audit.Event{Action: audit.Rewrap, Decision: audit.Allow, Zone: row.Zone, Subject: row.Subject, DEK: row.ID.String(), ZoneKeyVersion: zk.version, Reason: "moved DEK adopted under the zone key"}
	if err := k.record(ctx, caller, aev); err != nil {
		clear(secret)
		return nil, err
	}
	// A conflict means another process adopted it first; either way the
	// secret is the same.
	_ = rs.UpdateDEKWrap(ctx, row.ID, 0, row.Wrapped, wrapped, zk.version)
	return secret, nil
}

// EpochOptions configures Epoch.
type EpochOptions struct {
	// BatchSize is the number of DEK rows read and rewrapped per batch.
	// Zero or less means DefaultRotationBatch.
	BatchSize int
	// Progress, if set, is called as the epoch moves on: at each phase
	// and after each batch of the rewrap.
	Progress func(EpochProgress)
	// Owner names the process running the epoch, for the error another
	// run gets meanwhile. Empty means host name and process id.
	Owner string
	// Lease is how long the epoch stays claimed without news from its
	// runner; a run that finds an older claim takes it over. Zero means
	// DefaultEpochLease.
	Lease time.Duration
	// Settle is how long the epoch waits, after making the new zone-key
	// version, before it deletes the older zone keys and destroys the
	// older KEK versions: other processes keep creating DEKs under the
	// zone key they know for up to their ZoneKeyTTL, and such DEKs must
	// be rewrapped before the old key is destroyed. It must be at least
	// the longest ZoneKeyTTL of any process that writes to the zone. Zero
	// means this keyring's ZoneKeyTTL; a negative value does not wait
	// (only when no other process writes to the zone).
	Settle time.Duration
}

// Epoch phases, in order, as EpochProgress.Phase reports them.
const (
	PhaseRotateKEK = "rotate-kek" // a new KEK version at the custodian
	PhaseZoneKey   = "zone-key"   // a new zone-key version under it
	PhaseRewrap    = "rewrap"     // every DEK of the zone rewrapped under it
	PhaseSettle    = "settle"     // waiting for other processes to use it
	PhaseRetire    = "retire"     // older zone-key rows deleted
	PhaseDestroy   = "destroy"    // older KEK versions destroyed
	PhaseDone      = "done"
)

// EpochProgress reports the progress of an epoch.
type EpochProgress struct {
	Zone   string
	Number uint32
	Phase  string
	// Done counts the DEK rows the rewrap has passed, of Total, the rows
	// the zone held when it began (raised if more appear). A pass starts
	// with Done 0; a later pass rewraps the DEKs made meanwhile.
	Done, Total int
	// Until is when the settle phase ends.
	Until time.Time
}

// EpochResult is the result of Epoch.
type EpochResult struct {
	Zone   string
	Number uint32
	// Resumed reports that this call took over an epoch an earlier run
	// had begun.
	Resumed bool
	// KEKVersion is the KEK version made for the epoch: every older one
	// was destroyed.
	KEKVersion uint32
	// ZoneKeyVersion is the zone-key version every living DEK is now
	// wrapped under.
	ZoneKeyVersion uint32
	// Scanned counts the DEK rows of the zone the rewrap passed (once,
	// though a later pass looks again for DEKs made meanwhile); Rewrapped
	// the rows this call rewrapped; ZoneKeysDeleted the older zone-key
	// rows deleted.
	Scanned, Rewrapped, ZoneKeysDeleted int
	Started, Finished                   time.Time
}

// EpochRunningError is returned by Epoch when another run holds the zone's
// epoch. It wraps ErrConflict. Nothing was changed; run again after Lease
// if the other run has stopped.
type EpochRunningError struct {
	Zone   string
	Number uint32
	Owner  string
	Lease  time.Time
}

// Error implements error.
func (e *EpochRunningError) Error() string {
	return fmt.Sprintf("keystore: zone %q: epoch %d is being run by %s (claimed until %s)", e.Zone, e.Number, e.Owner, e.Lease.Format(time.RFC3339))
}

// Unwrap returns ErrConflict.
func (e *EpochRunningError) Unwrap() error { return ErrConflict }

// epochRun is the state of one Epoch call.
type epochRun struct {
	*rotation
	ls    LifecycleStore
	km    kms.KeyManager
	opts  EpochOptions
	cur   EpochRow
	owner string
	lease time.Duration
}

// Epoch runs a key epoch of the zone (see the package documentation): it
// makes every earlier shred final in every backup of the store. The
// custodian must implement kms.KeyManager. It is resumable: a run that
// stopped (cancelled, crashed, custodian unreachable) is continued by the
// next, from the step it reached. While a run holds the epoch, another
// fails with *EpochRunningError and changes nothing.
func (k *Keyring) Epoch(ctx context.Context, zone string, opts EpochOptions) (EpochResult, error) {
	res := EpochResult{Zone: zone}
	ctx, r, err := k.startRotation(ctx, zone)
	if err != nil {
		return res, err
	}
	ls, _, err := k.lifecycle(zone)
	if err != nil {
		return res, err
	}
	km, err := r.keyManager()
	if err != nil {
		return res, err
	}
	if err := k.zoneShredded(ctx, zone); err != nil {
		return res, err
	}
	e := &epochRun{rotation: r, ls: ls, km: km, opts: opts, owner: opts.Owner, lease: opts.Lease}
	if e.owner == "" {
		e.owner = defaultOwner()
	}
	if e.lease <= 0 {
		e.lease = DefaultEpochLease
	}
	if res.Resumed, err = e.claim(ctx); err != nil {
		return res, err
	}
	res.Number, res.Started = e.cur.Number, e.cur.Started
	err = e.run(ctx, &res)
	res.KEKVersion, res.ZoneKeyVersion = e.cur.KEKVersion, e.cur.ZoneKeyVersion
	if err != nil {
		e.recordFailure(ctx, audit.Event{Action: audit.Epoch, KEKVersion: e.cur.KEKVersion, ZoneKeyVersion: e.cur.ZoneKeyVersion}, err)
		e.release(err)
		return res, err
	}
	res.Finished = e.cur.Finished
	return res, nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s/pid-%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// stamp is the keyring's time at the precision stores keep.
func (k *Keyring) stamp() time.Time { return k.now().UTC().Truncate(time.Microsecond) }

// claim starts epoch n+1, or takes over the zone's unfinished epoch whose
// claim has lapsed. It reports whether it took one over.
func (e *epochRun) claim(ctx context.Context) (bool, error) {
	for attempt := 1; ; attempt++ {
		latest, err := latestEpoch(ctx, e.ls, e.zone)
		if err != nil {
			return false, err
		}
		now := e.k.stamp()
		if latest.Number == 0 || !latest.Finished.IsZero() {
			row := EpochRow{Zone: e.zone, Number: latest.Number + 1, Owner: e.owner, Lease: now.Add(e.lease), Started: now}
			err := e.ls.CreateEpoch(ctx, row)
			if err == nil {
				e.cur = row
				return false, nil
			}
			if !errors.Is(err, ErrExists) || attempt == maxCASAttempts {
				return false, fmt.Errorf("zone %q: starting epoch %d: %w", e.zone, row.Number, err)
			}
			continue
		}
		if latest.Owner != e.owner && now.Before(latest.Lease) {
			return false, &EpochRunningError{Zone: e.zone, Number: latest.Number, Owner: latest.Owner, Lease: latest.Lease}
		}
		next := latest
		next.Owner, next.Lease = e.owner, now.Add(e.lease)
		err = e.ls.UpdateEpoch(ctx, latest, next)
		if err == nil {
			e.cur = next
			return true, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == maxCASAttempts {
			return false, fmt.Errorf("zone %q: taking over epoch %d: %w", e.zone, latest.Number, err)
		}
	}
}

// renew stores the epoch row changed by change, with a fresh lease. It
// fails with *EpochRunningError if another run took the epoch over.
func (e *epochRun) renew(ctx context.Context, change func(*EpochRow)) error {
	next := e.cur
	if change != nil {
		change(&next)
	}
	next.Lease = e.k.stamp().Add(e.lease)
	err := e.ls.UpdateEpoch(ctx, e.cur, next)
	if errors.Is(err, ErrConflict) {
		now, rerr := e.ls.LatestEpoch(ctx, e.zone)
		if rerr == nil {
			return &EpochRunningError{Zone: e.zone, Number: now.Number, Owner: now.Owner, Lease: now.Lease}
		}
	}
	if err != nil {
		return fmt.Errorf("zone %q: epoch %d: %w", e.zone, e.cur.Number, err)
	}
	e.cur = next
	return nil
}

// release gives up the claim of a run that stopped on err, so that the next
// run resumes at once instead of waiting for the lease to lapse; a run that
// lost its claim has nothing to release.
func (e *epochRun) release(err error) {
	if _, lost := errors.AsType[*EpochRunningError](err); lost || e.cur.Number == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next := e.cur
	next.Lease = e.k.stamp()
	_ = e.ls.UpdateEpoch(ctx, e.cur, next)
}

func (e *epochRun) progress(p EpochProgress) {
	if e.opts.Progress != nil {
		p.Zone, p.Number = e.zone, e.cur.Number
		e.opts.Progress(p)
	}
}

func (e *epochRun) run(ctx context.Context, res *EpochResult) error {
	// 1. A KEK version that has never wrapped an older zone key.
	if e.cur.KEKVersion == 0 {
		e.progress(EpochProgress{Phase: PhaseRotateKEK})
		v, err := e.km.Rotate(ctx)
		if err != nil {
			return fmt.Errorf("zone %q: epoch %d: rotating the KEK: %w", e.zone, e.cur.Number, err)
		}
		if err := e.record(ctx, audit.Event{Action: audit.Epoch, Decision: audit.Allow, KEKVersion: v, Reason: fmt.Sprintf("epoch %d: KEK rotated", e.cur.Number)}); err != nil {
			return err
		}
		if err := e.renew(ctx, func(r *EpochRow) { r.KEKVersion = v }); err != nil {
			return err
		}
	}
	// 2. A zone-key version wrapped only under it.
	if e.cur.ZoneKeyVersion == 0 {
		e.progress(EpochProgress{Phase: PhaseZoneKey})
		v, err := e.newZoneKey(ctx)
		if err != nil {
			return err
		}
		if err := e.renew(ctx, func(r *EpochRow) { r.ZoneKeyVersion = v }); err != nil {
			return err
		}
	}
	target := e.cur.ZoneKeyVersion
	e.advance(target)
	zkRow, err := e.k.store.ZoneKey(ctx, e.zone, target)
	if err != nil {
		return fmt.Errorf("zone %q: epoch %d: zone key v%d: %w", e.zone, e.cur.Number, target, err)
	}
	// 3. Every DEK under it, then wait for other processes to stop making
	// DEKs under older versions, and rewrap those too.
	if err := e.rewrapAll(ctx, res, target); err != nil {
		return err
	}
	settle := e.opts.Settle
	if settle == 0 {
		settle = e.k.cfg.ZoneKeyTTL
	}
	if until := zkRow.Created.Add(settle); settle > 0 && e.k.now().Before(until) {
		e.progress(EpochProgress{Phase: PhaseSettle, Until: until})
		if err := e.wait(ctx, until); err != nil {
			return err
		}
	}
	// 4. Delete the older zone keys; the store refuses while a DEK row
	// still needs one, which the next pass rewraps.
	for pass := 1; ; pass++ {
		if err := e.rewrapAll(ctx, res, target); err != nil {
			return err
		}
		e.progress(EpochProgress{Phase: PhaseRetire})
		if err := e.rewrapNewerZoneKeys(ctx, target); err != nil {
			return err
		}
		n, err := e.ls.DeleteZoneKeysBelow(ctx, e.zone, target)
		if err == nil {
			res.ZoneKeysDeleted += n
			break
		}
		if !errors.Is(err, ErrConflict) || pass == maxCASAttempts {
			return fmt.Errorf("zone %q: epoch %d: deleting zone keys below v%d: %w", e.zone, e.cur.Number, target, err)
		}
	}
	// 5. Destroy the older KEK versions.
	e.progress(EpochProgress{Phase: PhaseDestroy})
	if err := e.km.DestroyBelow(ctx, e.cur.KEKVersion); err != nil {
		return fmt.Errorf("zone %q: epoch %d: destroying KEK versions below %d: %w", e.zone, e.cur.Number, e.cur.KEKVersion, err)
	}
	e.forgetOldZoneKeys(target)
	if err := e.record(ctx, audit.Event{Action: audit.Epoch, Decision: audit.Allow, KEKVersion: e.cur.KEKVersion, ZoneKeyVersion: target,
		Reason: fmt.Sprintf("epoch %d: KEK versions below %d destroyed", e.cur.Number, e.cur.KEKVersion)}); err != nil {
		return err
	}
	if err := e.renew(ctx, func(r *EpochRow) { r.Finished = e.k.stamp() }); err != nil {
		return err
	}
	e.progress(EpochProgress{Phase: PhaseDone})
	return nil
}

// newZoneKey makes the epoch's zone-key version, latest+1, and checks that
// the custodian wrapped it under the epoch's KEK version or a newer one.
func (e *epochRun) newZoneKey(ctx context.Context) (uint32, error) {
	var latest uint32
	switch row, err := e.k.store.ZoneKey(ctx, e.zone, 0); {
	case err == nil:
		latest = row.Version
	case !errors.Is(err, ErrUnknownKey):
		return 0, fmt.Errorf("zone %q: %w", e.zone, err)
	}
	e.zs.mu.Lock()
	_, err := e.k.createZoneKeyLocked(ctx, e.zs, e.cust, e.zone, latest+1)
	e.zs.mu.Unlock()
	if err != nil {
		// A concurrent zone-key rotation took the version: the next run
		// makes another.
		return 0, fmt.Errorf("zone %q: epoch %d: making zone key v%d: %w", e.zone, e.cur.Number, latest+1, err)
	}
	row, err := e.k.store.ZoneKey(ctx, e.zone, latest+1)
	if err != nil {
		return 0, fmt.Errorf("zone %q: %w", e.zone, err)
	}
	if row.KEKVersion < e.cur.KEKVersion {
		return 0, fmt.Errorf("%w: zone %q: the custodian wrapped the epoch's zone key under KEK v%d, older than the epoch's v%d", kms.ErrConfig, e.zone, row.KEKVersion, e.cur.KEKVersion)
	}
	return latest + 1, nil
}

// rewrapAll rewraps every DEK row of the zone below target (pending rows
// included) under target, renewing the claim after each batch.
func (e *epochRun) rewrapAll(ctx context.Context, res *EpochResult, target uint32) error {
	batch := e.opts.BatchSize
	if batch <= 0 {
		batch = DefaultRotationBatch
	}
	counts, total, err := e.countDEKs(ctx)
	if err != nil {
		return err
	}
	if belowCount(counts, target) == 0 {
		return nil // nothing to rewrap
	}
	done := 0
	e.progress(EpochProgress{Phase: PhaseRewrap, Total: total})
	for cursor := ""; ; {
		if e.k.closed.Load() {
			return ErrClosed
		}
		rows, next, err := e.rs.ScanDEKs(ctx, e.zone, cursor, batch)
		if err != nil {
			return fmt.Errorf("zone %q: epoch %d: %w", e.zone, e.cur.Number, err)
		}
		n, err := e.rewrapDEKs(ctx, rows, target)
		res.Rewrapped += n
		if err != nil {
			return fmt.Errorf("zone %q: epoch %d: %w", e.zone, e.cur.Number, err)
		}
		done += len(rows)
		total = max(total, done)
		res.Scanned = max(res.Scanned, done)
		if err := e.renew(ctx, nil); err != nil {
			return err
		}
		e.progress(EpochProgress{Phase: PhaseRewrap, Done: done, Total: total})
		if next == "" {
			return nil
		}
		cursor = next
	}
}

// rewrapNewerZoneKeys moves zone-key rows at or above target that some
// process wrapped under a KEK version older than the epoch's to the
// custodian's primary version, so that destroying the older versions loses
// none of them.
func (e *epochRun) rewrapNewerZoneKeys(ctx context.Context, target uint32) error {
	rows, err := e.rs.ZoneKeys(ctx, e.zone)
	if err != nil {
		return fmt.Errorf("zone %q: listing zone keys: %w", e.zone, err)
	}
	for _, row := range rows {
		if row.Version >= target && row.KEKVersion < e.cur.KEKVersion {
			if _, err := e.rewrapZoneKey(ctx, e.km, row, e.cur.KEKVersion); err != nil {
				return err
			}
		}
	}
	return nil
}

// wait sleeps until the keyring's clock reaches until, renewing the claim.
func (e *epochRun) wait(ctx context.Context, until time.Time) error {
	for e.k.now().Before(until) {
		d := min(until.Sub(e.k.now()), e.lease/4, time.Second)
		t := time.NewTimer(max(d, time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if err := e.renew(ctx, nil); err != nil {
			return err
		}
	}
	return nil
}

// forgetOldZoneKeys drops zone-key versions below target from memory.
func (e *epochRun) forgetOldZoneKeys(target uint32) {
	e.zs.mu.Lock()
	defer e.zs.mu.Unlock()
	for v := range e.zs.versions {
		if v < target {
			delete(e.zs.versions, v)
		}
	}
}
