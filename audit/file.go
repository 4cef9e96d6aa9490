package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/zonekey/zonekey/internal/errs"
)

// ErrTorn is returned (wrapped) by OpenFile when the file ends with a torn
// line: a write was interrupted, by a crash or a full disk, and the last
// line has no newline. The torn line is an event whose Record did not
// succeed; [Repair] removes it so the chain can continue. Verify the rest of
// the file first.
var ErrTorn = errors.New("audit: file ends with a torn line")

// FileSink appends events to a hash-chained JSON-lines file (see the package
// documentation for the format). It is safe for concurrent use: records are
// written in the order of their seq, one line per event with a single
// write(2), and Record returns only once the line is durable (fsync), unless
// the sink was opened with [SyncEvery].
//
// A FileSink holds an exclusive advisory lock (flock) on its file on Unix
// systems, so a second FileSink on the same file, in this process or another,
// fails to open instead of forking the chain.
type FileSink struct {
	path  string
	every time.Duration

	// mu orders writes and guards the fields below it.
	mu     sync.Mutex
	f      *os.File
	seq    uint64
	prev   [sha256.Size]byte
	err    error // sticky: after a failed write or sync, nothing more is recorded
	closed bool
	// closing is set by Close before its last fsync: from then on no
	// line is written, so none is left behind unsynced by a Record that
	// then fails.
	closing bool
	buf     []byte

	// syncMu serializes fsyncs and guards synced. It is taken before mu.
	syncMu sync.Mutex
	synced uint64 // the highest seq known to be durable

	stop     chan struct{} // closed by Close to stop the background syncer
	done     chan struct{} // closed by the background syncer when it returns
	stopOnce sync.Once
}

// FileOption configures OpenFile.
type FileOption func(*fileOptions)

type fileOptions struct {
	syncEvery time.Duration
}

// SyncEvery makes a FileSink fsync its file every d instead of on every
// Record. Record then returns once the line is written, before it is durable:
// a crash of the machine can lose the events of the last d although Record
// succeeded. Use it only where audit events may be lost that way, never with
// a keystore that must fail closed. A failed background fsync makes every
// later Record fail. d = 0, the default, syncs on every Record; concurrent
// Records then share fsyncs, each still returning only once its own line is
// durable.
func SyncEvery(d time.Duration) FileOption {
	return func(o *fileOptions) { o.syncEvery = d }
}

// OpenFile opens the audit file at path for appending, creating it with mode
// 0600 if it does not exist. It reads the file's last line to continue the
// chain from it; it does not verify the lines before (use [Verify]).
//
// OpenFile refuses a file whose last line is torn (the error wraps ErrTorn;
// [Repair] removes that line) or is not a valid audit line (the error wraps
// ErrBrokenChain: the file was edited or is not an audit file, and must be
// investigated).
func OpenFile(path string, opts ...FileOption) (*FileSink, error) {
	var o fileOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.syncEvery < 0 {
		return nil, fmt.Errorf("audit: negative SyncEvery %v", o.syncEvery)
	}
	f, created, err := openOrCreate(path)
	if err != nil {
		return nil, err
	}
	s := &FileSink{path: path, every: o.syncEvery, f: f}
	if err := s.open(created); err != nil {
		f.Close()
		return nil, err
	}
	if s.every > 0 {
		s.stop = make(chan struct{})
		s.done = make(chan struct{})
		go s.syncLoop()
	}
	return s, nil
}

func openOrCreate(path string) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	} else if err == nil {
		created = true
	}
	if err != nil {
		return nil, false, fmt.Errorf("audit: %w", err)
	}
	return f, created, nil
}

