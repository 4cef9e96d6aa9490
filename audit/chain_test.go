package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// hashOf returns the hash recorded in a line.
func hashOf(t *testing.T, line []byte) [32]byte {
	t.Helper()
	rec, reason := parseLine(bytes.TrimSuffix(line, []byte("\n")))
	require.Empty(t, reason)
	return rec.hash
}

// eventOf returns the event bytes of a line.
func eventOf(line []byte) string {
	s := strings.TrimSuffix(string(line), "\n")
	s = s[strings.Index(s, eventPrefix)+len(eventPrefix):]
	return s[:len(s)-len(hashPrefix)-64-len(lineSuffix)]
}

func TestVerifyDetectsTampering(t *testing.T) {
	_, l := writeChain(t, 5) // l[0] is line 1
	tests := []struct {
		name   string
		file   func() []byte
		line   int    // first bad line; 0 if the file is valid
		reason string // prefix of the reason
	}{
		{"intact", func() []byte { return cat(l) }, 0, ""},
		{"edited subject", func() []byte { return cat(l[:2], edit(l[2], "user-3", "user-X"), l[3:]) }, 3, "hash mismatch"},
		{"edited decision", func() []byte { return cat(l[:4], edit(l[4], `"allow"`, `"deny"`)) }, 5, "hash mismatch"},
		{"edited seq", func() []byte { return cat(l[:2], edit(l[2], `"seq":3`, `"seq":4`), l[3:]) }, 3, "hash mismatch"},
		{"edited hash", func() []byte {
			h := bytes.Clone(l[2])
			if h[len(h)-4] == '0' {
				h[len(h)-4] = '1'
			} else {
				h[len(h)-4] = '0'
			}
			return cat(l[:2], h, l[3:])
		}, 3, "hash mismatch"},
		{"edited line with its hash recomputed", func() []byte {
			return cat(l[:2], forge(3, hashOf(t, l[1]), strings.Replace(eventOf(l[2]), "user-3", "user-X", 1)), l[3:])
		}, 4, "prev mismatch"},
		{"deleted line", func() []byte { return cat(l[:2], l[3:]) }, 3, "seq gap"},
		{"deleted first line", func() []byte { return cat(l[1:]) }, 1, "seq gap"},
		{"reordered pair", func() []byte { return cat(l[:2], l[3], l[2], l[4]) }, 3, "seq gap"},
		{"inserted copy of another line", func() []byte { return cat(l[:2], l[0], l[2:]) }, 3, "seq gap"},
		{"inserted forged line", func() []byte {
			return cat(l[:2], forge(3, hashOf(t, l[1]), eventOf(l[0])), l[2:])
		}, 4, "seq gap"},
		{"line relinked to the wrong prev", func() []byte { return cat(l[:2], forge(3, hashOf(t, l[0]), eventOf(l[2])), l[3:]) }, 3, "prev mismatch"},
		{"first line with nonzero prev", func() []byte { return cat(forge(1, hashOf(t, l[0]), eventOf(l[0]))) }, 1, "prev mismatch"},
		{"duplicated line", func() []byte { return cat(l[:3], l[2:]) }, 4, "seq gap"},
		{"torn last line", func() []byte { return cat(l[:4], l[4][:len(l[4])/2]) }, 5, "torn line"},
		{"missing final newline", func() []byte { return cat(l[:4], l[4][:len(l[4])-1]) }, 5, "torn line"},
		{"garbage line", func() []byte { return cat(l[:1], []byte("not json at all\n"), l[1:]) }, 2, "malformed line"},
		{"blank line", func() []byte { return cat(l[:2], []byte("\n"), l[2:]) }, 3, "malformed line"},
		{"CRLF line ending", func() []byte { return cat(append(bytes.TrimSuffix(l[0], []byte("\n")), "\r\n"...)) }, 1, "malformed line"},
		{"leading zero in seq", func() []byte { return cat(l[:1], edit(l[1], `"seq":2`, `"seq":02`)) }, 2, "malformed line: seq"},
		{"uppercase hex", func() []byte { return cat(bytes.ToUpper(l[0])) }, 1, "malformed line"},
		{"reformatted JSON", func() []byte { return cat(edit(l[0], `{"seq":1,`, `{"seq": 1,`)) }, 1, "malformed line"},
		{"line too long", func() []byte { return cat(l[:3], bytes.Repeat([]byte("x"), MaxLineSize), []byte("\n")) }, 4, "malformed line: longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file()
			n, err := Verify(bytes.NewReader(file))
			if tt.line == 0 {
				require.NoError(t, err)
				require.Equal(t, bytes.Count(file, []byte("\n")), n)
				return
			}
			var ce *ChainError
			require.ErrorAs(t, err, &ce)
			require.ErrorIs(t, err, ErrBrokenChain)
			require.Equal(t, tt.line, ce.Line, "reason: %s", ce.Reason)
			require.True(t, strings.HasPrefix(ce.Reason, tt.reason), "reason: %s", ce.Reason)
			require.Equal(t, tt.line-1, n)
			require.Contains(t, err.Error(), ce.Reason)
		})
	}
}

