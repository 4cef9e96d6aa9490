package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/zonekey/zonekey/internal/errs"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// testEvent returns a distinct, fully populated event.
func testEvent(i int) Event {
	return Event{
		Time:           t0.Add(time.Duration(i) * time.Second),
		Action:         DEKUnwrap,
		Decision:       Allow,
		Zone:           "eu",
		Subject:        fmt.Sprintf("user-%d", i),
		DEK:            "00112233445566778899aabbccddeeff",
		ZoneKeyVersion: 3,
		KEKVersion:     2,
		Workload:       "spiffe://prod/api",
		Region:         "europe-west1",
		Issuer:         "https://attest.example",
	}
}

// writeChain records n events to a new file and returns its path and lines,
// each with its newline.
func writeChain(t *testing.T, n int) (string, [][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, s.Record(t.Context(), testEvent(i+1)))
	}
	require.NoError(t, s.Close())
	return path, readLines(t, path)
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

// readEvents parses every line of a valid chain.
func readEvents(t *testing.T, path string) []Event {
	t.Helper()
	var out []Event
	for _, l := range readLines(t, path) {
		rec, reason := parseLine(bytes.TrimSuffix(l, []byte("\n")))
		require.Empty(t, reason)
		out = append(out, rec.event)
	}
	return out
}

func TestRecordRoundTrip(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	tests := []struct {
		name string
		in   Event
		want Event // in, as read back
	}{
		{"full", testEvent(1), testEvent(1)},
		{"minimal", Event{Time: t0, Action: Access, Decision: Deny},
			Event{Time: t0, Action: Access, Decision: Deny}},
		{"denial with reason", Event{Time: t0, Action: Access, Decision: Deny, Reason: `region "us-east1" not allowed in zone eu`, Zone: "eu", Region: "us-east1"},
			Event{Time: t0, Action: Access, Decision: Deny, Reason: `region "us-east1" not allowed in zone eu`, Zone: "eu", Region: "us-east1"}},
		{"escaping and unicode", Event{Time: t0, Action: Shred, Decision: Error, Reason: "a<b>&c\n\t\"q\" ünïcødé \u2028", Subject: "sübject"},
			Event{Time: t0, Action: Shred, Decision: Error, Reason: "a<b>&c\n\t\"q\" ünïcødé \u2028", Subject: "sübject"}},
		{"time zone to UTC", Event{Time: t0.In(paris), Action: Rotate, Decision: Allow, Zone: "eu", KEKVersion: 7},
			Event{Time: t0, Action: Rotate, Decision: Allow, Zone: "eu", KEKVersion: 7}},
		{"nanoseconds", Event{Time: t0.Add(123456789), Action: Epoch, Decision: Allow},
			Event{Time: t0.Add(123456789), Action: Epoch, Decision: Allow}},
		{"max versions", Event{Time: t0, Action: Rewrap, Decision: Allow, ZoneKeyVersion: 1<<32 - 1, KEKVersion: 1<<32 - 1},
			Event{Time: t0, Action: Rewrap, Decision: Allow, ZoneKeyVersion: 1<<32 - 1, KEKVersion: 1<<32 - 1}},
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	for _, tt := range tests {
		require.NoError(t, s.Record(t.Context(), tt.in), tt.name)
	}
	require.NoError(t, s.Close())

	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, len(tests), n)
	got := readEvents(t, path)
	for i, tt := range tests {
		require.True(t, tt.want.Time.Equal(got[i].Time), tt.name)
		require.Equal(t, time.UTC, got[i].Time.Location(), tt.name)
		got[i].Time = tt.want.Time
		require.Equal(t, tt.want, got[i], tt.name)
	}
}

func TestRecordFillsTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	before := time.Now()
	require.NoError(t, s.Record(t.Context(), Event{Action: Access, Decision: Deny}))
	require.NoError(t, s.Close())
	got := readEvents(t, path)[0].Time
	require.False(t, got.Before(before.Truncate(time.Second)))
	require.False(t, got.After(time.Now()))
}

