package virtiofs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/hull-runtime/hull/internal/child"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Binaries are the places Start looks for virtiofsd when Config.Binary is
// empty, in order, before PATH.
var Binaries = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// Cache modes.
const (
	CacheAuto   = "auto"
	CacheNone   = "none"
	CacheAlways = "always"
)

// Sandbox modes.
const (
	SandboxNamespace = "namespace"
	SandboxChroot    = "chroot"
)

const (
	// startTimeout bounds the wait for the socket when ctx allows longer.
	startTimeout = 5 * time.Second
	// defaultStopTimeout is how long Stop waits after SIGTERM.
	defaultStopTimeout = 3 * time.Second
	// killWait bounds the wait for a SIGKILLed daemon to be reaped.
	killWait = 5 * time.Second
	// maxSocketPath is sun_path's size minus the terminating NUL.
	maxSocketPath = 107
)

// droppedCaps are the capabilities removed from the daemon's default set
// (-o modcaps): CAP_MKNOD (device nodes for the host's disks), CAP_FSETID
// (a write by a non-owner clears set-user-ID bits; chmod g+s by a
// non-member clears the set-group-ID bit) and CAP_SETFCAP (file
// capabilities through the security.capability xattr, should xattrs be
// enabled). CAP_SETUID and CAP_SETGID stay: the daemon switches its own
// credentials to the guest caller's to create files with the right owner.
const droppedCaps = "-mknod:-fsetid:-setfcap"

// Config says how to run one virtiofsd.
type Config struct {
	// Binary is the daemon; empty looks in Binaries, then PATH.
	Binary string
	// SocketPath is the vhost-user socket the daemon creates and listens on.
	SocketPath string
	// SharedDir is the directory the daemon serves.
	SharedDir string
	// Cache is CacheAuto (the default), CacheNone or CacheAlways.
	Cache string
	// Sandbox is SandboxNamespace (the default) or SandboxChroot.
	Sandbox string
	// ThreadPoolSize of the request handlers; zero keeps the daemon's
	// default.
	ThreadPoolSize int
	// Xattr enables extended attributes.
	Xattr bool
	// Syslog sends the daemon's log to syslog instead of stderr.
	Syslog bool
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// LogPath, when set, receives the daemon's stderr and stdout in a log
	// bounded at LogMax bytes plus one rotated part, <LogPath>.1
	// (child.LogFile); a new daemon starts it afresh. Its log lines can be
	// driven by the guest's requests, so they are bounded like the guest
	// console.
	LogPath string
	// LogMax is the bound of the log at LogPath; child.DefaultLogMax when
	// zero.
	LogMax int64
	// StopTimeout bounds the wait after SIGTERM in Stop before SIGKILL;
	// 3s when zero.
	StopTimeout time.Duration
	// Cgroup, when set, is the cgroup the daemon runs in, from its start
	// (see child.StartIn).
	Cgroup child.Cgroup
}

// Daemon is a running virtiofsd.
type Daemon struct {
	cfg  Config
	cmd  *exec.Cmd
	out  *child.TailBuffer
	done chan struct{}
	// logFile is closed once the daemon has been reaped.
	logFile *child.LogFile

	// started is the daemon's identity, set once by launch.
	started child.Process

	mu sync.Mutex
	// cfg's paths change in MoveDir, under mu; SocketPath reads them.
	// state is guarded by mu.
	state *os.ProcessState
	// waitErr is guarded by mu.
	waitErr error
}

