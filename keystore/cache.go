package keystore

import (
	"container/list"
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/zonekey/zonekey/envelope"
)

// lru is the bounded cache of unwrapped DEKs, by id, with an index of the
// current DEK of each (zone, subject). A hit of a recently used DEK takes no
// lock and allocates nothing (see hot and cur); eviction is second-chance
// (CLOCK): an entry used since it was last considered is moved to the front
// once instead of evicted, which keeps recently used DEKs as LRU would
// without reordering on every hit.
//
// Beside the keys it holds the custody decisions their hits reuse
// (decisions, custody.go): both are dropped together by purge.
type lru struct {
	mu   sync.RWMutex
	max  int
	ll   *list.List // of *entry, most recently used first
	byID map[envelope.KeyID]*list.Element
	// bySubject indexes the current DEK of each subject by
	// zone+"\x00"+subject (zone names hold no NUL): a hit hashes one short
	// string built on the stack.
	bySubject map[string]*list.Element
	// hot holds recently hit entries by a few bits of their id, for a hit
	// without the lock. A slot is only set under the read lock, and
	// removeLocked (under the write lock) clears it, so it never holds an
	// entry that has left the cache.
	hot [hotSlots]atomic.Pointer[entry]
	// cur holds recently hit current DEKs by a hash of their subject, for
	// a DataKey hit without the lock. Like hot, a slot is only set under
	// the read lock to an entry bySubject names, and cleared under the
	// write lock when the entry leaves the cache or stops being its
	// subject's current DEK, so it never names anything else.
	cur  [curSlots]atomic.Pointer[entry]
	seed uint64 // of curSlot's hash
	// forgets counts the calls of forget: a DEK read from the store
	// before one is not cached after it (see mark).
	forgets uint64

	decisions decisionCache
}

// entry is a cached DEK, with what a hit compares copied next to it so
// that a hit reads one object. auth remembers the decision of the policy
// that allowed its last hit, so that the next hit finds it without looking
// the zone up: it is used while it holds and has not been revoked (see
// decisionCache).
type entry struct {
	*DEK
	id            envelope.KeyID
	zone, subject string
	expires       int64 // DEK.expires in Unix nanoseconds
	elem          *list.Element
	auth          atomic.Pointer[decision]
}

func newEntry(d *DEK) *entry {
	return &entry{DEK: d, id: d.ID(), zone: d.Zone, subject: d.Subject, expires: unixNano(d.expires)}
}

// unixNano is t.UnixNano for the instants it can represent, and the
// largest int64 for later ones (after the year 2262), which a
// configuration with a huge TTL can reach.
func unixNano(t time.Time) int64 {
	if t.Unix() >= math.MaxInt64/int64(time.Second) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// allowed reports whether the decision remembered by e still allows a hit
// at now (Unix nanoseconds).
func (e *entry) allowed(now int64) bool {
	d := e.auth.Load()
	return d != nil && now < d.until && !d.revoked.Load()
}

const (
	hotSlots = 64
	curSlots = 256
)

// hotSlot picks the slot of id (ids are random).
func hotSlot(id *envelope.KeyID) int { return int(id[0]) % hotSlots }

// curSlot picks the slot of subject in cur, by a cheap hash of its length
// and its first and last eight bytes (all of it when shorter) under the
// cache's random seed. Subjects that differ only in between share a slot
// and take turns in it, which only costs their hits the lock.
func (c *lru) curSlot(subject string) *atomic.Pointer[entry] {
	h := strHash(c.seed, subject) * 0xbf58476d1ce4e5b9
	return &c.cur[h>>56] // the top 8 bits: curSlots is 256
}

// strHash mixes s into h cheaply: its length and its first and last eight
// bytes (all of it when shorter). It picks cache slots, where strings that
// differ only in between merely share a slot; take the top bits of the
// result times an odd constant.
func strHash(h uint64, s string) uint64 {
	n := len(s)
	h ^= uint64(n)
	if n >= 8 {
		b := unsafe.Slice(unsafe.StringData(s), n) // only read
		return (h^binary.LittleEndian.Uint64(b))*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[n-8:])
	}
	for i := range n {
		h = h<<8 ^ uint64(s[i])
	}
	return h
}

// maxNameKey bounds the zone-and-subject keys current builds on the stack;
// longer ones cost an allocation.
const maxNameKey = 128

func nameKey(zone, subject string) string { return zone + "\x00" + subject }

