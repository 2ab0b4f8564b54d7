//go:build hulltest_hostile

// This file exists only in the hostile test build of the agent (build tag
// hulltest_hostile). It plays a compromised guest so that the integration
// tests can show the host stays within its bounds; the default build, the
// images and `make install` never contain it. The behaviours are chosen on
// the kernel command line with hull.hostile=<mode>[,<mode>...]; see
// hostileModes.

package agent

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
)

// hostileParam is the kernel parameter that selects the behaviours.
const hostileParam = "hull.hostile"

// hostileModes are the behaviours, by the name hull.hostile takes.
var hostileModes = map[string]string{
	"console":    "writes to the serial console without pause",
	"logkeys":    "sends log entries with forged keys (newline + fake level=error line, sandbox, namespace) and a 1 MiB line",
	"logflood":   "sends thousands of log lines a second",
	"oomforeign": "reports OOM kills for container IDs it does not own",
	"oomflood":   "reports OOM kills for its own containers without pause",
	"streams":    "opens hundreds of yamux streams towards the host and keeps them open",
	"nowait":     "never reports a process exit: WaitProcess blocks until the caller gives up",
	"noremove":   "refuses RemoveContainer",
	"pid":        "pid:<n> reports <n> as the PID of every process (default 1)",
}

// Forged values the tests look for on the host.
const (
	// hostileForgedKey is a log key with a newline and a fake log line.
	hostileForgedKey = "k\nlevel=error msg=hostile-forged-line"
	// hostileForeignID is a container ID the hostile agent does not own.
	hostileForeignID = "hostile-foreign-container"
	// hostileStreams is how many yamux streams the streams mode opens.
	hostileStreams = 500
)

// hostile is the parsed hull.hostile value and the state the behaviours
// share.
type hostile struct {
	modes map[string]bool
	pid   uint32

	mu sync.Mutex
	// owned are the container IDs created so far. Guarded by mu.
	owned []string
}

var hostileState *hostile

func init() {
	testHooks.start = hostileStart
	testHooks.interceptor = hostileIntercept
	testHooks.session = hostileSession
}

// parseHostile reads hull.hostile from a kernel command line.
func parseHostile(cmdline string) (*hostile, []string) {
	h := &hostile{modes: map[string]bool{}, pid: 1}
	var warnings []string
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		if k != hostileParam {
			continue
		}
		for _, m := range strings.Split(v, ",") {
			name, arg, _ := strings.Cut(m, ":")
			if _, ok := hostileModes[name]; !ok {
				warnings = append(warnings, fmt.Sprintf("%s: unknown mode %q", hostileParam, name))
				continue
			}
			h.modes[name] = true
			if name == "pid" && arg != "" {
				n, err := strconv.ParseUint(arg, 10, 32)
				if err != nil {
					warnings = append(warnings, fmt.Sprintf("%s: pid %q: %v", hostileParam, arg, err))
					continue
				}
				h.pid = uint32(n)
			}
		}
	}
	return h, warnings
}

func hostileStart(ctx context.Context, a *Agent, cmdline string) {
	h, warnings := parseHostile(cmdline)
	for _, w := range warnings {
		a.addWarning(ctx, w)
	}
	hostileState = h
	log.G(ctx).WithField("modes", fmt.Sprint(h.modes)).Warn("hostile test agent")
	if h.modes["console"] {
		go hostileConsole()
	}
	if h.modes["logkeys"] {
		// Let a line of 1 MiB and more through the ring whole. No other
		// goroutine runs yet.
		a.ring.mu.Lock()
		a.ring.maxBytes = 4 << 20
		a.ring.mu.Unlock()
	}
	if h.modes["logkeys"] || h.modes["logflood"] {
		go h.logs(a.ring)
	}
}

// hostileConsole writes to the console (the agent's stderr) until the VM
// ends.
func hostileConsole() {
	line := []byte(strings.Repeat("hostile console flood ", 180) + "\n")
	for {
		_, _ = os.Stderr.Write(line)
	}
}

// logs puts forged lines straight into the log ring, as a compromised
// agent may write anything on the log channel.
func (h *hostile) logs(ring *logRing) {
	forged := func(msg string) []byte {
		b := []byte{'{'}
		b = appendJSONString(b, hostileForgedKey)
		b = append(b, `:"v","sandbox":"forged-sandbox","namespace":"forged-namespace","level":"info","msg":`...)
		b = appendJSONString(b, msg)
		return append(b, '}')
	}
	big := []byte(`{"level":"info","msg":"hostile big line ` + strings.Repeat("x", 1<<20) + `"}`)
	for i := 0; ; i++ {
		if h.modes["logkeys"] {
			ring.add(forged("hostile forged keys"))
			if i%100 == 0 {
				ring.add(big)
			}
		}
		if h.modes["logflood"] {
			for j := range 100 {
				ring.add(forged(fmt.Sprintf("hostile flood %d", i*100+j)))
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostileSession opens streams towards the host and keeps them open.
func hostileSession(ctx context.Context, sess *yamux.Session) {
	h := hostileState
	if h == nil || !h.modes["streams"] {
		return
	}
	// Let the host's first calls through, then flood.
	time.Sleep(2 * time.Second)
	opened := 0
	for range hostileStreams {
		st, err := sess.Open()
		if err != nil {
			break
		}
		opened++
		go func() {
			// Ask for a channel as the host would, then keep writing.
			if b, err := (channel.Header{Kind: channel.KindRPC}).MarshalBinary(); err == nil {
				_, _ = st.Write(b)
			}
			junk := []byte(strings.Repeat("hostile stream ", 256))
			for ctx.Err() == nil {
				if _, err := st.Write(junk); err != nil {
					return
				}
			}
		}()
	}
	log.G(ctx).WithField("streams", opened).Warn("hostile streams opened")
}

// hostileIntercept changes the answers of the calls the modes name.
func hostileIntercept(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	h := hostileState
	if h == nil {
		return m(ctx, u)
	}
	var req any
	capture := func(v any) error {
		req = v
		return u(v)
	}
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	switch {
	case method == "WaitOOM" && h.modes["oomforeign"]:
		time.Sleep(100 * time.Millisecond)
		return &api.WaitOOMResponse{ContainerId: hostileForeignID}, nil
	case method == "WaitOOM" && h.modes["oomflood"]:
		for {
			if id := h.anyOwned(); id != "" {
				return &api.WaitOOMResponse{ContainerId: id}, nil
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	case method == "WaitProcess" && h.modes["nowait"]:
		<-ctx.Done()
		return nil, ctx.Err()
	case method == "RemoveContainer" && h.modes["noremove"]:
		return nil, fmt.Errorf("hostile agent refuses RemoveContainer: %w", errdefs.ErrInternal)
	}
	resp, err := m(ctx, capture)
	if err != nil {
		return resp, err
	}
	switch r := resp.(type) {
	case *api.CreateContainerResponse:
		if cr, ok := req.(*api.CreateContainerRequest); ok {
			h.own(cr.GetContainerId())
		}
		if h.modes["pid"] {
			r.Pid = h.pid
		}
	case *api.ExecProcessResponse:
		if h.modes["pid"] {
			r.Pid = h.pid
		}
	case *api.ListProcessesResponse:
		if h.modes["pid"] {
			for i := range r.Pids {
				r.Pids[i] = h.pid
			}
		}
	}
	return resp, nil
}

func (h *hostile) own(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.owned = append(h.owned, id)
}

func (h *hostile) anyOwned() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.owned) == 0 {
		return ""
	}
	return h.owned[len(h.owned)-1]
}
