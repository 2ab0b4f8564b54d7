package podmetrics

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// Defaults of the Collector's guest reads.
const (
	// GuestCacheFor is how long the guest's numbers are reused: scrapes
	// more frequent than this do not reach the agent.
	GuestCacheFor = 5 * time.Second
	// guestTimeout bounds one read of the guest's numbers.
	guestTimeout = 2 * time.Second
	// PSSCacheFor is how long a host process's PSS is reused: reading it
	// costs far more than the rest of a scrape.
	PSSCacheFor = 30 * time.Second
)

// Guest is what the guest reports: its counters and the statistics of its
// containers, by the host's container IDs.
type Guest struct {
	Metrics    *agent.GuestMetricsResponse
	Containers map[string]*agent.StatsResponse
}

// Source is where a Collector reads one sandbox. Every function may be
// called concurrently with the sandbox's life; nil ones are skipped.
type Source struct {
	// HostProcesses names the sandbox's host processes by role ("vmm",
	// "virtiofsd").
	HostProcesses func() map[string]child.Process
	// HostUsage reads the sandbox's host cgroup.
	HostUsage func() (hostcgroup.Usage, error)
	// Guest asks the agent.
	Guest func(ctx context.Context) (Guest, error)
	// BootPhases are the steps of the sandbox's start.
	BootPhases func() []sandbox.Phase
	// Size is the VM's vCPUs and memory.
	Size func() (vcpus, memoryMiB uint32)
	// DroppedLogLines counts the agent log lines the host dropped.
	DroppedLogLines func() uint64
	// Start says how the sandbox started (StartCold, StartRestored,
	// StartAdopted, StartWarmRefused); empty for none.
	Start string
}

// How a sandbox started, the hull_sandbox_start series' label: a VM booted
// for it, a VM restored for it from a template (factory.template), a VM
// factory's warm VM adopted, or a warm VM refused (it could not serve the
// pod's configuration) and a VM booted for it.
const (
	StartCold        = "cold"
	StartRestored    = "restored"
	StartAdopted     = "adopted"
	StartWarmRefused = "warm_refused"
)

// Collector is the prometheus.Collector of one sandbox.
type Collector struct {
	src    Source
	labels PodLabels

	// RPC observes agent calls (pass its Observe to the agent client).
	rpc *prometheus.HistogramVec
	// started and failed count container starts by outcome.
	started, failed prometheus.Counter

	mu sync.Mutex
	// guest, guestAt and guestErr are the last guest read; guarded by mu.
	guest    Guest
	guestAt  time.Time
	guestErr error
	// pss holds the last PSS read of each host process, by role; guarded
	// by mu.
	pss map[string]pssRead

	d descs
}

// pssRead is one PSS reading of a host process.
type pssRead struct {
	proc  child.Process
	bytes uint64
	at    time.Time
}

// NewCollector returns the collector of the sandbox labels names.
func NewCollector(labels PodLabels, src Source) *Collector {
	cl := labels.constLabels()
	c := &Collector{src: src, labels: labels, d: newDescs(cl), pss: map[string]pssRead{}}
	c.rpc = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        "hull_agent_rpc_duration_seconds",
		Help:        "Duration of the shim's calls to the agent, by method.",
		Buckets:     []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		ConstLabels: cl,
	}, []string{"method", "result"})
	c.started = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hull_containers_started_total", Help: "Containers started in the sandbox.", ConstLabels: cl,
	})
	c.failed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hull_containers_failed_total", Help: "Container creates and starts in the sandbox that failed.", ConstLabels: cl,
	})
	return c
}

// Labels returns the sandbox's labels.
func (c *Collector) Labels() PodLabels { return c.labels }

// ObserveRPC records one agent call (agentclient.Options.ObserveRPC).
func (c *Collector) ObserveRPC(method string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.rpc.WithLabelValues(method, result).Observe(took.Seconds())
}

// ContainerStarted counts a container start, or a failed create or start.
func (c *Collector) ContainerStarted(err error) {
	if err != nil {
		c.failed.Inc()
		return
	}
	c.started.Inc()
}

// SetSource sets the source once the sandbox runs (the collector exists
// before, to observe the agent calls of the start).
func (c *Collector) SetSource(src Source) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.src = src
}