// open locks the file and reads its head.
func (s *FileSink) open(created bool) error {
	if err := lockFile(s.f); err != nil {
		return fmt.Errorf("audit: %s is in use by another FileSink: %w", s.path, err)
	}
	if created {
		// Make the new file's directory entry durable.
		if err := syncDir(filepath.Dir(s.path)); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		return nil
	}
	st, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("audit: %s is not a regular file", s.path)
	}
	size := st.Size()
	if size == 0 {
		return nil
	}
	var last [1]byte
	if _, err := s.f.ReadAt(last[:], size-1); err != nil {
		return fmt.Errorf("audit: reading %s: %w", s.path, err)
	}
	if last[0] != '\n' {
		nl, err := lastNewline(s.f, size)
		if err != nil {
			return fmt.Errorf("audit: reading %s: %w", s.path, err)
		}
		return fmt.Errorf("%w: %s has %d bytes after its last complete line (a write was interrupted); "+
			"check the lines before with \"zonekey audit verify %s\", then remove the torn line with "+
			"\"zonekey audit repair %s\" (audit.Repair) before appending", ErrTorn, s.path, size-nl-1, s.path, s.path)
	}
	// Read the last line and the newline before it, if any.
	start := max(0, size-MaxLineSize-1)
	buf := make([]byte, size-start)
	if _, err := s.f.ReadAt(buf, start); err != nil {
		return fmt.Errorf("audit: reading %s: %w", s.path, err)
	}
	buf = buf[:len(buf)-1]
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 && start > 0 {
		return fmt.Errorf("%w: the last line of %s is longer than %d bytes; it is not an audit file, or was edited: "+
			"investigate with \"zonekey audit verify %s\"", ErrBrokenChain, s.path, MaxLineSize, s.path)
	}
	rec, reason := parseLine(buf[i+1:])
	if reason == "" && rec.seq == 1 {
		reason = rec.link(0, [sha256.Size]byte{})
	}
	if reason != "" {
		return fmt.Errorf("%w: the last line of %s is not a valid audit line (%s); it is not an audit file, or was edited: "+
			"investigate with \"zonekey audit verify %s\" before appending to it", ErrBrokenChain, s.path, reason, s.path)
	}
	s.seq, s.prev, s.synced = rec.seq, rec.hash, rec.seq
	return nil
}

// lastNewline returns the offset of the last '\n' in the first size bytes of
// f, or -1.
func lastNewline(f io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 32<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i), nil
		}
		end = start
	}
	return -1, nil
}

// syncDir makes the entries of dir durable. Windows cannot fsync a
// directory; there it does nothing.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Record appends e to the file as one line and, unless the sink was opened
// with SyncEvery, returns once the line is durable. It fills in e.Time with
// the current time if it is zero. It fails if e has no Action or an invalid
// Decision, if its line would exceed MaxLineSize, or if the sink is closed or
// has failed: after a failed write or fsync, the sink records nothing more
// (reopen the file, which reports a torn line if one was left).
//
// Record does not abandon a write when ctx is done: an event is recorded
// whole or not at all.
func (s *FileSink) Record(_ context.Context, e Event) error {
	if err := e.validate(); err != nil {
		return err
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	ev, err := marshalEvent(&e)
	if err != nil {
		return err
	}
	seq, err := s.write(e.Action, ev)
	if err != nil || s.every > 0 {
		return err
	}
	return s.syncThrough(seq)
}

// RecordBatch implements BatchSink: it checks every event first, writes
// them in order, and then syncs once (or leaves it to the background
// fsync of SyncEvery).
func (s *FileSink) RecordBatch(_ context.Context, events []Event) error {
	lines := make([][]byte, len(events))
	now := time.Now()
	for i := range events {
		e := events[i]
		if err := e.validate(); err != nil {
			return err
		}
		if e.Time.IsZero() {
			e.Time = now
		}
		ev, err := marshalEvent(&e)
		if err != nil {
			return err
		}
		// Refuse an event too large for a line before any is written:
		// measured with the longest seq a line can have.
		if n := lineLen(ev); n > MaxLineSize {
			return fmt.Errorf("audit: %s event needs up to a %d-byte line, more than MaxLineSize (%d)", e.Action, n, MaxLineSize)
		}
		lines[i] = ev
	}
	var last uint64
	for i, ev := range lines {
		seq, err := s.write(events[i].Action, ev)
		if err != nil {
			return err
		}
		last = seq
	}
	if len(lines) == 0 || s.every > 0 {
		return nil
	}
	return s.syncThrough(last)
}

// write appends the line of an encoded event and returns its seq.
func (s *FileSink) write(action Action, ev []byte) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.closing {
		return 0, fmt.Errorf("audit: %s: %w", s.path, errs.Closed)
	}
	if s.err != nil {
		return 0, s.err
	}
	seq := s.seq + 1
	line, sum := appendLine(s.buf[:0], seq, s.prev, ev)
	if len(line) > MaxLineSize {
		return 0, fmt.Errorf("audit: %s event needs a %d-byte line, more than MaxLineSize (%d)", action, len(line), MaxLineSize)
	}
	if _, err := s.f.Write(line); err != nil {
		s.err = fmt.Errorf("audit: writing %s failed, no more events can be recorded: %w", s.path, err)
		return 0, s.err
	}
	if cap(line) <= 4<<10 {
		s.buf = line
	}
	s.seq, s.prev = seq, sum
	return seq, nil
}

