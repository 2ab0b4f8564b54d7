package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/modlist"
)

// mount is one file system PID 1 mounts.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var initMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// writableDirs are the directories PID 1 makes writable when its root is
// read-only (a rootfs image, mounted ro with DAX); /run and /tmp are tmpfs
// anyway. Each gets a tmpfs holding a copy of the image's files there
// (/etc has the module list; the agent writes resolv.conf into it). The
// image has the mount points.
var writableDirs = []string{"/etc", "/var"}

// writableStaging is where a writable copy is assembled before it is
// moved over its directory.
const writableStaging = "/run/.hull-writable"

var initSymlinks = []struct{ target, link string }{
	{"/proc/self/fd", "/dev/fd"},
	{"/proc/self/fd/0", "/dev/stdin"},
	{"/proc/self/fd/1", "/dev/stdout"},
	{"/proc/self/fd/2", "/dev/stderr"},
	{"pts/ptmx", "/dev/ptmx"},
}

// setupGuest mounts the pseudo file systems and creates the standard
// device links. It goes on past errors and returns them as warnings.
func setupGuest() []string {
	var warnings []string
	for _, m := range initMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil { //nolint:gosec // G301: the guest's /proc, /sys, /dev/pts... get the standard 0755
			warnings = append(warnings, fmt.Sprintf("creating %s: %v", m.target, err))
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			warnings = append(warnings, fmt.Sprintf("mounting %s on %s: %v", m.fstype, m.target, err))
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		warnings = append(warnings, fmt.Sprintf("statfs /: %v", err))
	} else if st.Flags&unix.ST_RDONLY != 0 {
		for _, d := range writableDirs {
			if err := makeWritable(d); err != nil {
				warnings = append(warnings, fmt.Sprintf("making %s writable on the read-only root: %v", d, err))
			}
		}
	}
	for _, s := range initSymlinks {
		if cur, err := os.Readlink(s.link); err == nil && cur == s.target {
			continue
		}
		_ = os.Remove(s.link) // devtmpfs has a /dev/ptmx node of its own
		if err := os.Symlink(s.target, s.link); err != nil {
			warnings = append(warnings, fmt.Sprintf("linking %s: %v", s.link, err))
		}
	}
	return warnings
}

// makeWritable puts a tmpfs with a copy of dir's files over dir: the tmpfs
// is mounted at writableStaging, filled, and moved onto dir.
func makeWritable(dir string) error {
	if err := os.MkdirAll(writableStaging, 0o700); err != nil {
		return err
	}
	defer func() { _ = os.Remove(writableStaging) }()
	if err := unix.Mount("tmpfs", writableStaging, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mounting tmpfs: %w", err)
	}
	if err := os.CopyFS(writableStaging, os.DirFS(dir)); err != nil {
		_ = unix.Unmount(writableStaging, unix.MNT_DETACH)
		return fmt.Errorf("copying %s: %w", dir, err)
	}
	if err := unix.Mount(writableStaging, dir, "", unix.MS_MOVE, ""); err != nil {
		_ = unix.Unmount(writableStaging, unix.MNT_DETACH)
		return fmt.Errorf("moving tmpfs onto %s: %w", dir, err)
	}
	return nil
}

// RunInit is the agent as PID 1 of a VM. It never returns: when the agent
// is told to shut down or meets a fatal error it powers the VM off, because
// PID 1 exiting would panic the kernel.
func RunInit() {
	start := uptime()
	console := io.Writer(os.Stderr)
	ring := newLogRing(ringLines, ringBytes)
	logger := newLogger(console, ring, logrus.InfoLevel)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))
	defer func() {
		if r := recover(); r != nil {
			log.G(ctx).Errorf("agent panic: %v\n%s", r, debug.Stack())
			powerOff(ctx)
		}
	}()

	var warnings []string
	// Before anything is mounted: the mounts then land in the moved root.
	if err := moveRoot(); err != nil {
		warnings = append(warnings, fmt.Sprintf("moving the root off the initramfs (containers cannot pivot_root): %v", err))
	}
	warnings = append(warnings, setupGuest()...)
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("reading /proc/cmdline: %v", err))
	}
	cfg, cw := parseCmdline(string(cmdline))
	logger.SetLevel(cfg.LogLevel)
	warnings = append(warnings, cw...)

	a, err := newAgent(true, cfg.Transport, ring)
	if err != nil {
		fatal(ctx, err)
	}
	a.agentStart = start
	if cfg.Tracing {
		a.tracing = newGuestTracing()
	}
	for _, w := range warnings {
		a.addWarning(ctx, w)
	}
	if cfg.DebugConsole {
		a.debugShell = channel.DebugShellPath
		log.G(ctx).WithField("shell", a.debugShell).Info("debug console enabled")
	}
	if testHooks.start != nil {
		testHooks.start(ctx, a, string(cmdline))
	}
	go a.reaper.run(ctx)
	fatal(ctx, a.run(ctx, cfg, string(cmdline))) // run returns only on a fatal error
}

// fatal logs err and powers off.
func fatal(ctx context.Context, err error) {
	log.G(ctx).WithError(err).Error("agent cannot go on; powering off")
	powerOff(ctx)
}

