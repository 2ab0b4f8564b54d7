package containerd

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// shimMemory is one shim's proportional set size (PSS, /proc/PID/smaps)
// in KiB, split by mapping: its own binary's file pages (text, rodata,
// data; shared by every shim of the same binary, so PSS divides them),
// anonymous memory (the Go heap, goroutine stacks, the runtime's own
// structures) and other files.
type shimMemory struct {
	total, binary, anon, other uint64
	// rss is the resident set, binaryRSS the binary's part of it.
	rss, binaryRSS uint64
	threads        int
	// anonMappings are the anonymous mappings' PSS in KiB, largest first.
	anonMappings []uint64
}

func readShimMemory(pid int) (shimMemory, error) {
	var m shimMemory
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return m, err
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	defer func() { _ = f.Close() }()
	kind := "anon"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			// A mapping's header: range perms offset dev inode [path].
			path := ""
			if len(fields) >= 6 {
				path = strings.Join(fields[5:], " ")
			}
			switch {
			case path == exe:
				kind = "binary"
			case path == "" || strings.HasPrefix(path, "["):
				kind = "anon"
			default:
				kind = "other"
			}
			continue
		}
		if len(fields) < 2 || (fields[0] != "Pss:" && fields[0] != "Rss:") {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		if fields[0] == "Rss:" {
			m.rss += v
			if kind == "binary" {
				m.binaryRSS += v
			}
			continue
		}
		m.total += v
		switch kind {
		case "binary":
			m.binary += v
		case "anon":
			m.anon += v
			if v > 0 {
				m.anonMappings = append(m.anonMappings, v)
			}
		default:
			m.other += v
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	slices.SortFunc(m.anonMappings, func(a, b uint64) int { return int(b) - int(a) })
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			m.threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return m, nil
}

func (m shimMemory) String() string {
	return fmt.Sprintf("pss=%.1fMiB (binary %.1f, anon %.1f, other %.1f) rss=%.1fMiB (binary %.1f) threads=%d anon mappings KiB %v",
		mib(m.total), mib(m.binary), mib(m.anon), mib(m.other), mib(m.rss), mib(m.binaryRSS), m.threads, m.anonMappings)
}

func mib(kib uint64) float64 { return float64(kib) / 1024 }

// shimPid is the pid of the shim of container id.
func shimPid(d *daemon, id string) int {
	for _, pid := range podProcesses(d, id) {
		if processName(pid) == "containerd-shim" || strings.HasPrefix(processName(pid), "containerd-shim") {
			return pid
		}
	}
	return 0
}

// BenchmarkShimMemory measures what the shim of an idle pod costs: the
// hull-rootfs image (HULL_TEST_ASSETS_ROOTFS) through containerd 1.6,
// `ctr run -d <busybox> sleep 1000`, the PSS of the shim 8 s after the
// first pod started (one pod) and 8 s after the tenth (ten pods), split
// by mapping (readShimMemory). HULL_BENCH_SHIMS=name=dir,name=dir
// alternates shim binaries (a directory holding containerd-shim-hull-v2
// each) round by round, one daemon each; by default the suite's shim.
func BenchmarkShimMemory(b *testing.B) {
	rootfs := os.Getenv("HULL_TEST_ASSETS_ROOTFS")
	if rootfs == "" {
		b.Fatal("HULL_TEST_ASSETS_ROOTFS is not set: it names the hull-rootfs guest image (make image-rootfs)")
	}
	type variant struct{ name, dir string }
	variants := []variant{{"this", env.shimDir}}
	if s := os.Getenv("HULL_BENCH_SHIMS"); s != "" {
		variants = nil
		for _, v := range strings.Split(s, ",") {
			name, dir, ok := strings.Cut(v, "=")
			if !ok {
				b.Fatalf("HULL_BENCH_SHIMS: %q is not name=dir", v)
			}
			variants = append(variants, variant{name, dir})
		}
	}
	const pods = 10
	containerdPath, ctrPath := daemonBinaries(b, "1.6")
	one := map[string][]float64{}
	ten := map[string][]float64{}
	for round := 0; b.Loop(); round++ {
		for _, v := range variants {
			d := startDaemonWith(b, containerdPath, ctrPath, daemonOptions{assetsDir: rootfs, shimDir: v.dir})
			var ids []string
			for i := 0; i < pods; i++ {
				id := fmt.Sprintf("shim-%d-%s-%d", round, v.name, i)
				d.mustCtr(b, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", d.hullConfigPath(), imageName, id, "sleep", "1000")
				ids = append(ids, id)
				if i == 0 {
					time.Sleep(8 * time.Second)
					m, err := readShimMemory(shimPid(d, id))
					if err != nil {
						b.Fatal(err)
					}
					one[v.name] = append(one[v.name], mib(m.total))
					b.Logf("round %d %s, 1 pod: %v", round, v.name, m)
				}
			}
			time.Sleep(8 * time.Second)
			var totals []float64
			var sum shimMemory
			for _, id := range ids {
				m, err := readShimMemory(shimPid(d, id))
				if err != nil {
					b.Fatal(err)
				}
				totals = append(totals, mib(m.total))
				sum.total += m.total
				sum.binary += m.binary
				sum.anon += m.anon
				sum.other += m.other
				sum.rss += m.rss
				sum.binaryRSS += m.binaryRSS
				sum.threads += m.threads
				b.Logf("round %d %s, %d pods, %s: %v", round, v.name, pods, id, m)
			}
			slices.Sort(totals)
			ten[v.name] = append(ten[v.name], totals[len(totals)/2])
			b.Logf("round %d %s, %d pods: mean per shim pss=%.1fMiB (binary %.1f, anon %.1f, other %.1f) rss=%.1f (binary %.1f) threads=%.1f; median pss %.1f (%.1f-%.1f)",
				round, v.name, pods, mib(sum.total)/pods, mib(sum.binary)/pods, mib(sum.anon)/pods, mib(sum.other)/pods,
				mib(sum.rss)/pods, mib(sum.binaryRSS)/pods, float64(sum.threads)/pods, totals[len(totals)/2], totals[0], totals[len(totals)-1])
			for _, id := range ids {
				d.mustCtr(b, "task", "kill", "-s", "KILL", id)
			}
			for _, id := range ids {
				waitGone(b, d, id)
				d.mustCtr(b, "container", "delete", id)
			}
			d.checkClean(b)
			d.stop(b)
		}
	}
	for _, v := range variants {
		o, t := slices.Clone(one[v.name]), slices.Clone(ten[v.name])
		slices.Sort(o)
		slices.Sort(t)
		b.ReportMetric(o[len(o)/2], v.name+"-shim-1pod-pss-MiB")
		b.ReportMetric(t[len(t)/2], v.name+"-shim-10pods-pss-MiB")
	}
}
