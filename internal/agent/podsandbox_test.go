package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

func pauseSpec(id string) *specs.Spec {
	// containerd gives -998; a positive value here, since lowering it
	// needs CAP_SYS_RESOURCE, which the host of a test may lack (the
	// guest's agent has it; the VM test checks -998).
	oom := 321
	return &specs.Spec{
		Hostname: "podhost",
		Process: &specs.Process{
			Args: []string{"/pause"}, Cwd: "/",
			User: specs.User{UID: 65534, GID: 65534, AdditionalGids: []uint32{65533}},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  []string{"CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"},
				Permitted: []string{"CAP_CHOWN", "CAP_KILL"},
			},
			Rlimits:     []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 512}},
			OOMScoreAdj: &oom,
		},
		Linux: &specs.Linux{
			CgroupsPath: "/hull-test/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			Sysctl: map[string]string{"kernel/shmmni": "1234", "fs.mqueue.msg_max": "20"},
		},
	}
}

// specJSON is the spec encoded.
func specJSON(t *testing.T, s *specs.Spec) []byte {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPausePlan(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*specs.Spec)
		flags uintptr
		class func(error) bool
	}{
		{name: "pod namespaces", flags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS},
		{name: "no PID namespace (hostPID)", edit: func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[1:] },
			flags: unix.CLONE_NEWNS | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS},
		{name: "joining a namespace", edit: func(s *specs.Spec) { s.Linux.Namespaces[1].Path = "/proc/1/ns/ipc" }, class: errdefs.IsInvalidArgument},
		{name: "user namespace", edit: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		}, class: errdefs.IsNotImplemented},
		{name: "IPC sysctl without IPC namespace", edit: func(s *specs.Spec) {
			s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.UTSNamespace}}
		}, class: errdefs.IsInvalidArgument},
		{name: "hostname without UTS namespace", edit: func(s *specs.Spec) {
			s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.IPCNamespace}}
		}, class: errdefs.IsInvalidArgument},
		{name: "kernel.hostname sysctl", edit: func(s *specs.Spec) { s.Linux.Sysctl["kernel.hostname"] = "x" }, class: errdefs.IsInvalidArgument},
		{name: "kernel/hostname sysctl", edit: func(s *specs.Spec) { s.Linux.Sysctl["kernel/hostname"] = "x" }, class: errdefs.IsInvalidArgument},
		{name: "sysctl of no namespace", edit: func(s *specs.Spec) { s.Linux.Sysctl["vm.swappiness"] = "1" }, class: errdefs.IsInvalidArgument},
		{name: "sysctl that climbs", edit: func(s *specs.Spec) { s.Linux.Sysctl["fs.mqueue...x"] = "1" }, class: errdefs.IsInvalidArgument},
		{name: "unknown rlimit", edit: func(s *specs.Spec) { s.Process.Rlimits[0].Type = "RLIMIT_X" }, class: errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := pauseSpec("plan")
			if tc.edit != nil {
				tc.edit(s)
			}
			flags, cfg, err := pausePlan(s, "/root", "/bin")
			if tc.class != nil {
				if err == nil || !tc.class(err) {
					t.Fatalf("pausePlan: %v; want an error of another class", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if flags != tc.flags {
				t.Errorf("flags %#x, want %#x", flags, tc.flags)
			}
			// Only what the spec both bounds and permits stays.
			if len(cfg.Bounding) != 2 || cfg.Bounding[0] != unix.CAP_CHOWN || cfg.Bounding[1] != unix.CAP_KILL {
				t.Errorf("bounding set %v, want [%d %d]", cfg.Bounding, unix.CAP_CHOWN, unix.CAP_KILL)
			}
			if cfg.UID != 65534 || cfg.GID != 65534 || cfg.Hostname != "podhost" || len(cfg.Sysctl) != 2 || len(cfg.Rlimits) != 1 {
				t.Errorf("configuration %+v", cfg)
			}
			if _, ok := cfg.Sysctl["kernel.shmmni"]; !ok {
				t.Errorf("sysctls %v: want kernel/shmmni as kernel.shmmni", cfg.Sysctl)
			}
			if !cfg.CgroupNS {
				t.Error("no cgroup namespace; the spec asks for one")
			}
			if cfg.OOMScoreAdj == nil || *cfg.OOMScoreAdj != 321 {
				t.Errorf("oomScoreAdj %v, want 321", cfg.OOMScoreAdj)
			}
		})
	}
}

