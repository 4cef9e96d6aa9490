// Command zonekey is the custodian CLI of zonekey: the operations on keys and
// on the audit log that run outside the applications.
//
// Usage:
//
//	zonekey <command> [flags] [arguments]
//	zonekey help [command]
//
// The commands:
//
//	rotate --zone Z                        rotate the zone's KEK, rewrap its zone keys
//	rotate --zone Z --rewrap-only          finish an interrupted KEK rotation
//	rotate --zone Z --retire-below N       retire KEK versions below N
//	rotate --zone Z --zone-key [--batch N] make a new zone-key version, rewrap the DEKs
//	keys list [--zone Z]                   list zone-key versions and their DEKs
//	reindex --zone Z --index NAME          rotate a blind-index or deterministic key; retire old
//	                                       versions after the application's re-index
//	shred --zone Z --subject S             erase a subject: delete its DEKs (final in backups
//	                                       after the zone's next epoch)
//	shred --zone Z --subjects-from FILE    shred each subject listed in FILE, one a line
//	shred --zone Z --all --confirm Z       erase the whole zone: destroy its KEK
//	migrate --subject S --from A --to B    move a subject's DEKs to another zone; data untouched
//	migrate --subjects-from FILE --from A --to B
//	                                       move each subject listed in FILE
//	epoch --zone Z [--settle D | --no-settle]
//	                                       rotate the KEK and zone key, rewrap every DEK, destroy
//	                                       the old keys: earlier shreds become final in backups
//	audit verify FILE                      check the hash chain of an audit file
//	audit repair FILE                      remove a torn last line left by an interrupted write
//
// The key commands read the configuration file that applications load with
// zonekey.LoadConfig (--config FILE, default $ZONEKEY_CONFIG) and run under
// its custody policy: this process must be attested in the zone.
//
// Every command prints its result as one JSON object with --json. The exit
// status is 0 on success, 1 when the command fails or finds a problem (a
// broken chain), and 2 on bad usage.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// A command is one subcommand of the CLI: "rotate", "keys list", "shred",
// "audit verify", ...
type command struct {
	name    string // the words that select it, e.g. "audit verify"
	args    string // synopsis of its arguments, e.g. "[--json] FILE"
	summary string // one line for the command list
	help    string // paragraphs for "zonekey help <name>"
	// takesArgs says the command has positional arguments; the
	// dispatcher refuses them for the others.
	takesArgs bool
	// setup defines the command's flags on fs and returns the function
	// that runs it with its positional arguments, once fs is parsed.
	setup func(fs *flag.FlagSet) func(c *cmdContext, args []string) int
}

// commands is the table the dispatcher selects from, in the order listed by
// "zonekey help".
var commands = []*command{
	rotateCmd,
	keysListCmd,
	reindexCmd,
	shredCmd,
	migrateCmd,
	epochCmd,
	auditVerifyCmd,
	auditRepairCmd,
}

// cmdContext is what a command runs with.
type cmdContext struct {
	cmd            *command
	fs             *flag.FlagSet
	stdout, stderr io.Writer
}

// run runs the CLI with the arguments after the program name and returns the
// exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		return runHelp(args[1:], stdout, stderr)
	}
	cmd, rest := lookup(args)
	if cmd == nil {
		if isGroup(args[0]) && (len(args) == 1 || strings.HasPrefix(args[1], "-")) {
			fmt.Fprintf(stderr, "zonekey: %q needs a subcommand\n\n", args[0])
		} else {
			fmt.Fprintf(stderr, "zonekey: unknown command %q\n\n", strings.Join(args[:min(len(args), 2)], " "))
		}
		usage(stderr)
		return exitUsage
	}
	c := newContext(cmd, stdout, stderr)
	runCmd := cmd.setup(c.fs)
	pos, code, ok := c.parse(rest)
	if !ok {
		return code
	}
	if len(pos) > 0 && !cmd.takesArgs {
		return c.usageError("unexpected arguments %q", pos)
	}
	return runCmd(c, pos)
}