func TestRecordRejects(t *testing.T) {
	tests := []struct {
		name string
		e    Event
		want string
	}{
		{"no action", Event{Decision: Allow}, "no action"},
		{"no decision", Event{Action: Access}, "invalid decision"},
		{"unknown decision", Event{Action: Access, Decision: "maybe"}, "invalid decision"},
		{"too large", Event{Action: Access, Decision: Deny, Reason: strings.Repeat("x", MaxLineSize)}, "MaxLineSize"},
		{"unencodable time", Event{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Action: Access, Decision: Deny}, "encoding event"},
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	for _, tt := range tests {
		err := s.Record(t.Context(), tt.e)
		require.ErrorContains(t, err, tt.want, tt.name)
	}
	// A rejected event does not break the sink.
	require.NoError(t, s.Record(t.Context(), testEvent(1)))
	require.NoError(t, s.Close())
	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestRecordConcurrent(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []FileOption
	}{
		{"sync every record", nil},
		{"SyncEvery", []FileOption{SyncEvery(5 * time.Millisecond)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const goroutines, each = 32, 20
			path := filepath.Join(t.TempDir(), "audit.log")
			s, err := OpenFile(path, tt.opts...)
			require.NoError(t, err)
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range each {
						e := testEvent(i)
						e.Subject = fmt.Sprintf("g%d/%d", g, i)
						if err := s.Record(context.Background(), e); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			require.Equal(t, uint64(goroutines*each), s.Head().Seq)
			require.NoError(t, s.Close())

			n, err := verifyFile(path)
			require.NoError(t, err)
			require.Equal(t, goroutines*each, n)
			// Every event once, and each goroutine's events in its order.
			next := make(map[int]int)
			for _, e := range readEvents(t, path) {
				var g, i int
				_, err := fmt.Sscanf(e.Subject, "g%d/%d", &g, &i)
				require.NoError(t, err)
				require.Equal(t, next[g], i, "goroutine %d", g)
				next[g]++
			}
			require.Len(t, next, goroutines)
			for g, n := range next {
				require.Equal(t, each, n, "goroutine %d", g)
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	path, _ := writeChain(t, 3)
	f, err := os.Open(path)
	require.NoError(t, err)
	head, err := VerifyHead(f)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	require.Equal(t, uint64(3), head.Seq)

	s, err := OpenFile(path)
	require.NoError(t, err)
	require.Equal(t, head, s.Head())
	for i := 4; i <= 5; i++ {
		require.NoError(t, s.Record(t.Context(), testEvent(i)))
	}
	head = s.Head()
	require.NoError(t, s.Close())

	f, err = os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	got, err := VerifyHead(f)
	require.NoError(t, err)
	require.Equal(t, head, got)
	require.Equal(t, uint64(5), got.Seq)
	for i, e := range readEvents(t, path) {
		require.Equal(t, fmt.Sprintf("user-%d", i+1), e.Subject)
	}
}

func TestOpenFileCreates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	require.Equal(t, Head{Seq: 0, Hash: ZeroHash}, s.Head())
	require.NoError(t, s.Close())
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Zero(t, st.Size())
	if runtime.GOOS != "windows" {
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	}
	// An empty file opens as an empty chain.
	s, err = OpenFile(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	_, err = OpenFile(filepath.Join(t.TempDir(), "missing", "audit.log"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = OpenFile(path, SyncEvery(-1))
	require.Error(t, err)
}

func TestOpenFileRefuses(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(lines [][]byte) []byte
		is     error
		want   string
	}{
		{"torn last line", func(l [][]byte) []byte { return cat(l[:2], l[2][:40]) }, ErrTorn, "zonekey audit repair"},
		{"missing final newline", func(l [][]byte) []byte { return cat(l[:2], l[2][:len(l[2])-1]) }, ErrTorn, "repair"},
		{"edited last line", func(l [][]byte) []byte { return cat(l[:2], edit(l[2], "user-3", "user-X")) }, ErrBrokenChain, "hash mismatch"},
		{"garbage last line", func(l [][]byte) []byte { return cat(l[:2], []byte("hello\n")) }, ErrBrokenChain, "malformed line"},
		{"not an audit file", func([][]byte) []byte { return []byte("#!/bin/sh\necho hi\n") }, ErrBrokenChain, "malformed line"},
		{"long last line", func(l [][]byte) []byte { return cat(l, bytes.Repeat([]byte("x"), MaxLineSize+10), []byte("\n")) }, ErrBrokenChain, "longer than"},
		{"first line with nonzero prev", func([][]byte) []byte {
			return forge(1, [32]byte{1}, `{"time":"2025-03-01T12:00:00Z","action":"access","decision":"deny"}`)
		}, ErrBrokenChain, "prev mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, lines := writeChain(t, 3)
			require.NoError(t, os.WriteFile(path, tt.tamper(lines), 0o600))
			s, err := OpenFile(path)
			require.ErrorIs(t, err, tt.is)
			require.ErrorContains(t, err, tt.want)
			require.Contains(t, err.Error(), path)
			require.Nil(t, s)
		})
	}
}

func TestRepair(t *testing.T) {
	path, lines := writeChain(t, 3)
	torn := lines[2][:50]
	require.NoError(t, os.WriteFile(path, cat(lines[:2], torn), 0o600))

	_, err := OpenFile(path)
	require.ErrorIs(t, err, ErrTorn)
	removed, err := Repair(path)
	require.NoError(t, err)
	require.Equal(t, torn, removed)

	// Nothing more to repair; the chain continues after line 2.
	removed, err = Repair(path)
	require.NoError(t, err)
	require.Nil(t, removed)
	s, err := OpenFile(path)
	require.NoError(t, err)
	require.Equal(t, uint64(2), s.Head().Seq)
	require.NoError(t, s.Record(t.Context(), testEvent(9)))
	require.NoError(t, s.Close())
	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, 3, n)

	// A torn first line leaves an empty file.
	require.NoError(t, os.WriteFile(path, lines[0][:10], 0o600))
	removed, err = Repair(path)
	require.NoError(t, err)
	require.Equal(t, lines[0][:10], removed)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Zero(t, st.Size())

	// A tail longer than any line is not a torn write.
	require.NoError(t, os.WriteFile(path, cat(lines, bytes.Repeat([]byte("x"), MaxLineSize)), 0o600))
	_, err = Repair(path)
	require.ErrorContains(t, err, "investigate")

	_, err = Repair(filepath.Join(t.TempDir(), "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestFileLocked(t *testing.T) {
	if !haveLock {
		t.Skip("no file locking on " + runtime.GOOS)
	}
	path, _ := writeChain(t, 1)
	s, err := OpenFile(path)
	require.NoError(t, err)
	_, err = OpenFile(path)
	require.ErrorContains(t, err, "in use")
	_, err = Repair(path)
	require.ErrorContains(t, err, "in use")
	require.NoError(t, s.Close())
	s, err = OpenFile(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

func TestClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	for _, opts := range [][]FileOption{nil, {SyncEvery(time.Hour)}} {
		s, err := OpenFile(path, opts...)
		require.NoError(t, err)
		require.NoError(t, s.Record(t.Context(), testEvent(1)))
		require.NoError(t, s.Close())
		require.NoError(t, s.Close())
		require.ErrorIs(t, s.Record(t.Context(), testEvent(2)), errs.Closed)
	}
	// With SyncEvery, Close makes the pending lines durable.
	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, 2, n)
}

func TestWriteFailureIsSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	require.NoError(t, s.Record(t.Context(), testEvent(1)))
	require.NoError(t, s.f.Close()) // make the next write fail
	err = s.Record(t.Context(), testEvent(2))
	require.ErrorContains(t, err, "no more events can be recorded")
	require.ErrorIs(t, s.Record(t.Context(), testEvent(3)), os.ErrClosed)
	require.Equal(t, uint64(1), s.Head().Seq)
	require.Error(t, s.Close())
}

func verifyFile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return Verify(f)
}

// cat concatenates its arguments, each a []byte or a [][]byte.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case []byte:
			b = append(b, p...)
		case [][]byte:
			b = append(b, bytes.Join(p, nil)...)
		default:
			panic(fmt.Sprintf("cat: %T", p))
		}
	}
	return b
}

// edit replaces old by new in a copy of line.
func edit(line []byte, old, new string) []byte {
	if !bytes.Contains(line, []byte(old)) {
		panic(errors.New("edit: " + old + " not in line"))
	}
	return bytes.Replace(line, []byte(old), []byte(new), 1)
}

// forge returns a line with a correct hash for any seq, prev and event.
func forge(seq uint64, prev [32]byte, event string) []byte {
	line, _ := appendLine(nil, seq, prev, []byte(event))
	return line
}

// TestInvalidUTF8Verifies: an event whose strings are not valid UTF-8 (a
// subject may be any bytes; a reason may quote them) is written with
// U+FFFD in their place, in a line that verifies and lets the file reopen,
// in a batch as alone.
func TestInvalidUTF8Verifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	e := testEvent(1)
	e.Subject, e.Reason = "\xff\xfeuser", "refused \xc3("
	require.NoError(t, s.Record(t.Context(), e))
	e2 := testEvent(2)
	e2.Workload = "spiffe://\x80"
	require.NoError(t, s.RecordBatch(t.Context(), []Event{e2, testEvent(3)}))
	require.NoError(t, s.Close())

	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	n, err := Verify(f)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	events := readEvents(t, path)
	require.Equal(t, "\uFFFDuser", events[0].Subject) // a run of invalid bytes is one U+FFFD
	require.Equal(t, "refused \uFFFD(", events[0].Reason)
	require.Equal(t, "spiffe://\uFFFD", events[1].Workload)
	s, err = OpenFile(path)
	require.NoError(t, err, "the file reopens")
	require.NoError(t, s.Close())
}

// TestRecordBatchTooLargeWritesNothing: a batch holding an event too large
// for a line is refused before any of its events is written.
func TestRecordBatchTooLargeWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	big := testEvent(2)
	big.Reason = strings.Repeat("r", MaxLineSize)
	require.Error(t, s.RecordBatch(t.Context(), []Event{testEvent(1), big}))
	require.NoError(t, s.Record(t.Context(), testEvent(3)), "the sink goes on")
	require.NoError(t, s.Close())
	events := readEvents(t, path)
	require.Len(t, events, 1)
	require.Equal(t, "user-3", events[0].Subject)
}

// TestRecordDuringClose: a Record racing Close either succeeds, its line
// synced, or fails and leaves no line: the file holds exactly the events
// whose Record succeeded.
func TestRecordDuringClose(t *testing.T) {
	for range 20 {
		path := filepath.Join(t.TempDir(), "audit.log")
		s, err := OpenFile(path)
		require.NoError(t, err)
		var ok atomic.Int64
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 20 {
					if s.Record(t.Context(), testEvent(i*100+j)) == nil {
						ok.Add(1)
					}
				}
			}()
		}
		require.NoError(t, s.Close())
		wg.Wait()
		require.Len(t, readEvents(t, path), int(ok.Load()))
	}
}
