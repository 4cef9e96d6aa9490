package keystore

// Blind-index and deterministic-encryption keys.
//
// These "auxiliary" keys are per (zone, purpose, name) rather than per
// subject: a blind index needs one key per (zone, index) so that equal values
// of different subjects give equal terms, and deterministic encryption one
// per (zone, field) for equal ciphertexts. They are kept as DEK rows of
// reserved subjects, so they need no Store change and share everything a DEK
// row has: wrapped by the zone key with the DEK binding (a row relabelled to
// another zone, name or version does not unwrap), rewrapped with the other
// DEK rows when the zone key is rotated (no re-index), authorized by the
// Policy and audited like any DEK, never shredded with a data subject.
//
// Row layout, for version v (1, 2, ...) of the key (zone, purpose, name):
//
//	subject     ReservedPrefix + purpose + "\x00" + name + "\x00" + decimal(v)
//	generation  v
//
// and a retirement marker, whose generation is the highest retired version:
//
//	subject     ReservedPrefix + "retired\x00" + purpose + "\x00" + name
//
// Each version has a subject of its own because a Store finds a row by id or
// as the highest generation of a (zone, subject), not by generation. The live
// versions are those above the marker's generation, up to the highest stored
// one; the keyring finds them by reading the marker and then each version in
// turn until one is missing (one read per live version plus two, cached for
// DEKTTL). Versions are created in order, each only after the one before it
// exists, so there are no gaps.
//
// A row holds a 32-byte random secret like any DEK. The key material is
// derived from it with HKDF-SHA256 (RFC 5869; no salt; info is a label per
// purpose): 32 bytes for the HMAC-SHA256 key of a blind index (info
// "zonekey/aux/v1/index"), 64 bytes for the AES-SIV key of deterministic
// fields (info "zonekey/aux/v1/det"). The raw secret is never used as a key.

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/zonekey/zonekey/audit"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/kms"
)

// AuxPurpose says what an auxiliary key is for.
type AuxPurpose string

// The purposes of auxiliary keys.
const (
	// AuxIndex is the HMAC-SHA256 key of a blind index, per (zone, index).
	AuxIndex AuxPurpose = "index"
	// AuxDeterministic is the AES-SIV key of a deterministic field, per
	// (zone, field path).
	AuxDeterministic AuxPurpose = "det"
)

// ReservedPrefix starts the subjects of the keyring's own key rows. DataKey
// refuses subjects that start with it, so a data subject can never collide
// with them.
const ReservedPrefix = "\x00zonekey\x00"

// IsReserved reports whether subject is in the keyring's reserved namespace.
func IsReserved(subject string) bool { return strings.HasPrefix(subject, ReservedPrefix) }

// MaxAuxName bounds the length of an auxiliary key's name in bytes.
const MaxAuxName = 256

// maxLiveAux bounds how many live versions of one key the keyring accepts;
// more means the old ones are never retired.
const maxLiveAux = 64

// HKDF labels (info) of the derived keys.
const (
	auxIndexInfo = "zonekey/aux/v1/index"
	auxDetInfo   = "zonekey/aux/v1/det"
	indexKeySize = 32
)

func validAux(purpose AuxPurpose, name string) error {
	if purpose != AuxIndex && purpose != AuxDeterministic {
		return fmt.Errorf("%w: unknown key purpose %q (want %q or %q)", ErrInvalidValue, purpose, AuxIndex, AuxDeterministic)
	}
	if name == "" || len(name) > MaxAuxName || strings.IndexByte(name, 0) >= 0 || !utf8.ValidString(name) {
		return fmt.Errorf("%w: %s key name %q must be 1 to %d bytes of UTF-8 without NUL", ErrInvalidValue, purpose, name, MaxAuxName)
	}
	return nil
}

// AuxSubject returns the reserved subject of the DEK row holding version
// of the (purpose, name) key.
func AuxSubject(purpose AuxPurpose, name string, version uint32) string {
	return ReservedPrefix + string(purpose) + "\x00" + name + "\x00" + strconv.FormatUint(uint64(version), 10)
}

