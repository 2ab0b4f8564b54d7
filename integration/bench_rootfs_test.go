package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// rootfsBenchVMs is how many VMs run at once for the shared-memory figure.
const rootfsBenchVMs = 10

// idleSettle is how long an idle sandbox is left before its memory is read:
// long enough for the guest's free page reporting (which waits 2 s after
// memory is freed) to have handed back what the boot freed.
const idleSettle = 5 * time.Second

// imageKind is one guest image of BenchmarkImageKind.
type imageKind struct {
	name string
	dir  string
	kind string
}

// benchImageKinds are the three guest images: Debian's kernel with its
// initrd (the suite's image, HULL_ASSETS_DIR), the hull kernel with its
// initrd (HULL_TEST_ASSETS_HULLKERNEL) and the hull kernel with the erofs
// root image on virtio-pmem with DAX (HULL_TEST_ASSETS_ROOTFS).
func benchImageKinds(b *testing.B) []imageKind {
	hull, _ := hullKernelAssets(b)
	rootfs, _ := rootfsAssets(b)
	return []imageKind{
		{"debian", env.assetsDir, guestimage.KindInitrd},
		{"hull-initrd", hull, guestimage.KindInitrd},
		{"hull-rootfs", rootfs, guestimage.KindRootfs},
	}
}

// BenchmarkImageKind compares the guest images of benchImageKinds. Each
// iteration starts one sandbox of each in turn (QEMU and virtiofsd, q35,
// 512 MiB, serial agent), so that drift in the machine's load hits all
// three; the figures are medians, reported with the image as prefix:
//
//   - "-start-ms": a whole sandbox start (QEMU, virtiofsd, boot, the
//     agent's first answer and the sandbox's setup) as the host sees it;
//   - "-guest-boot-to-serve-ms": the guest's own time from kernel start to
//     the agent serving;
//   - "-qemu-cpu-ms": the CPU time QEMU used up to the end of the start
//     (under TCG the guest's work and its translation; steadier than wall
//     time on a loaded host);
//   - "-pss-1vm-MiB": the proportional set size (PSS, /proc/PID/smaps) of
//     QEMU and virtiofsd together for one idle VM, idleSettle after its
//     start;
//   - "-pss-per-vm-10vm-MiB": the same per VM with rootfsBenchVMs idle VMs
//     at once (measured once per image): file pages shared between the
//     VMs (the kernel QEMU keeps mapped, the root image's pages with DAX,
//     QEMU's binary) count once in total;
//   - "-tcg-per-vm-10vm-MiB": the part of that which is TCG's
//     translated-code cache, which KVM does not have;
//     "-pss-per-vm-10vm-without-tcg-MiB" is the rest.
//
// The whole split of the 10-VM figure (guest RAM, translation cache, image
// files, QEMU's other memory, virtiofsd) is logged. "X/debian-*" are
// ratios. Run with -benchtime Nx for N rounds (make bench uses 5).
func BenchmarkImageKind(b *testing.B) {
	kinds := benchImageKinds(b)
	type samples struct {
		start, guest, cpu []time.Duration
		pss               []float64
	}
	runs := map[string]*samples{}
	for _, k := range kinds {
		runs[k.name] = &samples{}
	}
	for i := 0; b.Loop(); i++ {
		for _, k := range kinds {
			c := imageBenchConfig(b, k)
			t0 := time.Now()
			sbs, err := startSandboxes(c, fmt.Sprintf("kind-%s-%d", k.name, i), 1)
			if err != nil {
				b.Fatal(err)
			}
			r := runs[k.name]
			r.start = append(r.start, time.Since(t0))
			r.cpu = append(r.cpu, processCPU(sbs[0].VM().Describe().PID))
			d, err := sbs[0].System().GuestDetails(withTimeout(b, time.Minute), &agent.GuestDetailsRequest{})
			if err != nil {
				stopSandboxes(sbs)
				b.Fatal(err)
			}
			r.guest = append(r.guest, d.GetBootToServe().AsDuration())
			time.Sleep(idleSettle)
			r.pss = append(r.pss, sandboxPSS(c).totalMiB())
			stopSandboxes(sbs)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) }
	med := map[string]map[string]float64{}
	var units []string
	for _, k := range kinds {
		r := runs[k.name]
		c := imageBenchConfig(b, k)
		sbs, err := startSandboxes(c, "kind-"+k.name+"-many", rootfsBenchVMs)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(idleSettle)
		split := sandboxPSS(c).per(rootfsBenchVMs)
		stopSandboxes(sbs)
		med[k.name] = map[string]float64{
			"start-ms":                        ms(medianDuration(r.start)),
			"guest-boot-to-serve-ms":          ms(medianDuration(r.guest)),
			"qemu-cpu-ms":                     ms(medianDuration(r.cpu)),
			"pss-1vm-MiB":                     medianF(r.pss),
			"pss-per-vm-10vm-MiB":             split.totalMiB(),
			"tcg-per-vm-10vm-MiB":             mib(split.tcg),
			"pss-per-vm-10vm-without-tcg-MiB": split.totalMiB() - mib(split.tcg),
		}
		units = []string{"start-ms", "guest-boot-to-serve-ms", "qemu-cpu-ms", "pss-1vm-MiB", "pss-per-vm-10vm-MiB", "tcg-per-vm-10vm-MiB", "pss-per-vm-10vm-without-tcg-MiB"}
		b.Logf("%s: starts %v, guest boot to serve %v, QEMU CPU %v, PSS of one VM %v MiB", k.name, r.start, r.guest, r.cpu, r.pss)
		b.Logf("%s: PSS per VM with %d VMs: %s", k.name, rootfsBenchVMs, split)
	}
	for _, unit := range units {
		for _, k := range kinds {
			b.ReportMetric(med[k.name][unit], k.name+"-"+unit)
		}
	}
	base := med[kinds[0].name]
	for _, unit := range []string{"start-ms", "qemu-cpu-ms", "pss-1vm-MiB", "pss-per-vm-10vm-MiB"} {
		for _, k := range kinds[1:] {
			if base[unit] > 0 {
				b.ReportMetric(med[k.name][unit]/base[unit], k.name+"/"+kinds[0].name+"-"+strings.TrimSuffix(strings.TrimSuffix(unit, "-ms"), "-MiB"))
			}
		}
	}
}

