package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// The bounds of the hostile pod case; adjust them with the configuration's
// defaults.
const (
	// hostileKillTimeout is [agent] kill_timeout: how long the host waits
	// for the guest to report a killed process gone.
	hostileKillTimeout = 5 * time.Second
	// hostileStopBudget is what StopPodSandbox and RemovePodSandbox may
	// take each against a guest that never reports an exit and refuses
	// RemoveContainer: the kill timeout, the VM's stop timeout and TCG's
	// slack for the calls themselves.
	hostileStopBudget = hostileKillTimeout + 5*time.Second + 45*time.Second
)

// TestCRIHostile runs a pod whose agent never reports a process exit and
// refuses RemoveContainer (the hostile test agent, modes nowait and
// noremove): StopPodSandbox and RemovePodSandbox must still end the pod
// within their budget and leave nothing behind (checked by the session).
func TestCRIHostile(t *testing.T) {
	hullBin := os.Getenv("HULL_BIN_DIR")
	if hullBin == "" {
		t.Fatal("HULL_BIN_DIR must be set (the hull binary builds the hostile image)")
	}
	assets := e2e.HostileImage(t, hullBin, env.workDir)
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) {
			// Last, after the daemon stopped: a pod that StopPodSandbox and
			// RemovePodSandbox could not end keeps its network namespace
			// and the sandbox's /dev/shm mount, which the daemon's own
			// teardown leaves.
			var (
				d         *daemon
				podID, ns string
			)
			t.Cleanup(func() { forgetStuckPod(t, d, podID, ns) })
			d = startDaemon(t, version)
			cfg := fmt.Sprintf("[hypervisor]\nkernel_params = [%q]\n[image]\nassets_dir = %q\n[runtime]\nstate_dir = %q\n",
				"hull.hostile=nowait,noremove", assets, d.stateRoot)
			if err := os.WriteFile(filepath.Join(d.dir, "hull.toml"), []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			s := d.begin(t, hull)
			p := s.runPod("hostile")
			podID, ns = p.id, p.netns
			p.run(containerConfig("victim", "sleep", "600"))
			for _, step := range []struct {
				name string
				call func()
			}{{"StopPodSandbox", p.stop}, {"RemovePodSandbox", p.remove}} {
				start := time.Now()
				step.call()
				if took := time.Since(start); took > hostileStopBudget {
					t.Errorf("%s took %s against the hostile guest, budget %s", step.name, took.Round(100*time.Millisecond), hostileStopBudget)
				}
			}
		})
	}
}

// forgetStuckPod removes what a pod the CRI could not end leaves after the
// daemon stopped: its network namespace (with the pod's veth end), its CNI
// result cache and the mounts below the daemon's directory.
func forgetStuckPod(t *testing.T, d *daemon, podID, netns string) {
	if d == nil {
		return
	}
	if podID != "" {
		cached, _ := filepath.Glob("/var/lib/cni/results/*-" + podID + "-*")
		for _, c := range cached {
			_ = os.Remove(c)
		}
	}
	if _, err := os.Lstat(netns); netns != "" && err == nil {
		if out, err := command("ip", "netns", "delete", filepath.Base(netns)); err != nil {
			t.Logf("deleting network namespace %s: %v: %s", netns, err, out)
		}
	}
	ms, err := e2e.MountsUnder(d.dir)
	if err != nil {
		t.Error(err)
	}
	for i := len(ms) - 1; i >= 0; i-- {
		if err := syscall.Unmount(ms[i], syscall.MNT_DETACH); err != nil {
			t.Logf("unmounting %s: %v", ms[i], err)
		}
	}
}
