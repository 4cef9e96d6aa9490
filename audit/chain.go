package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// MaxLineSize bounds the length of a line of an audit file, its newline
// included. FileSink refuses to record a larger event; Verify reports a
// longer line as bad.
const MaxLineSize = 64 << 10

// domain is the label that starts the input of every line hash; it names the
// format version.
const domain = "zonekey/audit/v1\n"

// ZeroHash is the prev of the first line of a chain, and the Head hash of an
// empty one.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// ErrBrokenChain is the error every [*ChainError] matches with errors.Is: the
// file is not an intact audit chain, and must be investigated, not appended
// to.
var ErrBrokenChain = errors.New("audit: broken hash chain")

// ChainError reports the first bad line of an audit file.
type ChainError struct {
	// Line is the 1-based number of the first bad line. The lines before
	// it form a valid chain.
	Line int
	// Reason says what is wrong with it: "malformed line", "hash
	// mismatch" (the line was edited), "seq gap" or "prev mismatch" (a
	// line was deleted, inserted, duplicated or reordered), or "torn line"
	// (the last write was interrupted).
	Reason string
}

// Error returns "audit: line N: reason".
func (e *ChainError) Error() string {
	return fmt.Sprintf("audit: line %d: %s", e.Line, e.Reason)
}

// Is makes errors.Is(err, ErrBrokenChain) hold for every ChainError.
func (e *ChainError) Is(target error) bool { return target == ErrBrokenChain }

// Head identifies the end of a chain: the seq and hash of its last line. The
// Head of an empty chain is {0, ZeroHash}. Anchoring a Head outside the file
// (a log, a separate store) lets a later verification detect that lines were
// removed from the end or the file was replaced.
type Head struct {
	// Seq is the seq of the last line, which is also the number of lines.
	Seq uint64 `json:"seq"`
	// Hash is the hash of the last line, in lowercase hex.
	Hash string `json:"hash"`
}

// Verify reads an audit file from r and checks every line. It returns the
// number of valid lines and, if the chain is broken, a *ChainError naming the
// first bad line; the count is then the number of lines before it. Any other
// error is a read error from r. An empty input is a valid chain of 0 lines.
func Verify(r io.Reader) (int, error) {
	h, err := VerifyHead(r)
	return int(h.Seq), err
}

// VerifyHead is Verify returning the Head of the valid part of the chain:
// its last line's seq and hash.
func VerifyHead(r io.Reader) (Head, error) {
	br := bufio.NewReaderSize(r, MaxLineSize)
	head := Head{Hash: ZeroHash}
	var prev [sha256.Size]byte
	for n := 1; ; n++ {
		b, err := br.ReadSlice('\n')
		switch {
		case err == nil:
		case errors.Is(err, bufio.ErrBufferFull):
			return head, &ChainError{Line: n, Reason: fmt.Sprintf("malformed line: longer than %d bytes", MaxLineSize)}
		case errors.Is(err, io.EOF):
			if len(b) == 0 {
				return head, nil
			}
			return head, &ChainError{Line: n, Reason: "torn line: no final newline (a write was interrupted)"}
		default:
			return head, fmt.Errorf("audit: reading line %d: %w", n, err)
		}
		rec, reason := parseLine(b[:len(b)-1])
		if reason != "" {
			return head, &ChainError{Line: n, Reason: reason}
		}
		if reason := rec.link(head.Seq, prev); reason != "" {
			return head, &ChainError{Line: n, Reason: reason}
		}
		prev = rec.hash
		head = Head{Seq: rec.seq, Hash: hex.EncodeToString(rec.hash[:])}
	}
}

// record is a parsed line whose hash matches its content.
type record struct {
	seq   uint64
	prev  [sha256.Size]byte
	hash  [sha256.Size]byte
	event Event
}

// link checks that r follows the line with the given seq and hash; it
// returns why not, or "".
func (r *record) link(seq uint64, hash [sha256.Size]byte) string {
	if r.seq != seq+1 {
		return fmt.Sprintf("seq gap: want seq %d, found %d (a line was deleted, inserted, duplicated or reordered)", seq+1, r.seq)
	}
	if r.prev != hash {
		if seq == 0 {
			return "prev mismatch: the first line must have prev " + ZeroHash
		}
		return fmt.Sprintf("prev mismatch: does not link to line %d (a line was deleted, inserted, duplicated or reordered)", seq)
	}
	return ""
}

// The fixed parts of a line.
const (
	seqPrefix   = `{"seq":`
	prevPrefix  = `,"prev":"`
	eventPrefix = `","event":`
	hashPrefix  = `,"hash":"`
	lineSuffix  = `"}`
)

