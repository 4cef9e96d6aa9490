package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/zonekey/zonekey"
	"github.com/zonekey/zonekey/envelope"
	"github.com/zonekey/zonekey/keystore"
)

// stdin is what --subjects-from - reads. Tests replace it.
var stdin io.Reader = os.Stdin

// epochOwner names this process in the zone's epoch claim, which another
// run is refused while it holds. It is the same for every run of one user on
// one host, so that running the command again after an interruption resumes
// the epoch at once instead of waiting for the claim to lapse. Tests
// replace it.
var epochOwner = func() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return fmt.Sprintf("zonekey epoch, %s@%s", name, host)
}

var shredCmd = &command{
	name:    "shred",
	args:    "--zone Z (--subject S | --subjects-from FILE | --all --confirm Z) [flags]",
	summary: "erase a subject (or a list of them, or a whole zone) by destroying its keys",
	help: `
Shred erases data by destroying its keys; it never touches the data itself.
It runs as any key access does: the configuration's attestation must place
this process in one of the zone's regions.

  shred --zone Z --subject S
      Deletes every DEK of subject S in zone Z from the keystore and records
      a tombstone. S's data is unreadable from then on (ErrKeyShredded): at
      once here, in other running processes once the DEK leaves their cache
      (dek_ttl, 5m by default). It prints the ids of the deleted DEKs.

      The shred is final in backups of the keystore only after the zone's
      next epoch (zonekey epoch --zone Z): until then, a keystore backup
      taken before the shred still holds S's keys. The command prints the
      zone's last epoch. Shredding a shredded subject changes nothing and
      succeeds; a subject without keys in Z is an error (unknown_key), and
      nothing is changed. A shredded subject gets no new DEK unless the
      application reinstates it (zonekey.Client.Reinstate).

      Blind-index and deterministic terms in the application's rows are
      under per-zone keys, which a shred does not reach: blank them too
      (zonekey.BlankSearchable).

  shred --zone Z --subjects-from FILE
      Shreds each subject listed in FILE, one a line ("-" reads standard
      input). Blank lines, lines starting with "#", and the spaces around
      a subject are ignored. It goes on past a subject that fails, shows
      its progress on stderr, and ends with a summary; it exits 1 if any
      subject failed. Running it again is safe: subjects already shredded
      are counted as such.

  shred --zone Z --all --confirm Z
      Shreds the whole zone: destroys the zone's KEK at its custodian.
      Every record of the zone, in every copy of the keystore, becomes
      unreadable for good, and the zone gets no new key. --confirm must
      repeat the zone's name; without it nothing is changed. Processes
      that hold the zone's key in memory can use it for up to their
      zone-key TTL (zone_key_ttl, 10m by default). If destroying the KEK
      fails, running the command again completes it.

The configuration file is the JSON that applications load with
zonekey.LoadConfig; --config defaults to $ZONEKEY_CONFIG.

The result is printed as text, or as one JSON object with --json:
  --subject: {"ok":…,"operation":"shred","zone":…,"subject":…,"deks":[…],
    "already_shredded":…,"shredded_at":…,"final_after":"next epoch"|"epoch N",
    "final_in_backups":…,"last_epoch":…,"last_epoch_finished":…}
  --subjects-from: {"ok":…,"operation":"shred-subjects","zone":…,
    "subjects_from":…,"subjects":…,"shredded":…,"already_shredded":…,
    "failed":…,"failures":[{"subject":…,"error":…,"error_kind":…},…]}
  --all: {"ok":…,"operation":"shred-zone","zone":…,"shredded_at":…}
On failure "ok" is false and "error" and "error_kind" say why: with
--subjects-from, "subjects_failed" if some subjects failed, and after an
interruption "remaining" counts the subjects not tried.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		zone := fs.String("zone", "", "the zone `Z` (required)")
		subject := fs.String("subject", "", "shred subject `S`")
		from := fs.String("subjects-from", "", "shred the subjects listed in `FILE`, one a line (\"-\": standard input)")
		all := fs.Bool("all", false, "shred the whole zone: destroy its KEK (needs --confirm)")
		confirm := fs.String("confirm", "", "the zone's name again `Z`, to confirm --all")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			set := setFlags(c.fs)
			switch {
			case *zone == "":
				return c.usageError("--zone is required")
			case countTrue(set["subject"], set["subjects-from"], *all) > 1:
				return c.usageError("--subject, --subjects-from and --all exclude each other")
			case set["subject"] && *subject == "":
				return c.usageError("--subject must not be empty")
			case set["subjects-from"] && *from == "":
				return c.usageError("--subjects-from must name a file, or - for standard input")
			case !set["subject"] && !set["subjects-from"] && !*all:
				return c.usageError("give one of --subject S, --subjects-from FILE and --all")
			case set["confirm"] && !*all:
				return c.usageError("--confirm goes with --all")
			case *all && !set["confirm"]:
				return c.usageError("shredding the whole zone %q destroys its KEK: every record of the zone, in every copy of the keystore, becomes unreadable for good. To confirm, repeat the zone's name: --confirm %s", *zone, *zone)
			case *all && *confirm != *zone:
				return c.usageError("--confirm %q does not match the zone %q, and nothing was shredded. Shredding the whole zone destroys its KEK: every record of the zone, in every copy of the keystore, becomes unreadable for good. To confirm, repeat the zone's name: --confirm %s", *confirm, *zone, *zone)
			}
			r := &lifecycleRun{cmdContext: c, asJSON: *asJSON}
			switch {
			case *all:
				return r.shredZone(*config, *zone)
			case set["subjects-from"]:
				return r.shredSubjects(*config, *zone, *from)
			default:
				return r.shredSubject(*config, *zone, *subject)
			}
		}
	},
}

var migrateCmd = &command{
	name:    "migrate",
	args:    "(--subject S | --subjects-from FILE) --from A --to B [flags]",
	summary: "move a subject's keys (or a list of subjects') to another zone",
	help: `
Migrate puts the DEKs of subject S under zone B instead of zone A, without
touching its data: the records keep their ciphertexts, which decrypt for
callers in B from then on and are refused to callers only in A
(outside_custody). New data of S must be encrypted under B; under A it is
refused (subject_moved). S is readable in exactly one zone at every moment.

Neither zone's key leaves its zone: this process unwraps each DEK in A and
wraps it directly for B's custodian. So the configuration's attestation
must place this process in A, while B's custodian needs to grant it only a
wrap (encrypt-only) permission, not unwrap (docs/vault.md, "wrap-only
role"). B adopts the moved DEKs under its zone key on their first use
there, or at its next zone-key rotation or epoch (zonekey epoch --zone B).
Keystore backups of A taken before the move still hold S's DEKs under A's
keys until A's next epoch, as after a shred.

Moving a subject already moved to B changes nothing and succeeds. A subject
without keys in A (unknown_key), shredded in A (key_shredded) or moved to a
third zone (subject_moved) is an error, and nothing is changed. A move that
stopped is completed by running it again.

  migrate --subjects-from FILE --from A --to B
      Moves each subject listed in FILE, one a line ("-" reads standard
      input; blank lines and lines starting with "#" are ignored), going
      on past a subject that fails, with progress on stderr and a summary;
      it exits 1 if any subject failed. Running it again is safe.

The configuration file is the JSON that applications load with
zonekey.LoadConfig, listing both zones; --config defaults to
$ZONEKEY_CONFIG.

The result is printed as text, or as one JSON object with --json:
  --subject: {"ok":…,"operation":"migrate","subject":…,"from":…,"to":…,
    "deks":[…],"already_moved":…}
  --subjects-from: {"ok":…,"operation":"migrate-subjects","from":…,"to":…,
    "subjects_from":…,"subjects":…,"moved":…,"already_moved":…,"failed":…,
    "failures":[{"subject":…,"error":…,"error_kind":…},…]}
On failure "ok" is false and "error" and "error_kind" say why: with
--subjects-from, "subjects_failed" if some subjects failed, and after an
interruption "remaining" counts the subjects not tried.`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		subject := fs.String("subject", "", "move subject `S`")
		list := fs.String("subjects-from", "", "move the subjects listed in `FILE`, one a line (\"-\": standard input)")
		from := fs.String("from", "", "the zone `A` the subject is in now (required; this process must be in it)")
		to := fs.String("to", "", "the zone `B` to move it to (required; this process needs only to wrap there)")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			set := setFlags(c.fs)
			switch {
			case *from == "" || *to == "":
				return c.usageError("--from and --to are required")
			case *from == *to:
				return c.usageError("--from and --to are the same zone %q", *from)
			case set["subject"] && set["subjects-from"]:
				return c.usageError("--subject and --subjects-from exclude each other")
			case !set["subject"] && !set["subjects-from"]:
				return c.usageError("give one of --subject S and --subjects-from FILE")
			case set["subject"] && *subject == "":
				return c.usageError("--subject must not be empty")
			case set["subjects-from"] && *list == "":
				return c.usageError("--subjects-from must name a file, or - for standard input")
			}
			r := &lifecycleRun{cmdContext: c, asJSON: *asJSON}
			if set["subjects-from"] {
				return r.migrateSubjects(*config, *list, *from, *to)
			}
			return r.migrateSubject(*config, *subject, *from, *to)
		}
	},
}

var epochCmd = &command{
	name:    "epoch",
	args:    "--zone Z [--batch N] [--settle D | --no-settle] [flags]",
	summary: "run a key epoch: make earlier shreds final in keystore backups",
	help: `
An epoch replaces every key that wraps the zone's DEKs, and destroys the old
ones: it rotates the zone's KEK at the custodian, makes a zone key under the
new KEK version only, rewraps every DEK of the zone under it (N rows per
batch), waits for other processes to stop using the old zone key (the
settle), rewraps the DEKs they made meanwhile, deletes the older zone-key
rows and destroys every older KEK version at the custodian.

Afterwards no copy of the keystore taken before the epoch opens anything:
every shred before the epoch is final in backups too. Backups taken before
it become unreadable as a whole: take a new keystore backup right after.
Run an epoch per zone on a schedule, and after an urgent shred. The custodian
must be able to rotate and destroy KEK versions.

--settle must be at least the longest zone-key TTL (zone_key_ttl) of any
process that writes to the zone: such a process keeps creating DEKs under
the zone key it knows for that long, and a DEK made under a zone key the
epoch deleted is lost with its data. It defaults to the zone-key TTL of the
configuration (10m by default), counted from when the new zone key was
made. --settle 0s is refused, since it is not "no wait" but "the default";
--no-settle skips the wait, for a zone no other process writes to (all
applications stopped, or the same configuration and none running).

Progress goes to stderr: a line per phase, the count of DEKs rewrapped, and
until when the settle waits. The epoch is resumable: if it stops (Ctrl-C, a
failure, a crash), run the same command again to continue where it stopped.
While one run holds the zone's epoch, another fails (epoch_running) and
changes nothing; a run of the same user on the same host takes it over at
once, any other after the claim lapses (2m without news from its runner).

The configuration file is the JSON that applications load with
zonekey.LoadConfig; --config defaults to $ZONEKEY_CONFIG.

The result is printed as text, or as one JSON object with --json:
{"ok":…,"operation":"epoch","zone":…,"number":…,"resumed":…,"kek_version":…,
"zone_key_version":…,"scanned":…,"rewrapped":…,"zone_keys_deleted":…,
"settle":…,"started":…,"finished":…}; on failure "ok" is false and "error"
and "error_kind" say why, and an epoch_running failure adds "held_by" and
"held_until".`,
	setup: func(fs *flag.FlagSet) func(*cmdContext, []string) int {
		zone := fs.String("zone", "", "the zone `Z` (required)")
		batch := fs.Int("batch", keystore.DefaultRotationBatch, "DEK rows per batch")
		settle := fs.Duration("settle", 0, "wait `D` for other processes to use the new zone key; at least their longest zone_key_ttl (default: the configuration's zone_key_ttl)")
		noSettle := fs.Bool("no-settle", false, "do not wait: no other process writes to the zone")
		config := configFlag(fs)
		asJSON := jsonFlag(fs)
		return func(c *cmdContext, args []string) int {
			set := setFlags(c.fs)
			switch {
			case *zone == "":
				return c.usageError("--zone is required")
			case *batch < 1:
				return c.usageError("--batch must be at least 1, not %d", *batch)
			case set["settle"] && *noSettle:
				return c.usageError("--settle and --no-settle exclude each other")
			case set["settle"] && *settle <= 0:
				return c.usageError("--settle must be positive, not %s; if no other process writes to the zone, use --no-settle", *settle)
			}
			r := &lifecycleRun{cmdContext: c, asJSON: *asJSON}
			var wait time.Duration // the configuration's zone-key TTL
			switch {
			case *noSettle:
				wait = -1
			case set["settle"]:
				wait = *settle
			}
			return r.epoch(*config, *zone, *batch, wait)
		}
	},
}

// lifecycleRun is one run of shred, migrate or epoch.
type lifecycleRun struct {
	*cmdContext
	asJSON bool
}

// errorFields are the fields of a failed --json result.
type errorFields struct {
	Error string `json:"error,omitempty"`
	// ErrorKind classifies Error (see errorKind).
	ErrorKind string `json:"error_kind,omitempty"`
}

func (e *errorFields) setError(msg, kind string) { e.Error, e.ErrorKind = msg, kind }

// failable is a --json result that can report a failure.
type failable interface{ setError(msg, kind string) }

// fail reports err, described by msg, and a hint for what to do: as out
// with "error" and "error_kind" set under --json, else on stderr.
func (r *lifecycleRun) fail(out failable, err error, msg, hint string) int {
	if r.asJSON {
		if hint != "" {
			msg += " (" + hint + ")"
		}
		out.setError(msg, errorKind(err))
		return writeJSON(r.cmdContext, out, exitFail)
	}
	fmt.Fprintf(r.stderr, "zonekey %s: %s\n", r.cmd.name, msg)
	if hint != "" {
		fmt.Fprintf(r.stderr, "zonekey %s: %s\n", r.cmd.name, hint)
	}
	return exitFail
}

// about returns err's message prefixed with what it concerns (such as
// `zone "eu"`), leaving out what the message names already.
func about(err error, what ...string) string {
	msg := err.Error()
	var missing []string
	for _, w := range what {
		if !strings.Contains(msg, w) {
			missing = append(missing, w)
		}
	}
	if len(missing) == 0 {
		return msg
	}
	return strings.Join(missing, ", ") + ": " + msg
}

func zoneOf(zone string) string       { return fmt.Sprintf("zone %q", zone) }
func subjectOf(subject string) string { return fmt.Sprintf("subject %q", subject) }

func keyIDs(ids []envelope.KeyID) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, id.String())
	}
	return out
}

// dekTTL returns the configuration's DEK TTL, or the keystore's default.
func dekTTL(cfg zonekey.Config) time.Duration {
	if cfg.DEKTTL > 0 {
		return cfg.DEKTTL
	}
	return keystore.DefaultDEKTTL
}

// zoneKeyTTL returns the configuration's zone-key TTL, or the keystore's
// default.
func zoneKeyTTL(cfg zonekey.Config) time.Duration {
	if cfg.ZoneKeyTTL > 0 {
		return cfg.ZoneKeyTTL
	}
	return keystore.DefaultZoneKeyTTL
}

// shredOutput is the --json output of shred --subject.
type shredOutput struct {
	OK              bool      `json:"ok"`
	Operation       string    `json:"operation"`
	Zone            string    `json:"zone"`
	Subject         string    `json:"subject"`
	DEKs            []string  `json:"deks"`
	AlreadyShredded bool      `json:"already_shredded"`
	ShreddedAt      time.Time `json:"shredded_at,omitzero"`
	// FinalAfter is "next epoch", or "epoch N" when an epoch that started
	// after the shred has run or is running (FinalInBackups once it has
	// finished). Set on success only.
	FinalAfter     string `json:"final_after,omitempty"`
	FinalInBackups bool   `json:"final_in_backups"`
	// LastEpoch is the zone's latest epoch when the command ran, and when
	// it finished (zero while it runs).
	LastEpoch         uint32    `json:"last_epoch,omitempty"`
	LastEpochFinished time.Time `json:"last_epoch_finished,omitzero"`
	errorFields
}

// finality says when a shred at t is final in backups, given the zone's
// latest epoch last and its latest finished one: after "next epoch", or
// after "epoch N" (an epoch that started after the shred), whether that
// epoch has finished, and the epoch it speaks of. A later epoch that has
// not finished does not make a shred that an earlier one made final
// pending again.
func finality(t time.Time, last, finished keystore.EpochRow) (after string, final bool, by keystore.EpochRow) {
	switch {
	case finished.Number != 0 && finished.Started.After(t):
		return fmt.Sprintf("epoch %d", finished.Number), true, finished
	case last.Number != 0 && last.Started.After(t):
		return fmt.Sprintf("epoch %d", last.Number), !last.Finished.IsZero(), last
	}
	return "next epoch", false, last
}

func (r *lifecycleRun) shredSubject(configFlag, zone, subject string) int {
	out := shredOutput{Operation: "shred", Zone: zone, Subject: subject, DEKs: []string{}}
	fail := func(err error) int { return r.fail(&out, err, about(err, zoneOf(zone), subjectOf(subject)), "") }
	return r.withClient(configFlag, fail, func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
		res, err := cl.Keyring().ShredSubject(ctx, zone, subject)
		if err != nil {
			return fail(err)
		}
		out.OK, out.DEKs, out.AlreadyShredded, out.ShreddedAt = true, keyIDs(res.DEKs), res.AlreadyShredded, res.Tombstone.Created
		var by keystore.EpochRow
		out.FinalAfter, out.FinalInBackups, by = finality(res.Tombstone.Created, res.LastEpoch, res.FinishedEpoch)
		out.LastEpoch, out.LastEpochFinished = res.LastEpoch.Number, res.LastEpoch.Finished
		if r.asJSON {
			return writeJSON(r.cmdContext, out, exitOK)
		}
		what := fmt.Sprintf("zone %q, subject %q", zone, subject)
		if res.AlreadyShredded {
			fmt.Fprintf(r.stdout, "%s: already shredded at %s; nothing changed\n", what, stamp(res.Tombstone.Created))
		} else {
			fmt.Fprintf(r.stdout, "%s: shredded; %d DEKs deleted: %s\n", what, len(res.DEKs), strings.Join(out.DEKs, ", "))
			fmt.Fprintf(r.stdout, "Its data is unreadable from now on: here at once, in running processes once the DEK leaves their cache (dek_ttl, %s).\n", dekTTL(cfg))
		}
		r.printFinality(zone, out.FinalAfter, out.FinalInBackups, by)
		return exitOK
	})
}

// printFinality says when a shred of zone is final in backups of the
// keystore; last is the epoch finality returned.
func (r *lifecycleRun) printFinality(zone, after string, final bool, last keystore.EpochRow) {
	switch {
	case final:
		fmt.Fprintf(r.stdout, "It is final in backups of the keystore too: %s of the zone started after it and finished at %s.\n", after, stamp(last.Finished))
		return
	case after != "next epoch":
		fmt.Fprintf(r.stdout, "It is final in backups of the keystore once %s of the zone, running since %s, finishes: zonekey epoch --zone %s\n", after, stamp(last.Started), zone)
		return
	}
	fmt.Fprintf(r.stdout, "It is final in backups of the keystore after the zone's next epoch: zonekey epoch --zone %s\n", zone)
	switch {
	case last.Number == 0:
		fmt.Fprintln(r.stdout, "(The zone has had no epoch yet.)")
	case last.Finished.IsZero():
		fmt.Fprintf(r.stdout, "(The zone's last epoch, %d, started at %s before the shred and has not finished.)\n", last.Number, stamp(last.Started))
	default:
		fmt.Fprintf(r.stdout, "(The zone's last epoch, %d, finished at %s.)\n", last.Number, stamp(last.Finished))
	}
}

// stamp formats t for the text output.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// zoneShredOutput is the --json output of shred --all.
type zoneShredOutput struct {
	OK         bool      `json:"ok"`
	Operation  string    `json:"operation"`
	Zone       string    `json:"zone"`
	ShreddedAt time.Time `json:"shredded_at,omitzero"`
	errorFields
}

func (r *lifecycleRun) shredZone(configFlag, zone string) int {
	out := zoneShredOutput{Operation: "shred-zone", Zone: zone}
	fail := func(err error) int { return r.fail(&out, err, about(err, zoneOf(zone)), "") }
	return r.withClient(configFlag, fail, func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
		t, err := cl.Keyring().ShredZone(ctx, zone, zone)
		out.ShreddedAt = t.Created
		if err != nil {
			return fail(err)
		}
		out.OK = true
		if r.asJSON {
			return writeJSON(r.cmdContext, out, exitOK)
		}
		fmt.Fprintf(r.stdout, "zone %q: shredded at %s; its KEK is destroyed at the custodian\n", zone, stamp(t.Created))
		fmt.Fprintf(r.stdout, "Every record of the zone, in every copy of the keystore, is unreadable for good. Processes that hold the zone's key in memory can use it for up to their zone-key TTL (zone_key_ttl, %s).\n", zoneKeyTTL(cfg))
		return exitOK
	})
}

// migrateOutput is the --json output of migrate --subject.
type migrateOutput struct {
	OK           bool     `json:"ok"`
	Operation    string   `json:"operation"`
	Subject      string   `json:"subject"`
	From         string   `json:"from"`
	To           string   `json:"to"`
	DEKs         []string `json:"deks"`
	AlreadyMoved bool     `json:"already_moved"`
	errorFields
}

func (r *lifecycleRun) migrateSubject(configFlag, subject, from, to string) int {
	out := migrateOutput{Operation: "migrate", Subject: subject, From: from, To: to, DEKs: []string{}}
	what := fmt.Sprintf("subject %q, zone %q to zone %q", subject, from, to)
	fail := func(err error) int { return r.fail(&out, err, what+": "+err.Error(), "") }
	return r.withClient(configFlag, fail, func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
		res, err := cl.Keyring().MoveSubject(ctx, subject, from, to)
		if err != nil {
			return fail(err)
		}
		out.OK, out.DEKs, out.AlreadyMoved = true, keyIDs(res.DEKs), res.AlreadyMoved
		if r.asJSON {
			return writeJSON(r.cmdContext, out, exitOK)
		}
		if res.AlreadyMoved {
			fmt.Fprintf(r.stdout, "subject %q: already moved from zone %q to zone %q; nothing changed\n", subject, from, to)
			return exitOK
		}
		fmt.Fprintf(r.stdout, "subject %q: moved from zone %q to zone %q; %d DEKs: %s\n", subject, from, to, len(res.DEKs), strings.Join(out.DEKs, ", "))
		r.printMoveNotes(from, to, cfg)
		return exitOK
	})
}

// printMoveNotes says what follows a move.
func (r *lifecycleRun) printMoveNotes(from, to string, cfg zonekey.Config) {
	fmt.Fprintf(r.stdout, "Its records decrypt in zone %q from now on, and are refused to callers only in zone %q (running processes once the DEK leaves their cache, dek_ttl, %s). Encrypt its new data under zone %q.\n", to, from, dekTTL(cfg), to)
	fmt.Fprintf(r.stdout, "Zone %q adopts the DEKs under its zone key on first use, or at its next zone-key rotation or epoch: zonekey epoch --zone %s\n", to, to)
	fmt.Fprintf(r.stdout, "Keystore backups of zone %q taken before the move hold the DEKs until its next epoch: zonekey epoch --zone %s\n", from, from)
}

// subjectFailure is a subject that a bulk shred or move could not handle.
type subjectFailure struct {
	Subject string `json:"subject"`
	// SubjectBase64 holds the subject's exact bytes when they are not
	// valid UTF-8, which JSON shows as U+FFFD (two such subjects could
	// otherwise look alike).
	SubjectBase64 string `json:"subject_base64,omitempty"`
	Error         string `json:"error"`
	ErrorKind     string `json:"error_kind"`
}

// bulkOutput is the --json output of shred and migrate with
// --subjects-from.
type bulkOutput struct {
	OK           bool   `json:"ok"`
	Operation    string `json:"operation"`
	Zone         string `json:"zone,omitempty"`
	From         string `json:"from,omitempty"`
	To           string `json:"to,omitempty"`
	SubjectsFrom string `json:"subjects_from"`
	// Subjects counts the subjects listed.
	Subjects int `json:"subjects"`
	// shred: Shredded and AlreadyShredded; migrate: Moved and
	// AlreadyMoved.
	Shredded        *int `json:"shredded,omitempty"`
	AlreadyShredded *int `json:"already_shredded,omitempty"`
	Moved           *int `json:"moved,omitempty"`
	AlreadyMoved    *int `json:"already_moved,omitempty"`
	Failed          int  `json:"failed"`
	// Remaining counts the subjects not tried, after an interruption.
	Remaining int              `json:"remaining,omitempty"`
	Failures  []subjectFailure `json:"failures"`
	errorFields
}

// bulk is the tally of a bulk shred or move.
type bulk struct {
	subjects         []string
	changed, already int
	failures         []subjectFailure
	remaining        int
	changedDEKs      int
	label, unit      string // for progress: `zone "eu"`, "subjects"
}

// readSubjects reads the subjects listed in the file at path ("-": stdin),
// one a line, leaving out blank lines and lines starting with "#".
func readSubjects(path string) ([]string, error) {
	in := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in = f
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	var out []string
	line := 0
	for sc.Scan() {
		line++
		s := sc.Text()
		if line == 1 {
			s = strings.TrimPrefix(s, "\ufeff") // a UTF-8 byte-order mark
		}
		s = strings.TrimSpace(s)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		out = append(out, s)
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return nil, fmt.Errorf("%w: %s: line %d is longer than 64 KiB (a subject is at most %d bytes)", zonekey.ErrInvalidValue, path, line+1, keystore.MaxSubject)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading subjects from %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s lists no subjects", zonekey.ErrInvalidValue, path)
	}
	return out, nil
}

// each runs do on every subject of b, going on past failures, which it
// reports on stderr in text mode, with progress on stderr. It stops early
// only when ctx is done, and then returns ctx's error.
func (r *lifecycleRun) each(ctx context.Context, b *bulk, do func(subject string) (already bool, deks int, err error)) error {
	bar := newProgressOf(r.stderr, b.label, b.unit)
	defer bar.finish()
	for i, s := range b.subjects {
		if err := ctx.Err(); err != nil {
			b.remaining = len(b.subjects) - i
			return err
		}
		already, n, err := do(s)
		switch {
		case err != nil && ctx.Err() != nil:
			// Interrupted: this subject was not handled either.
			b.remaining = len(b.subjects) - i
			return ctx.Err()
		case err != nil:
			msg := about(err, subjectOf(s))
			f := subjectFailure{Subject: s, Error: msg, ErrorKind: errorKind(err)}
			if !utf8.ValidString(s) {
				f.SubjectBase64 = base64.StdEncoding.EncodeToString([]byte(s))
			}
			b.failures = append(b.failures, f)
			if !r.asJSON {
				bar.finish()
				fmt.Fprintf(r.stderr, "zonekey %s: %s: %s\n", r.cmd.name, b.label, msg)
			}
		case already:
			b.already++
		default:
			b.changed++
			b.changedDEKs += n
		}
		bar.update(i+1, len(b.subjects))
	}
	return nil
}

// bulkRun reads the subjects, opens the client, checks that the zones are
// configured and runs do on each subject. report prints the text summary.
func (r *lifecycleRun) bulkRun(configFlag, path string, zones []string, out *bulkOutput, b *bulk,
	do func(ctx context.Context, kr *keystore.Keyring, subject string) (bool, int, error),
	report func(cfg zonekey.Config)) int {
	set := func() {
		changed, already := b.changed, b.already
		if out.Operation == "shred-subjects" {
			out.Shredded, out.AlreadyShredded = &changed, &already
		} else {
			out.Moved, out.AlreadyMoved = &changed, &already
		}
		out.Subjects, out.Failed, out.Remaining = len(b.subjects), len(b.failures), b.remaining
		out.Failures = b.failures
		if out.Failures == nil {
			out.Failures = []subjectFailure{}
		}
	}
	fail := func(err error, msg, hint string) int {
		set()
		return r.fail(out, err, msg, hint)
	}
	subjects, err := readSubjects(path)
	if err != nil {
		return fail(err, err.Error(), "")
	}
	b.subjects = subjects
	return r.withClient(configFlag, func(err error) int { return fail(err, err.Error(), "") },
		func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
			for _, z := range zones {
				if !slices.Contains(cl.Keyring().Zones(), z) {
					err := fmt.Errorf("%w: %q (configured: %v)", zonekey.ErrUnknownZone, z, cl.Keyring().Zones())
					return fail(err, err.Error(), "")
				}
			}
			err := r.each(ctx, b, func(s string) (bool, int, error) { return do(ctx, cl.Keyring(), s) })
			if err != nil {
				return fail(err, fmt.Sprintf("%s: stopped after %d of %d subjects (%d changed, %d already done, %d failed): %v",
					b.label, len(b.subjects)-b.remaining, len(b.subjects), b.changed, b.already, len(b.failures), err),
					"run the same command again to continue; subjects already done are counted as such")
			}
			set()
			out.OK = len(b.failures) == 0
			code := exitOK
			if !out.OK {
				code = exitFail
			}
			if r.asJSON {
				if !out.OK {
					out.setError(fmt.Sprintf("%d of %d subjects failed", len(b.failures), len(b.subjects)), "subjects_failed")
				}
				return writeJSON(r.cmdContext, out, code)
			}
			report(cfg)
			if !out.OK {
				fmt.Fprintf(r.stderr, "zonekey %s: %d of %d subjects failed (listed above); run the same command again to retry them\n", r.cmd.name, len(b.failures), len(b.subjects))
			}
			return code
		})
}

func (r *lifecycleRun) shredSubjects(configFlag, zone, path string) int {
	out := &bulkOutput{Operation: "shred-subjects", Zone: zone, SubjectsFrom: path}
	b := &bulk{label: zoneOf(zone), unit: "subjects"}
	var last, finished keystore.EpochRow
	var latestShred time.Time
	do := func(ctx context.Context, kr *keystore.Keyring, s string) (bool, int, error) {
		res, err := kr.ShredSubject(ctx, zone, s)
		if err == nil {
			last, finished = res.LastEpoch, res.FinishedEpoch
			if res.Tombstone.Created.After(latestShred) {
				latestShred = res.Tombstone.Created
			}
		}
		return res.AlreadyShredded, len(res.DEKs), err
	}
	return r.bulkRun(configFlag, path, []string{zone}, out, b, do, func(cfg zonekey.Config) {
		fmt.Fprintf(r.stdout, "zone %q: %d subjects shredded (%d DEKs deleted), %d already shredded, %d failed, of %d listed\n",
			zone, b.changed, b.changedDEKs, b.already, len(b.failures), len(b.subjects))
		if b.changed+b.already == 0 {
			return
		}
		if b.changed > 0 {
			fmt.Fprintf(r.stdout, "Their data is unreadable from now on: here at once, in running processes once the DEKs leave their cache (dek_ttl, %s).\n", dekTTL(cfg))
		}
		after, final, by := finality(latestShred, last, finished)
		r.printFinality(zone, after, final, by)
	})
}

func (r *lifecycleRun) migrateSubjects(configFlag, path, from, to string) int {
	out := &bulkOutput{Operation: "migrate-subjects", From: from, To: to, SubjectsFrom: path}
	b := &bulk{label: fmt.Sprintf("zone %q to zone %q", from, to), unit: "subjects"}
	do := func(ctx context.Context, kr *keystore.Keyring, s string) (bool, int, error) {
		res, err := kr.MoveSubject(ctx, s, from, to)
		return res.AlreadyMoved, len(res.DEKs), err
	}
	return r.bulkRun(configFlag, path, []string{from, to}, out, b, do, func(cfg zonekey.Config) {
		fmt.Fprintf(r.stdout, "zone %q to zone %q: %d subjects moved (%d DEKs), %d already moved, %d failed, of %d listed\n",
			from, to, b.changed, b.changedDEKs, b.already, len(b.failures), len(b.subjects))
		if b.changed > 0 {
			r.printMoveNotes(from, to, cfg)
		}
	})
}

// epochOutput is the --json output of epoch.
type epochOutput struct {
	OK              bool      `json:"ok"`
	Operation       string    `json:"operation"`
	Zone            string    `json:"zone"`
	Number          uint32    `json:"number,omitempty"`
	Resumed         bool      `json:"resumed"`
	KEKVersion      uint32    `json:"kek_version,omitempty"`
	ZoneKeyVersion  uint32    `json:"zone_key_version,omitempty"`
	Scanned         int       `json:"scanned"`
	Rewrapped       int       `json:"rewrapped"`
	ZoneKeysDeleted int       `json:"zone_keys_deleted"`
	Settle          string    `json:"settle"`
	Started         time.Time `json:"started,omitzero"`
	Finished        time.Time `json:"finished,omitzero"`
	// HeldBy and HeldUntil name, for an epoch_running failure, the run
	// that holds the epoch and until when.
	HeldBy    string    `json:"held_by,omitempty"`
	HeldUntil time.Time `json:"held_until,omitzero"`
	errorFields
}

// epoch runs an epoch of zone. settle is the wait: 0 for the
// configuration's zone-key TTL, negative for none.
func (r *lifecycleRun) epoch(configFlag, zone string, batch int, settle time.Duration) int {
	out := epochOutput{Operation: "epoch", Zone: zone}
	fail := func(err error, hint string) int { return r.fail(&out, err, about(err, zoneOf(zone)), hint) }
	return r.withClient(configFlag, func(err error) int { return fail(err, "") },
		func(ctx context.Context, cl *zonekey.Client, cfg zonekey.Config) int {
			if settle == 0 {
				settle = zoneKeyTTL(cfg)
			}
			out.Settle = "none"
			if settle > 0 {
				out.Settle = settle.String()
			}
			p := newEpochProgress(r.stderr, zone, settle)
			res, err := cl.Keyring().Epoch(ctx, zone, keystore.EpochOptions{
				BatchSize: batch, Progress: p.update, Owner: epochOwner(), Settle: settle,
			})
			p.finish()
			out.Number, out.Resumed, out.KEKVersion, out.ZoneKeyVersion = res.Number, res.Resumed, res.KEKVersion, res.ZoneKeyVersion
			out.Scanned, out.Rewrapped, out.ZoneKeysDeleted = res.Scanned, res.Rewrapped, res.ZoneKeysDeleted
			out.Started, out.Finished = res.Started, res.Finished
			if err != nil {
				hint := ""
				if running, ok := errors.AsType[*keystore.EpochRunningError](err); ok {
					out.Number, out.HeldBy, out.HeldUntil = running.Number, running.Owner, running.Lease
					hint = fmt.Sprintf("nothing was changed; if that run has stopped, run this command again after %s", stamp(running.Lease))
				} else if res.Number != 0 {
					hint = fmt.Sprintf("epoch %d stopped", res.Number)
					if p.phase != "" {
						hint += fmt.Sprintf(" in its %s phase", p.phase)
					}
					hint += "; run the same command again to resume"
				}
				return fail(err, hint)
			}
			out.OK = true
			if r.asJSON {
				return writeJSON(r.cmdContext, out, exitOK)
			}
			how := "started"
			if res.Resumed {
				how = "resumed"
			}
			fmt.Fprintf(r.stdout, "zone %q: epoch %d finished (%s at %s): KEK v%d, zone key v%d; %d DEKs scanned, %d rewrapped; %d older zone keys deleted; older KEK versions destroyed\n",
				zone, res.Number, how, stamp(res.Started), res.KEKVersion, res.ZoneKeyVersion, res.Scanned, res.Rewrapped, res.ZoneKeysDeleted)
			fmt.Fprintf(r.stdout, "Subjects shredded before %s are now shredded in every keystore backup too.\n", stamp(res.Started))
			fmt.Fprintf(r.stdout, "Keystore backups taken before %s can no longer be opened; those taken while the epoch ran (until %s) may still open, like current ones: take a new backup now, and discard those.\n",
				stamp(res.Started), stamp(res.Finished))
			return exitOK
		})
}

// epochProgress shows the progress of an epoch on stderr: a line per phase,
// and the count of DEKs the rewrap has scanned, redrawn in place on a
// terminal and otherwise at most a line every progressInterval.
type epochProgress struct {
	w      io.Writer
	zone   string
	settle time.Duration
	tty    bool
	prefix string // `zone "eu": epoch 3`
	// phase is the latest phase reported, passes the rewrap passes begun.
	phase  string
	passes int
	// done is the count of the rewrap pass; shown tells whether it was
	// printed.
	done, total int
	shown       bool
	drawn       bool
	last        time.Time
}

func newEpochProgress(w io.Writer, zone string, settle time.Duration) *epochProgress {
	return &epochProgress{w: w, zone: zone, settle: settle, tty: isTerminal(w), shown: true}
}

func (p *epochProgress) update(ep keystore.EpochProgress) {
	p.prefix = fmt.Sprintf("zone %q: epoch %d", p.zone, ep.Number)
	prefix := p.prefix
	// A rewrap pass starts with Done 0, and each of its batches reports
	// the rows scanned so far (only an empty zone's are 0 too).
	if ep.Phase != p.phase || ep.Phase == keystore.PhaseRewrap && ep.Done == 0 && p.done > 0 {
		p.finish()
		p.phase = ep.Phase
		p.line(prefix, ep)
		return
	}
	if ep.Phase != keystore.PhaseRewrap || ep.Done == 0 {
		return
	}
	p.done, p.total, p.shown = ep.Done, ep.Total, false
	if p.tty {
		fmt.Fprintf(p.w, "\r%s: %d of %d DEKs scanned", prefix, ep.Done, ep.Total)
		p.drawn, p.shown = true, true
		return
	}
	if now := time.Now(); now.Sub(p.last) >= progressInterval {
		p.last = now
		fmt.Fprintf(p.w, "%s: %d of %d DEKs scanned\n", prefix, ep.Done, ep.Total)
		p.shown = true
	}
}

// line prints the line that starts phase ep.Phase.
func (p *epochProgress) line(prefix string, ep keystore.EpochProgress) {
	var what string
	switch ep.Phase {
	case keystore.PhaseRotateKEK:
		what = "rotating the KEK at the custodian"
	case keystore.PhaseZoneKey:
		what = "making a zone key under the new KEK version only"
	case keystore.PhaseRewrap:
		p.passes++
		p.done, p.shown = 0, true
		what = "rewrapping every DEK of the zone under the new zone key"
		if p.passes > 1 {
			what = "rewrapping the DEKs made under older zone keys meanwhile"
		}
	case keystore.PhaseSettle:
		what = fmt.Sprintf("waiting until %s (--settle %s after the new zone key was made): running processes create DEKs under the zone key they know for up to their zone-key TTL, and those must be rewrapped before the old keys are destroyed",
			stamp(ep.Until), p.settle)
	case keystore.PhaseRetire:
		what = "deleting the older zone keys"
	case keystore.PhaseDestroy:
		what = "destroying the older KEK versions at the custodian"
	case keystore.PhaseDone:
		what = "done"
	default:
		what = ep.Phase
	}
	fmt.Fprintf(p.w, "%s: %s\n", prefix, what)
}

// finish prints the rewrap's last count if it was not shown, and ends a
// line redrawn in place: at the end of the rewrap, and after the epoch
// returned.
func (p *epochProgress) finish() {
	if !p.shown {
		fmt.Fprintf(p.w, "%s: %d of %d DEKs scanned\n", p.prefix, p.done, p.total)
		p.shown = true
	}
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
