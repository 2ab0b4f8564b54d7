package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// soakAssets is the soak's guest image (e2e.SoakAssets).
func soakAssets(t testing.TB) string { return e2e.SoakAssets(t, env.assetsDir) }

// TestSoak starts SOAK_PODS pods at once through the CRI (containerd 2),
// each running a container that writes a file, is exec'd into to read it
// back, and exits on its own; then removes them all at once; for
// SOAK_ROUNDS rounds. After every round nothing may be left (the session's
// leftover check and the node's shim sockets, loop devices, taps and
// network namespaces). It reports pods started and removed, failures and
// the p50/p95 of RunPodSandbox (make soak: SOAK_REPORT). Unset, the knobs
// give the bounded form make test runs (one round of 4 pods).
func TestSoak(t *testing.T) {
	pods, rounds := e2e.SoakSize(t)
	d := startDaemonWith(t, "2", daemonOptions{
		assetsDir: soakAssets(t),
		runtime:   fmt.Sprintf("boot_wait_timeout = %q\n", e2e.SoakBootWait),
	})
	stats := &e2e.SoakStats{}
	leftovers := 0
	before := e2e.Traces()
	for round := range rounds {
		s := d.session(t, hull)
		ids := make([]string, pods)
		netns := make([]string, pods)
		configs := make([]*runtime.PodSandboxConfig, pods)
		for i := range pods {
			configs[i] = s.podConfig(fmt.Sprintf("soak-%d-%d", round, i))
		}
		var wg sync.WaitGroup
		for i := range pods {
			wg.Go(func() {
				id, ns, err := soakPod(s, configs[i], stats)
				ids[i], netns[i] = id, ns
				if err != nil {
					stats.Failed("round %d pod %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		for i := range pods {
			if netns[i] != "" {
				s.netns = append(s.netns, netns[i])
			}
		}
		for i := range pods {
			if ids[i] == "" {
				continue
			}
			wg.Go(func() {
				if err := removePod(d, ids[i]); err != nil {
					stats.Failed("round %d pod %d: removing: %v", round, i, err)
					return
				}
				stats.Removed()
			})
		}
		wg.Wait()
		left := soakLeftovers(s, before)
		leftovers += len(left)
		if len(left) > 0 {
			t.Errorf("round %d left behind:\n  %s", round, strings.Join(left, "\n  "))
			d.removeAll(t)
		}
		t.Logf("round %d done: %s", round, stats.Summary("cri", pods, round+1, leftovers))
	}
	for _, f := range stats.Failures() {
		t.Error(f)
	}
	stats.Report(t, stats.Summary("cri", pods, rounds, leftovers))
}

// soakPod runs one pod's lifecycle up to its container's exit and returns
// the pod's ID (empty when it did not start) and network namespace.
func soakPod(s *session, config *runtime.PodSandboxConfig, stats *e2e.SoakStats) (id, netns string, err error) {
	name := config.Metadata.Name
	call := func(limit time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), limit)
	}
	ctx, cancel := call(e2e.SoakStartCall)
	start := time.Now()
	resp, err := s.d.rt.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: config, RuntimeHandler: s.h.name})
	cancel()
	if err != nil {
		return "", "", fmt.Errorf("RunPodSandbox %s after %s: %w", name, time.Since(start).Round(time.Millisecond), err)
	}
	stats.Started(time.Since(start))
	id = resp.PodSandboxId

	ctx, cancel = call(e2e.SoakCall)
	defer cancel()
	st, err := s.d.rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return id, "", fmt.Errorf("PodSandboxStatus %s: %w", name, err)
	}
	var info sandboxInfo
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		return id, "", fmt.Errorf("PodSandboxStatus %s: verbose info: %w", name, err)
	}
	netns = info.netns()

	cc := containerConfig("work", e2e.SoakInit("soak "+name)...)
	cr, err := s.d.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: id, Config: cc, SandboxConfig: config})
	if err != nil {
		return id, netns, fmt.Errorf("CreateContainer in %s: %w", name, err)
	}
	if _, err := s.d.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		return id, netns, fmt.Errorf("StartContainer in %s: %w", name, err)
	}
	ex, err := s.d.rt.ExecSync(ctx, &runtime.ExecSyncRequest{
		ContainerId: cr.ContainerId,
		Cmd:         e2e.SoakExec,
		Timeout:     60,
	})
	if err != nil {
		return id, netns, fmt.Errorf("ExecSync in %s: %w", name, err)
	}
	if want := "soak " + name + "\n"; ex.ExitCode != 0 || string(ex.Stdout) != want {
		return id, netns, fmt.Errorf("exec in %s: exit %d, stdout %q, stderr %q; want 0 and %q", name, ex.ExitCode, ex.Stdout, ex.Stderr, want)
	}
	deadline := time.Now().Add(e2e.SoakExitWait)
	for {
		cs, err := s.d.rt.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: cr.ContainerId})
		if err != nil {
			return id, netns, fmt.Errorf("ContainerStatus in %s: %w", name, err)
		}
		if cs.Status.State == runtime.ContainerState_CONTAINER_EXITED {
			if cs.Status.ExitCode != 0 {
				return id, netns, fmt.Errorf("container in %s exited %d, want 0", name, cs.Status.ExitCode)
			}
			return id, netns, nil
		}
		if time.Now().After(deadline) {
			return id, netns, fmt.Errorf("container in %s still %v %s after its exec told it to exit", name, cs.Status.State, e2e.SoakExitWait)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// removePod stops and removes a pod with its containers.
func removePod(d *daemon, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), e2e.SoakCall)
	defer cancel()
	if _, err := d.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("StopPodSandbox: %w", err)
	}
	if _, err := d.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("RemovePodSandbox: %w", err)
	}
	return nil
}

// soakLeftovers waits up to e2e.SoakCleanWait for the session's pods to leave
// nothing, and returns what is still there: the session's leftovers and
// the node-wide traces that were not there before the soak.
func soakLeftovers(s *session, before e2e.HostTraces) []string {
	deadline := time.Now().Add(e2e.SoakCleanWait)
	for {
		left := append(s.leftovers(), before.Since(e2e.Traces())...)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(time.Second)
	}
}
