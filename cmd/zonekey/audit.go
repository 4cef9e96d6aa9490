package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"github.com/zonekey/zonekey/audit"
)

var auditVerifyCmd = &command{
	name:      "audit verify",
	args:      "[--json] FILE",
	takesArgs: true,
	summary:   "check the hash chain of an audit file",
	help: `
Verify checks every line of the audit file FILE: its layout, its event's
canonical encoding, its hash, its seq and its link to the line before.

If the chain is intact it prints "ok: N events, last hash H" and exits 0.
Compare H with the latest anchored hash: a hash chain cannot show that lines
were removed from its end, or that the whole file was replaced.

Otherwise it prints "FILE:LINE: reason" on stderr, naming the first bad
line, and exits 1; it exits 1 too if FILE cannot be read.

With --json it prints one object on stdout instead:
{"ok":…,"file":…,"events":…,"last_hash":…,"line":…,"reason":…}, where events
and last_hash describe the valid lines, and line and reason the first bad one.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one FILE, got %d arguments", len(args))
			}
			return auditVerify(c, args[0], *asJSON)
		}
	},
}

// verifyResult is the --json output of audit verify and audit repair.
type verifyResult struct {
	OK       bool   `json:"ok"`
	File     string `json:"file"`
	Events   uint64 `json:"events"`
	LastHash string `json:"last_hash,omitempty"`
	Line     int    `json:"line,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// ErrorKind classifies a failure: "broken_chain", "not_found" or
	// "unreadable".
	ErrorKind string `json:"error_kind,omitempty"`
	// Set by audit repair only.
	// Removed is the torn line repair removed, as text (bytes that are
	// not UTF-8 show as U+FFFD); RemovedBase64 has its exact bytes.
	Removed       *string `json:"removed,omitempty"`
	RemovedBase64 *string `json:"removed_base64,omitempty"`
	RemovedBytes  *int    `json:"removed_bytes,omitempty"`
}

func auditVerify(c *cmdContext, file string, asJSON bool) int {
	res := verifyFile(file)
	if asJSON {
		return printJSON(c, res)
	}
	return printVerify(c, res)
}

// verifyFile verifies the audit file at path.
func verifyFile(path string) verifyResult {
	res := verifyResult{File: path}
	f, err := os.Open(path)
	if err != nil {
		res.Reason, res.ErrorKind = err.Error(), "unreadable"
		if errors.Is(err, fs.ErrNotExist) {
			res.ErrorKind = "not_found"
		}
		return res
	}
	defer f.Close()
	head, err := audit.VerifyHead(f)
	res.Events, res.LastHash = head.Seq, head.Hash
	var ce *audit.ChainError
	switch {
	case err == nil:
		res.OK = true
	case errors.As(err, &ce):
		res.Line, res.Reason, res.ErrorKind = ce.Line, ce.Reason, "broken_chain"
	default:
		res.Reason, res.ErrorKind = fmt.Sprintf("%s: %v", path, err), "unreadable"
	}
	return res
}

// printVerify prints the result of a verification for people.
func printVerify(c *cmdContext, res verifyResult) int {
	switch {
	case res.OK:
		fmt.Fprintf(c.stdout, "ok: %d events, last hash %s\n", res.Events, res.LastHash)
		return exitOK
	case res.Line > 0:
		fmt.Fprintf(c.stderr, "%s:%d: %s\n", res.File, res.Line, res.Reason)
	default:
		fmt.Fprintf(c.stderr, "zonekey %s: %s\n", c.cmd.name, res.Reason)
	}
	return exitFail
}

func printJSON(c *cmdContext, res verifyResult) int {
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(c.stderr, "zonekey %s: %v\n", c.cmd.name, err)
		return exitFail
	}
	fmt.Fprintf(c.stdout, "%s\n", b)
	if !res.OK {
		return exitFail
	}
	return exitOK
}

var auditRepairCmd = &command{
	name:      "audit repair",
	args:      "[--json] FILE",
	takesArgs: true,
	summary:   "remove a torn last line left by an interrupted write",
	help: `
Repair removes the torn last line of the audit file FILE: the bytes after its
last newline, left when a write was interrupted by a crash or a full disk.
Such a line is an event whose recording did not succeed, so no acknowledged
event is lost. Repair prints the bytes it removed, so the repair itself can
be reported, then verifies the file as "audit verify" does.

It refuses a tail longer than any audit line (not an interrupted write), and a
file that a running process holds open for appending. A file whose chain is
broken in any other way cannot be repaired: it must be investigated.

With --json it prints the result of "audit verify", plus "removed" and
"removed_bytes".`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			if len(args) != 1 {
				return c.usageError("want one FILE, got %d arguments", len(args))
			}
			return auditRepair(c, args[0], *asJSON)
		}
	},
}

func auditRepair(c *cmdContext, file string, asJSON bool) int {
	removed, err := audit.Repair(file)
	if err != nil {
		if asJSON {
			kind := "unreadable"
			switch {
			case errors.Is(err, fs.ErrNotExist):
				kind = "not_found"
			case errors.Is(err, audit.ErrBrokenChain):
				kind = "broken_chain"
			}
			return printJSON(c, verifyResult{File: file, Reason: err.Error(), ErrorKind: kind})
		}
		fmt.Fprintf(c.stderr, "zonekey %s: %v\n", c.cmd.name, err)
		return exitFail
	}
	res := verifyFile(file)
	if asJSON {
		s, b, n := string(removed), base64.StdEncoding.EncodeToString(removed), len(removed)
		res.Removed, res.RemovedBase64, res.RemovedBytes = &s, &b, &n
		return printJSON(c, res)
	}
	if removed == nil {
		fmt.Fprintf(c.stdout, "%s does not end with a torn line; nothing removed\n", file)
	} else {
		fmt.Fprintf(c.stdout, "removed a torn line of %d bytes from %s: %.200q\n", len(removed), file, removed)
	}
	return printVerify(c, res)
}
