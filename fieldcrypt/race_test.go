//go:build race

package fieldcrypt_test

// raceEnabled: the race detector changes what escapes and makes sync.Pool
// drop items, so allocation counts mean nothing under it.
const raceEnabled = true
