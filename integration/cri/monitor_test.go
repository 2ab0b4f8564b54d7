package cri

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/podmetrics"
)

// TestCRIMonitor scrapes `hull monitor` with Debian's Prometheus server
// while two CRI pods run on containerd 2: their overhead, guest memory and
// VMM series must reach Prometheus with the pods' labels and plausible
// values (the VMM's RSS within 10% of /proc's reading), `hull list` and
// `hull logs` must show the pods, and once the pods are removed their
// series must go stale.
func TestCRIMonitor(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		missing(t, "prometheus not found (apt-get install prometheus)")
	}
	hullBin := filepath.Join(env.binDir, "hull")
	if out, err := exec.Command("go", "build", "-o", hullBin, "github.com/hull-runtime/hull/cmd/hull").CombinedOutput(); err != nil {
		t.Fatalf("building hull: %v\n%s", err, out)
	}
	d := startDaemon(t, "2")
	// With hypervisor.debug the guest kernel writes to the console, which
	// hull logs shows. Two TCG boots at once on a loaded machine get more
	// than the default 30 s to reach the agent.
	hullConfig := filepath.Join(d.dir, "hull.toml")
	cfg := fmt.Sprintf("[hypervisor]\ndebug = true\n[agent]\ndial_timeout = \"90s\"\n[image]\nassets_dir = %q\n[runtime]\nstate_dir = %q\n", env.assetsDir, d.stateRoot)
	if err := os.WriteFile(hullConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	monitorAddr := startMonitor(t, hullBin, hullConfig)
	prom := startPrometheus(t, promBin, d.dir, monitorAddr)

	s := d.begin(t, hull)
	pods := map[string]*pod{}
	for _, name := range []string{"mon-a", "mon-b"} {
		p := s.runPod(name)
		p.run(containerConfig("app", untilTerm("true")...))
		pods[name] = p
	}

	// The overhead and guest memory of both pods, with their labels.
	for _, q := range []string{
		`hull_pod_overhead_memory_bytes{pod_namespace="hull-e2e"}`,
		`hull_guest_memory_bytes{kind="total",pod_namespace="hull-e2e"}`,
		`hull_host_process_resident_memory_bytes{process="vmm",pod_namespace="hull-e2e"}`,
		`rate(hull_host_process_cpu_seconds_total{process="vmm",pod_namespace="hull-e2e"}[30s])`,
	} {
		var got []promSample
		waitFor(t, 90*time.Second, "Prometheus to have "+q+" of both pods", func() bool {
			got = prom.query(t, q)
			return len(got) == 2
		})
		for _, smp := range got {
			p := pods[smp.Metric["pod_name"]]
			if p == nil {
				t.Fatalf("%s: series of an unknown pod: %v", q, smp.Metric)
			}
			if smp.Metric["pod_uid"] != p.config.Metadata.Uid || smp.Metric["sandbox"] != p.id {
				t.Errorf("%s: labels %v, want pod_uid %s and sandbox %s", q, smp.Metric, p.config.Metadata.Uid, p.id)
			}
			if smp.Value <= 0 {
				t.Errorf("%s of %s = %v, want > 0", q, p.id, smp.Value)
			}
		}
	}
	// The guest sees about its VM's memory (512 MiB by default).
	for _, smp := range prom.query(t, `hull_guest_memory_bytes{kind="total",pod_namespace="hull-e2e"}`) {
		if smp.Value < 256<<20 || smp.Value > 1<<30 {
			t.Errorf("guest MemTotal of %s = %v, want about 512 MiB", smp.Metric["pod_name"], smp.Value)
		}
	}
	// The overhead is less than what the VMM holds.
	for name, p := range pods {
		over := prom.query(t, fmt.Sprintf(`hull_pod_overhead_memory_bytes{pod_name=%q}`, name))
		rss := prom.query(t, fmt.Sprintf(`hull_host_process_resident_memory_bytes{pod_name=%q}`, name))
		var total float64
		for _, r := range rss {
			total += r.Value
		}
		if len(over) != 1 || over[0].Value > total {
			t.Errorf("pod %s: overhead %v, host RSS %v", p.id, over, total)
		}
	}

	// The VMM's RSS in Prometheus is /proc's, within 10% (a sample is up
	// to a scrape interval old; the guest may touch memory meanwhile).
	for name, p := range pods {
		_, info := p.status()
		q := fmt.Sprintf(`hull_host_process_resident_memory_bytes{process="vmm",pod_name=%q}`, name)
		var got, want float64
		waitFor(t, 30*time.Second, "the VMM's RSS in Prometheus to be /proc's within 10%", func() bool {
			smp := prom.query(t, q)
			rss, err := podmetrics.RSS(info.Pid)
			if err != nil {
				t.Fatalf("reading the VMM's RSS: %v", err)
			}
			if len(smp) != 1 {
				return false
			}
			got, want = smp[0].Value, float64(rss)
			return got >= want*0.9 && got <= want*1.1
		})
		t.Logf("pod %s: VMM RSS %0.f in Prometheus, %0.f in /proc", name, got, want)
	}

	// hull list shows both pods with their VMMs and containers.
	out, err := exec.Command(hullBin, "--config", hullConfig, "list", "--json").Output()
	if err != nil {
		t.Fatalf("hull list --json: %v", err)
	}
	var list []struct {
		ID           string   `json:"id"`
		PodName      string   `json:"pod_name"`
		VMMPID       int      `json:"vmm_pid"`
		VCPUs        uint32   `json:"vcpus"`
		MemoryMiB    uint32   `json:"memory_mib"`
		HostRSSBytes uint64   `json:"host_rss_bytes"`
		Containers   []string `json:"containers"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("hull list --json: %v\n%s", err, out)
	}
	if len(list) != 2 {
		t.Fatalf("hull list shows %d sandboxes, want 2:\n%s", len(list), out)
	}
	for _, e := range list {
		p := pods[e.PodName]
		if p == nil || !strings.HasPrefix(e.ID, p.id+"@") {
			t.Errorf("hull list: %+v is none of the pods", e)
			continue
		}
		_, info := p.status()
		if e.VMMPID != info.Pid || e.VCPUs == 0 || e.MemoryMiB == 0 || e.HostRSSBytes == 0 || len(e.Containers) != 2 {
			t.Errorf("hull list: %+v; want VMM %d, a size, host RSS and 2 containers", e, info.Pid)
		}
	}
	// A pod whose VM never reaches its agent (a dial bound no boot meets)
	// fails to start and leaves no shim: the node's start counts still
	// have it.
	failing := strings.Replace(cfg, `dial_timeout = "90s"`, `dial_timeout = "1ms"`+"\ndial_timeout_max_scale = 1", 1)
	if err := os.WriteFile(hullConfig, []byte(failing), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := s.runPodSandbox(s.podConfig("mon-fail"), hull.name); err == nil {
		s.fail(st.logFrom, "RunPodSandbox mon-fail started a pod whose agent dial bound is 1 ms")
	}
	if err := os.WriteFile(hullConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Two pods of two containers each (the sandbox's and the app)
	// started; one sandbox start failed, before any container of it.
	for q, want := range map[string]float64{
		`hull_sandbox_starts_total{result="ok"}`:      2,
		`hull_sandbox_starts_total{result="error"}`:   1,
		`hull_container_starts_total{result="ok"}`:    4,
		`hull_container_starts_total{result="error"}`: 0,
	} {
		waitFor(t, 30*time.Second, fmt.Sprintf("Prometheus to have %s = %v", q, want), func() bool {
			got := prom.query(t, q)
			return len(got) == 1 && got[0].Value == want
		})
	}

	// hull logs shows the VM's console and the agent's log.
	logs, err := exec.Command(hullBin, "--config", hullConfig, "logs", pods["mon-a"].id).Output()
	if err != nil {
		t.Fatalf("hull logs: %v", err)
	}
	console, agentLog, _ := strings.Cut(string(logs), "==> agent.log <==")
	agentLines := strings.Contains(agentLog, "source=agent") || strings.Contains(agentLog, `"source":"agent"`)
	if !strings.Contains(console, "Linux version") || !agentLines {
		t.Errorf("hull logs: want the console (kernel banner) and the agent log (source=agent):\n%s", e2e.LastLines(string(logs), 40))
	}

	// Removed pods' series go stale.
	for _, p := range pods {
		p.stop()
		p.remove()
	}
	waitFor(t, 60*time.Second, "the removed pods' series to go stale", func() bool {
		return len(prom.query(t, `hull_guest_memory_bytes{pod_namespace="hull-e2e"}`)) == 0 &&
			len(prom.query(t, `hull_host_process_resident_memory_bytes{pod_namespace="hull-e2e"}`)) == 0
	})
	if up := prom.query(t, `up{job="hull"}`); len(up) != 1 || up[0].Value != 1 {
		t.Errorf("after the pods: hull monitor's target %v, want up", up)
	}
}

// startMonitor starts `hull monitor` on a free port and returns its
// address.
func startMonitor(t *testing.T, hullBin, config string) string {
	t.Helper()
	cmd := exec.Command(hullBin, "--config", config, "monitor", "--listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2e.Stop(cmd, 10*time.Second) })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if _, rest, ok := strings.Cut(sc.Text(), "serving http://"); ok {
				select {
				case addr <- strings.TrimSuffix(rest, "/metrics"):
				default:
				}
			}
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("hull monitor did not start serving")
	}
	return ""
}

// prometheus is a Prometheus server of the test.
type prometheus struct {
	api string
}

// startPrometheus starts Debian's Prometheus server scraping target every
// 2 seconds, with its storage below dir.
func startPrometheus(t *testing.T, bin, dir, target string) *prometheus {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n  - job_name: hull\n    static_configs:\n      - targets: [%q]\n", target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logFile.Close() }()
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "prometheus-data"),
		"--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2e.Stop(cmd, 10*time.Second) })
	p := &prometheus{api: "http://" + addr}
	waitFor(t, 60*time.Second, "Prometheus to scrape hull monitor", func() bool {
		up, err := p.tryQuery(`up{job="hull"}`)
		return err == nil && len(up) == 1 && up[0].Value == 1
	})
	return p
}

// promSample is one sample of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  float64
}

func (p *prometheus) query(t *testing.T, q string) []promSample {
	t.Helper()
	s, err := p.tryQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tryQuery runs an instant query through Prometheus' HTTP API.
func (p *prometheus) tryQuery(q string) ([]promSample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.api+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("query %s: %w: %s", q, err, b)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, r.Error)
	}
	var out []promSample
	for _, res := range r.Data.Result {
		s, _ := res.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", q, res.Value)
		}
		out = append(out, promSample{Metric: res.Metric, Value: v})
	}
	return out, nil
}
