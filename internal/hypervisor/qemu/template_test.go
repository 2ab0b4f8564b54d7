package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func templateConfig(restore bool, mem hypervisor.TemplateMemory) hypervisor.Config {
	c := baseConfig()
	c.HotplugNICs = 1
	c.Template = &hypervisor.Template{Dir: "/var/lib/hull/templates/k1", Restore: restore, Memory: mem}
	return c
}

func TestArgsGoldenTemplate(t *testing.T) {
	withFS := func(c hypervisor.Config) hypervisor.Config {
		c.SharedMemory = true
		c.Filesystems = []hypervisor.FilesystemDevice{{Tag: "rootfs", SocketPath: "/run/hull/vm/pod-1/fs0.sock"}}
		return c
	}
	// A root image is mapped shared (and read-only) in a template and its
	// clones, so that x-ignore-shared leaves it out of the state.
	withRoot := func(c hypervisor.Config) hypervisor.Config {
		c.RootImage = &hypervisor.RootImage{Path: "/img/rootfs.erofs", Size: 2 << 20, FSType: "erofs"}
		return c
	}
	tests := []struct {
		name string
		cfg  hypervisor.Config
	}{
		{"q35-serial-template", templateConfig(false, "")},
		{"q35-serial-template-rootimage", withRoot(templateConfig(false, ""))},
		{"q35-serial-clone-rootimage", withFS(withRoot(templateConfig(true, hypervisor.TemplateMemoryPrivate)))},
		{"q35-serial-clone-private", withFS(templateConfig(true, hypervisor.TemplateMemoryPrivate))},
		{"q35-serial-clone-shared", templateConfig(true, hypervisor.TemplateMemoryShared)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(tc.cfg, Options{Accel: AccelTCG, TSCKHz: 2445432})
			if err != nil {
				t.Fatal(err)
			}
			if privateClone(&tc.cfg) {
				v.layout.ramFD = firstExtraFD // as Start sets it: the memfd of the RAM copy
			}
			args, err := v.Args()
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", tc.name+".argv"), argvText(args))
		})
	}
}

// TestTemplateArgsMatch: a clone's machine and devices are the template's,
// else QEMU refuses the state; only the RAM mapping, -incoming and the
// state directory may differ.
func TestTemplateArgsMatch(t *testing.T) {
	devices := func(c hypervisor.Config) []string {
		v, err := New(c, Options{Accel: AccelTCG, TSCKHz: 1})
		if err != nil {
			t.Fatal(err)
		}
		args, _ := v.Args()
		var out []string
		for i, a := range args {
			if i > 0 && args[i-1] == "-device" {
				out = append(out, a)
			}
		}
		return out
	}
	want := strings.Join(devices(templateConfig(false, "")), "\n")
	for _, mem := range []hypervisor.TemplateMemory{hypervisor.TemplateMemoryPrivate, hypervisor.TemplateMemoryShared} {
		if got := strings.Join(devices(templateConfig(true, mem)), "\n"); got != want {
			t.Errorf("%s clone devices differ from the template's:\n%s\nwant\n%s", mem, got, want)
		}
	}
}

func TestNewRejectsTemplate(t *testing.T) {
	fs := []hypervisor.FilesystemDevice{{Tag: "a", SocketPath: "/a.sock"}}
	tests := []struct {
		name  string
		edit  func(c *hypervisor.Config, o *Options)
		class error
	}{
		{"microvm", func(c *hypervisor.Config, o *Options) { o.Machine, c.HotplugNICs = MachineMicroVM, 0 }, errdefs.ErrNotImplemented},
		{"relative dir", func(c *hypervisor.Config, _ *Options) { c.Template.Dir = "templates/k1" }, errdefs.ErrInvalidArgument},
		{"unclean dir", func(c *hypervisor.Config, _ *Options) { c.Template.Dir = "/var/lib/hull/../k1" }, errdefs.ErrInvalidArgument},
		{"vsock", func(c *hypervisor.Config, _ *Options) {
			c.Agent = hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3, Port: 1024}
		}, errdefs.ErrInvalidArgument},
		{"unknown memory mode", func(c *hypervisor.Config, _ *Options) { c.Template.Memory = "ksm" }, errdefs.ErrInvalidArgument},
		{"template with virtio-fs", func(c *hypervisor.Config, _ *Options) { c.Filesystems = fs }, errdefs.ErrInvalidArgument},
		{"shared clone with virtio-fs", func(c *hypervisor.Config, _ *Options) {
			c.Template.Restore, c.Template.Memory, c.Filesystems = true, hypervisor.TemplateMemoryShared, fs
		}, errdefs.ErrInvalidArgument},
		{"shared clone with free page reporting", func(c *hypervisor.Config, o *Options) {
			c.Template.Restore, c.Template.Memory, o.FreePageReporting = true, hypervisor.TemplateMemoryShared, true
		}, errdefs.ErrInvalidArgument},
		{"clone with boot NICs", func(c *hypervisor.Config, _ *Options) {
			c.Template.Restore = true
			c.Networks = []hypervisor.NetworkDevice{{ID: "eth0", TapName: "tap0", MAC: "02:00:00:00:00:01"}}
		}, errdefs.ErrNotImplemented},
		{"two shares", func(c *hypervisor.Config, _ *Options) {
			c.Template.Restore = true
			c.Filesystems = append(fs, hypervisor.FilesystemDevice{Tag: "b", SocketPath: "/b.sock"})
		}, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := templateConfig(false, "")
			o := Options{Accel: AccelTCG, TSCKHz: 1}
			tc.edit(&c, &o)
			if _, err := New(c, o); !errors.Is(err, tc.class) {
				t.Errorf("New: %v, want class %v", err, tc.class)
			}
		})
	}
}