// auxLabel names a key without a version, for audit events.
func auxLabel(purpose AuxPurpose, name string) string {
	return ReservedPrefix + string(purpose) + "\x00" + name
}

func retiredSubject(purpose AuxPurpose, name string) string {
	return ReservedPrefix + "retired\x00" + string(purpose) + "\x00" + name
}

// ParseAuxSubject parses a subject made by AuxSubject. ok is false for any
// other subject, retirement markers included.
func ParseAuxSubject(subject string) (purpose AuxPurpose, name string, version uint32, ok bool) {
	rest, found := strings.CutPrefix(subject, ReservedPrefix)
	if !found {
		return "", "", 0, false
	}
	p, rest, found := strings.Cut(rest, "\x00")
	i := strings.LastIndexByte(rest, 0)
	if !found || i < 0 {
		return "", "", 0, false
	}
	name, ver := rest[:i], rest[i+1:]
	v, err := strconv.ParseUint(ver, 10, 32)
	if err != nil || v == 0 || strconv.FormatUint(v, 10) != ver || validAux(AuxPurpose(p), name) != nil {
		return "", "", 0, false
	}
	return AuxPurpose(p), name, uint32(v), true
}

// AuxKey is an unwrapped blind-index or deterministic-encryption key. It is
// immutable and safe for concurrent use.
type AuxKey struct {
	ID      envelope.KeyID // id of the DEK row holding it
	Zone    string
	Purpose AuxPurpose
	Name    string // index name or field path
	Version uint32 // 1, 2, ...: the row's generation

	det     *envelope.DetKey // AuxDeterministic
	macs    *sync.Pool       // AuxIndex: of *macState keyed with the index key
	expires time.Time
}

// macState is a keyed HMAC-SHA256 and room for its sum, pooled so that MAC
// allocates nothing: the sum goes to memory of the pool's, since a slice
// passed to a hash.Hash method escapes.
type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// Det returns the AES-SIV key of a deterministic key, or nil for an index
// key.
func (a *AuxKey) Det() *envelope.DetKey { return a.det }

// MAC appends HMAC-SHA256 of msg under the index key to dst and returns the
// result. It panics if a is not an index key.
func (a *AuxKey) MAC(dst, msg []byte) []byte {
	if a.macs == nil {
		panic("keystore: MAC of a " + string(a.Purpose) + " key")
	}
	st := a.macs.Get().(*macState)
	st.h.Reset()
	st.h.Write(msg)
	dst = append(dst, st.h.Sum(st.sum[:0])...)
	a.macs.Put(st)
	return dst
}

// newAuxKey derives the key of purpose from a row's 32-byte secret.
func (k *Keyring) newAuxKey(row DEKRow, purpose AuxPurpose, name string, version uint32, secret []byte) (*AuxKey, error) {
	a := &AuxKey{ID: row.ID, Zone: row.Zone, Purpose: purpose, Name: name, Version: version, expires: k.now().Add(k.cfg.DEKTTL)}
	switch purpose {
	case AuxIndex:
		macKey, err := hkdf.Key(sha256.New, secret, nil, auxIndexInfo, indexKeySize)
		if err != nil {
			return nil, err
		}
		a.macs = &sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, macKey)} }}
	case AuxDeterministic:
		detKey, err := hkdf.Key(sha256.New, secret, nil, auxDetInfo, envelope.DetKeySize)
		if err != nil {
			return nil, err
		}
		defer clear(detKey)
		if a.det, err = envelope.NewDetKey(row.ID, detKey); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// auxName identifies a key across its versions.
type auxName struct {
	zone    string
	purpose AuxPurpose
	name    string
}

func (n auxName) String() string {
	return fmt.Sprintf("%s key %q of zone %q", n.purpose, n.name, n.zone)
}

