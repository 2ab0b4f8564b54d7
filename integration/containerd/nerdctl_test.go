package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// The nerdctl suite's network: nerdctl's default network ("bridge") from
// a CNI configuration of the suite's own, on a bridge and in a subnet of
// the suite's (198.18.0.0/15 is set aside for benchmarking), without
// masquerading or firewall rules on the host. Its portmap plugin adds NAT
// rules only for a container published with -p, on the host's loopback
// address and port nerdctlPort, until the container is removed.
const (
	nerdctlBridge  = "hullnd0"
	nerdctlSubnet  = "198.18.77.0/24"
	nerdctlGateway = "198.18.77.1"
	nerdctlPort    = "18081"
)

// nerdctlEnv is nerdctl against a daemon of the suite: its own data root,
// CNI configuration and namespace.
type nerdctlEnv struct {
	bin, dir string
	d        *daemon
}

func (n *nerdctlEnv) args(args ...string) []string {
	return append([]string{
		"--address", n.d.address, "--namespace", "default",
		"--data-root", filepath.Join(n.dir, "data"),
		"--cni-path", "/usr/lib/cni", "--cni-netconfpath", filepath.Join(n.dir, "net.d"),
	}, args...)
}

// run runs nerdctl (bounded to 4 minutes) and returns its stdout, stderr
// and exit status.
func (n *nerdctlEnv) run(args ...string) (string, string, int) {
	return e2e.RunCLI(func(ctx context.Context) *exec.Cmd {
		return exec.CommandContext(ctx, n.bin, n.args(args...)...)
	})
}

func (n *nerdctlEnv) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	return e2e.MustRunCLI(t, "nerdctl", n.run, args...)
}

// leftovers is what nerdctl's containers left on the host beyond the
// daemon's own leftovers: ports of the bridge (veths), addresses the IPAM
// plugin still holds, containers nerdctl still lists.
func (n *nerdctlEnv) leftovers() []string {
	left := n.d.leftovers()
	if out, err := exec.Command("ip", "-o", "link", "show", "master", nerdctlBridge).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		left = append(left, "bridge ports: "+strings.TrimSpace(string(out)))
	}
	ipam := filepath.Join(n.dir, "ipam", "bridge")
	if des, err := os.ReadDir(ipam); err == nil {
		for _, de := range des {
			if name := de.Name(); name != "lock" && !strings.HasPrefix(name, "last_reserved_ip") {
				left = append(left, "ipam reservation "+name)
			}
		}
	}
	if out, _, _ := n.run("ps", "-aq"); strings.TrimSpace(out) != "" {
		left = append(left, "containers: "+strings.TrimSpace(out))
	}
	// portmap's rules: the DNAT to a container's address of the suite's
	// subnet, or anything naming the published port.
	if out, err := exec.Command("iptables", "-t", "nat", "-S").CombinedOutput(); err != nil {
		left = append(left, "iptables -t nat -S: "+err.Error()+": "+strings.TrimSpace(string(out)))
	} else {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, nerdctlPort) || strings.Contains(line, "198.18.77.") {
				left = append(left, "nat rule: "+line)
			}
		}
	}
	return left
}

func (n *nerdctlEnv) checkClean(t *testing.T) {
	t.Helper()
	e2e.CheckClean(t, 30*time.Second, n.leftovers)
}

