// Package procfs reads the kernel's pseudo-files (/proc, cgroup files)
// within a bound, and parses the "Key: value [kB]" files of /proc
// (meminfo, <pid>/status, <pid>/smaps_rollup) and the fields of
// <pid>/stat; it also finds the
// processes holding a file open (/proc/<pid>/fd). The host reads its own
// processes' files with it and the agent the guest's: it imports nothing
// but the standard library.
package procfs

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
)

// ReadFile reads at most max bytes of the file at path: a kernel
// pseudo-file reports no size, and one that grows without bound (a
// process's or a cgroup's with many entries) must not make its reader
// grow with it.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return io.ReadAll(io.LimitReader(f, max))
}

// ParseKB reads "Key: value [kB]" lines into a map by key; values in kB
// become bytes. Lines that do not start with a key and an unsigned number
// are skipped; of a repeated key the last line wins.
func ParseKB(b []byte) map[string]uint64 {
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n <<= 10
		}
		m[k] = n
	}
	return m
}
