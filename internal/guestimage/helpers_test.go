package guestimage

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// shared is a scratch directory for artifacts that are expensive to make
// and shared by tests of one run (the unpacked kernel, the test init).
var shared string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "guestimage-test-")
	if err != nil {
		panic(err)
	}
	shared = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// needed fails in CI and skips elsewhere: a missing tool or input is a
// failure where the environment is supposed to provide it.
func needed(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (required when CI is set)")
	}
	t.Skip(msg)
}

// requireTool returns the path of an executable or stops the test.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		needed(t, "test needs "+name+" in PATH")
	}
	return p
}

// requireKernelDeb returns a Debian kernel package: $HULL_KERNEL_DEB, or
// the newest linux-image .deb in the default cache.
func requireKernelDeb(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HULL_KERNEL_DEB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("HULL_KERNEL_DEB: %v", err)
		}
		return p
	}
	m, _ := filepath.Glob(filepath.Join(DefaultCacheDir, "debs", "linux-image-*.deb"))
	if len(m) == 0 {
		needed(t, "test needs a Debian kernel package: set HULL_KERNEL_DEB to a linux-image-*.deb, "+
			"or fill "+filepath.Join(DefaultCacheDir, "debs")+" (apt-get download linux-image-<release>)")
	}
	sort.Strings(m)
	return m[len(m)-1]
}

var (
	realKernelOnce sync.Once
	realKernelVal  *Kernel
	realKernelErr  error
)

// realKernel unpacks the real kernel package once per test run.
func realKernel(t *testing.T) *Kernel {
	t.Helper()
	deb := requireKernelDeb(t)
	realKernelOnce.Do(func() {
		realKernelVal, realKernelErr = PrepareKernel(context.Background(), Options{
			KernelDeb: deb, CacheDir: filepath.Join(shared, "cache"),
		})
	})
	if realKernelErr != nil {
		t.Fatalf("preparing %s: %v", deb, realKernelErr)
	}
	return realKernelVal
}

var (
	bootInitOnce sync.Once
	bootInitPath string
	bootInitErr  error
)

// bootInit builds testdata/bootinit statically: a stand-in agent that
// loads the module list and powers off.
func bootInit(t *testing.T) string {
	t.Helper()
	goTool := requireTool(t, "go")
	bootInitOnce.Do(func() {
		bootInitPath = filepath.Join(shared, "bootinit")
		cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", bootInitPath, "./testdata/bootinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			bootInitErr = err
			bootInitPath = string(out)
		}
	})
	if bootInitErr != nil {
		t.Fatalf("building bootinit: %v\n%s", bootInitErr, bootInitPath)
	}
	return bootInitPath
}
