package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

const benchBytes = 100 << 20

// medianDuration is the median of ds.
func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// countWriter counts and discards.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// benchSandbox starts a sandbox with room for the benchmarks' files.
func benchSandbox(b *testing.B, id string) *sandbox.Sandbox {
	c := testConfig(b)
	c.Agent.Transport = "serial"
	c.Hypervisor.MemoryMiB = 1024
	// Under TCG on a loaded host a guest's first container can take
	// longer than the suite's 20 s per call.
	c.Agent.CallTimeout = config.Duration{Duration: 3 * time.Minute}
	return startSandbox(b, c, id)
}

// BenchmarkContainerStartExit measures create + start + exit + delete of
// `true` in a running VM.
func BenchmarkContainerStartExit(b *testing.B) {
	sb := benchSandbox(b, "bench-start")
	bundle, spec := busyboxBundle(b, "true")
	ctx := withTimeout(b, 10*time.Minute)
	var ds []time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: fmt.Sprintf("t%d", i), Bundle: bundle, Spec: spec})
		if err != nil {
			b.Fatal(err)
		}
		if err := ctr.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if st, err := ctr.Wait(ctx); err != nil || st.Code != 0 {
			b.Fatalf("wait: %v %v", st, err)
		}
		if err := ctr.Delete(ctx, false); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	b.ReportMetric(float64(medianDuration(ds).Microseconds())/1000, "median-ms")
}

// BenchmarkStdoutThroughput moves 100 MiB through a container's stdout,
// with hull (start to exit) and with runc on the host (the whole `runc run`).
func BenchmarkStdoutThroughput(b *testing.B) {
	args := []string{"head", "-c", fmt.Sprint(benchBytes), "/dev/zero"}
	b.Run("hull", func(b *testing.B) {
		sb := benchSandbox(b, "bench-out")
		bundle, spec := busyboxBundle(b, args...)
		ctx := withTimeout(b, 10*time.Minute)
		var rates []float64
		for i := 0; b.Loop(); i++ {
			var w countWriter
			ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: fmt.Sprintf("o%d", i), Bundle: bundle, Spec: spec, Stdio: sandbox.IO{Stdout: &w}})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := ctr.Start(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := ctr.Wait(ctx); err != nil {
				b.Fatal(err)
			}
			d := time.Since(start)
			if w.n != benchBytes {
				b.Fatalf("got %d bytes", w.n)
			}
			rates = append(rates, mbps(w.n, d))
			if err := ctr.Delete(ctx, false); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(medianF(rates), "median-MB/s")
	})
	b.Run("runc", func(b *testing.B) {
		runc := needRunc(b)
		bundle, spec := busyboxBundle(b, args...)
		spec.Linux.CgroupsPath = ""
		writeSpec(b, bundle, spec)
		var rates []float64
		for i := 0; b.Loop(); i++ {
			cmd := exec.Command(runc, "--root", filepath.Join(env.workDir, "runc-root"), "run", "--bundle", bundle, fmt.Sprintf("hull-bench-%d-%d", os.Getpid(), i))
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, out)
			if err := cmd.Wait(); err != nil {
				b.Fatalf("runc run: %v", err)
			}
			d := time.Since(start)
			if n != benchBytes {
				b.Fatalf("got %d bytes", n)
			}
			rates = append(rates, mbps(n, d))
		}
		b.ReportMetric(medianF(rates), "median-MB/s")
	})
}

