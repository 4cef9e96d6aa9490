package main

import (
	"context"
	"flag"
	"fmt"
	"math"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/keystore"
)

var reindexCmd = &command{
	name:    "reindex",
	args:    "--zone Z (--index NAME | --deterministic FIELD) [--start | --retire-through V] [flags]",
	summary: "rotate a blind-index or deterministic key, and retire old versions after a re-index",
	help: `
A blind index (a field tagged index=...) and a deterministic field (tagged
encrypt,deterministic) have a key per zone, in versions. Moving to a new
version takes three steps, of which this command does the first and the
last; the middle one is the application's, since only it can read and write
its records:

  1. reindex --zone Z --index NAME --start
      Makes a new version of the key, which new records use from then on
      (other processes within their DEK TTL, dek_ttl, 5m by default).
      Lookups (IndexTerms, DeterministicTerms) search every live version,
      so records written under the older ones are still found.

  2. The application re-indexes its records: zonekey.Client.Reindex on
     each stored record, storing those it reports changed; see the
     documentation of fieldcrypt.Crypter.Reindex for a resumable loop.
     Start it after the DEK TTL, and repeat until a pass changes nothing.

  3. reindex --zone Z --index NAME --retire-through V
      Retires the versions up to V (older than the current one): lookups
      stop searching them. Retire only after step 2 has finished: a record
      still holding a term or ciphertext of a retired version is no longer
      found. Retired key rows stay in the keystore.

Without --start or --retire-through it prints the key's live versions and
the highest retired one, creating nothing.

NAME is the index key's name: the tag's name= option, or else the index
field's path in its struct (EmailIdx, Contact.EmailIdx). FIELD is the path of
the deterministic field (TaxID). The command runs as any key access does:
the configuration's attestation must place this process in one of the zone's
regions.

The result is printed as text, or as one JSON object with --json:
{"ok":…,"zone":…,"purpose":"index"|"det","key":…,"operation":"status"|"start"|"retire",
"live":[…],"retired_through":…}; on failure "ok" is false and "error" and
"error_kind" say why.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		zone := fs.String("zone", "", "the zone `Z` of the key (required)")
		index := fs.String("index", "", "the blind index `NAME` (its name= option or field path)")
		det := fs.String("deterministic", "", "the deterministic `FIELD` path, instead of --index")
		start := fs.Bool("start", false, "make a new version of the key")
		retire := fs.Uint64("retire-through", 0, "retire the versions up to `V`")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			set := setFlags(c.fs)
			switch {
			case *zone == "":
				return c.usageError("--zone is required")
			case (*index == "") == (*det == ""):
				return c.usageError("give one of --index and --deterministic")
			case *start && set["retire-through"]:
				return c.usageError("--start and --retire-through exclude each other")
			case set["retire-through"] && (*retire < 1 || *retire > math.MaxUint32):
				return c.usageError("--retire-through must be a version from 1 to %d, not %d", uint32(math.MaxUint32), *retire)
			}
			r := &reindexRun{cmdContext: c, zone: *zone, purpose: keystore.AuxIndex, name: *index, asJSON: *asJSON}
			if *det != "" {
				r.purpose, r.name = keystore.AuxDeterministic, *det
			}
			switch {
			case *start:
				r.operation = "start"
			case set["retire-through"]:
				r.operation = "retire"
			default:
				r.operation = "status"
			}
			return r.run(*config, uint32(*retire))
		}
	},
}

// reindexRun is one run of the reindex command.
type reindexRun struct {
	*cmdContext
	zone, name, operation string
	purpose               keystore.AuxPurpose
	asJSON                bool
}

// reindexResult is the --json output of reindex.
type reindexResult struct {
	OK             bool     `json:"ok"`
	Zone           string   `json:"zone"`
	Purpose        string   `json:"purpose"`
	Key            string   `json:"key"`
	Operation      string   `json:"operation"`
	Live           []uint32 `json:"live"`
	RetiredThrough uint32   `json:"retired_through"`
	Error          string   `json:"error,omitempty"`
	ErrorKind      string   `json:"error_kind,omitempty"`
}

func (r *reindexRun) run(configFlag string, through uint32) int {
	return r.withClient(configFlag, r.fail, func(ctx context.Context, cl *zonekey.Client, _ zonekey.Config) int {
		return r.change(ctx, cl.Keyring(), through)
	})
}

// change does the operation, if any, and reports the key's status.
func (r *reindexRun) change(ctx context.Context, kr *keystore.Keyring, through uint32) int {
	var err error
	switch r.operation {
	case "start":
		_, err = kr.RotateAuxKey(ctx, r.zone, r.purpose, r.name)
	case "retire":
		err = kr.RetireAuxKeys(ctx, r.zone, r.purpose, r.name, through)
	}
	if err != nil {
		return r.fail(err)
	}
	st, err := kr.AuxKeyStatus(ctx, r.zone, r.purpose, r.name)
	if err != nil {
		return r.fail(err)
	}
	return r.report(st)
}

func (r *reindexRun) report(st keystore.AuxKeyStatus) int {
	if r.asJSON {
		out := reindexResult{OK: true, Zone: r.zone, Purpose: string(r.purpose), Key: r.name, Operation: r.operation,
			Live: st.Live, RetiredThrough: st.RetiredThrough}
		if out.Live == nil {
			out.Live = []uint32{}
		}
		return writeJSON(r.cmdContext, out, exitOK)
	}
	what := fmt.Sprintf("zone %q, %s key %q", r.zone, r.purpose, r.name)
	if len(st.Live) == 0 {
		fmt.Fprintf(r.stdout, "%s: no version yet (the first record or lookup makes version 1)\n", what)
		return exitOK
	}
	fmt.Fprintf(r.stdout, "%s: current version %d; live versions %v; retired through %d\n", what, st.Live[0], st.Live, st.RetiredThrough)
	switch {
	case r.operation == "start" && st.Live[0] == 1:
		fmt.Fprintf(r.stdout, "Version 1 is the key's first: there is nothing to re-index or retire.\n")
	case r.operation == "start":
		fmt.Fprintf(r.stdout, "Re-index the application's records (zonekey.Client.Reindex) after the DEK TTL; then run: zonekey reindex --zone %s %s --retire-through %d\n",
			r.zone, r.keyFlag(), st.Live[0]-1)
	case len(st.Live) > 1:
		fmt.Fprintf(r.stdout, "Lookups search %d versions. Once the application's re-index has finished: zonekey reindex --zone %s %s --retire-through %d\n",
			len(st.Live), r.zone, r.keyFlag(), st.Live[0]-1)
	}
	return exitOK
}

func (r *reindexRun) keyFlag() string {
	if r.purpose == keystore.AuxDeterministic {
		return "--deterministic " + r.name
	}
	return "--index " + r.name
}

func (r *reindexRun) fail(err error) int {
	msg := fmt.Sprintf("zone %q, %s key %q: %v", r.zone, r.purpose, r.name, err)
	if r.asJSON {
		out := reindexResult{Zone: r.zone, Purpose: string(r.purpose), Key: r.name, Operation: r.operation,
			Live: []uint32{}, Error: msg, ErrorKind: errorKind(err)}
		return writeJSON(r.cmdContext, out, exitFail)
	}
	fmt.Fprintf(r.stderr, "zonekey %s: %s\n", r.cmd.name, msg)
	return exitFail
}
