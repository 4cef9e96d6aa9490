package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSlogSink(t *testing.T) {
	tests := []struct {
		name  string
		e     Event
		level string
		want  map[string]any
	}{
		{"allow", testEvent(1), "INFO", map[string]any{
			"time": "2025-03-01T12:00:01Z", "msg": "audit",
			"action": "dek.unwrap", "decision": "allow", "zone": "eu", "subject": "user-1",
			"dek": "00112233445566778899aabbccddeeff", "zone_key_version": 3.0, "kek_version": 2.0,
			"workload": "spiffe://prod/api", "region": "europe-west1", "issuer": "https://attest.example",
		}},
		{"deny", Event{Time: t0, Action: Access, Decision: Deny, Reason: "region us-east1 not in zone eu", Zone: "eu", Region: "us-east1"}, "WARN", map[string]any{
			"time": "2025-03-01T12:00:00Z", "msg": "audit",
			"action": "access", "decision": "deny", "reason": "region us-east1 not in zone eu", "zone": "eu", "region": "us-east1",
		}},
		{"error", Event{Time: t0, Action: ZoneKeyUnwrap, Decision: Error, Reason: "custodian unavailable", Zone: "us", ZoneKeyVersion: 1}, "WARN", map[string]any{
			"time": "2025-03-01T12:00:00Z", "msg": "audit",
			"action": "zonekey.unwrap", "decision": "error", "reason": "custodian unavailable", "zone": "us", "zone_key_version": 1.0,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			s := NewSlogSink(slog.New(slog.NewJSONHandler(&buf, nil)))
			require.NoError(t, s.Record(t.Context(), tt.e))
			require.Equal(t, 1, strings.Count(buf.String(), "\n"))
			var got map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
			require.Equal(t, tt.level, got["level"])
			delete(got, "level")
			require.Equal(t, tt.want, got)
			for k := range got {
				for _, bad := range []string{"plain", "secret", "material", "password", "token", "value"} {
					require.NotContains(t, strings.ToLower(k), bad)
				}
			}
		})
	}
}

func TestSlogSinkLevelsAndErrors(t *testing.T) {
	var buf bytes.Buffer
	s := NewSlogSink(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	require.NoError(t, s.Record(t.Context(), testEvent(1)))
	require.Empty(t, buf.String(), "allow is below Warn")
	require.NoError(t, s.Record(t.Context(), Event{Action: Access, Decision: Deny}))
	require.Contains(t, buf.String(), `"decision":"deny"`)

	require.ErrorContains(t, s.Record(t.Context(), Event{Action: Access}), "invalid decision")

	boom := errors.New("disk full")
	s = NewSlogSink(slog.New(slog.NewJSONHandler(failWriter{boom}, nil)))
	require.ErrorIs(t, s.Record(t.Context(), testEvent(1)), boom)
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

type sinkFunc func(context.Context, Event) error

func (f sinkFunc) Record(ctx context.Context, e Event) error { return f(ctx, e) }

func TestMulti(t *testing.T) {
	var got []string
	rec := func(name string, err error) Sink {
		return sinkFunc(func(_ context.Context, e Event) error {
			got = append(got, name+":"+e.Subject)
			return err
		})
	}
	e1, e2 := errors.New("one"), errors.New("two")
	tests := []struct {
		name  string
		sinks []Sink
		want  []string
		errs  []error
	}{
		{"none", nil, nil, nil},
		{"all succeed", []Sink{rec("a", nil), Discard(), rec("b", nil)}, []string{"a:user-1", "b:user-1"}, nil},
		{"one fails, all record", []Sink{rec("a", e1), rec("b", nil)}, []string{"a:user-1", "b:user-1"}, []error{e1}},
		{"errors joined", []Sink{rec("a", e1), nil, rec("b", e2)}, []string{"a:user-1", "b:user-1"}, []error{e1, e2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = nil
			err := Multi(tt.sinks...).Record(t.Context(), testEvent(1))
			require.Equal(t, tt.want, got)
			if tt.errs == nil {
				require.NoError(t, err)
			}
			for _, e := range tt.errs {
				require.ErrorIs(t, err, e)
			}
		})
	}
}

func TestDiscard(t *testing.T) {
	require.NoError(t, Discard().Record(t.Context(), Event{}))
}
