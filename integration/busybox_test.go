package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// busyboxBinary is the static busybox every test rootfs is made of
// (Debian's busybox-static).
const busyboxBinary = "/bin/busybox"

// busyboxApplets caches `busybox --list`.
var busyboxApplets = sync.OnceValues(func() ([]string, error) {
	out, err := exec.Command(busyboxBinary, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w (apt-get install busybox-static)", busyboxBinary, err)
	}
	return strings.Fields(string(out)), nil
})

// busyboxBundle makes an OCI bundle in a temporary directory: rootfs/ with
// busybox and its applets, /etc/passwd and /etc/group (root and user 1000),
// /tmp and the mount points, and config.json with the default spec running
// args. It returns the bundle directory and the spec, which the caller may
// change and write again with writeSpec.
func busyboxBundle(t testing.TB, args ...string) (string, *specs.Spec) {
	t.Helper()
	applets, err := busyboxApplets()
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(busyboxBinary); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("%s missing (apt-get install busybox-static): %v", busyboxBinary, err)
	}
	bundle := t.TempDir()
	root := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/user"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(root, "home/user"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(busyboxBinary)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
		"etc/group":  "root:x:0:\nuser:x:1000:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := defaultSpec(args...)
	writeSpec(t, bundle, spec)
	return bundle, spec
}

// defaultSpec is runc's example spec, made to run args without a terminal
// on a writable root.
func defaultSpec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root.Readonly = false
	s.Process.Terminal = false
	s.Process.Args = args
	s.Hostname = "hull-test"
	// The guest has cgroup v2; runc's example adds the cgroup namespace
	// only when the machine that builds the spec has v2 too.
	if !slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.CgroupNamespace }) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	return s
}

// writeSpec writes spec as the bundle's config.json.
func writeSpec(t testing.TB, bundle string, spec *specs.Spec) {
	t.Helper()
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// containerConfig returns the test configuration with, beside the leak
// checks of testConfig, a check that no mount is left under the state root.
func containerConfig(t *testing.T) *config.Config {
	t.Helper()
	c := testConfig(t)
	c.Agent.Transport = "serial"
	// Registered after testConfig's check, so it runs before it removes
	// the state root (and after the sandboxes' stops, registered later).
	t.Cleanup(func() { assertNoMounts(t, c.Runtime.StateDir) })
	return c
}

// assertNoMounts fails the test when /proc/self/mountinfo has a mount point
// under root, and unmounts it.
func assertNoMounts(t testing.TB, root string) {
	t.Helper()
	ms, err := e2e.MountsUnder(root)
	if err != nil {
		t.Error(err)
	}
	for _, m := range ms {
		t.Errorf("mount %s left behind", m)
		_ = exec.Command("umount", "-l", m).Run()
	}
}

// result is what a container run produced.
type result struct {
	stdout, stderr string
	status         int
}

// runContainer creates, starts and waits for a container of the bundle,
// then deletes it.
func runContainer(t *testing.T, sb *sandbox.Sandbox, id, bundle string, spec *specs.Spec) result {
	t.Helper()
	ctx := withTimeout(t, 2*time.Minute)
	var stdout, stderr e2e.SyncBuffer
	ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: id, Bundle: bundle, Spec: spec,
		Stdio: sandbox.IO{Stdout: &stdout, Stderr: &stderr},
	})
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	defer deleteContainer(t, ctr)
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	st, err := ctr.Wait(ctx)
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), status: st.Code}
}

// deleteContainer force-deletes a container and checks that its storage is
// gone.
func deleteContainer(t testing.TB, ctr *sandbox.Container) {
	t.Helper()
	if err := ctr.Delete(context.Background(), true); err != nil {
		t.Errorf("delete %s: %v", ctr.ID(), err)
	}
}

// writeHullConfig writes c as a configuration file for the hull binary.
func writeHullConfig(t testing.TB, c *config.Config) string {
	t.Helper()
	b, err := toml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "configuration.toml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
