package procfs

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

func TestParseKB(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]uint64
	}{
		{"meminfo", "MemTotal:        1000 kB\nMemFree:  200 kB\nHugePages_Total:       0\n",
			map[string]uint64{"MemTotal": 1000 << 10, "MemFree": 200 << 10, "HugePages_Total": 0}},
		{"status", "Name:\tqemu\nVmRSS:\t  2048 kB\nThreads:\t7\nCpus_allowed_list:\t0-1\n",
			map[string]uint64{"VmRSS": 2048 << 10, "Threads": 7}},
		{"bad lines skipped", "bogus line\nNoValue:\nNeg: -1 kB\nOK: 3\n", map[string]uint64{"OK": 3}},
		{"last wins", "A: 1\nA: 2 kB\n", map[string]uint64{"A": 2 << 10}},
		{"empty", "", map[string]uint64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseKB([]byte(tt.in)); !maps.Equal(got, tt.want) {
				t.Errorf("ParseKB = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		max  int64
		want string
	}{
		{"whole", 64, "0123456789"},
		{"cut at the bound", 4, "0123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ReadFile(path, tc.max)
			if err != nil || string(b) != tc.want {
				t.Fatalf("ReadFile(%d) = %q, %v; want %q", tc.max, b, err, tc.want)
			}
		})
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing"), 64); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadFile of a missing file: %v, want not exist", err)
	}
}
