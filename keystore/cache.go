package keystore

import (
	"container/list"
	"sync"
	"time"

	"github.com/zonekey/zonekey/envelope"
)

// lru is the bounded cache of unwrapped DEKs, by id, with an index of the
// current DEK of each (zone, subject). A hit allocates nothing.
type lru struct {
	mu        sync.Mutex
	max       int
	ll        *list.List // of *DEK, most recently used first
	byID      map[envelope.KeyID]*list.Element
	bySubject map[subjectKey]*list.Element
}

type subjectKey struct{ zone, subject string }

func newLRU(max int) *lru {
	return &lru{
		max:       max,
		ll:        list.New(),
		byID:      make(map[envelope.KeyID]*list.Element, min(max, 1024)),
		bySubject: make(map[subjectKey]*list.Element, min(max, 1024)),
	}
}

// get returns the cached, unexpired DEK with id, or nil.
func (c *lru) get(id envelope.KeyID, now time.Time) *DEK {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byID[id]
	if e == nil {
		return nil
	}
	d := e.Value.(*DEK)
	if !now.Before(d.expires) {
		c.removeLocked(e)
		return nil
	}
	c.ll.MoveToFront(e)
	return d
}

// current returns the cached, unexpired current DEK of (zone, subject).
func (c *lru) current(zone, subject string, now time.Time) *DEK {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.bySubject[subjectKey{zone, subject}]
	if e == nil {
		return nil
	}
	d := e.Value.(*DEK)
	if !now.Before(d.expires) {
		c.removeLocked(e)
		return nil
	}
	c.ll.MoveToFront(e)
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
		c.bySubject[subjectKey{d.Zone, d.Subject}] = e
	}
	for c.ll.Len() > c.max {
		c.removeLocked(c.ll.Back())
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
	sk := subjectKey{d.Zone, d.Subject}
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
	clear(c.byID)
	clear(c.bySubject)
}
