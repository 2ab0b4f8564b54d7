package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/procfs"
)

// Bounds of GuestMetrics: the /proc bytes read per file and the devices
// reported.
const (
	maxProcRead       = 256 << 10
	maxMetricsDevices = 64
	// userHZ is the unit of /proc/stat's CPU times.
	userHZ = 100
	// sectorBytes is the unit of /proc/diskstats' sector counts.
	sectorBytes = 512
)

// GuestMetrics reads the guest's counters from /proc. A file that cannot be
// read leaves its part empty; the call fails only when none could be read.
func (s *systemService) GuestMetrics(ctx context.Context, _ *api.GuestMetricsRequest) (*api.GuestMetricsResponse, error) {
	r := &api.GuestMetricsResponse{}
	var errs int
	if b, err := procfs.ReadFile("/proc/meminfo", maxProcRead); err == nil {
		r.Memory = parseGuestMemory(b)
	} else {
		errs++
	}
	if b, err := procfs.ReadFile("/proc/stat", maxProcRead); err == nil {
		r.Cpu = parseGuestCPU(b)
	} else {
		errs++
	}
	if b, err := procfs.ReadFile("/proc/loadavg", maxProcRead); err == nil {
		r.Load = parseGuestLoad(b)
	} else {
		errs++
	}
	if b, err := procfs.ReadFile("/proc/net/dev", maxProcRead); err == nil {
		r.Interfaces = parseNetDev(b)
	} else {
		errs++
	}
	if b, err := procfs.ReadFile("/proc/diskstats", maxProcRead); err == nil {
		r.Disks = parseDiskstats(b)
	} else {
		errs++
	}
	if errs == 5 {
		return nil, fmt.Errorf("reading /proc: no file readable")
	}
	return r, nil
}

// parseGuestMemory parses /proc/meminfo.
func parseGuestMemory(b []byte) *api.GuestMemory {
	m := &api.GuestMemory{}
	fields := map[string]*uint64{
		"MemTotal": &m.TotalBytes, "MemFree": &m.FreeBytes, "MemAvailable": &m.AvailableBytes,
		"Buffers": &m.BuffersBytes, "Cached": &m.CachedBytes, "Shmem": &m.ShmemBytes, "Slab": &m.SlabBytes,
		"SwapTotal": &m.SwapTotalBytes, "SwapFree": &m.SwapFreeBytes,
	}
	for k, n := range procfs.ParseKB(b) {
		if dst := fields[k]; dst != nil {
			*dst = n
		}
	}
	return m
}

// parseGuestCPU parses the all-CPU line of /proc/stat.
func parseGuestCPU(b []byte) *api.GuestCPU {
	c := &api.GuestCPU{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		dst := []*uint64{&c.UserUsec, &c.NiceUsec, &c.SystemUsec, &c.IdleUsec, &c.IowaitUsec, &c.IrqUsec, &c.SoftirqUsec, &c.StealUsec}
		for i, d := range dst {
			if i+1 >= len(f) {
				break
			}
			if n, err := strconv.ParseUint(f[i+1], 10, 64); err == nil {
				*d = n * (1_000_000 / userHZ)
			}
		}
		break
	}
	return c
}

// parseGuestLoad parses /proc/loadavg: "0.00 0.01 0.05 1/80 123".
func parseGuestLoad(b []byte) *api.GuestLoad {
	l := &api.GuestLoad{}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return l
	}
	l.Load1, _ = strconv.ParseFloat(f[0], 64)
	l.Load5, _ = strconv.ParseFloat(f[1], 64)
	l.Load15, _ = strconv.ParseFloat(f[2], 64)
	if run, total, ok := strings.Cut(f[3], "/"); ok {
		r, _ := strconv.ParseUint(run, 10, 32)
		t, _ := strconv.ParseUint(total, 10, 32)
		l.Running, l.Total = uint32(r), uint32(t)
	}
	return l
}

// parseNetDev parses /proc/net/dev, without the loopback device.
func parseNetDev(b []byte) []*api.GuestInterface {
	var out []*api.GuestInterface
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && len(out) < maxMetricsDevices {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		name = strings.TrimSpace(name)
		if !ok || name == "lo" || name == "" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue
		}
		n := make([]uint64, 16)
		for i := range n {
			n[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		out = append(out, &api.GuestInterface{
			Name:    name,
			RxBytes: n[0], RxPackets: n[1], RxErrors: n[2], RxDropped: n[3],
			TxBytes: n[8], TxPackets: n[9], TxErrors: n[10], TxDropped: n[11],
		})
	}
	return out
}

// parseDiskstats parses /proc/diskstats, keeping the devices that did I/O
// and are not partitions, loop or ram devices.
func parseDiskstats(b []byte) []*api.GuestDisk {
	var out []*api.GuestDisk
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && len(out) < maxMetricsDevices {
		f := strings.Fields(sc.Text())
		if len(f) < 14 {
			continue
		}
		name := f[2]
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || isPartition(name) {
			continue
		}
		n := make([]uint64, 11)
		for i := range n {
			n[i], _ = strconv.ParseUint(f[3+i], 10, 64)
		}
		if n[0] == 0 && n[4] == 0 {
			continue
		}
		out = append(out, &api.GuestDisk{
			Name:  name,
			Reads: n[0], ReadBytes: n[2] * sectorBytes,
			Writes: n[4], WrittenBytes: n[6] * sectorBytes,
			IoTimeMs: n[9],
		})
	}
	return out
}

// isPartition tells vda1 or pmem0p1 from vda or pmem0, by the device's
// partition file in sysfs.
func isPartition(name string) bool {
	if strings.ContainsAny(name, "/.") {
		return true
	}
	_, err := os.Stat("/sys/class/block/" + name + "/partition")
	return err == nil
}
