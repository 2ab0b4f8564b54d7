package integration

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestHullRunNetns runs a bundle whose spec names a network namespace set
// up as CNI would (a veth carrying the pod address and a default route),
// with `hull run`: the namespace is mirrored into the VM, the container sees
// the pod's address and route, the pod address answers from the other end
// of the veth, and after the run nothing of hull's is left in the namespace.
func TestHullRunNetns(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is needed for ping: %v", err)
	}
	pod, peer := newTestNetns(t), newTestNetns(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Names of the test's own making, unique per run.
	podEnd, peerEnd := "hr"+pod.name[len(pod.name)-8:], "hp"+pod.name[len(pod.name)-8:]
	ip("link", "add", podEnd, "type", "veth", "peer", "name", peerEnd)
	ip("link", "set", podEnd, "netns", pod.name)
	ip("link", "set", peerEnd, "netns", peer.name)
	ip("-n", pod.name, "link", "set", podEnd, "name", "eth0")
	ip("-n", pod.name, "addr", "add", "198.18.11.2/24", "dev", "eth0")
	ip("-n", pod.name, "link", "set", "eth0", "up")
	ip("-n", pod.name, "route", "add", "default", "via", "198.18.11.1")
	ip("-n", peer.name, "addr", "add", "198.18.11.1/24", "dev", peerEnd)
	ip("-n", peer.name, "link", "set", peerEnd, "up")

	bundle, spec := busyboxBundle(t, "sh", "-c", "ip -o -4 addr show eth0; ip route; echo ready; read line; echo got $line")
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == "network" {
			spec.Linux.Namespaces[i].Path = filepath.Join("/run/netns", pod.name)
		}
	}
	writeSpec(t, bundle, spec)
	cfgPath := writeHullConfig(t, containerConfig(t))

	ctx := withTimeout(t, 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfgPath, "run", "--bundle", bundle, "--id", "run-netns")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout e2e.SyncBuffer
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdout.WaitFor(t, "ready", time.Minute)
	out := stdout.String()
	if !strings.Contains(out, "198.18.11.2/24") || !strings.Contains(out, "default via 198.18.11.1") {
		t.Errorf("the container's view of the network:\n%s\nwant eth0 with 198.18.11.2/24 and the default route", out)
	}
	if b, err := exec.Command("ip", "netns", "exec", peer.name, busybox, "ping", "-c", "3", "-W", "5", "198.18.11.2").CombinedOutput(); err != nil {
		t.Errorf("ping of the pod address from the peer: %v\n%s", err, b)
	}
	if b, err := exec.Command("ip", "-n", pod.name, "link").CombinedOutput(); err != nil || !strings.Contains(string(b), "_hull") {
		t.Errorf("no hull tap in the pod namespace while the VM runs: %v\n%s", err, b)
	}
	_, _ = io.WriteString(stdin, "bye\n")
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("hull run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "got bye") {
		t.Errorf("the container did not read its stdin: %q", stdout.String())
	}
	links, _ := exec.Command("ip", "-n", pod.name, "link").CombinedOutput()
	qdiscs, _ := exec.Command("tc", "-n", pod.name, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(links), "_hull") || strings.Contains(string(qdiscs), "ingress") {
		t.Errorf("left in the pod namespace after the run:\n%s\n%s", links, qdiscs)
	}
}
