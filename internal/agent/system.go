package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/procfs"
	"github.com/hull-runtime/hull/internal/version"
)

// systemService serves api.SystemService.
type systemService struct {
	a *Agent
}

var _ api.SystemService = (*systemService)(nil)

func (s *systemService) Health(ctx context.Context, _ *api.HealthRequest) (*api.HealthResponse, error) {
	s.a.mu.Lock()
	st := s.a.status
	s.a.mu.Unlock()
	return &api.HealthResponse{Status: st, AgentVersion: version.Version, Uptime: durationpb.New(uptime())}, nil
}

func (s *systemService) GuestDetails(ctx context.Context, _ *api.GuestDetailsRequest) (*api.GuestDetailsResponse, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	r := &api.GuestDetailsResponse{
		KernelRelease: unix.ByteSliceToString(uts.Release[:]),
		KernelVersion: unix.ByteSliceToString(uts.Version[:]),
		AgentVersion:  version.Version,
		AgentCommit:   version.Commit,
		Cpus:          onlineCPUs("/sys/devices/system/cpu/online"),
		Transport:     s.a.transport.String(),
	}
	if total, avail, err := meminfo("/proc/meminfo"); err != nil {
		log.G(ctx).WithError(err).Warn("reading meminfo")
	} else {
		r.MemoryTotalBytes, r.MemoryAvailableBytes = total, avail
	}
	s.a.mu.Lock()
	r.Features = append([]string(nil), s.a.features...)
	r.Modules = append([]string(nil), s.a.modules...)
	r.Warnings = append([]string(nil), s.a.warnings...)
	r.AgentStart = durationpb.New(s.a.agentStart)
	r.BootToServe = durationpb.New(s.a.bootToServe)
	r.FirstAnswer = durationpb.New(s.a.firstAnswer)
	s.a.mu.Unlock()
	return r, nil
}

func (s *systemService) SetTime(ctx context.Context, req *api.SetTimeRequest) (*api.SetTimeResponse, error) {
	if !s.a.initMode {
		return nil, fmt.Errorf("setting the clock: only the agent running as PID 1 of a VM sets it: %w", errdefs.ErrFailedPrecondition)
	}
	if err := req.GetTime().CheckValid(); err != nil {
		return nil, fmt.Errorf("setting the clock: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	prev := time.Now()
	ts := unix.NsecToTimespec(req.GetTime().AsTime().UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return nil, fmt.Errorf("setting the clock: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"previous": prev, "now": req.GetTime().AsTime()}).Debug("clock set")
	return &api.SetTimeResponse{Previous: timestamppb.New(prev)}, nil
}

// Bounds of AddEntropy's data.
const (
	minEntropyBytes = 16
	maxEntropyBytes = 512
)

func (s *systemService) AddEntropy(ctx context.Context, req *api.AddEntropyRequest) (*api.AddEntropyResponse, error) {
	if !s.a.initMode {
		return nil, fmt.Errorf("adding entropy: only the agent running as PID 1 of a VM adds it: %w", errdefs.ErrFailedPrecondition)
	}
	data := req.GetData()
	if len(data) < minEntropyBytes || len(data) > maxEntropyBytes {
		return nil, fmt.Errorf("adding entropy: %d bytes: want %d to %d: %w", len(data), minEntropyBytes, maxEntropyBytes, errdefs.ErrInvalidArgument)
	}
	if err := addEntropy("/dev/urandom", data); err != nil {
		return nil, fmt.Errorf("adding entropy: %w", err)
	}
	log.G(ctx).WithField("bytes", len(data)).Debug("entropy added, rng reseeded")
	return &api.AddEntropyResponse{}, nil
}

// addEntropy writes data into the kernel's input pool through the random
// device at path, credited as len(data)*8 bits (struct rand_pool_info:
// entropy_count, buf_size, then the bytes), and reseeds the kernel's RNG
// from the pool.
func addEntropy(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	buf := make([]byte, 8+len(data))
	binary.NativeEndian.PutUint32(buf[0:], uint32(8*len(data)))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(data)))
	copy(buf[8:], data)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		//nolint:gosec // G103: RNDADDENTROPY takes the address of a struct rand_pool_info, which buf holds; buf stays referenced below
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			ierr = fmt.Errorf("RNDADDENTROPY: %w", e)
			return
		}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0); e != 0 {
			ierr = fmt.Errorf("RNDRESEEDCRNG: %w", e)
		}
	}); err != nil {
		return err
	}
	runtime.KeepAlive(buf)
	return ierr
}