// cachedDataKey is the cache hit of DataKey: the cached current DEK of
// (zone, subject) once the policy allows the zone, or nil and no error if
// none is cached.
func (k *Keyring) cachedDataKey(ctx context.Context, zone, subject string) (*DEK, error) {
	now := k.now()
	e := k.cache.currentEntry(zone, subject, now)
	if e == nil {
		return nil, nil
	}
	if !e.allowed(now.UnixNano()) {
		if err := k.authorizeHit(ctx, e, nil, now); err != nil {
			return nil, err
		}
	}
	return e.DEK, nil
}

// cachedKey is the cache hit of Key: the cached DEK with id once the policy
// allows its zone, or nil and no error if it is not cached.
func (k *Keyring) cachedKey(ctx context.Context, id envelope.KeyID) (*DEK, error) {
	now := k.now()
	e := k.cache.getEntry(id, now)
	if e == nil {
		return nil, nil
	}
	if !e.allowed(now.UnixNano()) {
		if err := k.authorizeHit(ctx, e, &id, now); err != nil {
			return nil, err
		}
	}
	return e.DEK, nil
}

func newLRU(max int) *lru {
	return &lru{
		max:       max,
		ll:        list.New(),
		byID:      make(map[envelope.KeyID]*list.Element, min(max, 1024)),
		bySubject: make(map[string]*list.Element, min(max, 1024)),
		seed:      rand.Uint64(),
	}
}

// get returns the cached, unexpired DEK with id, or nil.
func (c *lru) get(id envelope.KeyID, now time.Time) *DEK {
	return c.getEntry(id, now).dek()
}

// current returns the cached, unexpired current DEK of (zone, subject).
func (c *lru) current(zone, subject string, now time.Time) *DEK {
	return c.currentEntry(zone, subject, now).dek()
}

// dek returns e's DEK, or nil if e is nil.
func (e *entry) dek() *DEK {
	if e == nil {
		return nil
	}
	return e.DEK
}

// getEntry is get returning the entry.
func (c *lru) getEntry(id envelope.KeyID, now time.Time) *entry {
	slot := &c.hot[hotSlot(&id)]
	if e := slot.Load(); e != nil && e.id == id {
		return c.hit(e, now)
	}
	c.mu.RLock()
	var e *entry
	if el := c.byID[id]; el != nil {
		e = el.Value.(*entry)
		slot.Store(e)
	}
	c.mu.RUnlock()
	return c.hit(e, now)
}

// currentEntry is current returning the entry.
func (c *lru) currentEntry(zone, subject string, now time.Time) *entry {
	slot := c.curSlot(subject)
	if e := slot.Load(); e != nil && e.subject == subject && e.zone == zone {
		return c.hit(e, now)
	}
	var buf [maxNameKey]byte
	k := append(append(append(buf[:0], zone...), 0), subject...)
	c.mu.RLock()
	var e *entry
	if el := c.bySubject[string(k)]; el != nil { // no allocation: the conversion is only looked up
		e = el.Value.(*entry)
		slot.Store(e)
	}
	c.mu.RUnlock()
	return c.hit(e, now)
}

// hit marks the entry e (nil if there was none) used, or drops it if it has
// expired.
func (c *lru) hit(e *entry, now time.Time) *entry {
	if e == nil {
		return nil
	}
	if now.UnixNano() >= e.expires {
		c.expire(e)
		return nil
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e
}

// expire drops the expired entry e, unless it has gone.
func (c *lru) expire(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID[e.id] == e.elem {
		c.removeLocked(e.elem)
	}
}

// mark returns a mark to take before reading a DEK row from the store and
// to pass to add with the DEK made from it.
func (c *lru) mark() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.forgets
}

// add caches d, read from the store after mark returned since; if
// isCurrent, d becomes the current DEK of its subject. If forget has run
// since, d is not cached: a shred or move may have removed d's row after
// it was read, and forget could not drop what was not yet cached.
func (c *lru) add(d *DEK, isCurrent bool, since uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgets != since {
		return
	}
	if old := c.byID[d.ID()]; old != nil {
		c.removeLocked(old)
	}
	en := newEntry(d)
	e := c.ll.PushFront(en)
	en.elem = e
	c.byID[d.ID()] = e
	if isCurrent && d.Subject != "" {
		sk := nameKey(d.Zone, d.Subject)
		if old := c.bySubject[sk]; old != nil {
			c.curSlot(d.Subject).CompareAndSwap(old.Value.(*entry), nil) // no longer current
		}
		c.bySubject[sk] = e
	}
	for c.ll.Len() > c.max {
		back := c.ll.Back()
		if en := back.Value.(*entry); en.used.Load() {
			en.used.Store(false) // second chance
			c.ll.MoveToFront(back)
			continue
		}
		c.removeLocked(back)
	}
}

