package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// KubernetesDoc is the how-to whose marked blocks the suites run.
const KubernetesDoc = "docs/kubernetes.md"

// DocBlocks returns the fenced blocks of a Markdown file (a path relative
// to the repository's root) that carry a marker after their language
// ("```toml containerd-1.6"), by marker. A marker used twice is an error.
func DocBlocks(doc string) (map[string]string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return nil, fmt.Errorf("locating the repository")
	}
	path := filepath.Join(filepath.Dir(self), "..", "..", "..", doc)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only
	blocks := map[string]string{}
	var (
		marker string
		body   strings.Builder
		in     bool
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case !in && strings.HasPrefix(line, "```"):
			in = true
			marker, body = "", strings.Builder{}
			if fields := strings.Fields(strings.TrimPrefix(line, "```")); len(fields) == 2 {
				marker = fields[1]
			}
			if _, dup := blocks[marker]; marker != "" && dup {
				return nil, fmt.Errorf("%s:%d: block %q appears twice", doc, n, marker)
			}
		case in && strings.TrimSpace(line) == "```":
			in = false
			if marker != "" {
				blocks[marker] = body.String()
			}
		case in:
			body.WriteString(line)
			body.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if in {
		return nil, fmt.Errorf("%s: unterminated code block", doc)
	}
	return blocks, nil
}

// DocBlock returns one marked block of a document.
func DocBlock(doc, marker string) (string, error) {
	blocks, err := DocBlocks(doc)
	if err != nil {
		return "", err
	}
	b, ok := blocks[marker]
	if !ok {
		return "", fmt.Errorf("%s has no block marked %q", doc, marker)
	}
	return b, nil
}

// ContainerdRuntime returns the containerd configuration that
// docs/kubernetes.md gives for a containerd version ("1.6" or "2"), split
// into its version line ("version = 2") and the rest (the hull runtime's
// tables), which a test appends to its own configuration.
func ContainerdRuntime(version string) (versionLine, tables string, err error) {
	b, err := DocBlock(KubernetesDoc, "containerd-"+version)
	if err != nil {
		return "", "", err
	}
	first, rest, _ := strings.Cut(b, "\n")
	if !strings.HasPrefix(first, "version = ") {
		return "", "", fmt.Errorf("%s: block containerd-%s does not start with its version line", KubernetesDoc, version)
	}
	return first, rest, nil
}
