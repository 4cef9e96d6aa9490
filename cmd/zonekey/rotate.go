package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/keystore"
)

// configEnv names the environment variable that --config defaults to.
const configEnv = "ZONEKEY_CONFIG"

// baseContext is the context commands run under, until SIGINT or SIGTERM.
// Tests replace it.
var baseContext = context.Background

// progressInterval is the least time between two progress lines when
// stderr is not a terminal. Tests set it to zero.
var progressInterval = 2 * time.Second

var rotateCmd = &command{
	name:    "rotate",
	args:    "--zone Z [--zone-key | --retire-below N | --rewrap-only] [flags]",
	summary: "rotate a zone's KEK or zone key, or retire old KEK versions",
	help: `
Rotate changes which keys wrap the zone's stored keys; it never touches data.
It runs as any key access does: the configuration's attestation must place
this process in one of the zone's regions.

  rotate --zone Z
      Rotates the zone's KEK at its custodian (a new primary version), then
      rewraps every zone-key row of the zone under it. Vault Transit
      rewraps server-side: the zone keys never leave it. Prints the new KEK
      version. Older versions still unwrap until they are retired.

  rotate --zone Z --rewrap-only
      Only the rewrap half: moves the zone-key rows to the custodian's
      current primary KEK version. It finishes a rotate that was interrupted
      or failed after the KEK was rotated.

  rotate --zone Z --retire-below N
      Makes KEK versions below N refuse to unwrap at the custodian (Vault's
      min_decryption_version). Refused while any zone-key row of the zone,
      or any DEK moved in from another zone and not yet adopted, is still
      wrapped under such a version.

  rotate --zone Z --zone-key [--batch N]
      Makes a new zone-key version, under which this and, once they notice,
      the other processes create new DEKs, and rewraps every DEK row of the
      zone under it, N rows per batch. Shows a progress bar when stderr is a
      terminal, and a line every few seconds otherwise. It is resumable: if
      it stops (Ctrl-C, a failure), running it again continues toward the
      same version instead of making another.

      Running processes keep creating DEKs under the previous version until
      their view of the zone expires, up to the zone-key TTL (zone_key_ttl,
      10m by default). The command ends by counting the DEKs still below the
      new version; if any remain, run it again after the TTL to finish.

The configuration file is the JSON that applications load with
zonekey.LoadConfig; --config defaults to $ZONEKEY_CONFIG. The embedded
keystore is opened by one process at a time: stop the application, or use a
shared (PostgreSQL) keystore.

The result is printed as text, or as one JSON object with --json:
{"ok":…,"zone":…,"operation":"kek"|"rewrap"|"retire"|"zone-key",…}; on
failure "ok" is false and "error" and "error_kind" say why.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		zone := fs.String("zone", "", "the zone `Z` whose keys to rotate (required)")
		zoneKey := fs.Bool("zone-key", false, "rotate the zone key and rewrap the zone's DEKs, instead of the KEK")
		batch := fs.Int("batch", keystore.DefaultRotationBatch, "DEK rows per batch, with --zone-key")
		retire := fs.Uint64("retire-below", 0, "retire the KEK versions below `N` instead of rotating")
		rewrapOnly := fs.Bool("rewrap-only", false, "rewrap the zone-key rows to the primary KEK version, without rotating")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			set := setFlags(c.fs)
			switch {
			case *zone == "":
				return c.usageError("--zone is required")
			case countTrue(*zoneKey, set["retire-below"], *rewrapOnly) > 1:
				return c.usageError("--zone-key, --retire-below and --rewrap-only exclude each other")
			case set["batch"] && !*zoneKey:
				return c.usageError("--batch goes with --zone-key")
			case *batch < 1:
				return c.usageError("--batch must be at least 1, not %d", *batch)
			case set["retire-below"] && (*retire < 1 || *retire > math.MaxUint32):
				return c.usageError("--retire-below must be a KEK version from 1 to %d, not %d", uint32(math.MaxUint32), *retire)
			}
			r := &rotateRun{cmdContext: c, zone: *zone, asJSON: *asJSON}
			switch {
			case *zoneKey:
				return r.run(*config, "zone-key", func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
					return r.zoneKey(ctx, cl, cfg, *batch)
				})
			case set["retire-below"]:
				return r.run(*config, "retire", func(ctx context.Context, cl *zonekey.Client, _ zonekey.Config) int {
					return r.retire(ctx, cl, uint32(*retire))
				})
			case *rewrapOnly:
				return r.run(*config, "rewrap", func(ctx context.Context, cl *zonekey.Client, _ zonekey.Config) int {
					return r.kek(ctx, cl, false)
				})
			default:
				return r.run(*config, "kek", func(ctx context.Context, cl *zonekey.Client, _ zonekey.Config) int {
					return r.kek(ctx, cl, true)
				})
			}
		}
	},
}

// configFlag defines --config.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "the configuration `FILE` (JSON, as zonekey.LoadConfig reads it); default $"+configEnv)
}

// jsonFlag defines --json.
func jsonFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("json", false, "print the result as a JSON object")
}

// configPath returns the configuration file: the flag's value, or else the
// environment's.
func (c *cmdContext) configPath(flagValue string) (string, int, bool) {
	if flagValue != "" {
		return flagValue, 0, true
	}
	if env := os.Getenv(configEnv); env != "" {
		return env, 0, true
	}
	return "", c.usageError("no configuration: pass --config FILE or set %s", configEnv), false
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// withClient is the prologue of the key commands, run once their flags are
// checked: it finds the configuration file (configFlag, else $ZONEKEY_CONFIG;
// neither is a usage error), opens its client and returns what op returns,
// run with the client under a context that SIGINT and SIGTERM cancel. If the
// client cannot be opened, it returns fail(err) instead.
func (c *cmdContext) withClient(configFlag string, fail func(error) int, op func(context.Context, *zonekey.Client, zonekey.Config) int) int {
	path, code, ok := c.configPath(configFlag)
	if !ok {
		return code
	}
	ctx, stop, cl, cfg, err := openClient(path)
	if err != nil {
		return fail(err)
	}
	defer stop()
	defer cl.Close()
	return op(ctx, cl, cfg)
}

// openClient loads the configuration at path and opens its client, under a
// context that SIGINT and SIGTERM cancel. The caller calls stop, then closes
// the client.
func openClient(path string) (ctx context.Context, stop context.CancelFunc, cl *zonekey.Client, cfg zonekey.Config, err error) {
	ctx, stop = signal.NotifyContext(baseContext(), os.Interrupt, syscall.SIGTERM)
	cfg, err = zonekey.LoadConfig(path)
	if err == nil {
		cl, err = zonekey.Open(ctx, cfg)
	}
	if err != nil {
		stop()
		return nil, nil, nil, cfg, err
	}
	return ctx, stop, cl, cfg, nil
}

// rotateRun is one run of the rotate command.
type rotateRun struct {
	*cmdContext
	zone      string
	asJSON    bool
	operation string
}

// rotateResult is the --json output of rotate. The fields that do not
// concern the operation are left out.
type rotateResult struct {
	OK        bool   `json:"ok"`
	Zone      string `json:"zone"`
	Operation string `json:"operation"`
	// kek, rewrap: the KEK version the zone-key rows were rewrapped to;
	// retire: the version below which versions were retired.
	KEKVersion uint32 `json:"kek_version,omitempty"`
	// zone-key: the zone-key version the DEKs were rewrapped to, and
	// whether this run made it.
	ZoneKeyVersion uint32 `json:"zone_key_version,omitempty"`
	Created        *bool  `json:"created,omitempty"`
	// Rows: kek and rewrap count zone-key rows, zone-key counts DEK rows.
	Scanned   *int `json:"scanned,omitempty"`
	Rewrapped *int `json:"rewrapped,omitempty"`
	Skipped   *int `json:"skipped,omitempty"`
	Remaining *int `json:"remaining,omitempty"`
	// ZoneKeyTTL is the configured zone-key TTL (zone-key), after which
	// a new run rewraps the remaining DEKs.
	ZoneKeyTTL string `json:"zone_key_ttl,omitempty"`
	// Lagging lists, for a refused retire, the zone-key versions still
	// wrapped under a KEK version to be retired.
	Lagging []uint32 `json:"lagging_zone_key_versions,omitempty"`
	// LaggingMoved counts, for a refused retire, the DEKs moved in from
	// another zone and still wrapped under a KEK version to be retired.
	LaggingMoved int    `json:"lagging_moved_deks,omitempty"`
	Error        string `json:"error,omitempty"`
	// ErrorKind classifies Error: "outside_custody", "kek_in_use",
	// "interrupted", "kms_unavailable", ... (see errorKind).
	ErrorKind string `json:"error_kind,omitempty"`
}

// run opens the client of the configuration configFlag names and runs op
// with it.
func (r *rotateRun) run(configFlag, operation string, op func(context.Context, *zonekey.Client, zonekey.Config) int) int {
	r.operation = operation
	return r.withClient(configFlag, func(err error) int { return r.fail(rotateResult{}, err, "") }, op)
}

func (r *rotateRun) kek(ctx context.Context, cl *zonekey.Client, rotate bool) int {
	var res keystore.KEKRotation
	var err error
	if rotate {
		res, err = cl.Keyring().RotateKEK(ctx, r.zone)
	} else {
		res, err = cl.Keyring().RewrapZoneKeys(ctx, r.zone)
	}
	out := rotateResult{KEKVersion: res.KEKVersion, Rewrapped: &res.Rewrapped, Skipped: &res.Skipped}
	if err != nil {
		hint := ""
		if rotate && res.KEKVersion != 0 {
			hint = fmt.Sprintf("the KEK was rotated to v%d, but not every zone-key row was rewrapped; finish with: zonekey rotate --zone %s --rewrap-only", res.KEKVersion, r.zone)
		}
		return r.fail(out, err, hint)
	}
	if r.asJSON {
		return r.succeed(out)
	}
	if rotate {
		fmt.Fprintf(r.stdout, "zone %q: KEK rotated to v%d; %d zone-key rows rewrapped, %d already under it\n", r.zone, res.KEKVersion, res.Rewrapped, res.Skipped)
		fmt.Fprintf(r.stdout, "Older KEK versions still unwrap; retire them with: zonekey rotate --zone %s --retire-below %d\n", r.zone, res.KEKVersion)
	} else {
		fmt.Fprintf(r.stdout, "zone %q: %d zone-key rows rewrapped to KEK v%d, %d already under it\n", r.zone, res.Rewrapped, res.KEKVersion, res.Skipped)
	}
	return exitOK
}

func (r *rotateRun) retire(ctx context.Context, cl *zonekey.Client, v uint32) int {
	out := rotateResult{KEKVersion: v}
	if err := cl.Keyring().RetireKEKBelow(ctx, r.zone, v); err != nil {
		hint := ""
		var inUse *keystore.KEKInUseError
		if errors.As(err, &inUse) {
			out.Lagging, out.LaggingMoved = inUse.ZoneKeyVersions, inUse.PendingDEKs
			var hints []string
			if len(inUse.ZoneKeyVersions) > 0 {
				hints = append(hints, fmt.Sprintf("rewrap the zone-key rows first: zonekey rotate --zone %s --rewrap-only", r.zone))
			}
			if inUse.PendingDEKs > 0 {
				hints = append(hints, fmt.Sprintf("adopt the moved DEKs first: zonekey rotate --zone %s --zone-key", r.zone))
			}
			hint = strings.Join(hints, "; ")
		}
		return r.fail(out, err, hint)
	}
	if r.asJSON {
		return r.succeed(out)
	}
	fmt.Fprintf(r.stdout, "zone %q: KEK versions below %d retired\n", r.zone, v)
	return exitOK
}

func (r *rotateRun) zoneKey(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config, batch int) int {
	ttl := cfg.ZoneKeyTTL
	if ttl <= 0 {
		ttl = keystore.DefaultZoneKeyTTL
	}
	bar := newProgress(r.stderr, r.zone)
	res, err := cl.Keyring().RotateZoneKey(ctx, r.zone, keystore.ZoneKeyRotation{BatchSize: batch, Progress: bar.update})
	bar.finish()
	out := rotateResult{
		ZoneKeyVersion: res.Version, Created: &res.Created,
		Scanned: &res.Scanned, Rewrapped: &res.Rewrapped, Remaining: &res.Remaining, ZoneKeyTTL: ttl.String(),
	}
	if err != nil {
		if res.Version == 0 {
			out.Created, out.Scanned, out.Rewrapped, out.Remaining = nil, nil, nil, nil
		} else {
			out.Remaining = nil // not counted
		}
		hint := ""
		if res.Version != 0 {
			hint = fmt.Sprintf("stopped after rewrapping %d DEKs to zone key v%d; run the same command again to resume", res.Rewrapped, res.Version)
		}
		return r.fail(out, err, hint)
	}
	if r.asJSON {
		return r.succeed(out)
	}
	how := "made"
	if !res.Created {
		how = "resumed"
	}
	fmt.Fprintf(r.stdout, "zone %q: zone key v%d (%s); %d DEKs scanned, %d rewrapped, %d still below v%d\n",
		r.zone, res.Version, how, res.Scanned, res.Rewrapped, res.Remaining, res.Version)
	if res.Remaining > 0 {
		fmt.Fprintf(r.stdout, "Processes that had not yet seen v%d created %d DEKs under an older version; run this command again after the zone-key TTL (%s) to rewrap them.\n",
			res.Version, res.Remaining, ttl)
	}
	return exitOK
}

// succeed prints out as JSON.
func (r *rotateRun) succeed(out rotateResult) int {
	out.OK, out.Zone, out.Operation = true, r.zone, r.operation
	return writeJSON(r.cmdContext, out, exitOK)
}

// fail reports err, which concerns the zone, and a hint for what to do.
func (r *rotateRun) fail(out rotateResult, err error, hint string) int {
	msg := err.Error()
	if !strings.Contains(msg, fmt.Sprintf("zone %q", r.zone)) {
		msg = fmt.Sprintf("zone %q: %s", r.zone, msg)
	}
	if r.asJSON {
		out.OK, out.Zone, out.Operation = false, r.zone, r.operation
		out.Error, out.ErrorKind = msg, errorKind(err)
		if hint != "" {
			out.Error += " (" + hint + ")"
		}
		return writeJSON(r.cmdContext, out, exitFail)
	}
	fmt.Fprintf(r.stderr, "zonekey %s: %s\n", r.cmd.name, msg)
	if hint != "" {
		fmt.Fprintf(r.stderr, "zonekey %s: %s\n", r.cmd.name, hint)
	}
	return exitFail
}

// writeJSON prints v as one line of JSON and returns code.
func writeJSON(c *cmdContext, v any, code int) int {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(c.stderr, "zonekey %s: %v\n", c.cmd.name, err)
		return exitFail
	}
	fmt.Fprintf(c.stdout, "%s\n", b)
	return code
}

// errorKinds classifies errors for --json, most specific first.
var errorKinds = []struct {
	err  error
	kind string
}{
	{context.Canceled, "interrupted"},
	{context.DeadlineExceeded, "deadline_exceeded"},
	{zonekey.ErrOutsideCustody, "outside_custody"},
	{zonekey.ErrAttestation, "attestation"},
	{zonekey.ErrTampered, "tampered"},
	{zonekey.ErrDenied, "denied"},
	{zonekey.ErrKMSUnavailable, "kms_unavailable"},
	{zonekey.ErrKMSConfig, "kms_config"},
	{zonekey.ErrKeyShredded, "key_shredded"},
	{zonekey.ErrSubjectMoved, "subject_moved"},
	{zonekey.ErrUnknownZone, "unknown_zone"},
	{zonekey.ErrUnknownKey, "unknown_key"},
	{zonekey.ErrAudit, "audit"},
	{keystore.ErrConflict, "conflict"},
	{zonekey.ErrStore, "store"},
	{zonekey.ErrClosed, "closed"},
	{zonekey.ErrInvalidConfig, "invalid_config"},
	{zonekey.ErrInvalidValue, "invalid_value"},
	{errors.ErrUnsupported, "unsupported"},
	{fs.ErrNotExist, "not_found"},
}

// errorKind names the kind of err for --json.
func errorKind(err error) string {
	if _, ok := errors.AsType[*keystore.KEKInUseError](err); ok {
		return "kek_in_use"
	}
	if _, ok := errors.AsType[*keystore.EpochRunningError](err); ok {
		return "epoch_running" // before "conflict", which it wraps
	}
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return "error"
}

// progress shows the progress of a zone-key rotation, or of a list of
// subjects, on stderr: a bar redrawn in place on a terminal, otherwise a line
// every progressInterval.
type progress struct {
	w    io.Writer
	zone string // what it concerns: a zone's name, else label
	// label, if set, replaces `zone "<zone>"`; unit is what is counted,
	// "DEKs" if unset.
	label, unit string
	tty         bool
	drawn       bool
	last        time.Time
}

// newProgress counts the DEKs of zone.
func newProgress(w io.Writer, zone string) *progress {
	return &progress{w: w, zone: zone, tty: isTerminal(w)}
}

// newProgressOf counts units (such as "subjects") of what label names.
func newProgressOf(w io.Writer, label, unit string) *progress {
	return &progress{w: w, label: label, unit: unit, tty: isTerminal(w)}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) update(done, total int) {
	pct := 100
	if total > 0 {
		pct = done * 100 / total
	}
	label, unit := p.label, p.unit
	if label == "" {
		label = fmt.Sprintf("zone %q", p.zone)
	}
	if unit == "" {
		unit = "DEKs"
	}
	if p.tty {
		const width = 30
		filled := width * pct / 100
		fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %d/%d %s", label, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), pct, done, total, unit)
		p.drawn = true
		return
	}
	now := time.Now()
	if done < total && now.Sub(p.last) < progressInterval {
		return
	}
	p.last = now
	fmt.Fprintf(p.w, "%s: %d/%d %s (%d%%)\n", label, done, total, unit, pct)
}

// finish ends the bar's line.
func (p *progress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

var keysListCmd = &command{
	name:    "keys list",
	args:    "[--zone Z] [flags]",
	summary: "list the zone-key versions of each zone",
	help: `
List prints, for each zone of the configuration (or only Z), every zone-key
version: its id, the KEK version that wraps it, when it was made, and how many
DEKs it wraps. After a completed zone-key rotation every DEK is under the
latest version; after a KEK rotation every version is under the new KEK
version. Like every key access it needs this process to be in the zone.

The configuration file is the JSON that applications load with
zonekey.LoadConfig; --config defaults to $ZONEKEY_CONFIG.

With --json it prints one object:
{"ok":true,"keys":[{"zone":…,"version":…,"id":…,"kek_version":…,"created":…,"deks":…},…]};
on failure "ok" is false and "error" and "error_kind" say why.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		zone := fs.String("zone", "", "list only zone `Z`")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			return keysList(c, *config, *zone, *asJSON)
		}
	},
}

