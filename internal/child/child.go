// Package child starts the runtime's helper processes (QEMU, virtiofsd) so
// that they never outlive the runtime, keeps the tail of their output for
// error messages, and bounds the logs they (or the guest) write on disk
// (LogFile).
package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Start starts cmd in its own process group with SIGKILL as its
// parent-death signal, and reaps it in the background: exited runs with the
// outcome once the process has been waited for.
//
// The parent-death signal is sent when the thread that forked the child
// exits, not the process, and the Go runtime may end a thread whose
// goroutine was locked to it. So the child is forked from a goroutine locked
// to its thread, and that goroutine stays there, blocked in wait(2), until
// the child is reaped: the signal then fires only when the whole runtime
// dies, which is the point, and costs nothing because waiting holds a thread
// anyway.
func Start(cmd *exec.Cmd, exited func(*os.ProcessState, error)) error {
	return StartPrepared(cmd, nil, exited)
}

// StartPrepared is Start with prepare run first on the thread that forks
// the child, so that per-thread state it sets (a seccomp filter,
// no_new_privs) is inherited by the child and by nothing else: that thread
// is never handed back to the Go runtime, it exits once the child is
// reaped (or at once if prepare or the start fails). It is never the
// process's main thread, which the Go runtime does not end. A nil prepare
// is Start.
func StartPrepared(cmd *exec.Cmd, prepare func() error, exited func(*os.ProcessState, error)) error {
	_, err := StartIdentified(cmd, prepare, exited)
	return err
}

// StartIdentified is StartPrepared that also returns the child's identity
// (PID and start time), read before the child can have been reaped, so its
// PID cannot have been reused by then. A child that cannot be identified
// is killed (and still reaped, with exited) and its start is an error:
// only its identity lets a cleanup find it after the runtime crashed.
func StartIdentified(cmd *exec.Cmd, prepare func() error, exited func(*os.ProcessState, error)) (Process, error) {
	return StartIn(cmd, prepare, nil, exited)
}

// Cgroup is the cgroup a child is started in.
type Cgroup interface {
	// OpenDir opens the group's cgroup v2 directory for the kernel to
	// start the child in (CLONE_INTO_CGROUP); nil and no error when the
	// group has none (cgroup v1).
	OpenDir() (*os.File, error)
	// AddTree moves a started child, with its threads and children, into
	// the group.
	AddTree(pid int) error
}

// noCloneIntoCgroup is set once the kernel refused clone3 or its
// CLONE_INTO_CGROUP flag (before Linux 5.7, or a seccomp profile that
// answers ENOSYS to clone3, as container runtimes' defaults do): later
// children are moved after their start without trying again.
var noCloneIntoCgroup atomic.Bool

// BornIn tells whether StartIn would start a child in cg itself (cgroup
// v2, CLONE_INTO_CGROUP not refused so far) rather than move it there after
// its start. Kernel threads that a child creates for itself at start-up
// (vhost workers) follow it only when it was born in the group.
func BornIn(cg Cgroup) bool {
	if cg == nil || noCloneIntoCgroup.Load() {
		return false
	}
	d, err := cg.OpenDir()
	if err != nil || d == nil {
		return false
	}
	_ = d.Close()
	return true
}

// StartIn is StartIdentified with the child placed in cg (nil: left where
// the runtime is). On cgroup v2 the child is born in the group
// (CLONE_INTO_CGROUP), so everything it allocates, from its first page,
// is charged there; where the kernel cannot do that, and on cgroup v1, it
// is moved with its threads and children right after it started (what it
// allocated before then stays charged where the runtime is on v2; v1
// moves the charge with it when the group asks for that). A child that
// cannot be placed is killed (and still reaped, with exited) and its start
// is an error. cmd is a plain exec.Cmd (not from exec.CommandContext): a
// start that falls back to the move begins again from its exported fields.
func StartIn(cmd *exec.Cmd, prepare func() error, cg Cgroup, exited func(*os.ProcessState, error)) (Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Signals for the runtime's process group do not reach the child; its
	// owner decides when it ends.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	type outcome struct {
		p   Process
		err error
	}
	started := make(chan outcome, 1)
	var run func()
	run = func() {
		runtime.LockOSThread()
		if prepare != nil && unix.Gettid() == unix.Getpid() {
			// The Go runtime never ends the main thread (it parks a
			// goroutine's exit there for good), so it would keep what
			// prepare sets: start over on another thread. While this
			// goroutine holds the main thread the new one cannot get it.
			go run()
			runtime.UnlockOSThread()
			return
		}
		// A goroutine that ends locked takes its thread with it.
		unlock := func() {
			if prepare == nil {
				runtime.UnlockOSThread()
			}
		}
		if prepare != nil {
			if err := prepare(); err != nil {
				started <- outcome{err: err}
				return
			}
		}
		moveAfter, err := startIn(cmd, cg)
		if err != nil {
			unlock()
			started <- outcome{err: err}
			return
		}
		// Not waited for yet, the child keeps its PID even if it
		// already exited (a zombie still has its stat).
		p, err := Identify(cmd.Process.Pid)
		if err == nil && moveAfter {
			err = cg.AddTree(cmd.Process.Pid)
		}
		if err != nil {
			_ = cmd.Process.Kill()
		}
		started <- outcome{p, err}
		err = cmd.Wait()
		unlock()
		exited(cmd.ProcessState, err)
	}
	go run()
	o := <-started
	return o.p, o.err
}

// startIn starts cmd in cg's cgroup v2 directory when there is one and the
// kernel can; moveAfter reports that the child still has to be moved
// there.
func startIn(cmd *exec.Cmd, cg Cgroup) (moveAfter bool, err error) {
	if cg == nil {
		return false, cmd.Start()
	}
	if noCloneIntoCgroup.Load() {
		return true, cmd.Start()
	}
	dir, err := cg.OpenDir()
	if err != nil {
		return false, fmt.Errorf("opening the cgroup to start %s in: %w", cmd.Path, err)
	}
	if dir == nil {
		return true, cmd.Start()
	}
	defer func() { _ = dir.Close() }()
	attr := *cmd.SysProcAttr
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
	err = cmd.Start()
	if err == nil || (!errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL)) {
		return false, err
	}
	// clone3 or its flag is unknown here. A Cmd is not started twice:
	// start a fresh one with the same parts.
	noCloneIntoCgroup.Store(true)
	*cmd = exec.Cmd{
		Path:        cmd.Path,
		Args:        cmd.Args,
		Env:         cmd.Env,
		Dir:         cmd.Dir,
		Stdin:       cmd.Stdin,
		Stdout:      cmd.Stdout,
		Stderr:      cmd.Stderr,
		ExtraFiles:  cmd.ExtraFiles,
		SysProcAttr: &attr,
		WaitDelay:   cmd.WaitDelay,
	}
	return true, cmd.Start()
}

// TailBuffer keeps the last Max bytes written to it.
type TailBuffer struct {
	// Max is the number of bytes kept.
	Max int

	mu sync.Mutex
	// b is guarded by mu.
	b []byte
}

// Write keeps the end of what was written so far; it never fails.
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.Max:]...)
	}
	return len(p), nil
}

// String returns the bytes kept.
func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
