package audit

import (
	"context"
	"log/slog"
	"time"
)

// NewSlogSink returns a Sink that writes one log record per event to l, with
// the message "audit", at level Info for Allow and Warn for Deny and Error.
// The record's time is the event's time (the current time if it is zero);
// its attributes are the event's other fields, named as in its JSON
// encoding ("action", "decision", "reason", "zone", "subject", "dek",
// "zone_key_version", "kek_version", "workload", "region", "issuer"), with
// empty fields left out.
//
// Record returns the handler's error, so a sink writing to a failing
// destination makes callers that fail closed refuse the access. A record
// below the logger's level is dropped without error. A nil l means
// slog.Default().
func NewSlogSink(l *slog.Logger) Sink {
	if l == nil {
		l = slog.Default()
	}
	return slogSink{h: l.Handler()}
}

type slogSink struct{ h slog.Handler }

func (s slogSink) Record(ctx context.Context, e Event) error {
	if err := e.validate(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if e.Decision == Allow {
		level = slog.LevelInfo
	}
	if !s.h.Enabled(ctx, level) {
		return nil
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, level, "audit", 0)
	r.AddAttrs(
		slog.String("action", string(e.Action)),
		slog.String("decision", string(e.Decision)),
	)
	str := func(k, v string) {
		if v != "" {
			r.AddAttrs(slog.String(k, v))
		}
	}
	num := func(k string, v uint32) {
		if v != 0 {
			r.AddAttrs(slog.Uint64(k, uint64(v)))
		}
	}
	str("reason", e.Reason)
	str("zone", e.Zone)
	str("subject", e.Subject)
	str("dek", e.DEK)
	num("zone_key_version", e.ZoneKeyVersion)
	num("kek_version", e.KEKVersion)
	str("workload", e.Workload)
	str("region", e.Region)
	str("issuer", e.Issuer)
	return s.h.Handle(ctx, r)
}
