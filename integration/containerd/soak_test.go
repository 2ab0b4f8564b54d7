package containerd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// soakAssets is the soak's guest image (e2e.SoakAssets).
func soakAssets(t testing.TB) string { return e2e.SoakAssets(t, env.assetsDir) }

// TestSoak is the CRI suite's soak through ctr (containerd 2): SOAK_PODS
// tasks run at once, each in a VM of its own, writing a file that an exec
// reads back before the task exits on its own; then all are deleted at
// once; for SOAK_ROUNDS rounds, with nothing left after each (the daemon's
// leftover check, the tasks' cgroups, and the node's shim sockets, loop
// devices, taps and network namespaces). It reports the p50/p95 of
// `ctr run -d` (make soak: SOAK_REPORT).
func TestSoak(t *testing.T) {
	pods, rounds := e2e.SoakSize(t)
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{
		assetsDir: soakAssets(t),
		runtime:   fmt.Sprintf("boot_wait_timeout = %q\n", e2e.SoakBootWait),
	})
	stats := &e2e.SoakStats{}
	leftovers := 0
	before := e2e.Traces()
	for round := range rounds {
		ids := make([]string, pods)
		ran := make([]bool, pods)
		tasks := newTaskPoller(d)
		var wg sync.WaitGroup
		for i := range pods {
			ids[i] = fmt.Sprintf("soak-%d-%d", round, i)
			wg.Go(func() {
				var err error
				ran[i], err = soakTask(d, tasks, ids[i], stats)
				if err != nil {
					stats.Failed("round %d task %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		tasks.stop()
		for i := range pods {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), e2e.SoakCall)
				defer cancel()
				if ran[i] {
					if _, err := soakCtr(ctx, d, "task", "delete", ids[i]); err != nil {
						stats.Failed("round %d task %d: %v", round, i, err)
						_, _ = soakCtr(ctx, d, "task", "delete", "-f", ids[i])
					}
				}
				if _, err := soakCtr(ctx, d, "container", "delete", ids[i]); err != nil {
					if ran[i] {
						stats.Failed("round %d task %d: %v", round, i, err)
					}
					return
				}
				stats.Removed()
			})
		}
		wg.Wait()
		left := soakLeftovers(d, before, ids)
		leftovers += len(left)
		if len(left) > 0 {
			t.Errorf("round %d left behind:\n  %s", round, strings.Join(left, "\n  "))
		}
		t.Logf("round %d done: %s", round, stats.Summary("ctr", pods, round+1, leftovers))
	}
	for _, f := range stats.Failures() {
		t.Error(f)
	}
	stats.Report(t, stats.Summary("ctr", pods, rounds, leftovers))
}

// soakTask runs one task up to its exit; ran says whether it started.
func soakTask(d *daemon, tasks *taskPoller, id string, stats *e2e.SoakStats) (ran bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), e2e.SoakStartCall)
	defer cancel()
	start := time.Now()
	if _, err := soakCtr(ctx, d, append([]string{"run", "-d", "--runtime", runtimeName, imageName, id}, e2e.SoakInit("soak "+id)...)...); err != nil {
		return false, fmt.Errorf("after %s: %w", time.Since(start).Round(time.Millisecond), err)
	}
	stats.Started(time.Since(start))
	ctx, cancel = context.WithTimeout(context.Background(), e2e.SoakCall)
	defer cancel()
	out, err := soakCtr(ctx, d, append([]string{"task", "exec", "--exec-id", "soak", id}, e2e.SoakExec...)...)
	if err != nil {
		return true, err
	}
	if want := "soak " + id + "\n"; out != want {
		return true, fmt.Errorf("exec in %s: stdout %q, want %q", id, out, want)
	}
	if !tasks.wait(id, "STOPPED", e2e.SoakExitWait) {
		return true, fmt.Errorf("task %s is not STOPPED %s after its exec told it to exit", id, e2e.SoakExitWait)
	}
	return true, nil
}

// soakCtr runs ctr; an exit other than 0 is an error with ctr's output.
func soakCtr(ctx context.Context, d *daemon, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.ctrPath, append([]string{"-a", d.address}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w: %s%s", strings.Join(args[:min(len(args), 3)], " "), err, out.String(), withoutDeprecations(errOut.String()))
	}
	return out.String(), nil
}

// taskPoller runs `ctr task ls` once a second for all the round's tasks,
// so that 40 waiting tasks cost one ctr a second.
type taskPoller struct {
	mu sync.Mutex
	// status maps task IDs to their status; guarded by mu.
	status map[string]string
	done   chan struct{}
	ended  chan struct{}
}

func newTaskPoller(d *daemon) *taskPoller {
	p := &taskPoller{status: map[string]string{}, done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(p.ended)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), e2e.SoakCall)
			out, err := soakCtr(ctx, d, "task", "ls")
			cancel()
			if err == nil {
				st := map[string]string{}
				for _, l := range strings.Split(out, "\n") {
					if f := strings.Fields(l); len(f) >= 3 {
						st[f[0]] = f[2]
					}
				}
				p.mu.Lock()
				p.status = st
				p.mu.Unlock()
			}
			select {
			case <-p.done:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return p
}

func (p *taskPoller) wait(id, status string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		st := p.status[id]
		p.mu.Unlock()
		if st == status {
			return true
		}
		time.Sleep(500 * time.Millisecond)
	}
	return false
}

func (p *taskPoller) stop() {
	close(p.done)
	<-p.ended
}

// soakLeftovers waits up to e2e.SoakCleanWait for the round to leave nothing
// and returns what is still there: the daemon's leftovers with the tasks'
// traces, and the node-wide traces that were not there before the soak.
func soakLeftovers(d *daemon, before e2e.HostTraces, ids []string) []string {
	deadline := time.Now().Add(e2e.SoakCleanWait)
	for {
		left := append(d.leftovers(ids...), before.Since(e2e.Traces())...)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(time.Second)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
