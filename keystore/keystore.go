// Package keystore is the keyring of zonekey: it hands out data keys (DEKs)
// for encryption and finds them again for decryption, keeping the three-level
// key hierarchy of zone custody.
//
//	KEK        held by the zone's custodian (package kms); never leaves it
//	 └ zone key   per zone, versioned, 256-bit; stored wrapped by the KEK;
//	              unwrapped by the custodian, then cached for ZoneKeyTTL
//	    └ DEK        per (zone, subject); stored wrapped by the zone key
//	                 (AES-256-GCM bound to DEK id, zone, subject, generation
//	                 and zone-key version); cached in a bounded LRU
//
// A process makes one custodian call per zone-key version per ZoneKeyTTL,
// however many subjects it touches: a DEK cache miss costs a Store read and a
// local unwrap. Rows live behind the Store interface; package
// keystore/boltstore is the embedded implementation.
//
// Records without a subject use a per-zone rolling DEK. Each process rolls its
// own: it creates a fresh one on first use and again after RollingMaxUses
// encryptions or RollingMaxAge, so AES-GCM's random-nonce limit (far below
// 2^32 messages per key) holds exactly, whatever the number of processes.
package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/internal/coarse"
	"github.com/zonekey/zonekey/internal/errs"
	"github.com/zonekey/zonekey/kms"
)

// Errors returned by the keyring and by Stores, wrapped with detail. They are
// the same values as the sentinels of package zonekey.
var (
	// ErrUnknownKey reports a DEK or zone key that is not in the store.
	ErrUnknownKey = errs.UnknownKey
	// ErrUnknownZone reports a zone with no configured custodian.
	ErrUnknownZone = errs.UnknownZone
	// ErrTampered reports a stored key row that failed authentication: its
	// wrapped key was altered or the row was relabelled to another zone,
	// subject or version.
	ErrTampered = errs.Tampered
	// ErrKMSUnavailable reports that the zone's custodian could not be
	// reached; nothing was stored. Retrying later may succeed.
	ErrKMSUnavailable = errs.KMSUnavailable
	// ErrKeyShredded reports a DEK, subject or zone that has been shredded
	// (ShredSubject, ShredZone): its data can no longer be read, and a
	// shredded subject gets a new DEK only through Reinstate.
	ErrKeyShredded = errs.KeyShredded
	// ErrSubjectMoved reports a subject whose DEKs were moved to another
	// zone (MoveSubject): encrypt its data under that zone now.
	ErrSubjectMoved = errs.SubjectMoved
	// ErrExists is returned by Store creates that collide with a stored
	// row. The keyring handles it by reading the winner's row.
	ErrExists = errs.Exists
	// ErrClosed reports use of a closed keyring or store.
	ErrClosed = errs.Closed
	// ErrStore reports a failure of the store itself (I/O, database).
	ErrStore = errs.Store
	// ErrInvalidValue reports an argument the keyring or a Store refuses
	// before doing anything: a subject longer than MaxSubject, a row with
	// version or generation 0, a zone or subject too long to store.
	ErrInvalidValue = errs.InvalidValue
)

// Defaults for Config fields left zero.
const (
	DefaultZoneKeyTTL     = 10 * time.Minute
	DefaultDEKTTL         = 5 * time.Minute
	DefaultDEKCacheSize   = 10000
	DefaultRollingMaxUses = 1 << 24
	DefaultRollingMaxAge  = 24 * time.Hour
)

// Config configures a Keyring.
type Config struct {
	// Store holds the wrapped key rows. Required.
	Store Store
	// Custodians maps each zone to the custodian of its KEK. Required;
	// a zone not in the map is refused with ErrUnknownZone.
	Custodians map[string]kms.Custodian
	// ZoneKeyTTL bounds how long an unwrapped zone key stays in memory, and
	// how long a process keeps creating DEKs under a zone-key version after
	// another process made a newer one.
	ZoneKeyTTL time.Duration
	// DEKTTL bounds how long an unwrapped DEK stays in memory; it is the
	// bound on how long a running process can still use a DEK that another
	// process shredded or rewrapped.
	DEKTTL time.Duration
	// DEKCacheSize bounds how many unwrapped DEKs are kept (LRU). Each costs
	// about 1.3 KB.
	DEKCacheSize int
	// RollingMaxUses and RollingMaxAge bound the use of a zone's rolling
	// DEK (for records without a subject) by this process.
	RollingMaxUses uint64
	RollingMaxAge  time.Duration
	// Policy decides which callers may use each zone's keys; it is
	// consulted on every DataKey and Key call, before any store read or
	// custodian call (a RegionPolicy's allow is reused on cache hits for
	// at most a second; see Policy). Nil means no custody check: only for tools and tests that run
	// with the custodian's own authority.
	Policy Policy
	// Audit receives an event for every key unwrap and creation and every
	// denial. If recording a key operation fails, the operation is
	// refused (ErrAudit). Nil records nothing.
	Audit audit.Sink
	// Now returns the current time; tests set it. Defaults to time.Now.
	Now func() time.Time
}

