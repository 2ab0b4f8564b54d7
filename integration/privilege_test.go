package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// privResult is a "r-<name>:<status>" line a console script printed (the
// terminal's echo of the input shows "$?" instead of a number).
var privResult = regexp.MustCompile(`(?m)^r-([a-z0-9-]+):(\d+)\r?$`)

// TestGuestRootCannotPlantPrivilegedFiles is the guest's root, in the VM
// (the debug console, outside the container), trying to leave a device node
// or a set-user-ID or set-group-ID file on the host through virtio-fs, in a
// read-write bind volume and in the container's root: every attempt is
// refused and the host paths show none, while ordinary writes and modes
// work.
func TestGuestRootCannotPlantPrivilegedFiles(t *testing.T) {
	c := containerConfig(t)
	c.Image.AssetsDir = debugImage(t)
	c.Agent.DebugConsole = true
	cfgPath := writeHullConfig(t, c)
	bundle, spec := busyboxBundle(t, "sleep", "600")
	vol := filepath.Join(t.TempDir(), "privvol")
	if err := os.Mkdir(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
	writeSpec(t, bundle, spec)
	const id = "run-priv"

	_, done, runErr := startHullRun(t, withTimeout(t, 3*time.Minute), cfgPath, bundle, id)
	waitConsole(t, c.Runtime.StateDir, cfgPath, id, runErr)

	// The same attempts in the volume and in the container's root.
	dirs := map[string]string{
		"vol":  "$(ls -d /run/hull/shared/" + id + "/volumes/*-privvol)",
		"root": "/run/hull/shared/" + id + "/rootfs/tmp",
	}
	hostDirs := map[string]string{"vol": vol, "root": filepath.Join(bundle, "rootfs", "tmp")}
	for _, where := range []string{"vol", "root"} {
		script := fmt.Sprintf(`cd %s && echo r-cd:$?
mknod blk b 8 0; echo r-mknod-blk:$?
mknod chr c 1 3; echo r-mknod-chr:$?
cat /proc/$$/exe > shell; echo r-copy:$?
chmod 0755 shell; echo r-chmod-0755:$?
chmod 4755 shell; echo r-chmod-4755:$?
chmod g+s shell; echo r-chmod-gs:$?
echo data > plain; echo r-write:$?
chmod 0644 plain; echo r-chmod-0644:$?
mkfifo fifo; echo r-mkfifo:$?
`, dirs[where])
		out, stderr, code := hullExec(t, cfgPath, id, strings.NewReader(script))
		if code != 0 {
			t.Fatalf("%s: hull exec: status %d, stderr %q, output %q", where, code, stderr, out)
		}
		got := map[string]string{}
		for _, m := range privResult.FindAllStringSubmatch(out, -1) {
			got[m[1]] = m[2]
		}
		t.Logf("%s: guest results %v", where, got)
		for step, wantOK := range map[string]bool{
			"cd": true, "copy": true, "chmod-0755": true, "write": true, "chmod-0644": true, "mkfifo": true,
			"mknod-blk": false, "mknod-chr": false, "chmod-4755": false, "chmod-gs": false,
		} {
			status, ok := got[step]
			switch {
			case !ok:
				t.Errorf("%s: no result for %s in %q", where, step, out)
			case wantOK && status != "0":
				t.Errorf("%s: %s failed with status %s in the guest", where, step, status)
			case !wantOK && status == "0":
				t.Errorf("%s: %s succeeded in the guest", where, step)
			}
		}

		host := hostDirs[where]
		for _, name := range []string{"blk", "chr"} {
			if st, err := os.Lstat(filepath.Join(host, name)); err == nil {
				t.Errorf("%s: %s is on the host with mode %v", where, name, st.Mode())
			}
		}
		for name, want := range map[string]os.FileMode{"shell": 0o755, "plain": 0o644, "fifo": os.ModeNamedPipe} {
			st, err := os.Lstat(filepath.Join(host, name))
			if err != nil {
				t.Errorf("%s: %s on the host: %v", where, name, err)
				continue
			}
			if st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
				t.Errorf("%s: %s is on the host with mode %v", where, name, st.Mode())
			}
			if want.Type() != st.Mode().Type() || (want.Perm() != 0 && st.Mode().Perm() != want.Perm()) {
				t.Errorf("%s: %s has mode %v on the host, want %v", where, name, st.Mode(), want)
			}
		}
	}

	if _, stderr, code := hullExec(t, cfgPath, id, strings.NewReader("kill -KILL $(pidof sleep)\n")); code != 0 {
		t.Fatalf("hull exec kill: status %d, stderr %q", code, stderr)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("hull run did not end after its container was killed; stderr %s", runErr.String())
	}
}

// startHullRun starts `hull run` of bundle as the sandbox id, with its
// standard error in runErr; done is closed when it exited. A run still
// going when the test ends is stopped as a user would stop it (SIGINT,
// then SIGKILL after 30 seconds).
func startHullRun(t *testing.T, ctx context.Context, cfgPath, bundle, id string) (run *exec.Cmd, done <-chan struct{}, runErr *e2e.SyncBuffer) {
	t.Helper()
	run = exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "run", "--bundle", bundle, "--id", id)
	runErr = &e2e.SyncBuffer{}
	run.Stderr = runErr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = run.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = run.Process.Signal(syscall.SIGINT)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = run.Process.Kill()
				<-exited
			}
		}
	})
	return run, exited, runErr
}

