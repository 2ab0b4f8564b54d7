package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSysfs builds a devices/system tree: files maps paths below root to
// contents; a path ending in "/" is a directory.
func fakeSysfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		writeFake(t, root, p, content)
	}
	return root
}

func writeFake(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	if strings.HasSuffix(p, "/") {
		if err := os.MkdirAll(full, 0o755); err != nil {
			t.Error(err)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Error(err)
	}
	// Write to a temporary name first: the agent must never see half a file.
	if err := os.WriteFile(full+".tmp", []byte(content), 0o644); err != nil {
		t.Error(err)
	}
	if err := os.Rename(full+".tmp", full); err != nil {
		t.Error(err)
	}
}

// bootTree is a guest with 2 CPUs (cpu0 without an online file, as on x86)
// and 512 MiB in four 128 MiB blocks, plus the entries that are no CPU or
// block.
func bootTree() map[string]string {
	return map[string]string{
		"cpu/online":                 "0-1\n",
		"cpu/present":                "0-1\n",
		"cpu/possible":               "0-3\n",
		"cpu/cpufreq/":               "",
		"cpu/cpuidle/":               "",
		"cpu/cpu0/topology/core_id":  "0\n",
		"cpu/cpu1/online":            "1\n",
		"memory/block_size_bytes":    "8000000\n",
		"memory/auto_online_blocks":  "offline\n",
		"memory/memory0/state":       "online\n",
		"memory/memory1/state":       "online\n",
		"memory/memory2/state":       "online\n",
		"memory/memory3/state":       "online\n",
		"memory/memory3/valid_zones": "Normal\n",
		"memory/memory0x/state":      "offline\n",
		"memory/memory_tiering/":     "",
		"memory/power/":              "",
	}
}

// hotAdded is what ACPI hotplug of two CPUs and 256 MiB leaves: present
// but offline.
func hotAdded() map[string]string {
	return map[string]string{
		"cpu/present":           "0-3\n",
		"cpu/cpu2/online":       "0\n",
		"cpu/cpu3/online":       "0\n",
		"memory/memory32/state": "offline\n",
		"memory/memory33/state": "offline\n",
	}
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestOnlineResources(t *testing.T) {
	tests := []struct {
		name string
		tree map[string]string
		// later is added to the tree while the call waits.
		later            map[string]string
		cpus, memoryMiB  uint32
		limit            time.Duration
		wantCPUs, wantMB uint32
		// wantOnline are files that must read so afterwards.
		wantOnline map[string]string
		wantErr    string
	}{
		{
			name: "nothing to do", tree: bootTree(), cpus: 2, memoryMiB: 512, limit: time.Second,
			wantCPUs: 2, wantMB: 512,
		},
		{
			name: "zero waits for nothing", tree: bootTree(), limit: time.Second,
			wantCPUs: 2, wantMB: 512,
		},
		{
			name: "onlines hot-added cpus and blocks", tree: merge(bootTree(), hotAdded()),
			cpus: 4, memoryMiB: 768, limit: time.Second,
			wantCPUs: 4, wantMB: 768,
			wantOnline: map[string]string{
				"cpu/cpu2/online": "1", "cpu/cpu3/online": "1",
				"memory/memory32/state": "online", "memory/memory33/state": "online",
				"memory/memory0x/state": "offline",
			},
		},
		{
			name: "onlines more than asked", tree: merge(bootTree(), hotAdded()),
			cpus: 3, memoryMiB: 600, limit: time.Second,
			wantCPUs: 4, wantMB: 768,
		},
		{
			name: "waits for the devices to appear", tree: bootTree(), later: hotAdded(),
			cpus: 4, memoryMiB: 768, limit: 10 * time.Second,
			wantCPUs: 4, wantMB: 768,
		},
		{
			name: "a cpu directory before its files", tree: merge(bootTree(), map[string]string{"cpu/cpu2/": ""}),
			later: map[string]string{"cpu/cpu2/online": "0\n"},
			cpus:  3, limit: 10 * time.Second,
			wantCPUs: 3, wantMB: 512,
		},
		{
			name: "gives up", tree: merge(bootTree(), hotAdded()),
			cpus: 5, memoryMiB: 1024, limit: 200 * time.Millisecond,
			wantErr: "the guest has 4 of 5 CPUs and 768 of 1024 MiB online",
		},
		{
			name: "no memory hotplug in the kernel", tree: map[string]string{"cpu/online": "0\n", "cpu/cpu0/": ""},
			cpus: 1, memoryMiB: 128, limit: 200 * time.Millisecond,
			wantErr: "1 of 1 CPUs and 0 of 128 MiB",
		},
		{
			name: "bad block size", tree: merge(bootTree(), map[string]string{"memory/block_size_bytes": "big\n"}),
			limit:   time.Second,
			wantErr: `memory block size "big"`,
		},
		{
			name: "no cpu directory", tree: map[string]string{"memory/": ""},
			limit:   time.Second,
			wantErr: "no such file",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeSysfs(t, tc.tree)
			if tc.later != nil {
				done := make(chan struct{})
				t.Cleanup(func() { <-done })
				go func() {
					defer close(done)
					time.Sleep(150 * time.Millisecond)
					for p, c := range tc.later {
						writeFake(t, root, p, c)
					}
				}()
			}
			start := time.Now()
			o, err := onlineResources(context.Background(), hotplugTree{root: root}, tc.cpus, tc.memoryMiB, tc.limit)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %+v, %v; want an error with %q", o, err, tc.wantErr)
				}
				if strings.Contains(tc.wantErr, "of") && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("error %v is no deadline error", err)
				}
				if took := time.Since(start); took > tc.limit+time.Second {
					t.Errorf("gave up after %s, limit %s", took, tc.limit)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.cpus != tc.wantCPUs || o.memoryMiB != tc.wantMB {
				t.Errorf("got %d cpus, %d MiB; want %d, %d", o.cpus, o.memoryMiB, tc.wantCPUs, tc.wantMB)
			}
			for p, want := range tc.wantOnline {
				b, err := os.ReadFile(filepath.Join(root, p))
				if err != nil || strings.TrimSpace(string(b)) != want {
					t.Errorf("%s: %q %v, want %q", p, b, err, want)
				}
			}
		})
	}
}

func TestOnlineResourcesCancel(t *testing.T) {
	root := fakeSysfs(t, bootTree())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := onlineResources(ctx, hotplugTree{root: root}, 8, 0, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the context's error", err)
	}
}

func TestInCPUList(t *testing.T) {
	tests := []struct {
		list string
		id   int
		want bool
	}{
		{"0", 0, true}, {"0-3,6", 2, true}, {"0-3,6", 6, true}, {"0-3,6", 5, false}, {"", 0, false}, {"x,1", 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.list, func(t *testing.T) {
			if got := inCPUList(tc.list, tc.id); got != tc.want {
				t.Errorf("inCPUList(%q, %d) = %v", tc.list, tc.id, got)
			}
		})
	}
}

func TestWaitLimit(t *testing.T) {
	if got := waitLimit(context.Background()); got != onlineWaitLimit {
		t.Errorf("without a deadline: %s", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got := waitLimit(ctx); got > 4600*time.Millisecond || got < 4*time.Second {
		t.Errorf("with 5s left: %s, want about 4.5s", got)
	}
}
