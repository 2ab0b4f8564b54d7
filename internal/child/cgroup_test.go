package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// testCgroup is a group in a real cgroup v2 mount, made and moved into
// with plain file writes.
type testCgroup struct {
	dir   string
	moved []int
}

func (c *testCgroup) OpenDir() (*os.File, error) {
	return os.OpenFile(c.dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
}

func (c *testCgroup) AddTree(pid int) error {
	c.moved = append(c.moved, pid)
	return os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// realV2Group makes a group in the host's cgroup v2 mount (the v2 root, or
// the controller-less one of a hybrid host), removed after the test.
func realV2Group(t *testing.T) *testCgroup {
	t.Helper()
	if os.Geteuid() == 0 {
		for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			if _, err := os.Stat(filepath.Join(m, "cgroup.controllers")); err != nil {
				continue
			}
			dir := filepath.Join(m, fmt.Sprintf("hull-child-test-%d", os.Getpid()))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := os.Remove(dir); err != nil {
					t.Errorf("removing the test cgroup: %v", err)
				}
			})
			return &testCgroup{dir: dir}
		}
	}
	const msg = "needs root and a cgroup v2 mount"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

// denyClone3 installs, on the calling thread, a seccomp filter that
// answers ENOSYS to clone3, as container runtimes' default profiles do.
func denyClone3() error {
	raw, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipFalse: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
	})
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return errno
	}
	runtime.KeepAlive(filter)
	return nil
}

// v2Cgroup reads the "0::" line of /proc/<pid>/cgroup.
func v2Cgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	return ""
}

func TestStartIn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func() error
		// moved: the child was moved after its start rather than born
		// in the group.
		moved bool
	}{
		{"born in the group", nil, false},
		{"moved where clone3 is refused", denyClone3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := realV2Group(t)
			defer noCloneIntoCgroup.Store(false)
			out := &TailBuffer{Max: 64}
			cmd := &exec.Cmd{Path: "/bin/sh", Args: []string{"sh", "-c", "echo started; exec sleep 60"}, Stdout: out}
			exited := make(chan struct{})
			if _, err := StartIn(cmd, tc.prepare, cg, func(*os.ProcessState, error) { close(exited) }); err != nil {
				t.Fatal(err)
			}
			stopped := false
			stop := func() {
				if !stopped {
					_ = cmd.Process.Kill()
					<-exited
					stopped = true
				}
			}
			defer stop()
			want := "/" + filepath.Base(cg.dir)
			if got := v2Cgroup(t, cmd.Process.Pid); got != want {
				t.Errorf("child in %q, want %q", got, want)
			}
			if got := len(cg.moved) > 0; got != tc.moved {
				t.Errorf("moved after start: %v, want %v", got, tc.moved)
			}
			if noCloneIntoCgroup.Load() != tc.moved {
				t.Errorf("CLONE_INTO_CGROUP marked unsupported: %v, want %v", noCloneIntoCgroup.Load(), tc.moved)
			}
			// The child's output reaches the buffer of the Cmd that ran.
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "started"); {
				if time.Now().After(deadline) {
					t.Fatalf("output %q lacks the child's", out.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestStartInFailedMove kills a child that cannot be placed, and reaps it.
func TestStartInFailedMove(t *testing.T) {
	noCloneIntoCgroup.Store(true)
	defer noCloneIntoCgroup.Store(false)
	cg := &testCgroup{dir: filepath.Join(t.TempDir(), "missing")}
	cmd := exec.Command("sleep", "60")
	exited := make(chan *os.ProcessState, 1)
	_, err := StartIn(cmd, nil, cg, func(ps *os.ProcessState, _ error) { exited <- ps })
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want the failed move", err)
	}
	if ps := <-exited; ps == nil || ps.Success() {
		t.Errorf("child not killed: %v", ps)
	}
}