func (s *systemService) Shutdown(ctx context.Context, req *api.ShutdownRequest) (*api.ShutdownResponse, error) {
	grace := req.GetGrace().AsDuration()
	if grace < 0 {
		return nil, fmt.Errorf("shutdown grace %s: %w", grace, errdefs.ErrInvalidArgument)
	}
	// The request is only queued here: the reply goes out before the
	// agent stops serving.
	s.a.requestShutdown(grace)
	return &api.ShutdownResponse{}, nil
}

// OnlineResources brings the CPUs and memory blocks that the host hot-added
// online (see hotplug.go).
func (s *systemService) OnlineResources(ctx context.Context, req *api.OnlineResourcesRequest) (*api.OnlineResourcesResponse, error) {
	if !s.a.initMode {
		return nil, fmt.Errorf("onlining cpus and memory: only the agent running as PID 1 of a VM does: %w", errdefs.ErrFailedPrecondition)
	}
	start := time.Now()
	o, err := onlineResources(ctx, hotplugTree{root: sysDevicesSystem}, req.GetVcpus(), req.GetMemoryMib(), waitLimit(ctx))
	if err != nil {
		return nil, fmt.Errorf("onlining cpus and memory: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"cpus": o.cpus, "memory_mib": o.memoryMiB, "took": time.Since(start)}).Info("cpus and memory online")
	return &api.OnlineResourcesResponse{OnlineVcpus: o.cpus, MemoryMib: o.memoryMiB}, nil
}

// onlineCPUs counts the CPUs in a sysfs CPU list such as "0-3,6".
func onlineCPUs(path string) uint32 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return countCPUList(strings.TrimSpace(string(b)))
}

func countCPUList(s string) uint32 {
	var n uint32
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		if !isRange {
			n++
			continue
		}
		b, err := strconv.Atoi(hi)
		if err != nil || b < a {
			continue
		}
		n += uint32(b - a + 1)
	}
	return n
}

// meminfo reads MemTotal and MemAvailable in bytes.
func meminfo(path string) (total, avail uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	kb := procfs.ParseKB(b)
	total, avail = kb["MemTotal"], kb["MemAvailable"]
	if total == 0 {
		return 0, 0, fmt.Errorf("%s: no MemTotal", path)
	}
	return total, avail, nil
}

// DebugConsole starts a root shell in the guest, outside every container,
// on a terminal that the stdio channel req names carries (console.go).
func (s *systemService) DebugConsole(ctx context.Context, req *api.DebugConsoleRequest) (*api.DebugConsoleResponse, error) {
	pid, err := s.a.startConsole(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("debug console: %w", err)
	}
	return &api.DebugConsoleResponse{Pid: uint32(pid)}, nil
}

func (s *systemService) WaitDebugConsole(ctx context.Context, req *api.WaitDebugConsoleRequest) (*api.WaitDebugConsoleResponse, error) {
	if req.GetPid() == 0 || req.GetPid() > math.MaxInt32 {
		return nil, fmt.Errorf("waiting for debug console of pid %d: %w", req.GetPid(), errdefs.ErrInvalidArgument)
	}
	status, err := s.a.consoles.wait(ctx, int(req.GetPid()))
	if err != nil {
		return nil, err
	}
	return &api.WaitDebugConsoleResponse{ExitStatus: status}, nil
}

func (s *systemService) ResizeDebugConsole(ctx context.Context, req *api.ResizeDebugConsoleRequest) (*api.ResizeDebugConsoleResponse, error) {
	w, h := req.GetWidth(), req.GetHeight()
	if w == 0 || h == 0 || w > math.MaxUint16 || h > math.MaxUint16 || req.GetPid() == 0 || req.GetPid() > math.MaxInt32 {
		return nil, fmt.Errorf("resizing debug console of pid %d to %dx%d: %w", req.GetPid(), w, h, errdefs.ErrInvalidArgument)
	}
	if err := s.a.consoles.resize(int(req.GetPid()), uint16(h), uint16(w)); err != nil {
		return nil, err
	}
	return &api.ResizeDebugConsoleResponse{}, nil
}
