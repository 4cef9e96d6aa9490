package zonekey

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/zonekey/zonekey/keystore"
	"github.com/zonekey/zonekey/keystore/boltstore"
)

// The embedded store is one bbolt file, which one process opens once (it
// takes an exclusive file lock). Clients of one process opened on the same
// Dir share it, counted, so that a process can hold several Clients (for
// example with different attestations) over one keyring.
var (
	sharedMu     sync.Mutex
	sharedStores = map[string]*sharedStore{}
)

type sharedStore struct {
	*boltstore.Store
	path string
	refs int
}

func openShared(dir string) (keystore.Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStore, err)
	}
	// The directory's real path: one reached through a symbolic link is
	// the same store.
	real, err := filepath.EvalSymlinks(dir)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStore, err)
	}
	path := filepath.Join(real, "keystore.db")
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if s := sharedStores[path]; s != nil {
		s.refs++
		return &storeRef{sharedStore: s}, nil
	}
	bs, err := boltstore.Open(path, nil)
	if err != nil {
		return nil, err
	}
	s := &sharedStore{Store: bs, path: path, refs: 1}
	sharedStores[path] = s
	return &storeRef{sharedStore: s}, nil
}

// storeRef is one Client's reference to a shared store; closing it closes
// the file when the last reference goes.
type storeRef struct {
	*sharedStore
	once sync.Once
}

func (r *storeRef) Close() error {
	var err error
	r.once.Do(func() {
		sharedMu.Lock()
		defer sharedMu.Unlock()
		r.refs--
		if r.refs == 0 {
			delete(sharedStores, r.path)
			err = r.Store.Close()
		}
	})
	return err
}