// auxLive is the cached set of live versions of one key. Like a cached DEK
// (entry), it remembers the policy decision that allowed its last hit, for
// the next hit to reuse while that holds.
type auxLive struct {
	name      auxName
	keys      []*AuxKey // newest first
	floor     uint32    // highest retired version, 0 if none
	floorID   envelope.KeyID
	expires   time.Time
	expiresNs int64 // expires in Unix nanoseconds
	auth      atomic.Pointer[decision]
}

// newAuxLive returns an empty live set of n that expires at expires.
func newAuxLive(n auxName, expires time.Time) *auxLive {
	return &auxLive{name: n, expires: expires, expiresNs: unixNano(expires)}
}

// allowed reports whether the decision remembered by l still allows a hit
// at now (Unix nanoseconds).
func (l *auxLive) allowed(now int64) bool {
	d := l.auth.Load()
	return d != nil && now < d.until && !d.revoked.Load()
}

// auxCache caches auxiliary keys by id and the live set of each key. The
// zero value is ready to use.
type auxCache struct {
	mu   sync.Mutex
	byID map[envelope.KeyID]*AuxKey
	live map[auxName]*auxLive
	// hot holds recently looked-up live sets by a hash of their name, for
	// a lookup without the lock (the hit path of every blind-index query
	// and searchable Encrypt). A slot is only written under mu, to the set
	// live holds for its name, and cleared or replaced there when that
	// set is dropped or replaced, so it never holds a set live has let go.
	hot [auxSlots]atomic.Pointer[auxLive]
	// forgets counts dropLive and purge calls: what was read from the
	// store before one is not cached after it (see mark).
	forgets uint64
}

// mark returns a mark to take before reading keys from the store and to
// pass to add or setLive with what was made of them.
func (c *auxCache) mark() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forgets
}

// auxSlots is the number of slots of auxCache.hot: keys are few (one per
// zone and index or deterministic field), so collisions are rare, and cost
// only the lock.
const auxSlots = 64

// slot returns the slot of n in hot.
func (c *auxCache) slot(n auxName) *atomic.Pointer[auxLive] {
	h := strHash(strHash(0x243f6a8885a308d3, n.zone), n.name) ^ uint64(len(n.purpose))
	return &c.hot[(h*0xbf58476d1ce4e5b9)>>58] // the top 6 bits: auxSlots is 64
}

func (c *auxCache) get(id envelope.KeyID, now time.Time) *AuxKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.byID[id]
	if a == nil || !now.Before(a.expires) {
		return nil
	}
	return a
}

// add caches a, keeping at most max keys by id.
func (c *auxCache) add(a *AuxKey, max int, now time.Time, since uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgets != since {
		return // a rotation, retirement or zone shred came in between
	}
	if c.byID == nil {
		c.byID = map[envelope.KeyID]*AuxKey{}
	}
	if len(c.byID) >= max {
		for id, old := range c.byID {
			if !now.Before(old.expires) {
				delete(c.byID, id)
			}
		}
		if len(c.byID) >= max {
			clear(c.byID)
		}
	}
	c.byID[a.ID] = a
}

