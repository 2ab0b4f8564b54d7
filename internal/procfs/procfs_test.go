package procfs

import (
	"maps"
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