// parseLine parses one line without its newline, checks its layout, its hash
// and its canonical event, and returns the record, or why it is bad.
func parseLine(b []byte) (*record, string) {
	const hexLen = 2 * sha256.Size
	bad := func(why string) (*record, string) { return nil, "malformed line: " + why }
	rest, ok := bytes.CutPrefix(b, []byte(seqPrefix))
	if !ok {
		return bad(`does not start with {"seq":`)
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return bad("no seq")
	}
	seq, ok := parseSeq(rest[:i])
	if !ok {
		return bad(fmt.Sprintf("seq %.24q is not a positive decimal without leading zeros", rest[:i]))
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(prevPrefix))
	if !ok || len(rest) < hexLen {
		return bad("no prev after seq")
	}
	var rec record
	rec.seq = seq
	if !decodeHash(rec.prev[:], rest[:hexLen]) {
		return bad("prev is not 64 lowercase hex digits")
	}
	event, ok := bytes.CutPrefix(rest[hexLen:], []byte(eventPrefix))
	if !ok {
		return bad("no event after prev")
	}
	tail := len(hashPrefix) + hexLen + len(lineSuffix)
	if len(event) < tail {
		return bad("no hash after event")
	}
	event, hashPart := event[:len(event)-tail], event[len(event)-tail:]
	if !bytes.HasPrefix(hashPart, []byte(hashPrefix)) || !bytes.HasSuffix(hashPart, []byte(lineSuffix)) {
		return bad(`does not end with ,"hash":"<64 hex digits>"}`)
	}
	if !decodeHash(rec.hash[:], hashPart[len(hashPrefix):len(hashPrefix)+hexLen]) {
		return bad("hash is not 64 lowercase hex digits")
	}
	if sum := lineHash(seq, rec.prev, event); sum != rec.hash {
		return nil, fmt.Sprintf("hash mismatch: the line was edited (recorded %x…, computed %x…)", rec.hash[:4], sum[:4])
	}
	if err := decodeEvent(&rec.event, event); err != nil {
		return bad(err.Error())
	}
	return &rec, ""
}

// parseSeq parses a positive decimal without sign or leading zeros.
func parseSeq(b []byte) (uint64, bool) {
	if len(b) == 0 || b[0] == '0' {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	return n, err == nil
}

// decodeHash decodes 64 lowercase hex digits into dst.
func decodeHash(dst, src []byte) bool {
	for _, c := range src {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	_, err := hex.Decode(dst, src)
	return err == nil
}

// decodeEvent decodes b into e and checks that b is e's canonical encoding.
func decodeEvent(e *Event, b []byte) error {
	if len(b) == 0 || b[0] != '{' {
		return errors.New("event is not a JSON object")
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(e); err != nil {
		return fmt.Errorf("event: %v", err)
	}
	if d.InputOffset() != int64(len(b)) {
		return errors.New("event: trailing data after the JSON object")
	}
	if err := e.validate(); err != nil {
		return err
	}
	c, err := marshalEvent(e)
	if err != nil {
		return err
	}
	if !bytes.Equal(c, b) {
		return errors.New("event is not in canonical encoding")
	}
	return nil
}

// marshalEvent returns the canonical encoding of e, with its time in UTC
// and its strings as valid UTF-8: bytes that are not (a subject may hold
// any) become U+FFFD, as encoding/json would write them, but literally,
// so that the line decodes and re-encodes to itself and verifies.
func marshalEvent(e *Event) ([]byte, error) {
	c := *e
	c.Time = c.Time.UTC()
	for _, s := range []*string{&c.Reason, &c.Zone, &c.Subject, &c.DEK, &c.Workload, &c.Region, &c.Issuer} {
		*s = strings.ToValidUTF8(*s, "\uFFFD")
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("audit: encoding event: %w", err)
	}
	return b, nil
}

// lineHash is the hash of a line: SHA-256 over the domain label, the seq in
// decimal, the prev in hex and the event's bytes, separated by newlines.
func lineHash(seq uint64, prev [sha256.Size]byte, event []byte) [sha256.Size]byte {
	var hx [2 * sha256.Size]byte
	hex.Encode(hx[:], prev[:])
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write(strconv.AppendUint(nil, seq, 10))
	h.Write([]byte{'\n'})
	h.Write(hx[:])
	h.Write([]byte{'\n'})
	h.Write(event)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// appendLine appends the line for an event (canonical encoding) to dst, with
// its newline, and returns it with the line's hash.
// lineLen is the length of the longest line event can take: its line
// with the widest seq.
func lineLen(event []byte) int {
	line, _ := appendLine(nil, math.MaxUint64, [sha256.Size]byte{}, event)
	return len(line)
}

func appendLine(dst []byte, seq uint64, prev [sha256.Size]byte, event []byte) ([]byte, [sha256.Size]byte) {
	sum := lineHash(seq, prev, event)
	dst = append(dst, seqPrefix...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, prevPrefix...)
	dst = hex.AppendEncode(dst, prev[:])
	dst = append(dst, eventPrefix...)
	dst = append(dst, event...)
	dst = append(dst, hashPrefix...)
	dst = hex.AppendEncode(dst, sum[:])
	dst = append(dst, lineSuffix...)
	dst = append(dst, '\n')
	return dst, sum
}