// liveSet returns the cached live set of n, expired or not, or nil.
func (c *auxCache) liveSet(n auxName) *auxLive {
	slot := c.slot(n)
	if l := slot.Load(); l != nil && l.name == n {
		return l
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.live[n]
	if l != nil {
		slot.Store(l)
	}
	return l
}

// setLive caches l, the live set of l.name.
func (c *auxCache) setLive(l *auxLive, since uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgets != since {
		return // a rotation, retirement or zone shred came in between
	}
	if c.live == nil {
		c.live = map[auxName]*auxLive{}
	}
	c.live[l.name] = l
	c.slot(l.name).Store(l)
}

func (c *auxCache) dropLive(n auxName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	if l := c.live[n]; l != nil {
		c.slot(n).CompareAndSwap(l, nil)
		delete(c.live, n)
	}
}

func (c *auxCache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	clear(c.byID)
	clear(c.live)
	for i := range c.hot {
		c.hot[i].Store(nil)
	}
}

// auxAuthorize checks the arguments and asks the Policy, as every
// auxiliary-key call does before touching a cache, the store or a
// custodian.
func (k *Keyring) auxAuthorize(ctx context.Context, zone string, purpose AuxPurpose, name string) (Caller, error) {
	if k.closed.Load() {
		return Caller{}, ErrClosed
	}
	if err := validAux(purpose, name); err != nil {
		return Caller{}, err
	}
	return k.authorizeAux(ctx, zone, purpose, name, nil)
}

// authorizeAux is authorize for an auxiliary key, which builds the audit
// subject only for a denial: it runs on every Encrypt of a record with a
// searchable field, and every Decrypt of a deterministic one.
func (k *Keyring) authorizeAux(ctx context.Context, zone string, purpose AuxPurpose, name string, id *envelope.KeyID) (Caller, error) {
	if _, ok := k.custodians[zone]; !ok || k.policy == nil {
		return k.authorize(ctx, zone, "", id) // ErrUnknownZone, or no policy
	}
	c, err := k.policy.Authorize(ctx, zone)
	if err != nil {
		ev := audit.Event{Action: audit.Access, Decision: audit.Deny, Reason: err.Error(), Zone: zone, Subject: auxLabel(purpose, name)}
		if id != nil {
			ev.DEK = id.String()
		}
		k.record(ctx, c, ev)
		return c, err
	}
	return c, nil
}

// auxBegin is auxAuthorize, then what a call needs to reach the store and
// the custodian.
func (k *Keyring) auxBegin(ctx context.Context, zone string, purpose AuxPurpose, name string) (context.Context, *zoneState, kms.Custodian, error) {
	caller, err := k.auxAuthorize(ctx, zone, purpose, name)
	if err != nil {
		return nil, nil, nil, err
	}
	return k.auxSlow(ctx, zone, caller)
}

func (k *Keyring) auxSlow(ctx context.Context, zone string, caller Caller) (context.Context, *zoneState, kms.Custodian, error) {
	zs, cust, err := k.zone(zone)
	if err != nil {
		return nil, nil, nil, err
	}
	return kms.WithCaller(ctx, caller), zs, cust, nil
}

// AuxKeys returns the live versions of the (zone, purpose, name) key, newest
// first: the ones to search with, since values computed under any of them
// may be stored until a re-index finishes and the older ones are retired
// (RetireAuxKeys). If the key has no version yet, version 1 is created and
// durably stored first. The Policy is asked on every call, as for DataKey.
func (k *Keyring) AuxKeys(ctx context.Context, zone string, purpose AuxPurpose, name string) ([]*AuxKey, error) {
	caller, err := k.auxAuthorize(ctx, zone, purpose, name)
	if err != nil {
		return nil, err
	}
	n := auxName{zone, purpose, name}
	if l := k.aux.liveSet(n); l != nil && k.now().Before(l.expires) {
		return slices.Clone(l.keys), nil
	}
	ctx, zs, cust, err := k.auxSlow(ctx, zone, caller)
	if err != nil {
		return nil, err
	}
	l, err := k.refreshAux(ctx, zs, cust, n, true)
	if err != nil {
		return nil, err
	}
	return slices.Clone(l.keys), nil
}

// AuxKey returns a version of the (zone, purpose, name) key: version 0 is
// the current (newest) one, created like a DEK if the key has none; another
// version is read even if it is retired, and fails with ErrUnknownKey if it
// is not stored.
func (k *Keyring) AuxKey(ctx context.Context, zone string, purpose AuxPurpose, name string, version uint32) (*AuxKey, error) {
	caller, err := k.auxAuthorize(ctx, zone, purpose, name)
	if err != nil {
		return nil, err
	}
	n := auxName{zone, purpose, name}
	l := k.aux.liveSet(n)
	if l != nil && k.now().Before(l.expires) && version == 0 {
		return l.keys[0], nil // the hot path: Encrypt
	}
	ctx, zs, cust, err := k.auxSlow(ctx, zone, caller)
	if err != nil {
		return nil, err
	}
	if l == nil || !k.now().Before(l.expires) {
		if version != 0 {
			return k.loadAuxVersion(ctx, zs, cust, n, version)
		}
		if l, err = k.refreshAux(ctx, zs, cust, n, true); err != nil {
			return nil, err
		}
	}
	if version == 0 {
		return l.keys[0], nil
	}
	for _, a := range l.keys {
		if a.Version == version {
			return a, nil
		}
	}
	return k.loadAuxVersion(ctx, zs, cust, n, version)
}

// AuxKeyByID returns the auxiliary key held by the DEK row id: the key a
// deterministic envelope names. The id of a data subject's DEK is refused
// with ErrUnknownKey.
func (k *Keyring) AuxKeyByID(ctx context.Context, id envelope.KeyID) (*AuxKey, error) {
	if k.closed.Load() {
		return nil, ErrClosed
	}
	if a := k.aux.get(id, k.now()); a != nil {
		if _, err := k.authorizeAux(ctx, a.Zone, a.Purpose, a.Name, &id); err != nil {
			return nil, err
		}
		return a, nil
	}
	mark := k.aux.mark()
	row, err := k.store.DEK(ctx, id)
	if err != nil {
		return nil, err
	}
	if row.ID != id {
		return nil, fmt.Errorf("%w: store returned key %s for key %s", ErrTampered, row.ID, id)
	}
	purpose, name, version, ok := ParseAuxSubject(row.Subject)
	if !ok || row.Generation != version {
		return nil, fmt.Errorf("%w: key %s is not a blind-index or deterministic-encryption key", ErrUnknownKey, id)
	}
	caller, err := k.authorizeAux(ctx, row.Zone, purpose, name, &row.ID)
	if err != nil {
		return nil, err
	}
	zs, cust, err := k.zone(row.Zone)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", row.ID, err)
	}
	return k.openAuxRow(kms.WithCaller(ctx, caller), zs, cust, row, purpose, name, version, mark)
}

