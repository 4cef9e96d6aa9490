//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd)

package audit

import "os"

// lockFile does nothing on systems without flock: there, the caller must
// ensure that one FileSink at a time appends to a file.
func lockFile(*os.File) error { return nil }

// haveLock reports whether lockFile locks on this system.
const haveLock = false
