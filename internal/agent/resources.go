package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// oomQueueLen bounds the OOM kills kept for WaitOOM; more are dropped (and
// logged) while nobody waits.
const oomQueueLen = 256

// oomQueue holds the OOM kills not yet reported by WaitOOM.
type oomQueue struct {
	events chan string
}

func newOOMQueue() *oomQueue { return &oomQueue{events: make(chan string, oomQueueLen)} }

func (q *oomQueue) push(ctx context.Context, id string) {
	select {
	case q.events <- id:
	default:
		log.G(ctx).WithField("container", id).Warn("OOM queue full; dropping event")
	}
}

func (q *oomQueue) pop(ctx context.Context) (string, error) {
	select {
	case id := <-q.events:
		return id, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// cgroupPath is the container's cgroup v2 directory.
func (c *container) cgroupPath() (string, error) {
	if c.pod != nil {
		return c.pod.cg.Path(""), nil
	}
	st, err := c.lc.State()
	if err != nil {
		return "", lcError(err)
	}
	p := st.CgroupPaths[""]
	if p == "" {
		return "", fmt.Errorf("container %s: no cgroup v2 path: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	return p, nil
}

// watchOOM queues an event for every OOM kill in the container's cgroup,
// until the cgroup goes away. libcontainer's notification fires on every
// change of memory.events once a kill happened; the counter says whether
// this change is a new kill. RemoveContainer sweeps once more before the
// cgroup is destroyed, for a notification that comes too late to read it.
func (s *containerService) watchOOM(ctx context.Context, c *container) {
	if c.pod != nil {
		return // its cgroup runs nothing that could use memory
	}
	ch, err := c.lc.NotifyOOM()
	if err != nil {
		log.G(ctx).WithError(err).WithField("container", c.id).Warn("no OOM notifications")
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer s.a.recoverPanic(ctx, "oom watch")
		for range ch {
			s.reportOOMKills(ctx, c)
		}
	}()
}

// reportOOMKills queues the container's OOM kills that memory.events counts
// and that were not queued yet.
func (s *containerService) reportOOMKills(ctx context.Context, c *container) {
	dir, err := c.cgroupPath()
	if err != nil {
		return
	}
	ev, err := readKeyValues(filepath.Join(dir, "memory.events"))
	if err != nil {
		return // the cgroup is going away
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for ; c.oomReported < ev["oom_kill"]; c.oomReported++ {
		log.G(ctx).WithField("container", c.id).Info("OOM kill in container")
		s.oom.push(ctx, c.id)
	}
}

func (s *containerService) WaitOOM(ctx context.Context, _ *api.WaitOOMRequest) (*api.WaitOOMResponse, error) {
	id, err := s.oom.pop(ctx)
	if err != nil {
		return nil, err
	}
	return &api.WaitOOMResponse{ContainerId: id}, nil
}

func (s *containerService) ListProcesses(ctx context.Context, req *api.ListProcessesRequest) (*api.ListProcessesResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	var pids []int
	if c.pod != nil {
		pids, err = c.pod.cg.GetAllPids()
	} else {
		pids, err = c.lc.Processes()
	}
	if err != nil {
		return nil, fmt.Errorf("listing processes of %s: %w", c.id, lcError(err))
	}
	sort.Ints(pids)
	out := make([]uint32, len(pids))
	for i, p := range pids {
		out[i] = uint32(p)
	}
	return &api.ListProcessesResponse{Pids: out}, nil
}

func (s *containerService) PauseContainer(ctx context.Context, req *api.PauseContainerRequest) (*api.PauseContainerResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.pod != nil {
		return nil, errPodSandbox("pausing", c.id)
	}
	if st, err := c.lc.Status(); err == nil && st == libcontainer.Paused {
		return &api.PauseContainerResponse{}, nil // already frozen
	}
	if err := c.lc.Pause(); err != nil {
		return nil, fmt.Errorf("pausing %s: %w", c.id, lcError(err))
	}
	return &api.PauseContainerResponse{}, nil
}

func (s *containerService) ResumeContainer(ctx context.Context, req *api.ResumeContainerRequest) (*api.ResumeContainerResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.pod != nil {
		return nil, errPodSandbox("resuming", c.id)
	}
	if err := c.lc.Resume(); err != nil {
		return nil, fmt.Errorf("resuming %s: %w", c.id, lcError(err))
	}
	return &api.ResumeContainerResponse{}, nil
}

// UpdateContainer puts the new resources in the container's spec, converts
// the spec again with runc's converter and applies the converted cgroup
// resources, as `runc update` does with its own flags.
func (s *containerService) UpdateContainer(ctx context.Context, req *api.UpdateContainerRequest) (*api.UpdateContainerResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.pod != nil {
		return nil, errPodSandbox("updating", c.id)
	}
	var r specs.LinuxResources
	if err := json.Unmarshal(req.GetResources(), &r); err != nil {
		return nil, fmt.Errorf("updating %s: decoding resources: %w: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	spec := *c.spec
	linux := *spec.Linux
	linux.Resources = &r
	spec.Linux = &linux
	conv, err := libcontainerConfig(c.id, &spec)
	if err != nil {
		return nil, fmt.Errorf("updating %s: %w", c.id, err)
	}
	cfg := c.lc.Config()
	cfg.Cgroups.Resources = conv.Cgroups.Resources
	if err := c.lc.Set(cfg); err != nil {
		return nil, fmt.Errorf("updating %s: %w", c.id, lcError(err))
	}
	c.spec = &spec
	return &api.UpdateContainerResponse{}, nil
}

func (s *containerService) Stats(ctx context.Context, req *api.StatsRequest) (*api.StatsResponse, error) {
	c, err := s.get(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	var cs *cgroups.Stats
	if c.pod != nil {
		cs, err = c.pod.cg.GetStats()
	} else {
		var st *libcontainer.Stats
		if st, err = c.lc.Stats(); err == nil {
			cs = st.CgroupStats
		}
	}
	if err != nil {
		return nil, fmt.Errorf("stats of %s: %w", c.id, lcError(err))
	}
	var events map[string]uint64
	if dir, err := c.cgroupPath(); err == nil {
		events, _ = readKeyValues(filepath.Join(dir, "memory.events"))
	}
	return statsResponse(cs, events), nil
}

// statsResponse maps libcontainer's cgroup statistics (whose CPU times
// are in nanoseconds, converted from cgroup v2's microseconds) and the
// memory.events counters to the protocol.
func statsResponse(cs *cgroups.Stats, events map[string]uint64) *api.StatsResponse {
	r := &api.StatsResponse{}
	if cs == nil {
		return r
	}
	cpu, mem := cs.CpuStats, cs.MemoryStats
	r.Cpu = &api.CPUStats{
		UsageUsec:     cpu.CpuUsage.TotalUsage / 1000,
		UserUsec:      cpu.CpuUsage.UsageInUsermode / 1000,
		SystemUsec:    cpu.CpuUsage.UsageInKernelmode / 1000,
		NrPeriods:     cpu.ThrottlingData.Periods,
		NrThrottled:   cpu.ThrottlingData.ThrottledPeriods,
		ThrottledUsec: cpu.ThrottlingData.ThrottledTime / 1000,
	}
	r.Memory = &api.MemoryStats{
		Usage:         mem.Usage.Usage,
		Limit:         mem.Usage.Limit,
		Anon:          mem.Stats["anon"],
		File:          mem.Stats["file"],
		KernelStack:   mem.Stats["kernel_stack"],
		Slab:          mem.Stats["slab"],
		Sock:          mem.Stats["sock"],
		Shmem:         mem.Stats["shmem"],
		SwapUsage:     mem.SwapOnlyUsage.Usage,
		MaxEvents:     events["max"],
		OomEvents:     events["oom"],
		OomKillEvents: events["oom_kill"],
	}
	r.Pids = &api.PidsStats{Current: cs.PidsStats.Current, Limit: cs.PidsStats.Limit}
	type dev struct{ major, minor uint64 }
	byDev := map[dev]*api.IOStats{}
	var order []dev
	entry := func(e cgroups.BlkioStatEntry) *api.IOStats {
		d := dev{e.Major, e.Minor}
		s, ok := byDev[d]
		if !ok {
			s = &api.IOStats{Major: e.Major, Minor: e.Minor}
			byDev[d] = s
			order = append(order, d)
		}
		return s
	}
	for _, e := range cs.BlkioStats.IoServiceBytesRecursive {
		switch e.Op {
		case "Read":
			entry(e).Rbytes = e.Value
		case "Write":
			entry(e).Wbytes = e.Value
		}
	}
	for _, e := range cs.BlkioStats.IoServicedRecursive {
		switch e.Op {
		case "Read":
			entry(e).Rios = e.Value
		case "Write":
			entry(e).Wios = e.Value
		}
	}
	for _, d := range order {
		r.Io = append(r.Io, byDev[d])
	}
	return r
}

// readKeyValues reads a cgroup file of "key value" lines.
func readKeyValues(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseKeyValues(b), nil
}

func parseKeyValues(b []byte) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		out[k] = n
	}
	return out
}