// validate checks c and fills in defaults that need no host lookups.
func (c *Config) validate() error {
	inval := func(format string, args ...any) error {
		return fmt.Errorf("virtiofsd: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if c.Cache == "" {
		c.Cache = CacheAuto
	}
	if c.Sandbox == "" {
		c.Sandbox = SandboxNamespace
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = defaultStopTimeout
	}
	switch c.Cache {
	case CacheAuto, CacheNone, CacheAlways:
	default:
		return inval("cache mode %q: want auto, none or always", c.Cache)
	}
	switch c.Sandbox {
	case SandboxNamespace, SandboxChroot:
	default:
		return inval("sandbox %q: want namespace or chroot", c.Sandbox)
	}
	if !filepath.IsAbs(c.SocketPath) {
		return inval("socket path %q is not absolute", c.SocketPath)
	}
	if len(c.SocketPath) > maxSocketPath {
		return inval("socket path %q is longer than %d bytes", c.SocketPath, maxSocketPath)
	}
	if !filepath.IsAbs(c.SharedDir) {
		return inval("shared dir %q is not absolute", c.SharedDir)
	}
	if c.ThreadPoolSize < 0 {
		return inval("thread pool size %d", c.ThreadPoolSize)
	}
	if c.LogMax < 0 {
		return inval("log bound %d: want a positive size, or 0 for the default", c.LogMax)
	}
	return nil
}

// args returns the daemon's argv, with argv[0] the binary.
func (c *Config) args(bin string) []string {
	a := []string{bin,
		"--socket-path=" + c.SocketPath,
		"-o", "source=" + c.SharedDir,
		"-o", "cache=" + c.Cache,
		"-o", "sandbox=" + c.Sandbox,
		"-o", "modcaps=" + droppedCaps,
	}
	if c.Xattr {
		a = append(a, "-o", "xattr")
	}
	if c.ThreadPoolSize > 0 {
		a = append(a, "--thread-pool-size="+strconv.Itoa(c.ThreadPoolSize))
	}
	if c.Syslog {
		a = append(a, "--syslog")
	}
	// Foreground: the daemon must stay our child to be reaped and killed.
	a = append(a, "-f")
	return append(a, c.ExtraArgs...)
}

// lookBinary returns the daemon to run.
func lookBinary(bin string) (string, error) {
	if bin != "" {
		p, err := exec.LookPath(bin)
		if err != nil {
			return "", fmt.Errorf("virtiofsd %s: %w: %w", bin, err, errdefs.ErrNotFound)
		}
		return p, nil
	}
	for _, b := range Binaries {
		if st, err := os.Stat(b); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return b, nil
		}
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("virtiofsd not found in %s or PATH: %w", strings.Join(Binaries, ", "), errdefs.ErrNotFound)
}

// Start runs virtiofsd and returns once its socket listens. When the daemon
// dies first, the error carries the end of its stderr; when it does not
// listen within a few seconds (or ctx ends first), it is killed. A failed
// Start leaves no process and no socket.
func Start(ctx context.Context, cfg Config) (_ *Daemon, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	bin, err := lookBinary(cfg.Binary)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(cfg.SharedDir); err != nil {
		return nil, fmt.Errorf("virtiofsd shared dir: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("virtiofsd shared dir %s is not a directory: %w", cfg.SharedDir, errdefs.ErrInvalidArgument)
	}
	if err := os.Remove(cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket: %w", err)
	}

	d := &Daemon{cfg: cfg, out: &child.TailBuffer{Max: 8 << 10}, done: make(chan struct{})}
	var stderr io.Writer = d.out
	if cfg.LogPath != "" {
		f, err := child.OpenLog(cfg.LogPath, cfg.LogMax)
		if err != nil {
			return nil, fmt.Errorf("virtiofsd log: %w", err)
		}
		d.logFile = f
		stderr = io.MultiWriter(d.out, f)
	}
	filter, err := filterProgram()
	if err != nil {
		if d.logFile != nil {
			_ = d.logFile.Close()
		}
		return nil, err
	}
	args := cfg.args(bin)
	d.cmd = &exec.Cmd{
		Path:   bin,
		Args:   args,
		Dir:    "/",
		Stdout: stderr,
		Stderr: stderr,
		// The daemon's sandbox child shares its stderr; do not let one
		// that outlives the daemon hold Wait forever.
		WaitDelay: killWait,
	}
	logger := log.G(ctx).WithField("socket", cfg.SocketPath)
	logger.WithField("argv", strings.Join(args, " ")).Debug("starting virtiofsd")
	if err := d.launch(filter); err != nil {
		if d.logFile != nil {
			_ = d.logFile.Close()
		}
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	defer func() {
		if retErr != nil {
			_ = d.cmd.Process.Kill()
			select {
			case <-d.done:
			case <-time.After(killWait):
				logger.Warn("virtiofsd does not die")
			}
			_ = os.Remove(cfg.SocketPath)
		}
	}()

	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := d.waitListening(wctx); err != nil {
		return nil, err
	}
	logger.WithField("pid", d.cmd.Process.Pid).Debug("virtiofsd listening")
	return d, nil
}

// launch starts the daemon with child.StartIdentified (its own process group;
// killed by the kernel if the shim dies without Stop), with the seccomp
// filter installed on the forking thread (see seccomp.go), and records its
// identity (PID and start time) for a cleanup after a crash.
func (d *Daemon) launch(filter []bpf.RawInstruction) error {
	started, err := child.StartIn(d.cmd, func() error { return installFilter(filter) }, d.cfg.Cgroup, func(ps *os.ProcessState, err error) {
		d.mu.Lock()
		d.state, d.waitErr = ps, err
		d.mu.Unlock()
		if d.logFile != nil {
			_ = d.logFile.Close()
		}
		close(d.done)
	})
	if err != nil {
		return err
	}
	d.started = started
	return nil
}

// waitListening polls until the daemon's socket is in the listening state.
func (d *Daemon) waitListening(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := listening(d.cmd.Process.Pid, d.cfg.SocketPath)
		if ok {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("virtiofsd exited before listening (%s): %s: %w",
				d.exitString(), strings.TrimSpace(d.out.String()), errdefs.ErrUnavailable)
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return fmt.Errorf("virtiofsd not listening on %s: %w: %s", d.cfg.SocketPath, err, strings.TrimSpace(d.out.String()))
		case <-tick.C:
		}
	}
}

// listening reports whether /proc/<pid>/net/unix shows path in the
// listening state (__SO_ACCEPTCON in the flags column).
func listening(pid int, path string) (bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[7] != path {
			continue
		}
		flags, err := strconv.ParseUint(fields[3], 16, 32)
		if err == nil && flags&0x10000 != 0 {
			return true, nil
		}
	}
	return false, sc.Err()
}

// PID is the daemon's process ID.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Process is the daemon's identity, recorded when it started: what a
// cleanup after a crash may kill.
func (d *Daemon) Process() child.Process { return d.started }

// Done is closed when the daemon has exited and been reaped.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Output is the end of what the daemon wrote to stderr.
func (d *Daemon) Output() string { return d.out.String() }

// SocketPath is the daemon's vhost-user socket.
func (d *Daemon) SocketPath() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.SocketPath
}

