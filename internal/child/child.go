// Package child starts the runtime's helper processes (QEMU, virtiofsd) so
// that they never outlive the runtime, keeps the tail of their output for
// error messages, and bounds the logs they (or the guest) write on disk
// (LogFile).
package child

import (
	"os"
	"os/exec"
	"runtime"
	"sync"
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
		if err := cmd.Start(); err != nil {
			unlock()
			started <- outcome{err: err}
			return
		}
		// Not waited for yet, the child keeps its PID even if it
		// already exited (a zombie still has its stat).
		p, err := Identify(cmd.Process.Pid)
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