// syncThrough returns once the line with the given seq is durable. Callers
// that arrive while an fsync is in progress wait for it, then share the next
// one, which covers every line written before it started.
func (s *FileSink) syncThrough(seq uint64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.synced >= seq {
		return nil
	}
	return s.syncLocked()
}

// syncLocked fsyncs the file if lines were written since the last fsync. It
// is called with syncMu held.
func (s *FileSink) syncLocked() error {
	s.mu.Lock()
	target, err, closed := s.seq, s.err, s.closed
	s.mu.Unlock()
	switch {
	case err != nil:
		return err
	case target <= s.synced:
		return nil
	case closed:
		return fmt.Errorf("audit: %s: %w", s.path, errs.Closed)
	}
	if err := s.f.Sync(); err != nil {
		// After a failed fsync the state of the written lines is unknown:
		// stop here rather than chain over them.
		err = fmt.Errorf("audit: syncing %s failed, no more events can be recorded: %w", s.path, err)
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		return err
	}
	s.synced = target
	return nil
}

func (s *FileSink) syncLoop() {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.syncMu.Lock()
			_ = s.syncLocked() // a failure is sticky: later Records report it
			s.syncMu.Unlock()
		}
	}
}

// Head returns the seq and hash of the last line written. Log or publish it
// periodically to anchor the chain outside the file. The line may not be
// synced yet (a Record in flight, or SyncEvery): publish a head after the
// Record that wrote it returned, or a crash can leave the file shorter than
// the anchor, which an auditor reads as truncation.
func (s *FileSink) Head() Head {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Head{Seq: s.seq, Hash: hex.EncodeToString(s.prev[:])}
}

// Close makes the lines written durable, releases the lock and closes the
// file. Records after Close fail; closing twice returns nil.
func (s *FileSink) Close() error {
	if s.stop != nil {
		s.stopOnce.Do(func() {
			close(s.stop)
			<-s.done
		})
	}
	// Only Close sets closed, with syncMu held.
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.closing = true
	s.mu.Unlock()
	if closed {
		return nil
	}
	syncErr := s.syncLocked()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if err := s.f.Close(); err != nil && syncErr == nil {
		syncErr = fmt.Errorf("audit: closing %s: %w", s.path, err)
	}
	return syncErr
}

// Repair removes a torn last line from the audit file at path: the bytes
// after its last newline, left by a write that was interrupted. It returns
// the bytes removed (nil if the file did not end with a torn line). The torn
// line is an event whose Record did not succeed, so no durable event is
// lost; the removed bytes are returned so the repair itself can be reported.
//
// Repair refuses a tail longer than MaxLineSize, which no interrupted write
// leaves, and a file held open by a FileSink. It does not verify the lines
// before; run Verify afterwards.
func Repair(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	if err := lockFile(f); err != nil {
		return nil, fmt.Errorf("audit: %s is in use by a FileSink: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("audit: %s is not a regular file", path)
	}
	size := st.Size()
	if size == 0 {
		return nil, nil
	}
	nl, err := lastNewline(f, size)
	if err != nil {
		return nil, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	keep := nl + 1
	if keep == size {
		return nil, nil
	}
	if size-keep >= MaxLineSize {
		return nil, fmt.Errorf("audit: %s ends with %d bytes without a newline, more than a line holds: "+
			"not an interrupted write; investigate", path, size-keep)
	}
	torn := make([]byte, size-keep)
	if _, err := f.ReadAt(torn, keep); err != nil {
		return nil, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	if err := f.Truncate(keep); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("audit: syncing %s: %w", path, err)
	}
	return torn, f.Close()
}
