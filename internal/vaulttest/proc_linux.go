package vaulttest

import "syscall"

// sysProcAttr puts the server in its own process group, so that it can be
// killed with everything it started, and has the kernel kill it if this
// process dies without stopping it (a test binary killed by a timeout).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
