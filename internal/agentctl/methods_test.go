package agentctl

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		want     string   // the method's short name; empty: an error
		path     string   // its ttRPC name, when found
		request  string   // its request message, when found
		suggests []string // names the error must offer
	}{
		{name: "short name", in: "System.Health", want: "System.Health", path: "/hull.agent.v1.System/Health", request: "HealthRequest"},
		{name: "full name", in: "/hull.agent.v1.Containers/ListProcesses", want: "Containers.ListProcesses",
			path: "/hull.agent.v1.Containers/ListProcesses", request: "ListProcessesRequest"},
		{name: "full name without slash", in: "hull.agent.v1.Network/ListRoutes", want: "Network.ListRoutes",
			path: "/hull.agent.v1.Network/ListRoutes", request: "ListRoutesRequest"},
		{name: "typo", in: "System.Helth", suggests: []string{"System.Health"}},
		{name: "wrong case", in: "system.guestdetails", suggests: []string{"System.GuestDetails"}},
		{name: "method without service", in: "RemoveContainer", suggests: []string{"Containers.RemoveContainer"}},
		{name: "wrong service", in: "Containers.Health", suggests: []string{"System.Health"}},
		{name: "nothing close", in: "Frobnicate.Everything"},
		{name: "empty", in: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Lookup(tc.in)
			if tc.want != "" {
				if err != nil {
					t.Fatal(err)
				}
				if m.Name() != tc.want || m.Path() != tc.path || m.Request() != tc.request {
					t.Fatalf("Lookup(%q) = %s %s(%s), want %s %s(%s)", tc.in, m.Name(), m.Path(), m.Request(), tc.want, tc.path, tc.request)
				}
				return
			}
			if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "hull agent list") {
				t.Fatalf("Lookup(%q) error = %v, want not found pointing to hull agent list", tc.in, err)
			}
			for _, s := range tc.suggests {
				if !strings.Contains(err.Error(), "did you mean") || !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not suggest %s", err, s)
				}
			}
			if len(tc.suggests) == 0 && strings.Contains(err.Error(), "did you mean") {
				t.Errorf("error %q suggests a method for a name close to none", err)
			}
		})
	}
}

// TestMethods: the list holds every service's methods once, with their
// messages, in the proto's order within a service.
func TestMethods(t *testing.T) {
	ms := Methods()
	seen := map[string]bool{}
	index := map[string]int{}
	for i, m := range ms {
		if seen[m.Name()] {
			t.Errorf("%s listed twice", m.Name())
		}
		seen[m.Name()], index[m.Name()] = true, i
	}
	for name, msgs := range map[string][2]string{
		"System.Health":              {"HealthRequest", "HealthResponse"},
		"System.GuestDetails":        {"GuestDetailsRequest", "GuestDetailsResponse"},
		"Containers.CreateContainer": {"CreateContainerRequest", "CreateContainerResponse"},
		"Containers.WaitOOM":         {"WaitOOMRequest", "WaitOOMResponse"},
		"Network.ConfigureNetwork":   {"ConfigureNetworkRequest", "ConfigureNetworkResponse"},
	} {
		if !seen[name] {
			t.Errorf("%s missing from %d methods", name, len(ms))
			continue
		}
		m := ms[index[name]]
		if m.Request() != msgs[0] || m.Response() != msgs[1] {
			t.Errorf("%s(%s) %s, want (%s) %s", name, m.Request(), m.Response(), msgs[0], msgs[1])
		}
	}
	if index["Containers.CreateSandbox"] > index["Containers.StartContainer"] {
		t.Errorf("methods out of the proto's order: %v", index)
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // endpoint as "transport cid port path"; empty: an error
	}{
		{"unix:/run/agent.sock", "serial 0 0 /run/agent.sock"},
		{"vsock:3:1024", "vsock 3 1024 "},
		{"vsock-unix:/run/agent", "vsock 0 1024  /run/agent"},
		{"vsock-unix:", ""},
		{"unix:", ""},
		{"vsock:3", ""},
		{"vsock:x:1024", ""},
		{"tcp:localhost:1", ""},
		{"/run/agent.sock", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			ep, err := ParseAddr(tc.in)
			if tc.want == "" {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("ParseAddr(%q) = %+v, %v; want invalid argument", tc.in, ep, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%s %d %d %s", ep.Transport, ep.CID, ep.Port, ep.SocketPath)
			if ep.VsockUnixDir != "" {
				got += " " + ep.VsockUnixDir
			}
			if got != tc.want {
				t.Fatalf("ParseAddr(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