// AuxKeyStatus describes the versions of an auxiliary key.
type AuxKeyStatus struct {
	Live           []uint32 // the live versions, newest (current) first; empty if the key has none
	RetiredThrough uint32   // the highest retired version, 0 if none
}

// AuxKeyStatus reports the versions of the (zone, purpose, name) key,
// without creating one. It reads the key rows as AuxKeys does, Policy
// included.
func (k *Keyring) AuxKeyStatus(ctx context.Context, zone string, purpose AuxPurpose, name string) (AuxKeyStatus, error) {
	ctx, zs, cust, err := k.auxBegin(ctx, zone, purpose, name)
	if err != nil {
		return AuxKeyStatus{}, err
	}
	l, err := k.refreshAux(ctx, zs, cust, auxName{zone, purpose, name}, false)
	if err != nil {
		return AuxKeyStatus{}, err
	}
	st := AuxKeyStatus{RetiredThrough: l.floor, Live: make([]uint32, len(l.keys))}
	for i, a := range l.keys {
		st.Live[i] = a.Version
	}
	return st, nil
}

// RotateAuxKey creates the next version of the (zone, purpose, name) key
// and returns it; it is the current version from then on (for other
// processes, within DEKTTL). Values computed under older versions stay
// searchable, since AuxKeys keeps returning those versions, until they are
// recomputed (a re-index) and the versions retired with RetireAuxKeys. Two
// rotations racing for the same next version make one new version, which
// both return. Rotating a key that has no version yet creates version 1.
func (k *Keyring) RotateAuxKey(ctx context.Context, zone string, purpose AuxPurpose, name string) (*AuxKey, error) {
	ctx, zs, cust, err := k.auxBegin(ctx, zone, purpose, name)
	if err != nil {
		return nil, err
	}
	n := auxName{zone, purpose, name}
	l, err := k.refreshAux(ctx, zs, cust, n, false)
	if err != nil {
		return nil, err
	}
	if len(l.keys) >= maxLiveAux {
		return nil, fmt.Errorf("%w: %s has %d live versions, the most it may have: retire the old ones (after a re-index) before making another", ErrInvalidValue, n, len(l.keys))
	}
	next := l.floor + 1
	if len(l.keys) > 0 {
		next = l.keys[0].Version + 1
	}
	if next == 0 {
		return nil, fmt.Errorf("%w: %s has no version left", ErrInvalidValue, n)
	}
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.Rotate, Decision: audit.Allow, Zone: zone, Subject: AuxSubject(purpose, name, next),
		Reason: fmt.Sprintf("new version %d of %s key %q", next, purpose, name)}
	if err := k.record(ctx, caller, ev); err != nil {
		return nil, err
	}
	a, err := k.createAuxVersion(ctx, zs, cust, n, next)
	if errors.Is(err, ErrExists) {
		a, err = k.loadAuxVersion(ctx, zs, cust, n, next)
	}
	k.aux.dropLive(n)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// RetireAuxKeys retires the versions up to and including through of the
