package qemu

import (
	"io"
	"os"
	"strings"
)

// consoleTailBytes is how much of the console log ConsoleTail reads at
// most; enough for a few hundred lines.
const consoleTailBytes = 64 << 10

// ConsoleTail returns up to n last lines of the guest's serial console,
// which QEMU writes to console.log in the state directory. It works after
// the VM exited, too, until the caller removes the state directory.
func (v *VM) ConsoleTail(n int) []string {
	if n <= 0 {
		return nil
	}
	return tailLines(v.consolePath(), n, consoleTailBytes)
}

func tailLines(path string, n int, max int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	s := strings.ReplaceAll(string(b), "\r", "")
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	lines := strings.Split(s, "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first line is cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