func TestVerifyRejectsNonCanonicalEvents(t *testing.T) {
	const ts = `"time":"2025-03-01T12:00:00Z"`
	tests := []struct {
		name   string
		event  string
		reason string // substring of the reason; "" if valid
	}{
		{"canonical", `{` + ts + `,"action":"access","decision":"deny","reason":"a\u003cb"}`, ""},
		{"space", `{` + ts + `, "action":"access","decision":"deny"}`, "not in canonical encoding"},
		{"unknown field", `{` + ts + `,"action":"access","decision":"deny","plaintext":"x"}`, "unknown field"},
		{"duplicate key", `{` + ts + `,"action":"access","decision":"deny","decision":"allow"}`, "not in canonical encoding"},
		{"key case", `{` + ts + `,"action":"access","Decision":"deny"}`, "not in canonical encoding"},
		{"field order", `{"action":"access",` + ts + `,"decision":"deny"}`, "not in canonical encoding"},
		{"time not in UTC", `{"time":"2025-03-01T13:00:00+01:00","action":"access","decision":"deny"}`, "not in canonical encoding"},
		{"unescaped HTML", `{` + ts + `,"action":"access","decision":"deny","reason":"a<b"}`, "not in canonical encoding"},
		{"empty field present", `{` + ts + `,"action":"access","decision":"deny","zone":""}`, "not in canonical encoding"},
		{"trailing data", `{` + ts + `,"action":"access","decision":"deny"} `, "trailing data"},
		{"two objects", `{` + ts + `,"action":"access","decision":"deny"}{}`, "trailing data"},
		{"invalid decision", `{` + ts + `,"action":"access","decision":"maybe"}`, "invalid decision"},
		{"no action", `{` + ts + `,"decision":"deny"}`, "no action"},
		{"array", `[]`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"bad JSON", `{"time":`, "event:"},
		{"wrong type", `{"time":1,"action":"access","decision":"deny"}`, "event:"},
		{"invalid UTF-8", "{" + ts + `,"action":"access","decision":"deny","reason":"` + "\xff" + `"}`, "not in canonical encoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := Verify(bytes.NewReader(forge(1, [32]byte{}, tt.event)))
			if tt.reason == "" {
				require.NoError(t, err)
				require.Equal(t, 1, n)
				return
			}
			var ce *ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, 1, ce.Line)
			require.Contains(t, ce.Reason, "malformed line")
			require.Contains(t, ce.Reason, tt.reason)
		})
	}
}

// TestVerifyLimits pins down what a hash chain cannot detect, as documented:
// lines removed from the end, and a chain recomputed from an edited line on.
func TestVerifyLimits(t *testing.T) {
	_, l := writeChain(t, 5)
	n, err := Verify(bytes.NewReader(cat(l[:3])))
	require.NoError(t, err)
	require.Equal(t, 3, n)

	forged := cat(l[:2], forge(3, hashOf(t, l[1]), strings.Replace(eventOf(l[2]), "allow", "deny", 1)))
	for i := 3; i < 5; i++ {
		prev := hashOf(t, bytes.SplitAfter(forged, []byte("\n"))[i-1])
		forged = cat(forged, forge(uint64(i+1), prev, eventOf(l[i])))
	}
	n, err = Verify(bytes.NewReader(forged))
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.NotEqual(t, cat(l), forged)
}

func TestVerifyEmpty(t *testing.T) {
	h, err := VerifyHead(bytes.NewReader(nil))
	require.NoError(t, err)
	require.Equal(t, Head{Seq: 0, Hash: ZeroHash}, h)
	n, err := Verify(strings.NewReader(""))
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestVerifyHead(t *testing.T) {
	_, l := writeChain(t, 4)
	h, err := VerifyHead(bytes.NewReader(cat(l[:3], []byte("bad\n"), l[3])))
	require.ErrorIs(t, err, ErrBrokenChain)
	want := hashOf(t, l[2])
	require.Equal(t, Head{Seq: 3, Hash: hex.EncodeToString(want[:])}, h)
}

func TestVerifyReadError(t *testing.T) {
	_, l := writeChain(t, 2)
	boom := errors.New("boom")
	n, err := Verify(errReader{bytes.NewReader(cat(l[:1])), boom})
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrBrokenChain)
	require.Equal(t, 1, n)
}

type errReader struct {
	r   *bytes.Reader
	err error
}

func (e errReader) Read(p []byte) (int, error) {
	n, _ := e.r.Read(p)
	if n == 0 {
		return 0, e.err
	}
	return n, nil
}

// TestLineHash pins the hash input byte for byte, as documented.
func TestLineHash(t *testing.T) {
	event := `{"time":"2025-03-01T12:00:00Z","action":"access","decision":"deny"}`
	got := lineHash(1, [32]byte{}, []byte(event))
	want := sha256Hex("zonekey/audit/v1\n1\n" + ZeroHash + "\n" + event)
	require.Equal(t, want, hex.EncodeToString(got[:]))
	line := forge(1, [32]byte{}, event)
	require.Equal(t, `{"seq":1,"prev":"`+ZeroHash+`","event":`+event+`,"hash":"`+want+`"}`+"\n", string(line))
}

func FuzzVerify(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Verify(bytes.NewReader(data))
		if err == nil {
			if n != bytes.Count(data, []byte("\n")) || (len(data) > 0 && data[len(data)-1] != '\n') {
				t.Fatalf("accepted %d lines of %q", n, data)
			}
			return
		}
		var ce *ChainError
		if !errors.As(err, &ce) || !errors.Is(err, ErrBrokenChain) {
			t.Fatalf("error is not a *ChainError: %v", err)
		}
		if ce.Line != n+1 || ce.Reason == "" {
			t.Fatalf("line %d after %d valid lines, reason %q", ce.Line, n, ce.Reason)
		}
		// The valid prefix verifies on its own.
		prefix := data[:indexNth(data, '\n', n)]
		if m, err := Verify(bytes.NewReader(prefix)); err != nil || m != n {
			t.Fatalf("valid prefix of %d lines: %d, %v", n, m, err)
		}
	})
}

// indexNth returns the length of the first n lines of data.
func indexNth(data []byte, c byte, n int) int {
	off := 0
	for range n {
		off += bytes.IndexByte(data[off:], c) + 1
	}
	return off
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
