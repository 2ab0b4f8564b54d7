package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/podmetrics"
)

// TestListSandboxes lists a state root with one sandbox whose shim
// answers (this process stands for its VMM), one whose shim is gone and
// whose VMM no longer runs, and a directory without a record.
func TestListSandboxes(t *testing.T) {
	root := t.TempDir()
	self, err := child.Identify(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	write := func(dir, id string, p child.Process) string {
		d := filepath.Join(root, dir)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		rec := fmt.Sprintf(`{"id":%q,"vm_pid":%d,"vm_start_time":%d}`, id, p.PID, p.StartTime)
		if err := os.WriteFile(filepath.Join(d, "sandbox.json"), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	live := write("a", "pod-a@k8s.io", self)
	col := podmetrics.NewCollector(podmetrics.PodLabels{Sandbox: "pod-a"}, podmetrics.Source{})
	srv, err := podmetrics.Serve(live, col, func() podmetrics.Info {
		return podmetrics.Info{PodName: "web", PodNamespace: "default", VCPUs: 2, MemoryMiB: 512, Containers: []string{"pause", "app"}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	gone := self
	gone.StartTime++
	write("b", "pod-b@k8s.io", gone)
	if err := os.Mkdir(filepath.Join(root, "c"), 0o700); err != nil {
		t.Fatal(err)
	}

	got, err := listSandboxes(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %+v, want 2 sandboxes", got)
	}
	a, b := got[0], got[1]
	if a.ID != "pod-a@k8s.io" || a.PodName != "web" || a.VMMPID != os.Getpid() || a.HostRSSBytes == 0 || a.VCPUs != 2 || len(a.Containers) != 2 || a.Error != "" {
		t.Errorf("live sandbox: %+v", a)
	}
	if b.ID != "pod-b@k8s.io" || b.VMMPID != 0 || b.HostRSSBytes != 0 || b.Error == "" {
		t.Errorf("sandbox without VMM and shim: %+v", b)
	}
}