// keyInfo is one zone-key version in the --json output of keys list.
type keyInfo struct {
	Zone       string    `json:"zone"`
	Version    uint32    `json:"version"`
	ID         string    `json:"id"`
	KEKVersion uint32    `json:"kek_version"`
	Created    time.Time `json:"created"`
	DEKs       int       `json:"deks"`
}

type keysResult struct {
	OK        bool      `json:"ok"`
	Keys      []keyInfo `json:"keys"`
	Error     string    `json:"error,omitempty"`
	ErrorKind string    `json:"error_kind,omitempty"`
}

func keysList(c *cmdContext, configFlag, zone string, asJSON bool) int {
	fail := func(err error) int {
		if asJSON {
			return writeJSON(c, keysResult{Keys: []keyInfo{}, Error: err.Error(), ErrorKind: errorKind(err)}, exitFail)
		}
		fmt.Fprintf(c.stderr, "zonekey %s: %v\n", c.cmd.name, err)
		return exitFail
	}
	return c.withClient(configFlag, fail, func(ctx context.Context, cl *zonekey.Client, _ zonekey.Config) int {
		keys, err := zoneKeys(ctx, cl.Keyring(), zone)
		if err != nil {
			return fail(err)
		}
		if asJSON {
			return writeJSON(c, keysResult{OK: true, Keys: keys}, exitOK)
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ZONE\tVERSION\tKEY ID\tKEK VERSION\tCREATED\tDEKS")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%d\n", k.Zone, k.Version, k.ID, k.KEKVersion, k.Created.Format(time.RFC3339), k.DEKs)
		}
		tw.Flush()
		return exitOK
	})
}

// zoneKeys lists the zone-key versions of zone, or of every zone if zone is
// "".
func zoneKeys(ctx context.Context, kr *keystore.Keyring, zone string) ([]keyInfo, error) {
	zones := []string{zone}
	if zone == "" {
		zones = kr.Zones()
		slices.Sort(zones)
	}
	keys := []keyInfo{}
	for _, z := range zones {
		st, err := kr.ZoneKeyStatus(ctx, z)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("zone %q", z)) {
				err = fmt.Errorf("zone %q: %w", z, err)
			}
			return nil, err
		}
		for _, s := range st {
			keys = append(keys, keyInfo{Zone: s.Zone, Version: s.Version, ID: s.ID, KEKVersion: s.KEKVersion, Created: s.Created, DEKs: s.DEKs})
		}
	}
	return keys, nil
}