// DEK is an unwrapped data key and what it belongs to. It is immutable and
// safe for concurrent use.
type DEK struct {
	*envelope.Key
	Zone       string
	Subject    string
	Generation uint32
	expires    time.Time
	used       atomic.Bool // used since the cache last considered evicting it
}

// Keyring hands out DEKs. It is safe for concurrent use.
type Keyring struct {
	store      Store
	custodians map[string]kms.Custodian
	cfg        Config
	now        func() time.Time
	policy     Policy
	audit      audit.Sink

	cache *lru     // DEKs by id, and current DEK by (zone, subject)
	aux   auxCache // blind-index and deterministic keys (aux.go)

	zonesMu sync.Mutex
	zones   map[string]*zoneState

	closed atomic.Bool
}

// New returns a Keyring over cfg.Store and cfg.Custodians.
func New(cfg Config) (*Keyring, error) {
	if cfg.Store == nil {
		return nil, errors.New("keystore: Config.Store is nil")
	}
	if len(cfg.Custodians) == 0 {
		return nil, fmt.Errorf("%w: no zones configured", ErrUnknownZone)
	}
	for z, c := range cfg.Custodians {
		if err := ValidateZone(z); err != nil {
			return nil, err
		}
		if c == nil {
			return nil, fmt.Errorf("keystore: zone %q has a nil custodian", z)
		}
	}
	if cfg.ZoneKeyTTL <= 0 {
		cfg.ZoneKeyTTL = DefaultZoneKeyTTL
	}
	if cfg.DEKTTL <= 0 {
		cfg.DEKTTL = DefaultDEKTTL
	}
	if cfg.DEKCacheSize <= 0 {
		cfg.DEKCacheSize = DefaultDEKCacheSize
	}
	if cfg.RollingMaxUses == 0 {
		cfg.RollingMaxUses = DefaultRollingMaxUses
	}
	if cfg.RollingMaxAge <= 0 {
		cfg.RollingMaxAge = DefaultRollingMaxAge
	}
	now := cfg.Now
	if now == nil {
		// TTL checks run on every key access: a coarse clock reads in
		// nanoseconds where the system clock can take tens.
		now = coarse.Now
	}
	cs := make(map[string]kms.Custodian, len(cfg.Custodians))
	for z, c := range cfg.Custodians {
		cs[z] = c
	}
	k := &Keyring{
		store:      cfg.Store,
		custodians: cs,
		cfg:        cfg,
		now:        now,
		policy:     cfg.Policy,
		audit:      cfg.Audit,
		cache:      newLRU(cfg.DEKCacheSize),
		zones:      make(map[string]*zoneState, len(cs)),
	}
	for z := range cs {
		k.zones[z] = &zoneState{versions: map[uint32]*zoneKey{}}
	}
	return k, nil
}

// ValidateZone checks a zone name: 1 to 63 characters of a-z, 0-9, '-' and
// '_', starting with a letter or digit.
func ValidateZone(zone string) error {
	if len(zone) == 0 || len(zone) > 63 {
		return fmt.Errorf("%w: zone name %q must be 1 to 63 characters", ErrUnknownZone, zone)
	}
	for i := 0; i < len(zone); i++ {
		c := zone[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("%w: zone name %q may hold only a-z, 0-9, '-' and '_'", ErrUnknownZone, zone)
		}
	}
	return nil
}

// MaxSubject bounds the length of a subject identifier in bytes.
const MaxSubject = 1024