// BenchmarkContainerRead reads 100 MiB sequentially (`dd bs=1M`, timed by
// exec) in a container, from three places in the same VM, in turn in each
// iteration:
//
//   - "virtiofs": a new file of the container's root shared over
//     virtio-fs (cold in the guest, warm in the host's page cache);
//   - "block": the same bytes in a container whose root is an ext4 image,
//     as containerd's blockfile snapshotter hands it over (type ext4,
//     option loop): the image is hot-added to the VM as a virtio-blk disk
//     and mounted by the agent; a new image and container each iteration,
//     so the guest reads it cold (the host's page cache holds it: mkfs
//     just wrote it);
//   - "tmpfs": the same file copied into a tmpfs in the guest (memory to
//     memory, the ceiling).
//
// Medians in MB/s, and the ratios to tmpfs.
func BenchmarkContainerRead(b *testing.B) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		b.Fatalf("mkfs.ext4 not found (apt-get install e2fsprogs): %v", err)
	}
	sb := benchSandbox(b, "bench-read")
	bundle, spec := busyboxBundle(b, "sleep", "100000")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=256m"}})
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs/data"), 0o755); err != nil {
		b.Fatal(err)
	}
	ctx := withTimeout(b, 20*time.Minute)
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "fs", Bundle: bundle, Spec: spec})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ctr.Delete(context.Background(), true) })
	if err := ctr.Start(ctx); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, benchBytes)
	for i := range data {
		data[i] = byte(i * 7)
	}
	// The block root's tree: the busybox root with the file in /data.
	blkBundle, blkSpec := busyboxBundle(b, "sleep", "100000")
	if err := os.MkdirAll(filepath.Join(blkBundle, "rootfs/data"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blkBundle, "rootfs/data/f"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	imgDir := b.TempDir()
	run := func(c *sandbox.Container, name string, args ...string) time.Duration {
		proc := *spec.Process
		proc.Args = args
		var errOut e2e.SyncBuffer
		start := time.Now()
		p, err := c.Exec(ctx, name, &proc, sandbox.IO{Stderr: &errOut})
		if err != nil {
			b.Fatal(err)
		}
		st, err := p.Wait(ctx)
		if err != nil || st.Code != 0 {
			b.Fatalf("%v: %v %v %s", args, st, err, errOut.String())
		}
		return time.Since(start)
	}
	var vfs, blk, tmpfs []float64
	for i := 0; b.Loop(); i++ {
		f := fmt.Sprintf("f%d", i)
		if err := os.WriteFile(filepath.Join(bundle, "rootfs/data", f), data, 0o644); err != nil {
			b.Fatal(err)
		}
		vfs = append(vfs, mbps(benchBytes, run(ctr, fmt.Sprintf("v%d", i), "dd", "if=/data/"+f, "of=/dev/null", "bs=1M")))
		run(ctr, fmt.Sprintf("c%d", i), "cp", "/data/"+f, "/scratch/f")
		tmpfs = append(tmpfs, mbps(benchBytes, run(ctr, fmt.Sprintf("t%d", i), "dd", "if=/scratch/f", "of=/dev/null", "bs=1M")))
		run(ctr, fmt.Sprintf("r%d", i), "rm", "/scratch/f")
		_ = os.Remove(filepath.Join(bundle, "rootfs/data", f))

		img := filepath.Join(imgDir, "root.ext4")
		e2e.MakeExt4(b, img, "160M", filepath.Join(blkBundle, "rootfs"))
		bc, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
			ID: fmt.Sprintf("blk%d", i), Bundle: blkBundle, Spec: blkSpec,
			Rootfs: []storage.Mount{{Type: "ext4", Source: img, Options: []string{"loop", "rw"}}},
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := bc.Start(ctx); err != nil {
			b.Fatal(err)
		}
		blk = append(blk, mbps(benchBytes, run(bc, fmt.Sprintf("b%d", i), "dd", "if=/data/f", "of=/dev/null", "bs=1M")))
		if err := bc.Delete(ctx, true); err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(img)
	}
	b.ReportMetric(medianF(vfs), "virtiofs-median-MB/s")
	b.ReportMetric(medianF(blk), "block-median-MB/s")
	b.ReportMetric(medianF(tmpfs), "tmpfs-median-MB/s")
	if t := medianF(tmpfs); t > 0 {
		b.ReportMetric(medianF(vfs)/t, "virtiofs/tmpfs")
		b.ReportMetric(medianF(blk)/t, "block/tmpfs")
	}
	b.Logf("MB/s: virtio-fs %.1f, block %.1f, tmpfs %.1f", vfs, blk, tmpfs)
}

func medianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// needRunc returns runc, installing Debian's package when it is missing,
// and fails the benchmark when it cannot.
func needRunc(b *testing.B) string {
	b.Helper()
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	out, err := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "runc").CombinedOutput()
	if p, lerr := exec.LookPath("runc"); lerr == nil {
		return p
	}
	b.Fatalf("runc is needed to compare with and could not be installed (apt-get install runc): %v\n%s", err, out)
	return ""
}
