package e2e

import (
	"bufio"
	"os"
	"strings"
)

// MountsUnder lists the host's mount points (/proc/self/mountinfo) that
// are dir or below it, in mount order; none when mountinfo cannot be read.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }() // read-only
	dir = strings.TrimSuffix(dir, "/")
	var found []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := strings.ReplaceAll(fields[4], `\040`, " ")
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found
}
