package hostcgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	systemd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Unit is the systemd unit that a cgroupsPath in the systemd form
// "slice:prefix:name" names: the scope "<prefix>-<name>.scope" in Slice.
type Unit struct {
	// Slice holds the unit ("kubepods-burstable-pod<uid>.slice").
	Slice string
	// Name is the scope ("cri-containerd-<id>.scope").
	Name string
}

// SystemdUnit returns the scope a cgroupsPath in the systemd form names;
// ok is false for the cgroupfs form and for a name that is itself a slice
// (which this runtime lays out cgroupfs-style, see Resolve). A malformed
// systemd path is an ErrInvalidArgument-class error.
func SystemdUnit(cgroupsPath string) (u Unit, ok bool, err error) {
	if !isSystemd(cgroupsPath) {
		return Unit{}, false, nil
	}
	if _, err := Resolve(cgroupsPath, "", ""); err != nil {
		return Unit{}, false, err
	}
	parts := strings.Split(cgroupsPath, ":")
	slice, prefix, name := parts[0], parts[1], parts[2]
	if strings.HasSuffix(name, ".slice") {
		return Unit{}, false, nil
	}
	if slice == "" {
		slice = "system.slice"
	}
	return Unit{Slice: slice, Name: prefix + "-" + name + ".scope"}, true, nil
}

// systemdRuntimeDir exists when systemd is the init system (sd_booted(3));
// a variable for tests.
var systemdRuntimeDir = "/run/systemd/system"

// SystemdRunning reports whether systemd manages this host's cgroups: it
// is the init system.
func SystemdRunning() bool {
	fi, err := os.Lstat(systemdRuntimeDir)
	return err == nil && fi.IsDir()
}

// systemdTimeout bounds each exchange with systemd: a call and the job it
// starts.
const systemdTimeout = 30 * time.Second

// systemdConn is the part of systemd's D-Bus API a scope uses; the seam
// for unit tests.
type systemdConn interface {
	StartTransientUnitContext(ctx context.Context, name, mode string, props []systemd.Property, ch chan<- string) (int, error)
	SetUnitPropertiesContext(ctx context.Context, name string, runtime bool, props ...systemd.Property) error
	StopUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	ResetFailedUnitContext(ctx context.Context, name string) error
	Close()
}

// dialSystemd connects to systemd over D-Bus (the system bus, else
// systemd's private socket); a variable for tests.
var dialSystemd = func(ctx context.Context) (systemdConn, error) {
	return systemd.NewWithContext(ctx)
}

// scope is the systemd side of a group that systemd holds: a transient
// scope with delegation, started with the group's first process (systemd
// refuses a scope without one). Its fields change in AddTree, SetLimits
// and Delete, which a group's owner calls one at a time (the sandbox's
// start, resize and stop steps), as for the rest of Group.
type scope struct {
	unit Unit
	// started is set once systemd made the unit.
	started bool
	// limits are those the unit starts with, the last ones set.
	limits Limits
}

// CreateUnit returns the group at path (Resolve's expansion of the
// systemd form) that systemd holds as the transient scope u, delegated
// to this runtime (Delegate=yes), as runc makes it for a container. The
// scope starts when the group's first process is added (AddTree): systemd
// moves that process in, and makes the directory; until then OpenDir has
// none, so that process is started outside and moved at once. Limits set
// before are the unit's properties at its start. It is for a cgroup v2
// host where systemd runs (SystemdRunning, which the caller checks); on
// a v1 or hybrid host it is an ErrNotImplemented-class error.
func CreateUnit(fs FS, path string, u Unit) (*Group, error) {
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("cgroup %q: %w", path, err)
	}
	if fs.Unified == "" {
		return nil, fmt.Errorf("systemd unit %s: needs cgroup v2: %w", u.Name, errdefs.ErrNotImplemented)
	}
	if err := checkName(u.Slice); err != nil || !strings.HasSuffix(u.Slice, ".slice") {
		return nil, fmt.Errorf("systemd unit %s: slice %q: %w", u.Name, u.Slice, errdefs.ErrInvalidArgument)
	}
	if err := checkName(u.Name); err != nil || !strings.HasSuffix(u.Name, ".scope") {
		return nil, fmt.Errorf("systemd unit %q: %w", u.Name, errdefs.ErrInvalidArgument)
	}
	return &Group{fs: fs, path: path, scope: &scope{unit: u}}, nil
}

// Unit is the systemd scope that holds the group; the zero Unit for a
// group this runtime made itself.
func (g *Group) Unit() Unit {
	if g.scope == nil {
		return Unit{}
	}
	return g.scope.unit
}