// waitConsole waits until the debug console of hull run's sandbox id
// serves and shows the container's sleep 600.
func waitConsole(t *testing.T, stateDir, cfgPath, id string, runErr *e2e.SyncBuffer) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		dir, _, err := sandbox.Find(stateDir, id)
		if err == nil {
			if _, err := os.Stat(filepath.Join(dir, sandbox.ConsoleSocketName)); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no console socket for hull run's sandbox; hull run: %s", runErr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		out, stderr, code := hullExec(t, cfgPath, id, strings.NewReader("ps\n"))
		if code != 0 {
			t.Fatalf("hull exec: status %d, stderr %q, output %q", code, stderr, out)
		}
		if strings.Contains(out, "sleep 600") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's sleep 600 never showed in the VM: %q", out)
		}
	}
}

// TestQEMURunsAsItsOwnUser boots two VMs with hypervisor.qemu.run_as_uid_base
// set: each QEMU runs as a user and group of its own without capabilities,
// under its seccomp sandbox, and the VM still hot-plugs a vCPU and memory
// (with virtio-fs mounted, whose daemon learns the new memory through QEMU)
// and stops; no process of those IDs is left.
func TestQEMURunsAsItsOwnUser(t *testing.T) {
	const base = 1<<31 - 1000
	c := containerConfig(t)
	c.Hypervisor.QEMU.Machine = "q35"
	c.Hypervisor.QEMU.RunAsUIDBase, c.Hypervisor.QEMU.RunAsUIDCount = base, 8
	c.Hypervisor.VCPUs, c.Hypervisor.MemoryMiB = 1, 512
	c.Hypervisor.MaxVCPUs, c.Hypervisor.MaxMemoryMiB = 2, 1024
	sbs := []*sandbox.Sandbox{startSandbox(t, c, "runas-a"), startSandbox(t, c, "runas-b")}

	uids := map[string]bool{}
	for _, id := range []string{"runas-a", "runas-b"} {
		b, err := os.ReadFile(filepath.Join(sandbox.StateDir(c.Runtime.StateDir, id), "qemu.pid"))
		if err != nil {
			t.Fatal(err)
		}
		status, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(b)), "status"))
		if err != nil {
			t.Fatal(err)
		}
		f := procStatus(string(status))
		uid := strings.Fields(f["Uid"])
		t.Logf("%s: Uid %s, Gid %s, Groups %s, CapEff %s, Seccomp %s", id, f["Uid"], f["Gid"], f["Groups"], f["CapEff"], f["Seccomp"])
		if len(uid) != 4 || uid[0] != uid[1] || uid[0] != uid[2] || uid[0] != uid[3] {
			t.Fatalf("%s: QEMU's Uid line %q: want four equal IDs", id, f["Uid"])
		}
		if n, _ := strconv.Atoi(uid[0]); n < base || n >= base+8 {
			t.Errorf("%s: QEMU runs as %d, outside %d+8", id, n, base)
		}
		if f["Gid"] != f["Uid"] || f["Groups"] != uid[0] {
			t.Errorf("%s: QEMU's Gid %q, Groups %q; want the user ID %s alone", id, f["Gid"], f["Groups"], uid[0])
		}
		if f["CapEff"] != "0000000000000000" || f["CapPrm"] != "0000000000000000" {
			t.Errorf("%s: QEMU has capabilities: effective %s, permitted %s", id, f["CapEff"], f["CapPrm"])
		}
		if f["Seccomp"] != "2" || f["NoNewPrivs"] != "1" {
			t.Errorf("%s: QEMU's Seccomp %q, NoNewPrivs %q; want 2 and 1", id, f["Seccomp"], f["NoNewPrivs"])
		}
		if uids[uid[0]] {
			t.Errorf("two VMs run as %s", uid[0])
		}
		uids[uid[0]] = true
	}

	sb := sbs[0]
	before := guestDetails(t, sb)
	if err := sb.Resize(withTimeout(t, 2*time.Minute), 2, 768); err != nil {
		t.Fatalf("resize: %v", err)
	}
	after := guestDetails(t, sb)
	if after.GetCpus() != 2 || after.GetMemoryTotalBytes() <= before.GetMemoryTotalBytes() {
		t.Errorf("after the resize the guest has %d cpus and MemTotal %d MiB (was %d MiB)", after.GetCpus(),
			after.GetMemoryTotalBytes()>>20, before.GetMemoryTotalBytes()>>20)
	}
	for _, sb := range sbs {
		if err := sb.Stop(withTimeout(t, time.Minute)); err != nil {
			t.Errorf("stop: %v", err)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		if uid := strings.Fields(procStatus(string(status))["Uid"]); len(uid) > 0 && uids[uid[0]] {
			t.Errorf("process %s of uid %s is left after stop", e.Name(), uid[0])
		}
	}
}

// procStatus maps the fields of /proc/<pid>/status to their values.
func procStatus(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}