// descs are the descriptions of the collector's computed series.
type descs struct {
	procCPU, procRSS, procPSS, procFDs, procThreads        *prometheus.Desc
	cgMem, cgCPU                                           *prometheus.Desc
	overheadMem, overheadCPU                               *prometheus.Desc
	vcpus, memory, bootPhase, boot, guestUp, droppedLogs   *prometheus.Desc
	start                                                  *prometheus.Desc
	gMem, gCPU, gLoad1, gLoad5, gLoad15, gRunning, gProcs  *prometheus.Desc
	netRxB, netRxP, netRxE, netRxD                         *prometheus.Desc
	netTxB, netTxP, netTxE, netTxD                         *prometheus.Desc
	diskReads, diskReadB, diskWrites, diskWrittenB, diskIO *prometheus.Desc
	ctrMem, ctrCPU                                         *prometheus.Desc
}

func newDescs(cl prometheus.Labels) descs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, cl)
	}
	return descs{
		procCPU:      d("hull_host_process_cpu_seconds_total", "CPU time (user and system) of a host process of the sandbox.", "process"),
		procRSS:      d("hull_host_process_resident_memory_bytes", "Resident set size of a host process of the sandbox.", "process"),
		procPSS:      d("hull_host_process_pss_bytes", "Proportional set size of a host process of the sandbox.", "process"),
		procFDs:      d("hull_host_process_open_fds", "Open file descriptors of a host process of the sandbox.", "process"),
		procThreads:  d("hull_host_process_threads", "Threads of a host process of the sandbox.", "process"),
		cgMem:        d("hull_host_cgroup_memory_bytes", "Memory charged to the sandbox's host cgroup (VMM and virtiofsd)."),
		cgCPU:        d("hull_host_cgroup_cpu_seconds_total", "CPU time of the sandbox's host cgroup (VMM and virtiofsd)."),
		overheadMem:  d("hull_pod_overhead_memory_bytes", "Resident memory of the sandbox's host processes minus the memory the guest reports for its containers (at least 0)."),
		overheadCPU:  d("hull_pod_overhead_cpu_seconds", "CPU time of the sandbox's host processes minus the CPU time the guest reports for its live containers (at least 0; falls when a container goes)."),
		vcpus:        d("hull_sandbox_vcpus", "vCPUs of the sandbox's VM."),
		memory:       d("hull_sandbox_memory_bytes", "Memory of the sandbox's VM."),
		bootPhase:    d("hull_boot_phase_seconds", "Duration of one step of the sandbox's start.", "phase"),
		boot:         d("hull_boot_seconds", "Duration of the sandbox's start, all steps."),
		start:        d("hull_sandbox_start", "1, labelled with how the sandbox started: cold, restored (from a VM template), adopted (a warm VM), warm_refused (a warm VM refused, then booted or restored).", "start"),
		guestUp:      d("hull_guest_up", "1 when the last read of the guest's numbers succeeded."),
		droppedLogs:  d("hull_agent_log_dropped_lines_total", "Agent log lines the host dropped (rate limit)."),
		gMem:         d("hull_guest_memory_bytes", "Guest memory from /proc/meminfo, by kind.", "kind"),
		gCPU:         d("hull_guest_cpu_seconds_total", "Guest CPU time from /proc/stat, all CPUs, by mode.", "mode"),
		gLoad1:       d("hull_guest_load1", "Guest load average over 1 minute."),
		gLoad5:       d("hull_guest_load5", "Guest load average over 5 minutes."),
		gLoad15:      d("hull_guest_load15", "Guest load average over 15 minutes."),
		gRunning:     d("hull_guest_procs_running", "Runnable guest tasks."),
		gProcs:       d("hull_guest_procs", "Guest tasks."),
		netRxB:       d("hull_guest_network_receive_bytes_total", "Bytes a guest interface received.", "interface"),
		netRxP:       d("hull_guest_network_receive_packets_total", "Packets a guest interface received.", "interface"),
		netRxE:       d("hull_guest_network_receive_errors_total", "Receive errors of a guest interface.", "interface"),
		netRxD:       d("hull_guest_network_receive_drops_total", "Received packets a guest interface dropped.", "interface"),
		netTxB:       d("hull_guest_network_transmit_bytes_total", "Bytes a guest interface sent.", "interface"),
		netTxP:       d("hull_guest_network_transmit_packets_total", "Packets a guest interface sent.", "interface"),
		netTxE:       d("hull_guest_network_transmit_errors_total", "Transmit errors of a guest interface.", "interface"),
		netTxD:       d("hull_guest_network_transmit_drops_total", "Packets a guest interface dropped on transmit.", "interface"),
		diskReads:    d("hull_guest_disk_reads_completed_total", "Reads completed by a guest disk.", "device"),
		diskReadB:    d("hull_guest_disk_read_bytes_total", "Bytes read from a guest disk.", "device"),
		diskWrites:   d("hull_guest_disk_writes_completed_total", "Writes completed by a guest disk.", "device"),
		diskWrittenB: d("hull_guest_disk_written_bytes_total", "Bytes written to a guest disk.", "device"),
		diskIO:       d("hull_guest_disk_io_time_seconds_total", "Time a guest disk spent doing I/O.", "device"),
		ctrMem:       d("hull_guest_container_memory_bytes", "Memory a container uses in the guest (its cgroup there).", "container"),
		ctrCPU:       d("hull_guest_container_cpu_seconds_total", "CPU time of a container in the guest (its cgroup there).", "container"),
	}
}