// scopeProperties are the properties a scope starts with: in its slice,
// delegated, holding pid, accounting on, the limits set, and no
// dependencies that would order it after units of the host's boot.
func scopeProperties(u Unit, pid int, l Limits) []systemd.Property {
	props := []systemd.Property{
		systemd.PropDescription("hull sandbox " + u.Name),
		systemd.PropSlice(u.Slice),
		prop("Delegate", true),
		systemd.PropPids(uint32(pid)),
		prop("DefaultDependencies", false),
		prop("MemoryAccounting", true),
		prop("CPUAccounting", true),
		prop("TasksAccounting", true),
	}
	return append(props, limitProperties(l)...)
}

// systemdCPUPeriodUs is the CFS period systemd uses when a unit sets
// none.
const systemdCPUPeriodUs = 100000

// limitProperties are Limits as unit properties: MemoryMax, no swap, and
// the CPU quota per second of time, rounded up to the 10 ms systemd keeps
// (the group's cpu.max is then written exact); the period only when it is
// not systemd's default (older systemd lacks the property).
func limitProperties(l Limits) []systemd.Property {
	var props []systemd.Property
	if l.MemoryBytes > 0 {
		props = append(props, prop("MemoryMax", uint64(l.MemoryBytes)), prop("MemorySwapMax", uint64(0)))
	}
	if l.CPUQuotaUs > 0 && l.CPUPeriodUs > 0 {
		perSec := uint64(l.CPUQuotaUs) * 1000000 / l.CPUPeriodUs
		perSec = (perSec + 9999) / 10000 * 10000
		props = append(props, prop("CPUQuotaPerSecUSec", perSec))
		if l.CPUPeriodUs != systemdCPUPeriodUs {
			props = append(props, prop("CPUQuotaPeriodUSec", l.CPUPeriodUs))
		}
	}
	return props
}

func prop(name string, v any) systemd.Property {
	return systemd.Property{Name: name, Value: godbus.MakeVariant(v)}
}

// startScope has systemd make the scope with pid in it, and waits for
// the job.
func (g *Group) startScope(pid int) error {
	name := g.scope.unit.Name
	props := scopeProperties(g.scope.unit, pid, g.scope.limits)
	if err := onSystemd(func(ctx context.Context, conn systemdConn) error {
		err := runJob(ctx, func(ch chan<- string) (int, error) {
			return conn.StartTransientUnitContext(ctx, name, "fail", props, ch)
		})
		if err != nil {
			_ = conn.ResetFailedUnitContext(ctx, name)
		}
		return err
	}); err != nil {
		return fmt.Errorf("starting systemd scope %s in %s: %w", name, g.scope.unit.Slice, err)
	}
	g.scope.started = true
	g.created = append(g.created, filepath.Join(g.fs.Unified, g.path))
	if _, err := os.Stat(filepath.Join(g.fs.Unified, g.path)); err != nil {
		return fmt.Errorf("systemd scope %s: its cgroup is not at %s: %w", name, g.path, err)
	}
	return nil
}

// setScopeLimits records the limits the scope starts with or, once it
// runs, has systemd apply them (so that a reload of systemd keeps them).
func (g *Group) setScopeLimits(l Limits) error {
	g.scope.limits = l
	if !g.scope.started {
		return nil
	}
	if err := onSystemd(func(ctx context.Context, conn systemdConn) error {
		return conn.SetUnitPropertiesContext(ctx, g.scope.unit.Name, true, limitProperties(l)...)
	}); err != nil {
		return fmt.Errorf("setting the limits of systemd scope %s: %w", g.scope.unit.Name, err)
	}
	return nil
}

// stopScope has systemd stop the scope (a scope already gone is no
// error).
func (g *Group) stopScope() error {
	if !g.scope.started {
		return nil
	}
	name := g.scope.unit.Name
	err := onSystemd(func(ctx context.Context, conn systemdConn) error {
		return runJob(ctx, func(ch chan<- string) (int, error) {
			return conn.StopUnitContext(ctx, name, "replace", ch)
		})
	})
	var derr godbus.Error
	if errors.As(err, &derr) && derr.Name == "org.freedesktop.systemd1.NoSuchUnit" {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("stopping systemd scope %s: %w", name, err)
	}
	g.scope.started = false
	return nil
}

// onSystemd runs f on a connection to systemd, within systemdTimeout.
func onSystemd(f func(context.Context, systemdConn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), systemdTimeout)
	defer cancel()
	conn, err := dialSystemd(ctx)
	if err != nil {
		return fmt.Errorf("connecting to systemd: %w", err)
	}
	defer conn.Close()
	return f(ctx, conn)
}

// runJob runs a systemd call that queues a job and waits for its result.
func runJob(ctx context.Context, call func(chan<- string) (int, error)) error {
	ch := make(chan string, 1)
	if _, err := call(ch); err != nil {
		return err
	}
	select {
	case r := <-ch:
		if r != "done" {
			return fmt.Errorf("job %s: %w", r, errdefs.ErrUnavailable)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for systemd's job: %w", ctx.Err())
	}
}