func newContext(cmd *command, stdout, stderr io.Writer) *cmdContext {
	fs := flag.NewFlagSet("zonekey "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // parse prints the usage itself
	return &cmdContext{cmd: cmd, fs: fs, stdout: stdout, stderr: stderr}
}

// lookup returns the command whose name is the longest prefix of args, and
// the arguments after it.
func lookup(args []string) (*command, []string) {
	var best *command
	var n int
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(words) > len(args) || len(words) <= n {
			continue
		}
		match := true
		for i, w := range words {
			if args[i] != w {
				match = false
				break
			}
		}
		if match {
			best, n = c, len(words)
		}
	}
	return best, args[n:]
}

// isGroup reports whether word starts the name of commands of several words,
// like "audit".
func isGroup(word string) bool {
	for _, c := range commands {
		if strings.HasPrefix(c.name, word+" ") {
			return true
		}
	}
	return false
}

func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stdout)
		return exitOK
	}
	cmd, rest := lookup(args)
	if cmd == nil || len(rest) > 0 {
		fmt.Fprintf(stderr, "zonekey help: unknown command %q\n\n", strings.Join(args, " "))
		usage(stderr)
		return exitUsage
	}
	c := newContext(cmd, stdout, stderr)
	cmd.setup(c.fs)
	c.printUsage(stdout)
	return exitOK
}

// usage lists the commands.
func usage(w io.Writer) {
	fmt.Fprint(w, "zonekey is the custodian CLI of zonekey.\n\nUsage:\n\n"+
		"\tzonekey <command> [flags] [arguments]\n\tzonekey help [command]\n\nCommands:\n\n")
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "\t%s %s\t%s\n", c.name, c.args, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nEvery command prints its result as JSON with --json. The key commands\n"+
		"(all but audit) read the configuration --config FILE, default $"+configEnv+".\n"+
		"Exit status: 0 success, 1 failure or problem found, 2 bad usage.\n")
}

// parse parses the command's flags in args, which may come before or after
// the positional arguments ("--" ends the flags), and returns the positional
// arguments. If ok is false, the command must return code: parse printed the
// usage, for -h or a bad flag.
func (c *cmdContext) parse(args []string) (pos []string, code int, ok bool) {
	for {
		err := c.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(c.stdout)
			return nil, exitOK, false
		}
		if err != nil { // the flag package printed the error
			c.shortUsage(c.stderr)
			return nil, exitUsage, false
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			return pos, 0, true
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError reports bad arguments and returns the usage exit status. Under
// --json it also writes {"ok":false,"error":...,"error_kind":"usage"} to
// stdout, so that a pipeline reading the JSON sees why.
func (c *cmdContext) usageError(format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	fmt.Fprintf(c.stderr, "zonekey %s: %s\n", c.cmd.name, msg)
	c.shortUsage(c.stderr)
	if f := c.fs.Lookup("json"); f != nil && f.Value.String() == "true" {
		return writeJSON(c, struct {
			OK        bool   `json:"ok"`
			Error     string `json:"error"`
			ErrorKind string `json:"error_kind"`
		}{Error: msg, ErrorKind: "usage"}, exitUsage)
	}
	return exitUsage
}

// shortUsage prints the command's synopsis and where to find more.
func (c *cmdContext) shortUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: zonekey %s %s\nRun \"zonekey help %s\" for details.\n", c.cmd.name, c.cmd.args, c.cmd.name)
}

// printUsage prints the command's synopsis, help and flags.
func (c *cmdContext) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: zonekey %s %s\n\n%s\n", c.cmd.name, c.cmd.args, strings.TrimSpace(c.cmd.help))
	n := 0
	c.fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		c.fs.SetOutput(w)
		c.fs.PrintDefaults()
		c.fs.SetOutput(c.stderr)
	}
}