// procStatus reads fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func nsOf(t *testing.T, pid, kind string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join("/proc", pid, "ns", kind))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPodSandboxProcess makes pod sandbox containers on this host (as
// root, with this test binary as the agent's binary) and checks what a
// pod's containers meet: the namespaces, the hostname and IPC sysctls in
// them, the user, capabilities and root of the process, the reaping of
// orphans in its PID namespace, and the container operations: signals
// and exit statuses, refused operations, removal with its cgroup.
func TestPodSandboxProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it makes namespaces and cgroups")
	}
	for _, tool := range []string{"nsenter", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s: %v", tool, err)
		}
	}
	// The setup stage runs the agent's binary, as in the guest (this test
	// binary need not be static); the root holds the waiting stage's
	// binary, hull-pause, alone.
	exe := filepath.Join(t.TempDir(), "hull-agent")
	cmd := exec.Command("go", "build", "-tags", "netgo,osusergo,seccomp",
		"-ldflags", "-s -w -linkmode external -extldflags -static", "-o", exe, "./cmd/hull-agent")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building hull-agent: %v\n%s", err, b)
	}
	a := &Agent{reaper: newReaper("/proc"), streams: newStreamTable(time.Minute)}
	s := newContainerService(a, testGuestPaths(t))
	s.pauseExe, s.pauseBin = exe, BuildPause(t, t.TempDir())
	s.sandboxID = "sb"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	createSpec := func(t *testing.T, id string, spec *specs.Spec) int {
		t.Helper()
		b := specJSON(t, spec)
		r, err := s.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: id, Spec: b, PodSandbox: true})
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		t.Cleanup(func() {
			_, _ = s.RemoveContainer(context.Background(), &api.RemoveContainerRequest{ContainerId: id, Force: true})
		})
		if _, err := s.StartContainer(ctx, &api.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		return int(r.GetPid())
	}
	create := func(t *testing.T, id string) int {
		t.Helper()
		return createSpec(t, id, pauseSpec(id))
	}
	wait := func(t *testing.T, id string) int32 {
		t.Helper()
		r, err := s.WaitProcess(ctx, &api.WaitProcessRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("WaitProcess: %v", err)
		}
		return r.GetExitStatus()
	}

	t.Run("what members meet", func(t *testing.T) {
		pid := create(t, "pod1")
		p := fmt.Sprint(pid)
		for _, kind := range []string{"ipc", "uts", "pid", "mnt", "cgroup"} {
			if nsOf(t, p, kind) == nsOf(t, "self", kind) {
				t.Errorf("%s namespace is the agent's", kind)
			}
		}
		if nsOf(t, p, "net") != nsOf(t, "self", "net") {
			t.Error("network namespace is not the agent's (the guest's, which holds the pod network)")
		}
		out, err := exec.Command("nsenter", "-t", p, "-u", "-i", "--", "sh", "-c", "hostname; cat /proc/sys/kernel/shmmni").CombinedOutput()
		if err != nil || string(out) != "podhost\n1234\n" {
			t.Errorf("hostname and kernel.shmmni in its namespaces: %q, %v; want podhost, 1234", out, err)
		}
		// Its cgroup namespace is rooted at its cgroup where it is born
		// in it, on cgroup v2 (the guest's); on a v1 host it is moved in
		// after (the VM test checks the root).
		out, err = exec.Command("nsenter", "-t", p, "-C", "--", "grep", "^0::", "/proc/"+p+"/cgroup").CombinedOutput()
		if cgroups.IsCgroup2UnifiedMode() {
			if err != nil || string(out) != "0::/\n" {
				t.Errorf("its cgroup in its cgroup namespace: %q, %v; want 0::/", out, err)
			}
		} else {
			t.Logf("its cgroup in its cgroup namespace on a cgroup v1 host: %q", out)
		}
		st := procStatus(t, pid)
		if !strings.HasPrefix(st["Uid"], "65534\t") || !strings.HasPrefix(st["Gid"], "65534\t") || st["Groups"] != "65533" {
			t.Errorf("uid %q gid %q groups %q; want 65534, 65534, 65533", st["Uid"], st["Gid"], st["Groups"])
		}
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
			if st[k] != "0000000000000000" {
				t.Errorf("%s %s, want none", k, st[k])
			}
		}
		if st["CapBnd"] != fmt.Sprintf("%016x", 1<<unix.CAP_CHOWN|1<<unix.CAP_KILL) || st["NoNewPrivs"] != "1" {
			t.Errorf("CapBnd %s NoNewPrivs %s; want chown and kill, 1", st["CapBnd"], st["NoNewPrivs"])
		}
		// The spec's, not the agent's.
		if b, err := os.ReadFile(filepath.Join("/proc", p, "oom_score_adj")); err != nil || strings.TrimSpace(string(b)) != "321" {
			t.Errorf("oom_score_adj %q (%v), want 321", b, err)
		}
		if st["NSpid"] != p+"\t1" {
			t.Errorf("NSpid %q: want PID 1 of its PID namespace", st["NSpid"])
		}
		// Its root holds the binary alone, read-only.
		entries, err := os.ReadDir(filepath.Join("/proc", p, "root"))
		if err != nil || len(entries) != 1 || entries[0].Name() != "pause" {
			t.Errorf("its root holds %v (%v); want only pause", entries, err)
		}
		if err := unix.Access(filepath.Join("/proc", p, "root"), unix.W_OK); err == nil {
			t.Error("its root is writable")
		}
		// An orphan in its PID namespace is its child, and reaped.
		if out, err := exec.Command("nsenter", "-t", p, "-p", "--", "sh", "-c", "sleep 0.3 & exit 0").CombinedOutput(); err != nil {
			t.Fatalf("nsenter: %v: %s", err, out)
		}
		time.Sleep(2 * time.Second)
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if strings.TrimSpace(string(kids)) != "" {
			t.Errorf("children left: %q (a zombie not reaped)", kids)
		}
		if r, err := s.ListProcesses(ctx, &api.ListProcessesRequest{ContainerId: "pod1"}); err != nil || len(r.GetPids()) != 1 || int(r.GetPids()[0]) != pid {
			t.Errorf("ListProcesses: %v, %v; want [%d]", r.GetPids(), err, pid)
		}
		if _, err := s.Stats(ctx, &api.StatsRequest{ContainerId: "pod1"}); err != nil {
			t.Errorf("Stats: %v", err)
		}
		for name, err := range map[string]error{
			"exec": func() error {
				_, err := s.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "pod1", ExecId: "e"})
				return err
			}(),
			"pause": func() error {
				_, err := s.PauseContainer(ctx, &api.PauseContainerRequest{ContainerId: "pod1"})
				return err
			}(),
			"resume": func() error {
				_, err := s.ResumeContainer(ctx, &api.ResumeContainerRequest{ContainerId: "pod1"})
				return err
			}(),
			"update": func() error {
				_, err := s.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "pod1"})
				return err
			}(),
			"start": func() error {
				_, err := s.StartContainer(ctx, &api.StartContainerRequest{ContainerId: "pod1"})
				return err
			}(),
			"remove": func() error {
				_, err := s.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "pod1"})
				return err
			}(),
		} {
			want := errdefs.IsNotImplemented
			if name == "start" || name == "remove" {
				want = errdefs.IsFailedPrecondition
			}
			if err == nil || !want(err) {
				t.Errorf("%s: %v; want an error of another class", name, err)
			}
		}
	})

	t.Run("SIGTERM exits 0, other signals are ignored", func(t *testing.T) {
		// As its PID namespace's init, the kernel drops the signals
		// whose action is the default; in the guest's PID namespace
		// (hostPID) only its own blocking and waiting keeps them from
		// ending it.
		hostPID := pauseSpec("pod2h")
		hostPID.Linux.Namespaces = slices.DeleteFunc(hostPID.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		for _, tc := range []struct {
			id   string
			spec *specs.Spec
		}{{"pod2", pauseSpec("pod2")}, {"pod2h", hostPID}} {
			createSpec(t, tc.id, tc.spec)
			// Pending signals arrive lowest first: SIGHUP and SIGQUIT,
			// had they ended it, would make the status 129 or 2. The
			// real-time signals too, the C library's own 32 and 33
			// included, which its signal sets leave out: in the
			// guest's PID namespace a wait on those sets ends it with
			// 160. That they are blocked outside the wait as well no
			// test here reaches: a wrong mask opens only short windows.
			for _, sig := range []unix.Signal{unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGPIPE, 32, 33, 34, 64, unix.SIGTERM} {
				if _, err := s.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: tc.id, Signal: uint32(sig)}); err != nil {
					t.Fatalf("%s: %v: %v", tc.id, sig, err)
				}
			}
			if st := wait(t, tc.id); st != 0 {
				t.Errorf("%s: exit status %d, want 0", tc.id, st)
			}
			if _, err := s.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: tc.id, Signal: uint32(unix.SIGKILL)}); !errdefs.IsNotFound(err) {
				t.Errorf("%s: signal after the exit: %v, want not found", tc.id, err)
			}
		}
	})

	t.Run("SIGKILL and remove", func(t *testing.T) {
		create(t, "pod3")
		dir, err := s.containers["pod3"].cgroupPath()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("its cgroup: %v", err)
		}
		// Processes in its cgroup that keep forking (outside its PID
		// namespace, whose end would take them with it): a SIGKILL to
		// all must leave none, or the removal of the cgroup fails.
		forkers := exec.Command("sh", "-c", `echo $$ > `+filepath.Join(dir, "cgroup.procs")+` || exit 1
for i in 1 2 3 4 5 6 7 8; do (while :; do sleep 1000 & done) & done
wait`)
		if err := forkers.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			// Should the kill miss them, they are not left to fork on.
			_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			_ = forkers.Wait()
		}()
		time.Sleep(500 * time.Millisecond)
		if _, err := s.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "pod3", Signal: uint32(unix.SIGKILL), All: true}); err != nil {
			t.Fatal(err)
		}
		if st := wait(t, "pod3"); st != 137 {
			t.Errorf("exit status %d, want 137", st)
		}
		if _, err := s.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "pod3"}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("its cgroup after the removal: %v, want gone", err)
		}
		if _, err := s.WaitProcess(ctx, &api.WaitProcessRequest{ContainerId: "pod3"}); !errdefs.IsNotFound(err) {
			t.Errorf("wait after the removal: %v, want not found", err)
		}
	})

	t.Run("busy or frozen cgroup refused", func(t *testing.T) {
		for _, frozen := range []bool{false, true} {
			id := fmt.Sprintf("pod5-%v", frozen)
			sp := pauseSpec(id)
			lcfg, err := pauseLibcontainerConfig(id, sp, s.paths.pause)
			if err != nil {
				t.Fatal(err)
			}
			cg, err := manager.New(lcfg.Cgroups)
			if err != nil {
				t.Fatal(err)
			}
			sleeper := exec.Command("sleep", "100")
			if err := sleeper.Start(); err != nil {
				t.Fatal(err)
			}
			pid := -1
			if !frozen {
				pid = sleeper.Process.Pid
			}
			err = cg.Apply(pid)
			t.Cleanup(func() {
				_ = cg.Freeze(cgroups.Thawed)
				_ = sleeper.Process.Kill()
				_ = sleeper.Wait()
				_ = cg.Destroy()
			})
			if err != nil {
				t.Fatal(err)
			}
			if frozen {
				if err := cg.Freeze(cgroups.Frozen); err != nil {
					t.Fatal(err)
				}
			}
			_, err = s.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: id, Spec: specJSON(t, sp), PodSandbox: true})
			if !errdefs.IsFailedPrecondition(err) {
				t.Errorf("CreateContainer in a cgroup frozen %v or busy %v: %v, want failed precondition", frozen, !frozen, err)
				_ = cg.Freeze(cgroups.Thawed)
				_, _ = s.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: id, Force: true})
			}
			if !cg.Exists() {
				t.Errorf("the cgroup (frozen %v) is gone", frozen)
			}
		}
	})

	t.Run("failed setup leaves nothing", func(t *testing.T) {
		sp := pauseSpec("pod4")
		sp.Linux.Sysctl["kernel/shmmni"] = "many"
		_, err := s.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "pod4", Spec: specJSON(t, sp), PodSandbox: true})
		if err == nil || !strings.Contains(err.Error(), "sysctl kernel.shmmni") {
			t.Fatalf("CreateContainer: %v, want the setup's error", err)
		}
		if _, err := s.get("pod4"); !errdefs.IsNotFound(err) {
			t.Errorf("container after a failed create: %v", err)
		}
	})

	t.Run("an image without the waiting stage's binary", func(t *testing.T) {
		bin := s.pauseBin
		s.pauseBin = filepath.Join(t.TempDir(), "pause")
		defer func() { s.pauseBin = bin }()
		_, err := s.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "pod5", Spec: specJSON(t, pauseSpec("pod5")), PodSandbox: true})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "hull image build") {
			t.Fatalf("CreateContainer: %v, want a failed precondition saying to rebuild the image", err)
		}
		if _, err := s.get("pod5"); !errdefs.IsNotFound(err) {
			t.Errorf("container after a failed create: %v", err)
		}
	})
}

