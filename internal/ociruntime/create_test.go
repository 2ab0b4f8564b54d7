package ociruntime

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// selfEnv makes the test binary act as hull-runtime when create re-executes
// it (/proc/self/exe) as the supervisor.
const selfEnv = "OCIRUNTIME_TEST_AS_HULL_RUNTIME"

func TestMain(m *testing.M) {
	if os.Getenv(selfEnv) == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// TestCreateHookFailure runs create with a bundle whose createRuntime hook
// fails: the create fails with the hook's output, leaves no state
// directory and no supervisor, and the hooks saw the supervisor's PID in a
// network namespace of its own (the one the VM would mirror).
func TestCreateHookFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("creating a network namespace needs root (required when CI is set)")
		}
		t.Skip("creating a network namespace needs root")
	}
	t.Setenv(selfEnv, "1")
	dir := t.TempDir()
	seen := filepath.Join(dir, "seen")
	// The first hook records the PID of the state and its namespace.
	record := writeScript(t, `pid=$(sed 's/.*"pid":\([0-9]*\).*/\1/'); echo "$pid $(readlink /proc/$pid/ns/net)" > `+seen)
	fail := writeScript(t, "echo no-network-for-you >&2; exit 1")
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}, {Type: specs.MountNamespace}}},
		Hooks: &specs.Hooks{
			Prestart:      []specs.Hook{{Path: record}}, //nolint:staticcheck // Docker's
			CreateRuntime: []specs.Hook{{Path: fail}},
		},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	hullConfig := filepath.Join(dir, "hull.toml")
	if err := os.WriteFile(hullConfig, []byte("[image]\nassets_dir = \""+dir+"\"\n[runtime]\nstate_dir = \""+filepath.Join(dir, "sb")+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	pidFile := filepath.Join(dir, "pid")
	code, _, logText := run(t, "--root", root, "--hull-config", hullConfig, "create", "--bundle", bundle, "--pid-file", pidFile, "c1")
	if code != 1 || !strings.Contains(logText, "no-network-for-you") || !strings.Contains(logText, "createRuntime") {
		t.Fatalf("create: status %d, log %s; want a failure quoting the hook", code, logText)
	}
	if _, err := os.Stat(filepath.Join(root, "c1")); !os.IsNotExist(err) {
		t.Errorf("state directory left: %v", err)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file written: %v", err)
	}
	b, err = os.ReadFile(seen)
	if err != nil {
		t.Fatalf("the prestart hook did not run: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("prestart hook saw %q", b)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		t.Fatalf("state pid %q", f[0])
	}
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if f[1] == "" || f[1] == own {
		t.Errorf("the supervisor's network namespace %q is not a new one (ours: %s)", f[1], own)
	}
	if _, err := os.Stat("/proc/" + f[0]); !os.IsNotExist(err) {
		if st, _ := os.ReadFile("/proc/" + f[0] + "/cmdline"); strings.Contains(string(st), "_supervise") {
			t.Errorf("the supervisor %d outlived the failed create", pid)
		}
	}
}