// Zones returns the configured zones.
func (k *Keyring) Zones() []string {
	out := make([]string, 0, len(k.custodians))
	for z := range k.custodians {
		out = append(out, z)
	}
	return out
}

// Close closes the keyring and drops cached keys. It does not close the
// Store or the custodians, which the caller owns.
func (k *Keyring) Close() error {
	if k.closed.Swap(true) {
		return nil
	}
	k.cache.purge()
	k.aux.purge()
	k.zonesMu.Lock()
	for _, zs := range k.zones {
		zs.mu.Lock()
		zs.versions = map[uint32]*zoneKey{}
		zs.rolling = nil
		zs.mu.Unlock()
	}
	k.zonesMu.Unlock()
	return nil
}

func (k *Keyring) zone(zone string) (*zoneState, kms.Custodian, error) {
	c, ok := k.custodians[zone]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %q (configured: %v)", ErrUnknownZone, zone, k.Zones())
	}
	return k.zones[zone], c, nil
}

// DataKey returns the DEK to encrypt new data of subject in zone, creating
// and durably storing it first if the subject has none. An empty subject
// selects the zone's rolling DEK. Subjects starting with ReservedPrefix are
// the keyring's own and refused with ErrInvalidValue.
func (k *Keyring) DataKey(ctx context.Context, zone, subject string) (*DEK, error) {
	if k.closed.Load() {
		return nil, ErrClosed
	}
	if IsReserved(subject) {
		return nil, fmt.Errorf("%w: subjects starting with %q are reserved for the keyring's own keys", ErrInvalidValue, ReservedPrefix)
	}
	if subject != "" {
		// A cached current DEK is only ever of a configured zone; the
		// policy is still consulted before it is handed out.
		if d, err := k.cachedDataKey(ctx, zone, subject); d != nil || err != nil {
			return d, err
		}
	}
	caller, err := k.authorize(ctx, zone, subject, nil)
	if err != nil {
		return nil, err
	}
	if subject == "" {
		return k.rollingKey(kms.WithCaller(ctx, caller), zone)
	}
	now := k.now()
	if d := k.cache.current(zone, subject, now); d != nil {
		return d, nil
	}
	ctx = kms.WithCaller(ctx, caller)
	if len(subject) > MaxSubject {
		return nil, fmt.Errorf("%w: subject of %d bytes, longer than the %d allowed", ErrInvalidValue, len(subject), MaxSubject)
	}
	zs, cust, err := k.zone(zone)
	if err != nil {
		return nil, err
	}
	return k.currentDEK(ctx, zs, cust, zone, subject, func() (*DEK, error) {
		if err := k.beforeCreate(ctx, zone, subject); err != nil {
			return nil, err
		}
		d, err := k.createDEK(ctx, zs, cust, zone, subject, 1)
		if errors.Is(err, ErrKeyShredded) || errors.Is(err, ErrSubjectMoved) {
			// A shred or move landed after beforeCreate: the store
			// refused the row. Say so as beforeCreate would have.
			if berr := k.beforeCreate(ctx, zone, subject); berr != nil {
				return nil, berr
			}
		}
		return d, err
	})
}

// currentDEK returns the subject's latest stored DEK, unwrapped and cached
// as its current one; if the subject has none, it calls create and caches
// what that makes. A create that loses a race to another process or
// goroutine (ErrExists) reads the winner's row instead.
func (k *Keyring) currentDEK(ctx context.Context, zs *zoneState, cust kms.Custodian, zone, subject string, create func() (*DEK, error)) (*DEK, error) {
	for attempt := 0; ; attempt++ {
		mark := k.cache.mark()
		row, err := k.store.LatestDEK(ctx, zone, subject)
		if err == nil {
			// The wrap binds the row's own zone and subject, so a row
			// of another subject would unwrap: check it is this one's.
			if row.Zone != zone || row.Subject != subject {
				return nil, fmt.Errorf("%w: store returned DEK %s of another zone or subject as the current DEK of a subject of zone %q", ErrTampered, row.ID, zone)
			}
			d, err := k.unwrapDEK(ctx, zs, cust, row)
			if err != nil {
				return nil, err
			}
			k.cache.add(d, true, mark)
			return d, nil
		}
		if !errors.Is(err, ErrUnknownKey) {
			return nil, err
		}
		d, err := create()
		if errors.Is(err, ErrExists) && attempt == 0 {
			continue
		}
		if err != nil {
			return nil, err
		}
		k.cache.add(d, true, mark)
		return d, nil
	}
}

