package keystore

// CacheSizes reports what k's DEK cache holds: entries in its LRU list, in
// its index by id, and in its index of current DEKs by (zone, subject).
func CacheSizes(k *Keyring) (entries, byID, bySubject int) {
	k.cache.mu.Lock()
	defer k.cache.mu.Unlock()
	return k.cache.ll.Len(), len(k.cache.byID), len(k.cache.bySubject)
}