// Describe sends nothing: the collector is unchecked, its interface,
// device and container series vary with the sandbox.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect reads the sandbox and sends its series.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.rpc.Collect(ch)
	c.started.Collect(ch)
	c.failed.Collect(ch)
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	d := &c.d
	gauge := func(desc *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, lv...)
	}
	counter := func(desc *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, lv...)
	}

	var hostRSS, hostCPU float64
	var haveHost bool
	if src.HostProcesses != nil {
		procs := src.HostProcesses()
		for _, role := range sortedKeys(procs) {
			c.mu.Lock()
			last, ok := c.pss[role]
			c.mu.Unlock()
			fresh := ok && last.proc == procs[role] && time.Since(last.at) < PSSCacheFor
			u, err := ReadProc(procs[role], !fresh)
			if err != nil {
				continue
			}
			if fresh {
				u.PSSBytes = last.bytes
			} else {
				c.mu.Lock()
				c.pss[role] = pssRead{proc: procs[role], bytes: u.PSSBytes, at: time.Now()}
				c.mu.Unlock()
			}
			haveHost = true
			hostRSS += float64(u.RSSBytes)
			hostCPU += u.CPUSeconds
			counter(d.procCPU, u.CPUSeconds, role)
			gauge(d.procRSS, float64(u.RSSBytes), role)
			if u.PSSBytes > 0 {
				gauge(d.procPSS, float64(u.PSSBytes), role)
			}
			gauge(d.procFDs, float64(u.FDs), role)
			gauge(d.procThreads, float64(u.Threads), role)
		}
	}
	if src.HostUsage != nil {
		if u, err := src.HostUsage(); err == nil {
			gauge(d.cgMem, float64(u.MemoryBytes))
			counter(d.cgCPU, float64(u.CPUUsageUsec)/1e6)
		}
	}
	if src.Size != nil {
		v, m := src.Size()
		gauge(d.vcpus, float64(v))
		gauge(d.memory, float64(m)*(1<<20))
	}
	if src.BootPhases != nil {
		var total time.Duration
		seen := map[string]bool{}
		for _, p := range src.BootPhases() {
			total += p.Took
			if !seen[p.Name] {
				seen[p.Name] = true
				gauge(d.bootPhase, p.Took.Seconds(), p.Name)
			}
		}
		if len(seen) > 0 {
			gauge(d.boot, total.Seconds())
		}
	}
	if src.Start != "" {
		gauge(d.start, 1, src.Start)
	}
	if src.DroppedLogLines != nil {
		counter(d.droppedLogs, float64(src.DroppedLogLines()))
	}
	if src.Guest == nil {
		return
	}
	g, err := c.readGuest(src)
	if err != nil {
		gauge(d.guestUp, 0)
		return
	}
	gauge(d.guestUp, 1)
	c.collectGuest(ch, g.Metrics)
	var ctrMem, ctrCPU float64
	ids := sortedKeys(g.Containers)
	if len(ids) > maxContainers {
		ids = ids[:maxContainers]
	}
	for _, id := range ids {
		st := g.Containers[id]
		mem := float64(st.GetMemory().GetUsage())
		cpu := float64(st.GetCpu().GetUsageUsec()) / 1e6
		ctrMem += mem
		ctrCPU += cpu
		gauge(d.ctrMem, mem, id)
		counter(d.ctrCPU, cpu, id)
	}
	if haveHost {
		gauge(d.overheadMem, max(hostRSS-ctrMem, 0))
		gauge(d.overheadCPU, max(hostCPU-ctrCPU, 0))
	}
}

