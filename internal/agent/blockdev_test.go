package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestFindDisk(t *testing.T) {
	disk := func(t *testing.T, root, name, serial string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "" {
			if err := os.WriteFile(filepath.Join(root, name, "serial"), []byte(serial+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name string
		// disks are name, serial pairs present from the start; late is one
		// that appears after 100 ms.
		disks [][2]string
		late  [2]string
		want  string
		class error
	}{
		{name: "found", disks: [][2]string{{"vda", "other"}, {"vdb", "hullroot1"}}, want: "/dev/vdb"},
		{name: "appears later", disks: [][2]string{{"vda", "other"}}, late: [2]string{"vdc", "hullroot1"}, want: "/dev/vdc"},
		{name: "never appears: bounded", disks: [][2]string{{"vda", "other"}}, class: errdefs.ErrNotFound},
		{name: "not a virtio disk name", disks: [][2]string{{"loop0", "hullroot1"}, {"sda", "hullroot1"}}, class: errdefs.ErrNotFound},
		{name: "serial twice", disks: [][2]string{{"vda", "hullroot1"}, {"vdb", "hullroot1"}}, class: errdefs.ErrFailedPrecondition},
		{name: "prefix is no match", disks: [][2]string{{"vda", "hullroot10"}}, class: errdefs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range tc.disks {
				disk(t, root, d[0], d[1])
			}
			if tc.late[0] != "" {
				go func() {
					time.Sleep(100 * time.Millisecond)
					_ = os.MkdirAll(filepath.Join(root, tc.late[0]), 0o755)
					_ = os.WriteFile(filepath.Join(root, tc.late[0], "serial"), []byte(tc.late[1]), 0o644)
				}()
			}
			start := time.Now()
			got, err := findDisk(context.Background(), root, "hullroot1", time.Second)
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("got %q, %v, want class %v", got, err, tc.class)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("took %s for a 1 s bound", d)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v, want %q", got, err, tc.want)
			}
		})
	}
}

func TestMountDisk(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "vda"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "vda", "serial"), []byte("hullroot1"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		// errs are what the mount calls return, in turn; nil after them.
		errs  []error
		calls int
		class error
	}{
		{name: "at once", calls: 1},
		{name: "listed before it opens", errs: []error{unix.ENXIO, unix.ENOENT}, calls: 3},
		{name: "other error ends it", errs: []error{unix.EINVAL}, calls: 1, class: unix.EINVAL},
		{name: "never opens: bounded", errs: slices.Repeat([]error{unix.ENXIO}, 1000), class: unix.ENXIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			dev, err := mountDisk(context.Background(), root, "hullroot1", 300*time.Millisecond, func(dev string) error {
				calls++
				if calls <= len(tc.errs) {
					return tc.errs[calls-1]
				}
				return nil
			})
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("got %q, %v, want class %v", dev, err, tc.class)
				}
			} else if err != nil || dev != "/dev/vda" {
				t.Fatalf("got %q, %v", dev, err)
			}
			if tc.calls != 0 && calls != tc.calls {
				t.Errorf("%d mount calls, want %d", calls, tc.calls)
			}
		})
	}
}
