//go:build !linux

package vaulttest

import "syscall"

// sysProcAttr puts the server in its own process group, so that it can be
// killed with everything it started.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