func imageBenchConfig(b testing.TB, k imageKind) *config.Config {
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Image.AssetsDir = k.dir
	c.Image.Kind = k.kind
	// Under TCG on a loaded host a guest's first container can take
	// longer than the suite's 20 s per call.
	c.Agent.CallTimeout = config.Duration{Duration: 3 * time.Minute}
	// rootfsBenchVMs TCG boots queue for the boot slots: room for all of
	// them on a loaded machine.
	c.Agent.DialTimeout = config.Duration{Duration: 3 * time.Minute}
	c.Runtime.BootWaitTimeout = config.Duration{Duration: 20 * time.Minute}
	return c
}

// startSandboxes starts n sandboxes of c at once (the boot slots queue
// them) and returns them once all run; on error it stops those that
// started.
func startSandboxes(c *config.Config, prefix string, n int) ([]*sandbox.Sandbox, error) {
	sbs := make([]*sandbox.Sandbox, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sc, err := launch.SandboxConfig(c, fmt.Sprintf("%s-%d", prefix, i))
			if err != nil {
				errs[i] = err
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			sbs[i], errs[i] = sandbox.Start(ctx, sc)
		})
	}
	wg.Wait()
	var started []*sandbox.Sandbox
	var first error
	for i := range n {
		if errs[i] != nil && first == nil {
			first = errs[i]
		}
		if sbs[i] != nil {
			started = append(started, sbs[i])
		}
	}
	if first != nil {
		stopSandboxes(started)
		return nil, first
	}
	return started, nil
}

