package virtiofs

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/procfs"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// helperEnv makes the test binary act as a stand-in shim: it starts a
// daemon, prints its pid and waits to be killed.
const helperEnv = "HULL_VIRTIOFS_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		d, err := Start(context.Background(), Config{SocketPath: filepath.Join(dir, "vfs.sock"), SharedDir: dir})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(d.PID())
		select {}
	}
	os.Exit(m.Run())
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"defaults", Config{SocketPath: "/run/hull/sb/vfs.sock", SharedDir: "/run/hull/sb/shared"}},
		{"all", Config{
			SocketPath: "/run/hull/sb/vfs.sock", SharedDir: "/run/hull/sb/shared",
			Cache: CacheNone, Sandbox: SandboxChroot, ThreadPoolSize: 4, Xattr: true, Syslog: true,
			ExtraArgs: []string{"-o", "announce_submounts"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.validate(); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(tc.cfg.args("/usr/lib/qemu/virtiofsd"), "\n") + "\n"
			golden(t, filepath.Join("testdata", tc.name+".argv"), got)
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func TestValidate(t *testing.T) {
	long := "/" + strings.Repeat("s", maxSocketPath)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"relative socket", Config{SocketPath: "vfs.sock", SharedDir: "/x"}},
		{"long socket", Config{SocketPath: long, SharedDir: "/x"}},
		{"relative dir", Config{SocketPath: "/vfs.sock", SharedDir: "x"}},
		{"cache", Config{SocketPath: "/vfs.sock", SharedDir: "/x", Cache: "sometimes"}},
		{"sandbox", Config{SocketPath: "/vfs.sock", SharedDir: "/x", Sandbox: "none"}},
		{"threads", Config{SocketPath: "/vfs.sock", SharedDir: "/x", ThreadPoolSize: -1}},
		{"log bound", Config{SocketPath: "/vfs.sock", SharedDir: "/x", LogMax: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(context.Background(), tc.cfg)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want an invalid-argument error", err)
			}
		})
	}
}

// requireDaemon returns virtiofsd, failing when it or root is missing and
// CI is set, skipping otherwise.
func requireDaemon(t *testing.T) string {
	t.Helper()
	bin, err := lookBinary("")
	var missing []string
	if err != nil {
		missing = append(missing, "virtiofsd (apt-get install qemu-system-common)")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (for -o sandbox=namespace)")
	}
	if len(missing) > 0 {
		msg := "test needs " + strings.Join(missing, ", ")
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (required when CI is set)")
		}
		t.Skip(msg)
	}
	return bin
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f, err := procfs.StatFields(b)
	return err != nil || f[0] != "Z"
}

func TestStartStop(t *testing.T) {
	requireDaemon(t)
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "virtiofsd.log")
	ctx := context.Background()
	d, err := Start(ctx, Config{SocketPath: filepath.Join(dir, "vfs.sock"), SharedDir: shared, LogPath: logPath})
	if err != nil {
		t.Fatal(err)
	}
	if !alive(d.PID()) {
		t.Fatalf("pid %d not running", d.PID())
	}
	if st, err := os.Stat(d.SocketPath()); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket: %v %v", st, err)
	}
	for i := 0; i < 2; i++ {
		if err := d.Stop(ctx); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
	}
	if alive(d.PID()) {
		t.Errorf("pid %d still running", d.PID())
	}
	if _, err := os.Stat(d.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "Waiting for vhost-user socket") {
		t.Errorf("log file lacks the daemon's output: %q", b)
	}
}

// TestLogBounded runs a stand-in daemon that writes far more than the
// log's bound to stderr and dies: the log and its rotated part stay within
// the bound and hold the end of the output.
func TestLogBounded(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "virtiofsd")
	script := "#!/bin/sh\ni=0\nwhile [ $i -lt 5000 ]; do echo \"flood line $i\" >&2; i=$((i+1)); done\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "virtiofsd.log")
	const bound = 4096
	_, err := Start(context.Background(), Config{
		Binary: bin, SocketPath: filepath.Join(dir, "vfs.sock"), SharedDir: dir,
		LogPath: logPath, LogMax: bound,
	})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("got %v, want the stand-in's early exit", err)
	}
	for _, f := range []string{logPath, logPath + ".1"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > bound {
			t.Errorf("%s has %d bytes, bound %d", f, st.Size(), bound)
		}
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "flood line 4999\n") {
		t.Errorf("log does not end with the last line: ...%q", b[max(0, len(b)-40):])
	}
}

func TestEarlyDeath(t *testing.T) {
	requireDaemon(t)
	dir := t.TempDir()
	_, err := Start(context.Background(), Config{
		SocketPath: filepath.Join(dir, "vfs.sock"), SharedDir: dir,
		ExtraArgs: []string{"-o", "no_such_option"},
	})
	if err == nil {
		t.Fatal("start succeeded with a bad option")
	}
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "no_such_option") {
		t.Errorf("got %v, want an unavailable error quoting the daemon", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vfs.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestDiesWithShim kills a process that started a daemon and checks that
// the daemon dies too.
func TestDiesWithShim(t *testing.T) {
	requireDaemon(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, _ := out.Read(buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q", buf[:n])
	}
	if !alive(pid) {
		t.Fatalf("daemon %d not running", pid)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("daemon %d survived its shim", pid)
	}
}
