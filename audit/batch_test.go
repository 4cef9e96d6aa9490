package audit

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A batch is written as the same events recorded one by one would be, in
// order, between the events recorded around it, in one valid chain.
func TestRecordBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	require.NoError(t, s.Record(t.Context(), testEvent(1)))
	batch := []Event{testEvent(2), testEvent(3), testEvent(4)}
	batch[1].Time = time.Time{} // filled in
	require.NoError(t, s.RecordBatch(t.Context(), batch))
	require.NoError(t, s.RecordBatch(t.Context(), nil))
	require.NoError(t, s.Record(t.Context(), testEvent(5)))
	require.NoError(t, s.Close())

	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	got := readEvents(t, path)
	for i, e := range got {
		want := testEvent(i + 1)
		if i == 2 {
			require.False(t, e.Time.IsZero(), "the zero time is filled in")
			want.Time = e.Time
		}
		require.Equal(t, want, e)
	}
}

// An invalid event refuses the whole batch before anything is written.
func TestRecordBatchRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	defer s.Close()
	err = s.RecordBatch(t.Context(), []Event{testEvent(1), {Action: Access}, testEvent(3)})
	require.ErrorContains(t, err, "invalid decision")
	require.Empty(t, readLines(t, path), "nothing written")
	require.NoError(t, s.RecordBatch(t.Context(), []Event{testEvent(1)}), "the sink still works")
	require.Len(t, readLines(t, path), 1)
}

// plainSink is a Sink without RecordBatch that keeps what it receives and
// fails from its failAt-th event on (0: never).
type plainSink struct {
	mu     sync.Mutex
	events []Event
	failAt int
}

var errPlain = errors.New("plain sink failure")

func (p *plainSink) Record(_ context.Context, e Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failAt > 0 && len(p.events)+1 >= p.failAt {
		return errPlain
	}
	p.events = append(p.events, e)
	return nil
}

// RecordBatch uses a sink's RecordBatch when it has one and Record per
// event otherwise, stopping at the first error; Multi batches to each of
// its sinks.
func TestRecordBatchFunc(t *testing.T) {
	events := []Event{testEvent(1), testEvent(2), testEvent(3)}

	p := &plainSink{}
	require.NoError(t, RecordBatch(t.Context(), p, events))
	require.Equal(t, events, p.events)

	failing := &plainSink{failAt: 2}
	require.ErrorIs(t, RecordBatch(t.Context(), failing, events), errPlain)
	require.Equal(t, events[:1], failing.events, "stops at the first error")

	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := OpenFile(path)
	require.NoError(t, err)
	other := &plainSink{}
	m := Multi(f, &plainSink{failAt: 1}, other)
	_, isBatch := m.(BatchSink)
	require.True(t, isBatch)
	require.ErrorIs(t, RecordBatch(t.Context(), m, events), errPlain)
	require.Equal(t, events, other.events, "a failing sink does not stop the others")
	require.NoError(t, f.Close())
	n, err := verifyFile(path)
	require.NoError(t, err)
	require.Equal(t, 3, n)
}
