package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

func TestCountCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint32
	}{
		{"0", 1}, {"0-3", 4}, {"0-3,6", 5}, {"0,2,4-5", 4}, {"", 0}, {"x", 0}, {"3-1", 0},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := countCPUList(tc.in); got != tc.want {
				t.Fatalf("countCPUList(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestMeminfo(t *testing.T) {
	for _, tc := range []struct {
		name         string
		in           string
		total, avail uint64
		err          bool
	}{
		{"normal", "MemTotal:        481232 kB\nMemFree:  1 kB\nMemAvailable:    446000 kB\n", 481232 << 10, 446000 << 10, false},
		{"no available", "MemTotal: 1024 kB\n", 1 << 20, 0, false},
		{"empty", "", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "meminfo")
			if err := os.WriteFile(p, []byte(tc.in), 0o644); err != nil {
				t.Fatal(err)
			}
			total, avail, err := meminfo(p)
			if (err != nil) != tc.err || total != tc.total || avail != tc.avail {
				t.Fatalf("meminfo = %d, %d, %v", total, avail, err)
			}
		})
	}
}

// TestAddEntropyRefuses covers the refusals of AddEntropy that come before
// the kernel is asked (the ioctls run in the VM tests: TestTemplateEntropy
// in integration).
func TestAddEntropyRefuses(t *testing.T) {
	tests := []struct {
		name     string
		initMode bool
		size     int
		class    error
	}{
		{"not pid 1", false, 32, errdefs.ErrFailedPrecondition},
		{"empty", true, 0, errdefs.ErrInvalidArgument},
		{"too short", true, minEntropyBytes - 1, errdefs.ErrInvalidArgument},
		{"too long", true, maxEntropyBytes + 1, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &systemService{a: &Agent{initMode: tc.initMode}}
			_, err := s.AddEntropy(context.Background(), &api.AddEntropyRequest{Data: make([]byte, tc.size)})
			if !errors.Is(err, tc.class) {
				t.Errorf("AddEntropy: %v, want class %v", err, tc.class)
			}
		})
	}
}
