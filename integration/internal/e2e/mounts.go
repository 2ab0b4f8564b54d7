package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MountsUnder lists the host's mount points (/proc/self/mountinfo) that
// are dir or below it, in mount order. A mountinfo that cannot be read or
// parsed is an error, never an empty list: a leftover check must not pass
// on what it could not see.
func MountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("listing the mounts under %s: %w", dir, err)
	}
	ms, err := mountPointsUnder(b, dir)
	if err != nil {
		return nil, fmt.Errorf("listing the mounts under %s: %w", dir, err)
	}
	return ms, nil
}

// mountPointsUnder lists the mount points of mountinfo (proc(5)'s format)
// that are dir or below it.
func mountPointsUnder(mountinfo []byte, dir string) ([]string, error) {
	dir = strings.TrimSuffix(dir, "/")
	var found []string
	for i, line := range bytes.Split(mountinfo, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		// The mount point is the fifth field, before the optional
		// fields' " - " separator.
		fields := strings.Fields(string(line))
		if len(fields) < 5 || !strings.Contains(string(line), " - ") {
			return nil, fmt.Errorf("mountinfo line %d: %q: not a mount", i+1, line)
		}
		mp, err := unescapeOctal(fields[4])
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", i+1, err)
		}
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found, nil
}

// unescapeOctal undoes the kernel's escapes of space, tab, newline and
// backslash in a mountinfo path (\040, \011, \012, \134).
func unescapeOctal(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("%q: a cut escape", s)
		}
		n, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("%q: escape %q: %w", s, s[i:i+4], err)
		}
		b.WriteByte(byte(n))
		i += 3
	}
	return b.String(), nil
}