// fakeMigration answers the template commands of a QEMU: migration
// (query-migrate reports "active" once, then final), getfd, chardev and
// device_add; fail names the commands that fail.
type fakeMigration struct {
	mu    sync.Mutex
	final string
	polls int
	fail  map[string]bool
	log   []string
}

func (m *fakeMigration) answer(cmd string, raw json.RawMessage, id string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	reply := func(v any) []string {
		b, _ := json.Marshal(map[string]any{"return": v, "id": id})
		return []string{string(b)}
	}
	if cmd == "qmp_capabilities" {
		return reply(struct{}{})
	}
	if cmd != "query-migrate" {
		m.log = append(m.log, strings.TrimSpace(cmd+" "+string(raw)))
	}
	if m.fail[cmd] {
		b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": "GenericError", "desc": cmd + " failed as the test wants"}, "id": id})
		return []string{string(b)}
	}
	switch cmd {
	case "query-migrate":
		m.polls++
		if m.polls == 1 {
			return reply(map[string]any{"status": "active"})
		}
		r := map[string]any{"status": m.final}
		if m.final == "failed" {
			r["error-desc"] = "load of migration failed: Invalid argument"
		}
		return reply(r)
	case "getfd", "migrate-set-capabilities", "migrate-incoming", "migrate", "cont", "stop",
		"chardev-add", "chardev-remove", "device_add", "quit":
		return reply(struct{}{})
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": cmd}, "id": id})
	return []string{string(b)}
}

// templateVM returns a VM of cfg, with its template directory made in a
// temporary directory, that believes it runs, talking to m.
func templateVM(t *testing.T, cfg hypervisor.Config, m *fakeMigration) *VM {
	t.Helper()
	cfg.Template.Dir = t.TempDir()
	cfg.StateDir = t.TempDir()
	v, err := New(cfg, Options{Accel: AccelTCG, TSCKHz: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, fakeQMPArgs(t, m.answer), func() bool { return true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.close)
	v.state, v.qmp = stateRunning, q
	return v
}

func TestRestore(t *testing.T) {
	tests := []struct {
		name  string
		final string
		fail  []string
		class error
		log   string
		// used: the restore got to the virtio-fs share, whose daemon
		// serves one connection.
		used bool
	}{
		{name: "restore", final: "completed", log: "template-restore.qmp", used: true},
		{name: "state refused", final: "failed", class: errdefs.ErrUnknown, log: "template-restore-failed.qmp"},
		{name: "share refused", final: "completed", fail: []string{"device_add"}, class: errdefs.ErrUnknown, log: "template-restore-fs-refused.qmp", used: true},
		{name: "share chardev refused", final: "completed", fail: []string{"chardev-add"}, class: errdefs.ErrUnknown, used: true},
		{name: "capability refused", fail: []string{"migrate-set-capabilities"}, class: errdefs.ErrUnknown},
		{name: "cont refused", final: "completed", fail: []string{"cont"}, class: errdefs.ErrUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeMigration{final: tc.final, fail: map[string]bool{}}
			for _, f := range tc.fail {
				m.fail[f] = true
			}
			cfg := templateConfig(true, hypervisor.TemplateMemoryPrivate)
			cfg.SharedMemory = true
			cfg.Filesystems = []hypervisor.FilesystemDevice{{Tag: "rootfs", SocketPath: "/run/hull/fs0.sock"}}
			v := templateVM(t, cfg, m)
			if err := os.WriteFile(filepath.Join(v.cfg.Template.Dir, templateStateName), []byte("state"), 0o600); err != nil {
				t.Fatal(err)
			}
			used, err := v.restore(context.Background(), v.qmp, &restoreTimes{})
			if tc.class == nil && err != nil || tc.class != nil && !errors.Is(err, tc.class) {
				t.Fatalf("restore: %v, want class %v", err, tc.class)
			}
			if used != tc.used {
				t.Errorf("restore used the virtio-fs daemon: %v, want %v", used, tc.used)
			}
			if tc.log != "" {
				golden(t, filepath.Join("testdata", tc.log), strings.Join(m.log, "\n")+"\n")
			}
		})
	}
}

func TestRestoreNoState(t *testing.T) {
	v := templateVM(t, templateConfig(true, hypervisor.TemplateMemoryShared), &fakeMigration{final: "completed"})
	if _, err := v.restore(context.Background(), v.qmp, &restoreTimes{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restore without a state file: %v, want not exist", err)
	}
}

func TestSnapshot(t *testing.T) {
	tests := []struct {
		name string
		// reopened is whether the guest reopened its agent port.
		reopened bool
		final    string
		class    error
		log      string
	}{
		{name: "saved", reopened: true, final: "completed", log: "template-snapshot.qmp"},
		{name: "migration failed", reopened: true, final: "failed", class: errdefs.ErrUnknown},
		{name: "host still connected", final: "completed", class: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeMigration{final: tc.final, fail: map[string]bool{}}
			v := templateVM(t, templateConfig(false, ""), m)
			if tc.reopened {
				v.agentPortEvent(json.RawMessage(`{"id":"agent-port","open":true}`))
				v.agentPortEvent(json.RawMessage(`{"id":"agent-port","open":false}`))
				v.agentPortEvent(json.RawMessage(`{"id":"other","open":true}`))
				if v.agentReopened() {
					t.Fatal("a closed port counts as reopened")
				}
				v.agentPortEvent(json.RawMessage(`{"id":"agent-port","open":true}`))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := v.Snapshot(ctx)
			if tc.class == nil && err != nil || tc.class != nil && !errors.Is(err, tc.class) {
				t.Fatalf("snapshot: %v, want class %v", err, tc.class)
			}
			_, serr := os.Stat(filepath.Join(v.cfg.Template.Dir, templateStateName))
			if tc.class == nil && serr != nil || tc.class != nil && serr == nil {
				t.Errorf("state file: %v after snapshot error %v", serr, err)
			}
			if _, err := os.Stat(filepath.Join(v.cfg.Template.Dir, templateStateName+".tmp")); err == nil {
				t.Error("a temporary state file is left")
			}
			if v.state != stateStopped {
				t.Errorf("vm is %s after Snapshot, want stopped", v.state)
			}
			if tc.log != "" {
				golden(t, filepath.Join("testdata", tc.log), strings.Join(m.log, "\n")+"\n")
			}
		})
	}
}

// TestSnapshotBounded: a guest that never reopens its agent port does not
// hold a caller whose ctx has no deadline.
func TestSnapshotBounded(t *testing.T) {
	defer func(d time.Duration) { snapshotTimeout = d }(snapshotTimeout)
	snapshotTimeout = 100 * time.Millisecond
	m := &fakeMigration{final: "completed", fail: map[string]bool{}}
	v := templateVM(t, templateConfig(false, ""), m)
	done := make(chan error, 1)
	go func() { done <- v.Snapshot(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("snapshot: %v, want deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Snapshot still waits for the guest with no deadline")
	}
}

func TestSnapshotNotTemplate(t *testing.T) {
	for _, cfg := range []hypervisor.Config{baseConfig(), templateConfig(true, "")} {
		v, err := New(cfg, Options{Accel: AccelTCG, TSCKHz: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Snapshot(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("Snapshot of a non-template vm: %v, want failed precondition", err)
		}
	}
}

// TestTemplateBoot: TemplateBoot, which template keys hold, names the
// firmware and every kernel parameter that a template VM's argv gets from
// the driver, so that a driver booting templates otherwise changes the key.
func TestTemplateBoot(t *testing.T) {
	debug := templateConfig(false, "")
	debug.Debug = true
	root := templateConfig(false, "")
	root.Initrd = ""
	root.RootImage = &hypervisor.RootImage{Path: "/img/rootfs.erofs", Size: 2 << 20, FSType: "erofs"}
	root.MaxVCPUs, root.MaxMemoryMiB = 4, 2048
	for _, tc := range []struct {
		name string
		cfg  hypervisor.Config
		opts Options
	}{
		{"tcg", templateConfig(false, ""), Options{Accel: AccelTCG, TSCKHz: 2445432}},
		{"kvm-reclaim-seabios", templateConfig(false, ""), Options{Accel: AccelKVM, FreePageReporting: true, Firmware: FirmwareSeaBIOS}},
		{"debug-qboot", debug, Options{Accel: AccelTCG, TSCKHz: 1, Firmware: FirmwareQboot}},
		{"rootimage-hotplug", root, Options{Accel: AccelKVM}},
		{"clone", templateConfig(true, hypervisor.TemplateMemoryShared), Options{Accel: AccelTCG, TSCKHz: 2445432}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := argsOf(t, tc.cfg, tc.opts)
			bios, appendArg := "default", ""
			for i := 1; i < len(args); i++ {
				switch args[i-1] {
				case "-bios":
					bios = args[i]
				case "-append":
					appendArg = args[i]
				}
			}
			driverParams, ok := strings.CutSuffix(appendArg, " "+strings.Join(tc.cfg.KernelParams, " "))
			if !ok {
				t.Fatalf("-append %q does not end with the configured parameters %q", appendArg, tc.cfg.KernelParams)
			}
			want := "bios=" + bios + " append=" + driverParams
			if got := TemplateBoot(tc.opts, tc.cfg); got != want {
				t.Errorf("TemplateBoot = %q, the template's argv boots %q", got, want)
			}
		})
	}
}
