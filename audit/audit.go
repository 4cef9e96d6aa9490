// Package audit records every key-access decision and key operation of
// zonekey, so that an auditor independent of the operators can check who was
// allowed or refused which key, from where, and when.
//
// The keystore emits one [Event] per decision through a [Sink]: a DEK or
// zone-key unwrap, a custody check that refused an encrypt or decrypt, a
// rotation, rewrap, shred, migration or epoch. An Event names keys by id and
// version and callers by their attested identity; it never holds plaintext or
// key material.
//
// Three sinks are provided, and [Multi] combines them:
//
//   - [FileSink] appends events to a hash-chained JSON-lines file, one line
//     per event, each written with a single write(2) and fsync'd before
//     Record returns. This is the record an auditor verifies.
//   - [NewSlogSink] writes one structured log record per event, for
//     operators' log pipelines.
//   - [Discard] drops events (tests, or deployments that accept no audit).
//
// # Failing closed
//
// An error from [Sink.Record] means the event could not be made durable.
// A caller that must fail closed refuses the access when Record fails, so
// no key is handed out without its record; the keystore always does.
//
// # The file format (v1)
//
// A FileSink file is UTF-8 text, one record per line, each line terminated by
// a single '\n'. Line n (1-based) is exactly
//
//	{"seq":N,"prev":"P","event":E,"hash":"H"}
//
// with no other whitespace, where
//
//   - N is n in decimal, without leading zeros: the first line has seq 1.
//   - P is the hash of line n-1, or 64 zeros ("0000…0000") on line 1.
//   - E is the event in its canonical encoding: the JSON that encoding/json
//     produces for [Event] (keys in the order of the struct, empty fields
//     omitted, the time in RFC 3339 in UTC with nanoseconds, "<", ">" and
//     "&" escaped as \u003c, \u003e, \u0026). A reader rejects any other
//     encoding of the same event, so every tool that parses E sees the event
//     that was hashed.
//   - H is the hash of the line, below.
//
// P and H are 64 lowercase hex digits. H is the SHA-256 of
//
//	"zonekey/audit/v1\n" || N || "\n" || P || "\n" || E
//
// where "\n" is one newline byte, N and P are the ASCII text above and E is
// the exact bytes of the event as they appear in the line. A line is at most
// [MaxLineSize] bytes with its newline.
//
// [Verify] checks a whole file: each line's layout and canonical event, its
// hash (a mismatch means the line was edited), its seq (a gap means a line was
// deleted, inserted or reordered) and its prev (the link to the line before).
// It reports the first bad line as a [*ChainError]. A line without its final
// newline is torn: a write was interrupted, and [OpenFile] refuses to append
// after it until [Repair] removes it.
//
// # Limits
//
// The chain is not keyed: it proves that the lines of a file are the ones
// written in that order, not who wrote them. It detects edits, deletions,
// insertions and reordering inside the file, but not the removal of lines
// from its end, and not the replacement of the whole file by a consistent
// forgery, since anyone who can write the file can recompute every hash.
// Guard against those outside the file: ship the lines to an append-only
// store under another administrative domain as they are written, and anchor
// the latest [Head] elsewhere (log it periodically through slog, publish it to
// the auditor); a later verification then checks that the file still
// contains the anchored line with the anchored hash.
//
// docs/audit.md in the repository describes how an auditor verifies a file
// with standard tools.
package audit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Event is one key-access decision or key operation. It never holds plaintext
// or key material: keys are named by id and version, callers by their
// attested identity.
type Event struct {
	// Time is when the decision was made. FileSink fills in the current
	// time if it is zero, and stores it in UTC.
	Time time.Time `json:"time"`
	// Action is what was attempted.
	Action Action `json:"action"`
	// Decision is the outcome.
	Decision Decision `json:"decision"`
	// Reason says why access was denied or what failed. It must not
	// contain plaintext or key material.
	Reason string `json:"reason,omitempty"`
	// Zone is the custody zone of the key.
	Zone string `json:"zone,omitempty"`
	// Subject is the data subject whose DEK is concerned, if any.
	Subject string `json:"subject,omitempty"`
	// DEK is the id of the data key (hex), if one is concerned.
	DEK string `json:"dek,omitempty"`
	// ZoneKeyVersion is the version of the zone key concerned, if any.
	ZoneKeyVersion uint32 `json:"zone_key_version,omitempty"`
	// KEKVersion is the version of the custodian's KEK concerned, if any.
	KEKVersion uint32 `json:"kek_version,omitempty"`
	// Workload is the attested workload identity of the caller.
	Workload string `json:"workload,omitempty"`
	// Region is the attested region of the caller.
	Region string `json:"region,omitempty"`
	// Issuer is the issuer of the caller's attestation.
	Issuer string `json:"issuer,omitempty"`
}