// TestNerdctl runs nerdctl's containers on the shim (`--runtime
// io.containerd.hull.v2`) with the host hooks docs/docker-podman.md tells
// to allow: nerdctl's createRuntime hook sets the container's network up
// by CNI in the VMM's network namespace, which the shim mirrors into the
// VM; its poststop hook releases it.
func TestNerdctl(t *testing.T) {
	bin := e2e.Nerdctl(t)
	containerdPath, ctrPath := daemonBinaries(t, "2")
	d := startDaemonWith(t, containerdPath, ctrPath, daemonOptions{runtime: "host_hooks = true\n"})
	n := &nerdctlEnv{bin: bin, dir: filepath.Join(d.dir, "nerdctl"), d: d}
	netconf := filepath.Join(n.dir, "net.d")
	if err := os.MkdirAll(netconf, 0o700); err != nil {
		t.Fatal(err)
	}
	// A bridge of a crashed run is ours now.
	_ = exec.Command("ip", "link", "del", nerdctlBridge).Run()
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", nerdctlBridge).Run() })
	conflist, err := json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "bridge",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": nerdctlBridge, "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": filepath.Join(n.dir, "ipam"),
					"ranges":  []any{[]any{map[string]any{"subnet": nerdctlSubnet, "gateway": nerdctlGateway}}},
					"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
				},
			},
			// nerdctl's -p reaches CNI as the portMappings capability,
			// which only a plugin that declares it receives.
			map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(netconf, "hull-bridge.conflist"), conflist, 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustRun(t, "load", "-i", env.image)
	t.Cleanup(func() {
		if ids := strings.Fields(func() string { out, _, _ := n.run("ps", "-aq"); return out }()); len(ids) > 0 {
			n.run(append([]string{"rm", "-f"}, ids...)...)
		}
	})

	t.Run("bridge network in the VM", func(t *testing.T) {
		out, errOut, code := n.run("run", "--rm", "--runtime", runtimeName, "--net", "bridge", imageName,
			"sh", "-c", "ip -4 -o addr show; uname -r; ping -c 1 -W 10 "+nerdctlGateway)
		t.Logf("in the container:\n%s", out)
		if code != 0 {
			t.Fatalf("nerdctl run: exit %d: %s%s", code, out, errOut)
		}
		if !strings.Contains(out, "inet 198.18.77.") {
			t.Errorf("no address of %s in the container:\n%s", nerdctlSubnet, out)
		}
		if !strings.Contains(out, "1 packets received") {
			t.Errorf("the gateway %s did not answer:\n%s", nerdctlGateway, out)
		}
		if host, _ := exec.Command("uname", "-r").Output(); strings.Contains(out, "\n"+string(host)) {
			t.Errorf("the container runs the host's kernel %s, not the VM's:\n%s", host, out)
		}
		n.checkClean(t)
	})

	t.Run("published port on the host's loopback", func(t *testing.T) {
		// portmap DNATs 127.0.0.1:nerdctlPort, from the host's own
		// connections (nat OUTPUT), to the container on the bridge,
		// masquerading the source to the bridge's address; for a packet
		// from 127.0.0.1 to leave by the bridge it sets route_localnet on
		// the bridge (the interface routing the container's address), not
		// on all interfaces. The bridge goes with the suite, and the
		// setting with it.
		id := strings.TrimSpace(n.mustRun(t, "run", "-d", "--runtime", runtimeName, "--net", "bridge",
			"-p", "127.0.0.1:"+nerdctlPort+":80", imageName,
			"sh", "-c", "mkdir -p /www && echo hello-nerdctl > /www/index.html && exec httpd -f -p 80 -h /www"))
		removed := false
		defer func() {
			if !removed {
				n.run("rm", "-f", id)
			}
		}()
		if body := nerdctlHTTPGet(t, "http://127.0.0.1:"+nerdctlPort+"/"); body != "hello-nerdctl\n" {
			t.Errorf("GET from the host: %q, want %q", body, "hello-nerdctl\n")
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + nerdctlBridge + "/route_localnet"); err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Errorf("route_localnet of %s: %q, %v; want 1 (set by portmap)", nerdctlBridge, b, err)
		}
		n.mustRun(t, "rm", "-f", id)
		removed = true
		n.checkClean(t)
		if out, _ := exec.Command("sh", "-c", "iptables -t nat -S | grep -- "+nerdctlPort).CombinedOutput(); len(out) != 0 {
			t.Errorf("nat rules naming port %s after rm -f:\n%s", nerdctlPort, out)
		}
	})

	t.Run("a create failing after the hooks releases the network", func(t *testing.T) {
		// nerdctl's createRuntime hook reserves an address and plugs a
		// veth into the bridge; then the guest's create fails (the
		// program does not exist, a create-time error in libcontainer).
		// The shim runs the poststop hooks once the VM is gone, and
		// nerdctl's releases both: before the container is removed, which
		// would not release them.
		const name = "hull-failed-create"
		out, errOut, code := n.run("run", "--name", name, "--runtime", runtimeName, "--net", "bridge", imageName, "/no/such/program")
		defer n.run("rm", "-f", name)
		if code == 0 || !strings.Contains(out+errOut, "/no/such/program") {
			t.Fatalf("nerdctl run of a missing program: exit %d, %s%s; want a failed create naming it", code, out, errOut)
		}
		var held []string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			held = held[:0]
			for _, l := range n.leftovers() {
				if strings.HasPrefix(l, "ipam reservation ") || strings.HasPrefix(l, "bridge ports: ") {
					held = append(held, l)
				}
			}
			if len(held) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(held) > 0 {
			t.Errorf("after the failed create, the network is still held (poststop hooks not run):\n  %s", strings.Join(held, "\n  "))
		}
		n.mustRun(t, "rm", "-f", name)
		n.checkClean(t)
	})

	t.Run("run --rm true leaves nothing", func(t *testing.T) {
		n.mustRun(t, "run", "--rm", "--runtime", runtimeName, imageName, "true")
		n.checkClean(t)
	})

	t.Run("hooks refused without host_hooks", func(t *testing.T) {
		d.setHullConfig(t, daemonOptions{})
		defer d.setHullConfig(t, daemonOptions{runtime: "host_hooks = true\n"})
		out, errOut, code := n.run("run", "--rm", "--runtime", runtimeName, imageName, "true")
		if code == 0 || !strings.Contains(errOut, "runtime.host_hooks") {
			t.Errorf("nerdctl run with host hooks off: exit %d, %s%s; want a refusal naming runtime.host_hooks", code, out, errOut)
		}
		n.checkClean(t)
	})
}

// nerdctlHTTPGet fetches url, retrying for up to a minute while the
// container's server comes up, and returns the body of a 200 answer.
func nerdctlHTTPGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			_ = resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b)
			}
			err = rerr
			if err == nil {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(time.Second)
	}
}
