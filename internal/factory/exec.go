package factory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// WarmArg is the shim binary's first argument in warm mode.
const WarmArg = "warm"

// Descriptors of a warm shim: fd 3 holds /dev/null, kept in place for the
// pod's listening socket, which a shim server serves on fd 3; fd 4 is the
// lifeline.
const (
	WarmListenerFD = 3
	WarmLifelineFD = 4
)

// maxReadyRead bounds what the factory reads of a warm shim's lifeline.
const maxReadyRead = 64

// execStarter starts warm shims from the shim binary.
type execStarter struct {
	// binary is the shim binary; configPath its -config.
	binary, configPath string
}

// start starts `<shim> warm -id <id> -socket <socket> [-config <path>]`
// in a process group of its own, with no signal on the factory's death:
// once claimed it is a pod's shim and outlives the factory. Before that,
// the lifeline (a socket pair; the shim holds one end, the factory the
// other) tells it when the factory is gone. Its standard error is the
// factory's, so its log goes where the factory's does until it is
// claimed.
func (e execStarter) start(ctx context.Context, id, socket string) (*process, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("lifeline: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "lifeline"), os.NewFile(uintptr(pair[1]), "lifeline")
	defer func() { _ = theirs.Close() }()
	null, err := os.Open(os.DevNull)
	if err != nil {
		_ = ours.Close()
		return nil, err
	}
	defer func() { _ = null.Close() }()
	args := []string{WarmArg, "-id", id, "-socket", socket}
	if e.configPath != "" {
		args = append(args, "-config", e.configPath)
	}
	cmd := exec.Command(e.binary, args...) //nolint:gosec // G204: the shim binary the factory was configured with
	cmd.ExtraFiles = []*os.File{null, theirs}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = ours.Close()
		return nil, fmt.Errorf("starting %s: %w", e.binary, err)
	}
	ready := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	go func() {
		ready <- readReady(ours)
	}()
	return &process{pid: cmd.Process.Pid, ready: ready, exited: exited, release: sync.OnceFunc(func() { _ = ours.Close() }), kill: func() { _ = cmd.Process.Kill() }}, nil
}

// readReady reads a warm shim's ready message from the lifeline.
func readReady(r io.Reader) error {
	buf := make([]byte, maxReadyRead)
	n, err := io.ReadAtLeast(r, buf, len(readyMessage))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		if errors.Is(err, io.EOF) {
			return errors.New("warm shim closed its lifeline before it was ready")
		}
		return err
	}
	if got := string(buf[:n]); got != readyMessage {
		return fmt.Errorf("warm shim said %q, not ready", strings.TrimSpace(got))
	}
	return nil
}
