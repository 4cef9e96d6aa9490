package keystore

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zonekey/zonekey/envelope"
)

// lru is the bounded cache of unwrapped DEKs, by id, with an index of the
// current DEK of each (zone, subject). A hit takes a read lock and allocates
// nothing; eviction is second-chance (CLOCK): an entry used since it was
// last considered is moved to the front once instead of evicted, which
// keeps recently used DEKs as LRU would without reordering on every hit.
type lru struct {
	mu   sync.RWMutex
	max  int
	ll   *list.List // of *DEK, most recently used first
	byID map[envelope.KeyID]*list.Element
	// bySubject indexes the current DEK of each subject by
	// zone+"\x00"+subject (zone names hold no NUL): a hit hashes one short
	// string built on the stack.
	bySubject map[string]*list.Element
	// hot holds recently hit entries by a few bits of their id, for a hit
	// without the lock. A slot is only set under the read lock, and
	// removeLocked (under the write lock) clears it, so it never holds an
	// entry that has left the cache.
	hot [hotSlots]atomic.Pointer[list.Element]
}

const hotSlots = 64

// hotSlot picks the slot of id (ids are random).
func hotSlot(id *envelope.KeyID) int { return int(id[0]) % hotSlots }

// maxNameKey bounds the zone-and-subject keys current builds on the stack;
// longer ones cost an allocation.
const maxNameKey = 128

func nameKey(zone, subject string) string { return zone + "\x00" + subject }

func newLRU(max int) *lru {
	return &lru{
		max:       max,
		ll:        list.New(),
		byID:      make(map[envelope.KeyID]*list.Element, min(max, 1024)),
		bySubject: make(map[string]*list.Element, min(max, 1024)),
	}
}

// get returns the cached, unexpired DEK with id, or nil.
func (c *lru) get(id envelope.KeyID, now time.Time) *DEK {
	slot := &c.hot[hotSlot(&id)]
	if e := slot.Load(); e != nil && e.Value.(*DEK).ID() == id {
		return c.hit(e, now)
	}
	c.mu.RLock()
	e := c.byID[id]
	if e != nil {
		slot.Store(e)
	}
	c.mu.RUnlock()
	return c.hit(e, now)
}

// current returns the cached, unexpired current DEK of (zone, subject).
func (c *lru) current(zone, subject string, now time.Time) *DEK {
	var buf [maxNameKey]byte
	k := append(append(append(buf[:0], zone...), 0), subject...)
	c.mu.RLock()
	e := c.bySubject[string(k)] // no allocation: the conversion is only looked up
	c.mu.RUnlock()
	return c.hit(e, now)
}

// hit marks the entry e (nil if there was none) used, or drops it if it has
// expired.
func (c *lru) hit(e *list.Element, now time.Time) *DEK {
	if e == nil {
		return nil
	}
	d := e.Value.(*DEK) // Value never changes once the element is listed
	if !now.Before(d.expires) {
		c.mu.Lock()
		if c.byID[d.ID()] == e {
			c.removeLocked(e)
		}
		c.mu.Unlock()
		return nil
	}
	if !d.used.Load() {
		d.used.Store(true)
	}
	return d
}

// add caches d; if isCurrent, d becomes the current DEK of its subject.
func (c *lru) add(d *DEK, isCurrent bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.byID[d.ID()]; old != nil {
		c.removeLocked(old)
	}
	e := c.ll.PushFront(d)
	c.byID[d.ID()] = e
	if isCurrent && d.Subject != "" {
		c.bySubject[nameKey(d.Zone, d.Subject)] = e
	}
	for c.ll.Len() > c.max {
		back := c.ll.Back()
		if d := back.Value.(*DEK); d.used.Load() {
			d.used.Store(false) // second chance
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
	d := c.ll.Remove(e).(*DEK)
	delete(c.byID, d.ID())
	id := d.ID()
	c.hot[hotSlot(&id)].CompareAndSwap(e, nil)
	sk := nameKey(d.Zone, d.Subject)
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
	clear(c.byID)
	clear(c.bySubject)
}

// removeWhere drops every cached DEK for which drop is true. It walks the
// whole cache: it serves shreds and moves, not the hot path.
func (c *lru) removeWhere(drop func(*DEK) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for e := c.ll.Front(); e != nil; {
		next := e.Next()
		if drop(e.Value.(*DEK)) {
			c.removeLocked(e)
			n++
		}
		e = next
	}
	return n
}
