package audit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocsVerifyScript runs the standard-tools verifier of docs/audit.md, so
// that the documentation stays true to the format.
func TestDocsVerifyScript(t *testing.T) {
	for _, tool := range []string{"bash", "sha256sum", "tail", "tr", "cmp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not available", tool)
		}
	}
	doc, err := os.ReadFile(filepath.Join("..", "docs", "audit.md"))
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(doc), "<!-- verify-audit.sh")
	require.True(t, ok, "script marker not found in docs/audit.md")
	_, after, ok = strings.Cut(after, "```bash\n")
	require.True(t, ok)
	script, _, ok := strings.Cut(after, "```\n")
	require.True(t, ok)
	dir := t.TempDir()
	scriptPath := filepath.Join(dir, "verify-audit.sh")
	require.NoError(t, os.WriteFile(scriptPath, []byte(script), 0o700))

	// Events with the characters that escaping could get wrong.
	path := filepath.Join(dir, "audit.log")
	s, err := OpenFile(path)
	require.NoError(t, err)
	reasons := []string{`plain`, `a<b>&c "q" \ back`, "tab\tnewline\n%s %% ünï \u2028 \x01", `$(echo no) ${x} '`}
	for i, r := range reasons {
		e := testEvent(i)
		e.Reason = r
		require.NoError(t, s.Record(t.Context(), e))
	}
	head := s.Head()
	require.NoError(t, s.Close())
	lines := readLines(t, path)

	run := func(file []byte) (string, string, error) {
		p := filepath.Join(t.TempDir(), "audit.log")
		require.NoError(t, os.WriteFile(p, file, 0o600))
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("bash", scriptPath, p)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), strings.TrimPrefix(stderr.String(), p), err
	}
	tests := []struct {
		name string
		file []byte
		want string // stderr after the path; "" for a valid file
	}{
		{"valid", cat(lines), ""},
		{"empty", nil, ""},
		{"edited", cat(lines[:1], edit(lines[1], "user-1", "user-X"), lines[2:]), ":2: hash mismatch"},
		{"deleted", cat(lines[:1], lines[2:]), ":2: seq gap"},
		{"reordered", cat(lines[:1], lines[2], lines[1], lines[3]), ":2: seq gap"},
		{"relinked", cat(lines[:2], forge(3, hashOf(t, lines[0]), eventOf(lines[2])), lines[3]), ":3: prev mismatch"},
		{"torn", cat(lines[:3], lines[3][:30]), ":4: torn line"},
		{"malformed", cat(lines[:3], []byte("{}\n")), ":4: malformed line"},
		{"NUL byte", cat(lines[:1], edit(lines[1], "user-1", "user\x00-1"), lines[2:]), ":0: NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := run(tt.file)
			if tt.want != "" {
				require.Error(t, err)
				require.True(t, strings.HasPrefix(stderr, tt.want), "stderr: %s", stderr)
				// The Go verifier agrees on the line.
				_, verr := Verify(bytes.NewReader(tt.file))
				var ce *ChainError
				require.ErrorAs(t, verr, &ce)
				if !strings.HasSuffix(tt.want, "NUL byte") { // the script checks those for the whole file
					require.Contains(t, tt.want, fmt.Sprintf(":%d:", ce.Line))
				}
				return
			}
			require.NoError(t, err, "stderr: %s", stderr)
			h, err := VerifyHead(bytes.NewReader(tt.file))
			require.NoError(t, err)
			require.Equal(t, fmt.Sprintf("ok: %d events, last hash %s\n", h.Seq, h.Hash), stdout)
			if len(tt.file) > 0 {
				require.Equal(t, head, h)
			}
		})
	}
}