// run loads the transport's modules, serves, loads the other modules (then
// sets the free page reporting order of the kernel command line, for the
// balloon module among them), and returns only on a fatal error; a
// Shutdown request powers off from here.
func (a *Agent) run(ctx context.Context, cfg bootConfig, cmdline string) error {
	list, err := modlist.Read(modlist.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.addWarning(ctx, fmt.Sprintf("module list: %v", err))
	}
	if list == nil {
		list = &modlist.List{}
	}
	var first, rest []modlist.Module
	if len(list.Modules) > 0 { // a kernel with virtio built in needs no bus
		first, rest = splitModules(list.Modules, cfg.Transport.Kind, detectBus("/sys"))
	}
	fr := loadModules(ctx, first, loadModule)
	a.recordModules(ctx, list, fr)
	if len(fr.failed) > 0 {
		return fmt.Errorf("loading the modules of transport %s: %w", cfg.Transport, errors.Join(mapValues(fr.failed)...))
	}

	go func() { _ = a.rpc.Serve(ctx, a.rpcListener) }()
	errc := make(chan error, 1)
	go func() {
		defer a.recoverPanic(ctx, "transport")
		errc <- a.serveTransport(ctx, cfg.Transport)
	}()

	go func() {
		defer a.recoverPanic(ctx, "modules")
		start := time.Now()
		storage, other := splitStorageModules(rest)
		sr := loadModules(ctx, storage, loadModule)
		a.recordModules(ctx, list, sr)
		a.setStorageReady()
		rr := loadModules(ctx, other, loadModule)
		a.recordModules(ctx, list, rr)
		if err := applyReportingOrder(ctx, "/sys", cmdline); err != nil {
			a.addWarning(ctx, err.Error())
		}
		a.mu.Lock()
		a.status = api.HealthResponse_STATUS_SERVING
		a.mu.Unlock()
		a.setServing()
		log.G(ctx).WithFields(log.Fields{
			"modules": len(sr.loaded) + len(rr.loaded), "failed": len(sr.failed) + len(rr.failed), "took": time.Since(start),
		}).Debug("modules loaded")
	}()

	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("transport stopped serving")
		}
		return err
	case grace := <-a.shutdown:
		log.G(ctx).WithField("grace", grace).Info("shutdown requested")
		// Let the reply leave before anything stops.
		time.Sleep(100 * time.Millisecond)
		// A hung-up debug shell exits on SIGHUP; an interactive shell
		// ignores the SIGTERM of terminateAll and would hold it for the
		// whole grace. terminateAll kills whatever is left.
		a.consoles.endAll(ctx, 0)
		terminateAll(ctx, grace)
		powerOff(ctx)
		return nil
	}
}

// serveTransport serves on the transport named on the kernel command line.
func (a *Agent) serveTransport(ctx context.Context, t channel.Transport) error {
	switch t.Kind {
	case channel.TransportSerial:
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		path, err := findPort(fctx, "/sys", "/dev", t.PortName)
		cancel()
		if err != nil {
			return err
		}
		return a.serveSerial(ctx, path)
	case channel.TransportVsock:
		return a.serveVsock(ctx, t.Port)
	}
	return fmt.Errorf("transport %s: unknown", t)
}

// recordModules adds the outcome of a load to the agent's state.
func (a *Agent) recordModules(ctx context.Context, all *modlist.List, r moduleResult) {
	for _, err := range r.failed {
		a.addWarning(ctx, err.Error())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.modules = append(a.modules, r.loaded...)
	a.features = features(all, a.modules)
}

func mapValues(m map[string]error) []error {
	out := make([]error, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// terminateAll asks every other process to stop, waits up to grace for them
// to go, and kills what is left. Only for PID 1: kill(-1) reaches everything.
func terminateAll(ctx context.Context, grace time.Duration) {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && otherProcesses() > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if n := otherProcesses(); n > 0 {
		log.G(ctx).WithField("processes", n).Info("killing processes left after the grace period")
		_ = unix.Kill(-1, unix.SIGKILL)
		for end := time.Now().Add(time.Second); time.Now().Before(end) && otherProcesses() > 0; {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// otherProcesses counts live user processes other than the agent. Kernel
// threads and zombies have an empty cmdline.
func otherProcesses() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := fmt.Sprint(os.Getpid())
	n := 0
	for _, e := range ents {
		if e.Name() == self || e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && len(b) > 0 {
			n++
		}
	}
	return n
}

// powerOff syncs, unmounts what it can and powers the VM off. It does not
// return; if the power-off call fails it sleeps forever rather than let PID
// 1 exit.
func powerOff(ctx context.Context) {
	unix.Sync()
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			f := strings.Fields(lines[i])
			if len(f) < 2 || f[1] == "/" {
				continue
			}
			_ = unix.Unmount(f[1], 0)
		}
	}
	unix.Sync()
	log.G(ctx).Info("powering off")
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.G(ctx).WithError(err).Error("power off failed")
	for {
		time.Sleep(time.Hour) //nolint:gosec // G118: PID 1 must never return, even when power off fails
	}
}