// Key returns the DEK with the given id, for decryption. The id of a
// blind-index or deterministic key (see AuxKeyByID) is refused with
// ErrUnknownKey: it is not a DEK.
func (k *Keyring) Key(ctx context.Context, id envelope.KeyID) (*DEK, error) {
	if k.closed.Load() {
		return nil, ErrClosed
	}
	if d, err := k.cachedKey(ctx, id); d != nil || err != nil {
		return d, err
	}
	mark := k.cache.mark()
	row, err := k.store.DEK(ctx, id)
	if errors.Is(err, ErrUnknownKey) {
		return nil, k.unknownDEK(ctx, id, err)
	}
	if err != nil {
		return nil, err
	}
	if row.ID != id {
		return nil, fmt.Errorf("%w: store returned DEK %s for DEK %s", ErrTampered, row.ID, id)
	}
	if IsReserved(row.Subject) {
		return nil, fmt.Errorf("%w: key %s is a blind-index or deterministic-encryption key, not a DEK", ErrUnknownKey, id)
	}
	caller, err := k.authorize(ctx, row.Zone, row.Subject, &row.ID)
	if err != nil {
		return nil, err
	}
	return k.load(kms.WithCaller(ctx, caller), row, mark)
}

// Prefetch loads the DEKs among ids that are not cached with one Store
// query, so that a bulk decrypt of many subjects does not read them one by
// one. Ids that are not stored are ignored here; Key reports them.
func (k *Keyring) Prefetch(ctx context.Context, ids []envelope.KeyID) error {
	if k.closed.Load() {
		return ErrClosed
	}
	now := k.now()
	var missing []envelope.KeyID
	for _, id := range ids {
		if k.cache.get(id, now) == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	mark := k.cache.mark()
	rows, err := k.store.DEKs(ctx, missing)
	if err != nil {
		return err
	}
	// One custody decision per zone; rows of zones the caller may not use
	// are left for Key to refuse (and audit) if they are asked for.
	type decision struct {
		caller Caller
		err    error
	}
	decisions := map[string]decision{}
	for _, row := range rows {
		if IsReserved(row.Subject) {
			continue // not a DEK; Key refuses it
		}
		d, ok := decisions[row.Zone]
		if !ok {
			if k.policy != nil {
				d.caller, d.err = k.policy.Authorize(ctx, row.Zone)
			}
			decisions[row.Zone] = d
		}
		if d.err != nil {
			continue
		}
		if _, err := k.load(kms.WithCaller(ctx, d.caller), row, mark); err != nil {
			return err
		}
	}
	return nil
}

// load unwraps row, read from the store after k.cache.mark returned mark,
// and caches it.
func (k *Keyring) load(ctx context.Context, row DEKRow, mark uint64) (*DEK, error) {
	zs, cust, err := k.zone(row.Zone)
	if err != nil {
		return nil, fmt.Errorf("DEK %s: %w", row.ID, err)
	}
	d, err := k.unwrapDEK(ctx, zs, cust, row)
	if err != nil {
		return nil, err
	}
	k.cache.add(d, false, mark)
	return d, nil
}

// rollingKey returns this process's rolling DEK for zone, rolling it over
// when it has been used RollingMaxUses times or is older than RollingMaxAge.
func (k *Keyring) rollingKey(ctx context.Context, zone string) (*DEK, error) {
	zs, cust, err := k.zone(zone)
	if err != nil {
		return nil, err
	}
	now := k.now()
	zs.mu.Lock()
	defer zs.mu.Unlock()
	if r := zs.rolling; r != nil && r.uses < k.cfg.RollingMaxUses && now.Sub(r.created) < k.cfg.RollingMaxAge {
		r.uses++
		return r.dek, nil
	}
	// A fresh generation after the highest stored one. Rolling
	// generations only need to be unique: a process that loses a race for
	// one skips ahead by a random step, so racing processes spread out
	// instead of colliding again.
	if err := k.zoneShredded(ctx, zone); err != nil {
		return nil, err
	}
	gen := uint32(0)
	for attempt := 0; attempt < 32; attempt++ {
		if gen == 0 {
			row, err := k.store.LatestDEK(ctx, zone, "")
			switch {
			case err == nil:
				gen = row.Generation + 1
			case errors.Is(err, ErrUnknownKey):
				gen = 1
			default:
				return nil, err
			}
		}
		mark := k.cache.mark()
		d, err := k.createDEKLocked(ctx, zs, cust, zone, "", gen)
		if errors.Is(err, ErrExists) {
			var b [1]byte
			rand.Read(b[:])
			gen += 1 + uint32(b[0]%16)
			continue
		}
		if err != nil {
			return nil, err
		}
		zs.rolling = &rollingDEK{dek: d, created: now, uses: 1}
		k.cache.add(d, false, mark)
		return d, nil
	}
	return nil, fmt.Errorf("%w: zone %q: could not allocate a rolling DEK generation under contention", ErrStore, zone)
}

// createDEK is createDEKLocked for a subject's DEK. zs.mu is held only to
// find the zone key, not while the DEK is stored, so that creates of
// different subjects do not wait for each other's store writes.
func (k *Keyring) createDEK(ctx context.Context, zs *zoneState, cust kms.Custodian, zone, subject string, gen uint32) (*DEK, error) {
	row, secret, err := k.createKeyRow(ctx, zs, cust, zone, subject, gen)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	return k.newDEK(row, secret)
}

// createKeyRow makes a key of (zone, subject, gen), wraps it under the
// zone's current key and stores it, like createDEK, and returns the row and
// the secret, which the caller must clear.
func (k *Keyring) createKeyRow(ctx context.Context, zs *zoneState, cust kms.Custodian, zone, subject string, gen uint32) (DEKRow, []byte, error) {
	zs.mu.Lock()
	zk, err := k.currentZoneKeyLocked(ctx, zs, cust, zone)
	zs.mu.Unlock()
	if err != nil {
		return DEKRow{}, nil, err
	}
	return k.storeNewKeyRow(ctx, zk, zone, subject, gen)
}

// createDEKLocked makes a DEK, wraps it under the zone's current key and
// stores it; only then is it returned. zs.mu is held.
func (k *Keyring) createDEKLocked(ctx context.Context, zs *zoneState, cust kms.Custodian, zone, subject string, gen uint32) (*DEK, error) {
	zk, err := k.currentZoneKeyLocked(ctx, zs, cust, zone)
	if err != nil {
		return nil, err
	}
	return k.storeNewDEK(ctx, zk, zone, subject, gen)
}

// storeNewDEK makes a DEK, wraps it under zk and stores it; only then is it
// returned.
func (k *Keyring) storeNewDEK(ctx context.Context, zk *zoneKey, zone, subject string, gen uint32) (*DEK, error) {
	row, secret, err := k.storeNewKeyRow(ctx, zk, zone, subject, gen)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	return k.newDEK(row, secret)
}

// storeNewKeyRow makes a 32-byte key, wraps it under zk as the DEK row of
// (zone, subject, gen) and stores it; only then does it return the row and
// the secret, which the caller must clear.
func (k *Keyring) storeNewKeyRow(ctx context.Context, zk *zoneKey, zone, subject string, gen uint32) (DEKRow, []byte, error) {
	secret := make([]byte, envelope.KeySize)
	rand.Read(secret)
	row := DEKRow{
		ID:             envelope.NewKeyID(),
		Zone:           zone,
		Subject:        subject,
		Generation:     gen,
		ZoneKeyVersion: zk.version,
		Created:        k.now().UTC(),
	}
	row.Wrapped = zk.aead.Seal(nil, nil, secret, dekAD(row))
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.DEKCreate, Decision: audit.Allow, Zone: zone, Subject: subject, DEK: row.ID.String(), ZoneKeyVersion: zk.version}
	// Recorded before the row exists: no DEK is created unrecorded.
	if err := k.record(ctx, caller, ev); err != nil {
		clear(secret)
		return DEKRow{}, nil, err
	}
	if err := k.store.CreateDEK(ctx, row); err != nil {
		clear(secret)
		return DEKRow{}, nil, err
	}
	return row, secret, nil
}