// (zone, purpose, name) key: AuxKeys stops returning them, so queries stop
// searching values computed under them. Call it once every stored value has
// been recomputed under a newer version (see the re-index in package
// fieldcrypt). through must be older than the current version; retiring
// versions that are already retired does nothing. The retired rows stay in
// the Store (a Store has no delete yet): AuxKey and AuxKeyByID still find
// them, so deterministic envelopes under them still open.
func (k *Keyring) RetireAuxKeys(ctx context.Context, zone string, purpose AuxPurpose, name string, through uint32) error {
	ctx, zs, cust, err := k.auxBegin(ctx, zone, purpose, name)
	if err != nil {
		return err
	}
	n := auxName{zone, purpose, name}
	l, err := k.refreshAux(ctx, zs, cust, n, false)
	if err != nil {
		return err
	}
	if through <= l.floor {
		return nil
	}
	if len(l.keys) == 0 || through >= l.keys[0].Version {
		cur := uint32(0)
		if len(l.keys) > 0 {
			cur = l.keys[0].Version
		}
		return fmt.Errorf("%w: %s: cannot retire versions through %d, the current version is %d (rotate first)", ErrInvalidValue, n, through, cur)
	}
	caller, _ := kms.CallerFrom(ctx)
	ev := audit.Event{Action: audit.Rotate, Decision: audit.Allow, Zone: zone, Subject: retiredSubject(purpose, name),
		Reason: fmt.Sprintf("retire versions through %d of %s key %q", through, purpose, name)}
	if err := k.record(ctx, caller, ev); err != nil {
		return err
	}
	_, secret, err := k.createKeyRow(ctx, zs, cust, zone, retiredSubject(purpose, name), through)
	clear(secret)
	k.aux.dropLive(n)
	if errors.Is(err, ErrExists) {
		return nil // another process retired the same versions
	}
	return err
}