// TestPodSandboxGetsNoRoot: a pod sandbox's create that carries a root,
// storages or copied files is refused before anything is mounted or made
// (the host sends none: its process runs on an empty root of its own).
func TestPodSandboxGetsNoRoot(t *testing.T) {
	s := newContainerService(&Agent{}, testGuestPaths(t))
	s.sandboxID = "sb"
	withRoot := pauseSpec("p1")
	withRoot.Root = &specs.Root{Path: "/"}
	spec := specJSON(t, pauseSpec("p1"))
	for _, tc := range []struct {
		name, want string
		req        *api.CreateContainerRequest
	}{
		{"root", "gets none", &api.CreateContainerRequest{ContainerId: "p1", Spec: specJSON(t, withRoot), PodSandbox: true}},
		{"storage", "no storages", &api.CreateContainerRequest{ContainerId: "p1", Spec: spec, PodSandbox: true,
			Storages: []*api.Storage{{Source: "/dev/vdb", Fstype: "ext4", MountPoint: "/run/hull/block/p1"}}}},
		{"files", "no storages, files or emptyDir", &api.CreateContainerRequest{ContainerId: "p1", Spec: spec, PodSandbox: true,
			Files: []*api.CopiedFile{{Path: "f", Data: []byte("x")}}}},
		{"emptyDir", "no storages, files or emptyDir", &api.CreateContainerRequest{ContainerId: "p1", Spec: spec, PodSandbox: true,
			EmptyDirs: []*api.EmptyDir{{Name: "scratch", Mode: 0o777}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CreateContainer(context.Background(), tc.req)
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CreateContainer: %v, want an invalid argument naming %q", err, tc.want)
			}
			if _, err := s.get("p1"); !errdefs.IsNotFound(err) {
				t.Errorf("container after a refused create: %v", err)
			}
		})
	}
}

// BuildPause builds the waiting stage's binary (cmd/hull-pause) into dir
// as the Makefile does, and returns its path.
func BuildPause(t *testing.T, dir string) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("building hull-pause needs gcc (and libc6-dev): %v", err)
	}
	out := filepath.Join(dir, "hull-pause")
	cmd := exec.Command(cc, "-Os", "-static", "-s", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
		"-o", out, "cmd/hull-pause/pause.c")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building hull-pause: %v\n%s", err, b)
	}
	return out
}