// Action names what an Event records.
type Action string

// The actions the keystore and the custodian CLI record.
const (
	// DEKUnwrap is the unwrap of a subject's DEK under its zone key.
	DEKUnwrap Action = "dek.unwrap"
	// DEKCreate is the creation of a DEK.
	DEKCreate Action = "dek.create"
	// ZoneKeyUnwrap is the unwrap of a zone key by its custodian.
	ZoneKeyUnwrap Action = "zonekey.unwrap"
	// ZoneKeyCreate is the creation of a zone-key version.
	ZoneKeyCreate Action = "zonekey.create"
	// Access is a custody check on encrypt or decrypt. Denials are always
	// recorded; allowed checks may be left to the unwrap events they lead
	// to.
	Access Action = "access"
	// Rotate is the rotation of a zone's KEK or zone key.
	Rotate Action = "rotate"
	// Rewrap is the rewrap of key rows under a newer key version.
	Rewrap Action = "rewrap"
	// Shred is the deletion of a subject's DEKs or of a zone's KEK.
	Shred Action = "shred"
	// Migrate is the move of a subject's DEKs to another zone.
	Migrate Action = "migrate"
	// Epoch is the end of a zone's key epoch: older KEK versions are
	// destroyed, which makes earlier shreds final in every backup.
	Epoch Action = "epoch"
)

// Decision is the outcome recorded by an Event.
type Decision string

// The decisions.
const (
	// Allow means the access or operation was permitted and performed.
	Allow Decision = "allow"
	// Deny means a policy refused it (custody, attestation, shredded key).
	Deny Decision = "deny"
	// Error means it could not be decided or completed (custodian
	// unavailable, storage failure).
	Error Decision = "error"
)

// Valid reports whether d is one of Allow, Deny and Error.
func (d Decision) Valid() bool {
	return d == Allow || d == Deny || d == Error
}

// validate checks what every sink requires of an event.
func (e *Event) validate() error {
	if e.Action == "" {
		return errors.New("audit: event has no action")
	}
	if !e.Decision.Valid() {
		return fmt.Errorf("audit: event %s has invalid decision %q", e.Action, e.Decision)
	}
	return nil
}

// Sink receives events.
//
// Record must be safe for concurrent use. An error from Record means the
// event could not be made durable; callers that must fail closed refuse the
// access then.
type Sink interface {
	Record(ctx context.Context, e Event) error
}

// BatchSink is a Sink that makes several events durable at once. A key
// rotation or epoch over a large zone records one event per rewrapped DEK
// before it writes a page of rewraps; a FileSink then syncs its file once
// per page instead of once per event.
type BatchSink interface {
	Sink
	// RecordBatch records events in order, as a Record call for each
	// would. An event that Record would refuse as invalid is refused
	// before any is recorded. After another error some of the events may
	// not be durable: a caller that must fail closed treats none of them
	// as recorded.
	RecordBatch(ctx context.Context, events []Event) error
}

// RecordBatch records events to s: in one RecordBatch call if s is a
// BatchSink, otherwise with one Record call each, stopping at the first
// error.
func RecordBatch(ctx context.Context, s Sink, events []Event) error {
	if bs, ok := s.(BatchSink); ok {
		return bs.RecordBatch(ctx, events)
	}
	for _, e := range events {
		if err := s.Record(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// Multi returns a Sink that records each event to every one of sinks, in
// order, even when one fails; its error joins theirs (errors.Join), so it
// fails when any of them fails. Nil sinks are skipped.
func Multi(sinks ...Sink) Sink {
	m := make(multi, 0, len(sinks))
	for _, s := range sinks {
		if s != nil {
			m = append(m, s)
		}
	}
	return m
}

type multi []Sink

func (m multi) Record(ctx context.Context, e Event) error {
	var errs []error
	for _, s := range m {
		if err := s.Record(ctx, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RecordBatch records the events to every sink, each as RecordBatch (the
// function) would, even when one fails.
func (m multi) RecordBatch(ctx context.Context, events []Event) error {
	var errs []error
	for _, s := range m {
		if err := RecordBatch(ctx, s, events); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Discard returns a Sink that drops every event and never fails.
func Discard() Sink { return discard{} }

type discard struct{}

func (discard) Record(context.Context, Event) error { return nil }