// refreshAux reads the live versions of n from the store (reusing cached
// keys that have not expired) and caches the set. With create, a key with
// no version gets version 1; without, the set may be empty.
func (k *Keyring) refreshAux(ctx context.Context, zs *zoneState, cust kms.Custodian, n auxName, create bool) (*auxLive, error) {
	now := k.now()
	mark := k.aux.mark()
	old := k.aux.liveSet(n)
	l := newAuxLive(n, now.Add(k.cfg.DEKTTL))

	// The retirement marker: authenticated by its wrap, so that a store
	// cannot hide live versions by inventing one.
	subj := retiredSubject(n.purpose, n.name)
	row, err := k.store.LatestDEK(ctx, n.zone, subj)
	switch {
	case err == nil:
		if row.Zone != n.zone || row.Subject != subj {
			return nil, fmt.Errorf("%w: store returned key %s of another zone or subject as the retirement marker of %s", ErrTampered, row.ID, n)
		}
		if old == nil || old.floorID != row.ID || old.floor != row.Generation {
			secret, err := k.unwrapKeyRow(ctx, zs, cust, row)
			if err != nil {
				return nil, err
			}
			clear(secret)
		}
		l.floor, l.floorID = row.Generation, row.ID
	case !errors.Is(err, ErrUnknownKey):
		return nil, err
	}

	cached := map[uint32]*AuxKey{}
	if old != nil {
		for _, a := range old.keys {
			if now.Before(a.expires) {
				cached[a.Version] = a
			}
		}
	}
	var keys []*AuxKey // oldest first
	for v := l.floor + 1; v != 0; v++ {
		a := cached[v]
		if a == nil {
			a, err = k.loadAuxVersion(ctx, zs, cust, n, v)
			if errors.Is(err, ErrUnknownKey) {
				break
			}
			if err != nil {
				return nil, err
			}
		}
		if len(keys) == maxLiveAux {
			return nil, fmt.Errorf("%w: %s has more than %d live versions; retire the old ones", ErrInvalidValue, n, maxLiveAux)
		}
		keys = append(keys, a)
	}
	if len(keys) == 0 && l.floor > 0 {
		return nil, fmt.Errorf("%w: %s: versions through %d are retired and no later version is stored", ErrUnknownKey, n, l.floor)
	}
	if len(keys) == 0 && create {
		a, err := k.createAuxVersion(ctx, zs, cust, n, 1)
		if errors.Is(err, ErrExists) {
			a, err = k.loadAuxVersion(ctx, zs, cust, n, 1)
		}
		if err != nil {
			return nil, err
		}
		keys = append(keys, a)
	}
	slices.Reverse(keys)
	l.keys = keys
	if len(keys) > 0 {
		k.aux.setLive(l, mark)
	}
	return l, nil
}

// loadAuxVersion reads and unwraps version v of n; ErrUnknownKey if it is
// not stored.
func (k *Keyring) loadAuxVersion(ctx context.Context, zs *zoneState, cust kms.Custodian, n auxName, v uint32) (*AuxKey, error) {
	subj := AuxSubject(n.purpose, n.name, v)
	mark := k.aux.mark()
	row, err := k.store.LatestDEK(ctx, n.zone, subj)
	if err != nil {
		return nil, err
	}
	if row.Zone != n.zone || row.Subject != subj || row.Generation != v {
		return nil, fmt.Errorf("%w: store returned key %s of another zone, subject or generation as version %d of %s", ErrTampered, row.ID, v, n)
	}
	return k.openAuxRow(ctx, zs, cust, row, n.purpose, n.name, v, mark)
}

// openAuxRow unwraps row, read from the store after k.aux.mark returned
// mark, and caches the key.
func (k *Keyring) openAuxRow(ctx context.Context, zs *zoneState, cust kms.Custodian, row DEKRow, purpose AuxPurpose, name string, v uint32, mark uint64) (*AuxKey, error) {
	secret, err := k.unwrapKeyRow(ctx, zs, cust, row)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	a, err := k.newAuxKey(row, purpose, name, v, secret)
	if err != nil {
		return nil, err
	}
	k.aux.add(a, k.cfg.DEKCacheSize, k.now(), mark)
	return a, nil
}

// createAuxVersion creates and stores version v of n; ErrExists if another
// process stored it first.
func (k *Keyring) createAuxVersion(ctx context.Context, zs *zoneState, cust kms.Custodian, n auxName, v uint32) (*AuxKey, error) {
	mark := k.aux.mark()
	row, secret, err := k.createKeyRow(ctx, zs, cust, n.zone, AuxSubject(n.purpose, n.name, v), v)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	a, err := k.newAuxKey(row, n.purpose, n.name, v, secret)
	if err != nil {
		return nil, err
	}
	k.aux.add(a, k.cfg.DEKCacheSize, k.now(), mark)
	return a, nil
}
