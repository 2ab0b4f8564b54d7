package agentctl

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"unicode"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
)

// maxScriptLine is the longest script line: a request may carry an OCI
// spec.
const maxScriptLine = 4 << 20

// Step is one call of a script.
type Step struct {
	// Line is the step's line number in the script, from 1.
	Line    int
	Method  Method
	Request proto.Message
}

// ParseScript reads a script: one call per line, the method name and,
// after blanks, its request as JSON on the same line (an empty request when
// absent). Blank lines and lines that start with # are skipped. Every
// method is looked up and every request parsed before anything runs, so
// that a typo ends the script before its first call; errors name the line.
func ParseScript(r io.Reader) ([]Step, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, maxScriptLine)
	var steps []Step
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff") // a byte order mark
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, js := line, ""
		if i := strings.IndexFunc(line, func(r rune) bool { return unicode.IsSpace(r) || r == '{' }); i >= 0 {
			name, js = line[:i], line[i:]
		}
		m, err := Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		req, err := m.NewRequest(js)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		steps = append(steps, Step{Line: n, Method: m, Request: req})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading script: line %d: %w", n+1, err)
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("the script has no calls: %w", errdefs.ErrInvalidArgument)
	}
	return steps, nil
}

// Run calls the steps in order and writes, for each, a "# METHOD" line and
// the answer to w. It stops at the first error, which names the step's
// line.
func (c *Caller) Run(ctx context.Context, steps []Step, w io.Writer) error {
	for _, st := range steps {
		resp, err := c.Call(ctx, st.Method, st.Request)
		if err != nil {
			return fmt.Errorf("line %d: %w", st.Line, err)
		}
		out, err := Format(resp)
		if err != nil {
			return fmt.Errorf("line %d: %w", st.Line, err)
		}
		if _, err := fmt.Fprintf(w, "# %s\n%s\n", st.Method.Name(), out); err != nil {
			return err
		}
	}
	return nil
}
