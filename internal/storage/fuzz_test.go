package storage

import (
	"fmt"
	"strings"
	"testing"
)

// escapeMountinfo escapes a path as the kernel writes it in mountinfo
// (space, tab, newline and backslash as octal).
func escapeMountinfo(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzMountsUnder: whatever mountinfo holds (mount points are named by
// whoever made the mount, a container's paths among them), the points
// listed are dir or below it, and a point written as the kernel escapes it
// comes back as it was.
func FuzzMountsUnder(f *testing.F) {
	f.Add("36 35 98:0 / /run/hull/x rw,noatime master:1 - ext3 /dev/root rw\n", "/run/hull", "/run/hull/a b")
	f.Add("1 2 0:1 / /run/hull\\040x rw - tmpfs t rw\n", "/run/hull", "/run/hull/\\")
	f.Fuzz(func(t *testing.T, info, dir, point string) {
		if !strings.HasPrefix(dir, "/") || strings.ContainsAny(dir, " \t\n\\") {
			return
		}
		points, err := parseMountsUnder(strings.NewReader(info), dir)
		if err != nil {
			return // a line beyond the scanner's bound
		}
		for _, p := range points {
			if p != dir && !strings.HasPrefix(p, dir+"/") {
				t.Fatalf("point %q is not under %q", p, dir)
			}
		}
		if unescapeMountinfo(escapeMountinfo(point)) != point {
			t.Fatalf("%q does not survive escaping", point)
		}
	})
}