// remove drops the DEK with id, if cached.
func (c *lru) remove(id envelope.KeyID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byID[id]; e != nil {
		c.removeLocked(e)
	}
}

func (c *lru) removeLocked(e *list.Element) {
	en := c.ll.Remove(e).(*entry)
	delete(c.byID, en.id)
	c.hot[hotSlot(&en.id)].CompareAndSwap(en, nil)
	c.curSlot(en.subject).CompareAndSwap(en, nil)
	sk := nameKey(en.zone, en.subject)
	if c.bySubject[sk] == e {
		delete(c.bySubject, sk)
	}
}

func (c *lru) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

func (c *lru) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	for i := range c.hot {
		c.hot[i].Store(nil)
	}
	for i := range c.cur {
		c.cur[i].Store(nil)
	}
	clear(c.byID)
	clear(c.bySubject)
	c.decisions.purge()
}

// removeWhere drops every cached DEK for which drop is true. It walks the
// whole cache: it serves shreds and moves, not the hot path.
func (c *lru) removeWhere(drop func(*DEK) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeWhereLocked(drop)
}

// forget is removeWhere for DEKs whose rows have left the store (a shred
// or a move): it also keeps a DEK read before it from being cached after
// it (see add).
func (c *lru) forget(drop func(*DEK) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	return c.removeWhereLocked(drop)
}

func (c *lru) removeWhereLocked(drop func(*DEK) bool) int {
	n := 0
	for e := c.ll.Front(); e != nil; {
		next := e.Next()
		if drop(e.Value.(*entry).DEK) {
			c.removeLocked(e)
			n++
		}
		e = next
	}
	return n
}

// SharedAuxKeys is AuxKeys for callers that only read the result: the
// slice it returns is the keyring's own list of the live versions, shared
// with every other caller, and must not be modified. It spares AuxKeys'
// copy on the query path of a blind index. The policy is consulted as for
// a DEK cache hit (see authorizeHit): through the decision it last gave
// for the zone while that holds; otherwise, and whenever the live versions
// are not cached, SharedAuxKeys is AuxKeys, checks and audit included.
func (k *Keyring) SharedAuxKeys(ctx context.Context, zone string, purpose AuxPurpose, name string) ([]*AuxKey, error) {
	if l := k.cachedLive(zone, purpose, name); l != nil {
		return l.keys, nil
	}
	keys, err := k.AuxKeys(ctx, zone, purpose, name)
	k.learnAfter(ctx, zone, err)
	return keys, err
}

// CurrentAuxKey is AuxKey for the current version (version 0), with the
// policy consulted as SharedAuxKeys does: the hit path of Encrypt for
// blind-index and deterministic fields.
func (k *Keyring) CurrentAuxKey(ctx context.Context, zone string, purpose AuxPurpose, name string) (*AuxKey, error) {
	if l := k.cachedLive(zone, purpose, name); l != nil {
		return l.keys[0], nil
	}
	a, err := k.AuxKey(ctx, zone, purpose, name, 0)
	k.learnAfter(ctx, zone, err)
	return a, err
}

// cachedLive returns the cached, unexpired live versions of the key
// (zone, purpose, name) once the policy's cached decision allows the
// zone, or nil. Live versions are only ever cached for a configured zone
// and a valid purpose and name, and are never empty. As a DEK hit does
// (cachedDataKey), a hit reuses the decision that allowed the set's last
// hit while that holds, and looks the zone's up otherwise.
func (k *Keyring) cachedLive(zone string, purpose AuxPurpose, name string) *auxLive {
	if k.closed.Load() {
		return nil
	}
	l := k.aux.liveSet(auxName{zone, purpose, name})
	if l == nil {
		return nil
	}
	now := k.now().UnixNano()
	if now >= l.expiresNs {
		return nil
	}
	if k.policy != nil && !l.allowed(now) {
		d := k.cache.decisions.lookup(zone, time.Unix(0, now))
		if d == nil {
			return nil
		}
		l.auth.Store(d)
	}
	return l
}

// learnAfter remembers the policy's lasting decision for zone after a call
// that the policy allowed (err is nil) without it being remembered.
func (k *Keyring) learnAfter(ctx context.Context, zone string, err error) {
	if err == nil && k.policy != nil && k.cache.decisions.lookup(zone, k.now()) == nil {
		k.learnDecision(ctx, zone)
	}
}