func stopSandboxes(sbs []*sandbox.Sandbox) {
	for _, sb := range sbs {
		_ = sb.Stop(context.Background())
	}
}

func mib(kib uint64) float64 { return float64(kib) / 1024 }

// pssSplit is the PSS of sandboxes' host processes in KiB, by where it
// goes.
type pssSplit struct {
	// guestRAM is QEMU's mapping of guest RAM: the pages the guest has
	// touched and not handed back.
	guestRAM uint64
	// tcg is TCG's translated-code cache, an anonymous executable mapping
	// of tb-size (absent under KVM).
	tcg uint64
	// image is the guest image's files that QEMU maps: the kernel (QEMU
	// keeps the ELF it loaded mapped), the initrd, the root image.
	image uint64
	// qemuAnon is QEMU's other anonymous memory: heap, thread arenas and
	// stacks (under TCG the vCPU's software TLB and translation tables
	// among them), device state.
	qemuAnon uint64
	// qemuFiles is QEMU's binary and shared libraries.
	qemuFiles uint64
	// virtiofsd is both virtiofsd processes (launcher and sandboxed
	// worker) of each sandbox.
	virtiofsd uint64
}

func (s pssSplit) total() uint64 {
	return s.guestRAM + s.tcg + s.image + s.qemuAnon + s.qemuFiles + s.virtiofsd
}

func (s pssSplit) totalMiB() float64 { return mib(s.total()) }

// per is s divided among n VMs.
func (s pssSplit) per(n int) pssSplit {
	d := uint64(n)
	return pssSplit{s.guestRAM / d, s.tcg / d, s.image / d, s.qemuAnon / d, s.qemuFiles / d, s.virtiofsd / d}
}

func (s pssSplit) String() string {
	return fmt.Sprintf("total %.1f MiB: guest RAM %.1f, TCG cache %.1f, image files %.1f, QEMU anonymous %.1f, QEMU binary and libraries %.1f, virtiofsd %.1f",
		s.totalMiB(), mib(s.guestRAM), mib(s.tcg), mib(s.image), mib(s.qemuAnon), mib(s.qemuFiles), mib(s.virtiofsd))
}

// sandboxPSS sums and splits the PSS of every process of c's sandboxes
// (QEMU and virtiofsd: the processes whose command line names c's state
// root).
func sandboxPSS(c *config.Config) pssSplit {
	var s pssSplit
	for _, pid := range processesMentioning(c.Runtime.StateDir) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "virtiofsd" {
			_, pss := e2e.SmapsRollup(pid)
			s.virtiofsd += pss
			continue
		}
		addQEMUSmaps(&s, pid, c.Image.AssetsDir)
	}
	return s
}

// addQEMUSmaps adds the PSS of QEMU process pid to s, mapping by mapping
// (/proc/PID/smaps).
func addQEMUSmaps(s *pssSplit, pid int, assetsDir string) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }() // read-only
	assets := filepath.Clean(assetsDir) + "/"
	var perms, path string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			// A mapping's header: range, perms, offset, device, inode, path.
			perms, path = fields[1], ""
			if len(fields) >= 6 {
				path = strings.Join(fields[5:], " ")
			}
			continue
		}
		if len(fields) < 2 || fields[0] != "Pss:" {
			continue
		}
		kib, _ := strconv.ParseUint(fields[1], 10, 64)
		switch {
		case strings.HasPrefix(path, "/memfd:memory-backend") || strings.HasPrefix(path, "/memfd:mem") ||
			strings.HasPrefix(path, "/memfd:hull-ram"): // a private clone's copy of its template's RAM
			s.guestRAM += kib
		case path == "" && perms == "rwxp":
			s.tcg += kib
		case strings.HasPrefix(path, assets):
			s.image += kib
		case strings.HasPrefix(path, "/"):
			s.qemuFiles += kib
		default:
			s.qemuAnon += kib
		}
	}
}