func (k *Keyring) newDEK(row DEKRow, secret []byte) (*DEK, error) {
	key, err := envelope.NewKey(row.ID, secret)
	if err != nil {
		return nil, err
	}
	return &DEK{Key: key, Zone: row.Zone, Subject: row.Subject, Generation: row.Generation, expires: k.now().Add(k.cfg.DEKTTL)}, nil
}

func (k *Keyring) unwrapDEK(ctx context.Context, zs *zoneState, cust kms.Custodian, row DEKRow) (*DEK, error) {
	secret, err := k.unwrapKeyRow(ctx, zs, cust, row)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	return k.newDEK(row, secret)
}

// unwrapKeyRow authenticates and unwraps a DEK row under its zone-key
// version and returns the secret, which the caller must clear.
func (k *Keyring) unwrapKeyRow(ctx context.Context, zs *zoneState, cust kms.Custodian, row DEKRow) ([]byte, error) {
	if row.Pending() {
		return k.unwrapPending(ctx, zs, cust, row)
	}
	zk, err := k.zoneKey(ctx, zs, cust, row.Zone, row.ZoneKeyVersion)
	if err != nil {
		return nil, fmt.Errorf("DEK %s: %w", row.ID, err)
	}
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.DEKUnwrap, Decision: audit.Allow, Zone: row.Zone, Subject: row.Subject, DEK: row.ID.String(), ZoneKeyVersion: row.ZoneKeyVersion}
	secret, err := zk.aead.Open(nil, nil, row.Wrapped, dekAD(row))
	if err != nil {
		err = fmt.Errorf("%w: DEK %s of zone %q does not authenticate under zone key v%d (altered or relabelled row)", ErrTampered, row.ID, row.Zone, row.ZoneKeyVersion)
		ev.Decision, ev.Reason = audit.Error, err.Error()
		k.record(ctx, caller, ev)
		return nil, err
	}
	if err := k.record(ctx, caller, ev); err != nil {
		clear(secret)
		return nil, err
	}
	return secret, nil
}

