package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// maxSlots bounds the networks of concurrent runs on one host: slot N is
// bridge hullcriN with subnet 198.18.(64+N).0/24, a part of the benchmark
// range 198.18.0.0/15 that no real network uses.
const maxSlots = 32

// network is one daemon's CNI network: a conflist naming a bridge and a
// subnet no other run uses at the same time, with host-local's state in
// the daemon's directory.
type network struct {
	// name is the CNI network's name, which also names CNI's cache files.
	name    string
	bridge  string
	subnet  netip.Prefix
	gateway netip.Addr
	confDir string
	dataDir string
	// lock holds the slot (flock) as long as the daemon runs; the kernel
	// releases it when a crashed run ends.
	lock *os.File
	// ipForward is the host's net.ipv4.ip_forward before the run: the
	// bridge plugin (isGateway) turns it on, teardown puts it back.
	ipForward []byte
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// newNetwork takes a free slot and writes its conflist into dir/cni/conf.
// The CRI plugin adds the loopback network of each pod itself, with the
// loopback plugin from the same bin dir, so the conflist holds only the
// bridge.
func newNetwork(t testing.TB, dir string) *network {
	t.Helper()
	n := &network{confDir: filepath.Join(dir, "cni", "conf"), dataDir: filepath.Join(dir, "cni", "ipam")}
	for slot := 0; slot < maxSlots && n.lock == nil; slot++ {
		f, err := os.OpenFile(fmt.Sprintf("/run/lock/hull-cri-%d.lock", slot), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = f.Close() // taken by another run
			continue
		}
		n.lock = f
		n.name = fmt.Sprintf("hull-cri-%d", slot)
		n.bridge = fmt.Sprintf("hullcri%d", slot)
		n.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(64 + slot), 0}), 24)
		n.gateway = netip.AddrFrom4([4]byte{198, 18, byte(64 + slot), 1})
	}
	if n.lock == nil {
		t.Fatalf("all %d CNI network slots (/run/lock/hull-cri-*.lock) are taken", maxSlots)
	}
	fwd, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	n.ipForward = fwd
	// A bridge of this slot is a crashed run's: the slot is ours now.
	if err := n.deleteBridge(); err != nil {
		t.Fatal(err)
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       n.name,
		"plugins": []any{map[string]any{
			"type":      "bridge",
			"bridge":    n.bridge,
			"isGateway": true,
			"ipMasq":    false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.subnet.String(), "gateway": n.gateway.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": n.dataDir,
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(n.confDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.confDir, "10-"+n.name+".conflist"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// teardown deletes the bridge the pods made exist and host-local's state,
// and frees the slot.
func (n *network) teardown() error {
	err := errors.Join(n.deleteBridge(), os.RemoveAll(n.dataDir))
	if now, rerr := os.ReadFile(ipForwardPath); rerr == nil && string(now) != string(n.ipForward) {
		err = errors.Join(err, os.WriteFile(ipForwardPath, n.ipForward, 0o644))
	}
	for _, f := range n.cacheFiles() {
		err = errors.Join(err, os.Remove(f))
	}
	return errors.Join(err, n.lock.Close())
}

func (n *network) deleteBridge() error {
	if _, err := os.Stat(filepath.Join("/sys/class/net", n.bridge)); err != nil {
		return nil
	}
	if out, err := command("ip", "link", "del", n.bridge); err != nil {
		return fmt.Errorf("deleting bridge %s: %w: %s", n.bridge, err, out)
	}
	return nil
}

// cacheFiles lists libcni's cached results of this network's attachments.
func (n *network) cacheFiles() []string {
	files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", n.name+"-*"))
	return files
}

// leftovers lists the network's traces of pods that are gone: ports on the
// bridge, addresses host-local still holds, CNI's cached results.
func (n *network) leftovers() []string {
	var left []string
	ports, _ := os.ReadDir(filepath.Join("/sys/class/net", n.bridge, "brif"))
	for _, p := range ports {
		left = append(left, fmt.Sprintf("port %s on bridge %s", p.Name(), n.bridge))
	}
	leases, _ := os.ReadDir(filepath.Join(n.dataDir, n.name))
	for _, l := range leases {
		if l.Name() != "lock" && !strings.HasPrefix(l.Name(), "last_reserved_ip") {
			left = append(left, "host-local lease "+l.Name())
		}
	}
	for _, f := range n.cacheFiles() {
		left = append(left, "CNI cache "+f)
	}
	return left
}

// tapDevices lists the host's tun/tap devices (in the test's own network
// namespace).
func tapDevices() map[string]bool {
	taps := map[string]bool{}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if _, err := os.Stat(filepath.Join("/sys/class/net", l.Name(), "tun_flags")); err == nil {
			taps[l.Name()] = true
		}
	}
	return taps
}

// netnsLinks lists the links of a network namespace file, for the log.
func netnsLinks(path string) string {
	out, err := command("nsenter", "--net="+path, "ip", "-br", "link")
	if err != nil {
		return fmt.Sprintf("(%v: %s)", err, out)
	}
	return string(out)
}

// command runs a host tool with a time limit and returns its combined
// output.
func command(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}
