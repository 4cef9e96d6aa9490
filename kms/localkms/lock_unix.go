//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

package localkms

import (
	"os"
	"syscall"
)

// lockPath takes an exclusive advisory lock on the file at path (created
// 0600 if missing), waiting for it, and returns the function that releases
// it. Custodians in any process that change one KEK file take this lock, so
// that two rotations cannot both read version N and one of them lose the
// other's new version.
func lockPath(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			lerr = syscall.Flock(int(fd), syscall.LOCK_EX)
			if lerr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		f.Close()
		return nil, err
	}
	if lerr != nil {
		f.Close()
		return nil, lerr
	}
	return func() { f.Close() }, nil
}