// dekAD is the associated data that binds a wrapped DEK to its row.
func dekAD(row DEKRow) []byte {
	const label = "zonekey/dek/v1"
	ad := make([]byte, 0, len(label)+envelope.KeyIDSize+4+len(row.Zone)+len(row.Subject)+8)
	ad = append(ad, label...)
	ad = append(ad, row.ID[:]...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(row.Zone)))
	ad = append(ad, row.Zone...)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(row.Subject)))
	ad = append(ad, row.Subject...)
	ad = binary.BigEndian.AppendUint32(ad, row.Generation)
	ad = binary.BigEndian.AppendUint32(ad, row.ZoneKeyVersion)
	return ad
}

// zoneState is the per-zone cache of unwrapped zone keys. mu serialises
// custodian calls for the zone, so concurrent misses make one call.
type zoneState struct {
	mu             sync.Mutex
	versions       map[uint32]*zoneKey
	current        uint32    // latest version known, 0 if none
	currentExpires time.Time // when to look for a newer version again
	rolling        *rollingDEK
}

type zoneKey struct {
	version uint32
	aead    cipher.AEAD
	expires time.Time
}

type rollingDEK struct {
	dek     *DEK
	created time.Time
	uses    uint64
}

func (k *Keyring) zoneKey(ctx context.Context, zs *zoneState, cust kms.Custodian, zone string, version uint32) (*zoneKey, error) {
	zs.mu.Lock()
	defer zs.mu.Unlock()
	return k.zoneKeyLocked(ctx, zs, cust, zone, version)
}

// zoneKeyLocked returns the zone key version, unwrapping it at the custodian
// unless it is cached. zs.mu is held.
func (k *Keyring) zoneKeyLocked(ctx context.Context, zs *zoneState, cust kms.Custodian, zone string, version uint32) (*zoneKey, error) {
	now := k.now()
	if zk := zs.versions[version]; zk != nil && now.Before(zk.expires) {
		return zk, nil
	}
	row, err := k.store.ZoneKey(ctx, zone, version)
	if err != nil {
		return nil, fmt.Errorf("zone %q key v%d: %w", zone, version, err)
	}
	if row.Zone != zone || row.Version != version {
		return nil, fmt.Errorf("%w: store returned zone key %q v%d for %q v%d", ErrTampered, row.Zone, row.Version, zone, version)
	}
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.ZoneKeyUnwrap, Decision: audit.Allow, Zone: zone, ZoneKeyVersion: version, KEKVersion: row.KEKVersion}
	secret, err := cust.Unwrap(ctx, kms.Wrapped{Ciphertext: row.Wrapped, KEKVersion: row.KEKVersion}, kms.Binding{Zone: zone, KeyID: row.ID, Version: version})
	if err != nil {
		if errors.Is(err, kms.ErrUnknownKey) {
			if serr := k.zoneShredded(ctx, zone); serr != nil {
				err = fmt.Errorf("%w (%w)", serr, err)
			}
		}
		err = fmt.Errorf("zone %q key v%d: %w", zone, version, err)
		ev.Decision, ev.Reason = audit.Error, err.Error()
		if errors.Is(err, kms.ErrDenied) || errors.Is(err, ErrOutsideCustody) {
			ev.Decision = audit.Deny
		}
		k.record(ctx, caller, ev)
		return nil, err
	}
	defer clear(secret)
	if err := k.record(ctx, caller, ev); err != nil {
		return nil, err
	}
	return k.cacheZoneKey(zs, version, secret)
}