// readGuest returns the guest's numbers, read again when the last read is
// older than GuestCacheFor. Concurrent scrapes share one read.
func (c *Collector) readGuest(src Source) (Guest, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.guestAt.IsZero() && time.Since(c.guestAt) < GuestCacheFor {
		return c.guest, c.guestErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	c.guest, c.guestErr = src.Guest(ctx)
	c.guestAt = time.Now()
	if c.guestErr != nil {
		log.G(ctx).WithError(c.guestErr).WithField("sandbox", c.labels.Sandbox).Debug("reading the guest's metrics")
	}
	return c.guest, c.guestErr
}

func (c *Collector) collectGuest(ch chan<- prometheus.Metric, m *agent.GuestMetricsResponse) {
	if m == nil {
		return
	}
	d := &c.d
	gauge := func(desc *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, lv...)
	}
	counter := func(desc *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), lv...)
	}
	if mem := m.GetMemory(); mem != nil {
		for _, kv := range []struct {
			k string
			v uint64
		}{
			{"total", mem.GetTotalBytes()}, {"free", mem.GetFreeBytes()}, {"available", mem.GetAvailableBytes()},
			{"buffers", mem.GetBuffersBytes()}, {"cached", mem.GetCachedBytes()}, {"shmem", mem.GetShmemBytes()},
			{"slab", mem.GetSlabBytes()}, {"swap_total", mem.GetSwapTotalBytes()}, {"swap_free", mem.GetSwapFreeBytes()},
		} {
			gauge(d.gMem, float64(kv.v), kv.k)
		}
	}
	if cpu := m.GetCpu(); cpu != nil {
		for _, kv := range []struct {
			k string
			v uint64
		}{
			{"user", cpu.GetUserUsec()}, {"nice", cpu.GetNiceUsec()}, {"system", cpu.GetSystemUsec()},
			{"idle", cpu.GetIdleUsec()}, {"iowait", cpu.GetIowaitUsec()}, {"irq", cpu.GetIrqUsec()},
			{"softirq", cpu.GetSoftirqUsec()}, {"steal", cpu.GetStealUsec()},
		} {
			ch <- prometheus.MustNewConstMetric(d.gCPU, prometheus.CounterValue, float64(kv.v)/1e6, kv.k)
		}
	}
	if l := m.GetLoad(); l != nil {
		gauge(d.gLoad1, l.GetLoad1())
		gauge(d.gLoad5, l.GetLoad5())
		gauge(d.gLoad15, l.GetLoad15())
		gauge(d.gRunning, float64(l.GetRunning()))
		gauge(d.gProcs, float64(l.GetTotal()))
	}
	seen := map[string]bool{}
	for _, i := range m.GetInterfaces() {
		name := deviceLabel(i.GetName())
		if name == "" || seen[name] || len(seen) >= maxGuestDevices {
			continue
		}
		seen[name] = true
		counter(d.netRxB, i.GetRxBytes(), name)
		counter(d.netRxP, i.GetRxPackets(), name)
		counter(d.netRxE, i.GetRxErrors(), name)
		counter(d.netRxD, i.GetRxDropped(), name)
		counter(d.netTxB, i.GetTxBytes(), name)
		counter(d.netTxP, i.GetTxPackets(), name)
		counter(d.netTxE, i.GetTxErrors(), name)
		counter(d.netTxD, i.GetTxDropped(), name)
	}
	seen = map[string]bool{}
	for _, k := range m.GetDisks() {
		name := deviceLabel(k.GetName())
		if name == "" || seen[name] || len(seen) >= maxGuestDevices {
			continue
		}
		seen[name] = true
		counter(d.diskReads, k.GetReads(), name)
		counter(d.diskReadB, k.GetReadBytes(), name)
		counter(d.diskWrites, k.GetWrites(), name)
		counter(d.diskWrittenB, k.GetWrittenBytes(), name)
		ch <- prometheus.MustNewConstMetric(d.diskIO, prometheus.CounterValue, float64(k.GetIoTimeMs())/1e3, name)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