// MoveDir runs rename, which renames the directory dir to newDir, with the
// daemon's log held (child.MoveLogs); when rename succeeds, the daemon's
// paths below dir (socket, log, shared directory) are then below newDir.
// The running daemon is not told: it serves the directory it opened, and
// its socket is already connected.
func (d *Daemon) MoveDir(dir, newDir string, rename func() error) error {
	if err := child.MoveLogs(dir, newDir, rename, d.logFile); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg.SocketPath = child.Rebase(d.cfg.SocketPath, dir, newDir)
	d.cfg.LogPath = child.Rebase(d.cfg.LogPath, dir, newDir)
	d.cfg.SharedDir = child.Rebase(d.cfg.SharedDir, dir, newDir)
	return nil
}

func (d *Daemon) exitString() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != nil {
		return d.state.String()
	}
	if d.waitErr != nil {
		return d.waitErr.Error()
	}
	return "running"
}

// Stop ends the daemon: SIGTERM, then SIGKILL after Config.StopTimeout or
// when ctx is done, waits until it is reaped, and removes the socket. It
// may be called more than once and after the daemon exited on its own (as
// it does when its VM disconnects).
func (d *Daemon) Stop(ctx context.Context) error {
	if !isClosed(d.done) {
		_ = d.cmd.Process.Signal(unix.SIGTERM)
		t := time.NewTimer(d.cfg.StopTimeout)
		defer t.Stop()
		select {
		case <-d.done:
		case <-t.C:
			log.G(ctx).WithField("pid", d.PID()).Warn("virtiofsd ignored SIGTERM; killing it")
		case <-ctx.Done():
		}
		if !isClosed(d.done) {
			_ = d.cmd.Process.Kill()
			select {
			case <-d.done:
			case <-time.After(killWait):
				return fmt.Errorf("virtiofsd pid %d did not die after SIGKILL", d.PID())
			}
		}
	}
	if err := os.Remove(d.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing virtiofsd socket: %w", err)
	}
	return nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