func (k *Keyring) cacheZoneKey(zs *zoneState, version uint32, secret []byte) (*zoneKey, error) {
	if len(secret) != 32 {
		return nil, fmt.Errorf("%w: zone key v%d is %d bytes, want 32", ErrTampered, version, len(secret))
	}
	block, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	zk := &zoneKey{version: version, aead: aead, expires: k.now().Add(k.cfg.ZoneKeyTTL)}
	zs.versions[version] = zk
	return zk, nil
}

// currentZoneKeyLocked returns the zone's latest zone key, creating version
// 1 if the zone has none. zs.mu is held.
func (k *Keyring) currentZoneKeyLocked(ctx context.Context, zs *zoneState, cust kms.Custodian, zone string) (*zoneKey, error) {
	now := k.now()
	if zs.current != 0 && now.Before(zs.currentExpires) {
		return k.zoneKeyLocked(ctx, zs, cust, zone, zs.current)
	}
	row, err := k.store.ZoneKey(ctx, zone, 0)
	switch {
	case err == nil:
		zs.current, zs.currentExpires = row.Version, now.Add(k.cfg.ZoneKeyTTL)
		return k.zoneKeyLocked(ctx, zs, cust, zone, row.Version)
	case !errors.Is(err, ErrUnknownKey):
		return nil, fmt.Errorf("zone %q: %w", zone, err)
	}
	zk, err := k.createZoneKeyLocked(ctx, zs, cust, zone, 1)
	if !errors.Is(err, ErrExists) {
		return zk, err
	}
	// Another process created the zone's first key: use theirs.
	row, err = k.store.ZoneKey(ctx, zone, 0)
	if err != nil {
		return nil, fmt.Errorf("zone %q: reading the zone key another process created: %w", zone, err)
	}
	zs.current, zs.currentExpires = row.Version, now.Add(k.cfg.ZoneKeyTTL)
	return k.zoneKeyLocked(ctx, zs, cust, zone, row.Version)
}

// createZoneKeyLocked makes zone key version, wraps it at the custodian and
// stores it. zs.mu is held.
func (k *Keyring) createZoneKeyLocked(ctx context.Context, zs *zoneState, cust kms.Custodian, zone string, version uint32) (*zoneKey, error) {
	secret := make([]byte, 32)
	defer clear(secret)
	rand.Read(secret)
	var idb [16]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	w, err := cust.Wrap(ctx, secret, kms.Binding{Zone: zone, KeyID: id, Version: version})
	if err != nil {
		return nil, fmt.Errorf("zone %q: creating zone key v%d: %w", zone, version, err)
	}
	row := ZoneKeyRow{Zone: zone, Version: version, ID: id, Wrapped: w.Ciphertext, KEKVersion: w.KEKVersion, Created: k.now().UTC()}
	caller, _ := kms.CallerFrom(ctx)
	if err := k.record(ctx, caller, audit.Event{Action: audit.ZoneKeyCreate, Decision: audit.Allow, Zone: zone, ZoneKeyVersion: version, KEKVersion: w.KEKVersion}); err != nil {
		return nil, err
	}
	if err := k.store.CreateZoneKey(ctx, row); err != nil {
		return nil, err
	}
	zs.current, zs.currentExpires = version, k.now().Add(k.cfg.ZoneKeyTTL)
	return k.cacheZoneKey(zs, version, secret)
}
