package shim

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestTrustedAnnotations(t *testing.T) {
	const (
		criID    = "io.kubernetes.cri.sandbox-id"
		criType  = "io.kubernetes.cri.container-type"
		crioID   = "io.kubernetes.cri-o.SandboxID"
		crioType = "io.kubernetes.cri-o.ContainerType"
		mem      = "io.kubernetes.cri.sandbox-memory"
		period   = "io.kubernetes.cri.sandbox-cpu-period"
		quota    = "io.kubernetes.cri.sandbox-cpu-quota"
	)
	for _, tc := range []struct {
		name string
		in   map[string]string
		want map[string]string // nil: an invalid-argument error
	}{
		{"containerd pod", map[string]string{criID: "pod", criType: "sandbox", mem: "1073741824", "app": "x"},
			map[string]string{criID: "pod", criType: "sandbox", mem: "1073741824"}},
		{"containerd ignores CRI-O keys the operator let through",
			map[string]string{criID: "pod", criType: "container", "io.kubernetes.cri-o.Annotations": "{}"},
			map[string]string{criID: "pod", criType: "container"}},
		{"CRI-O ignores the pod's io.kubernetes.cri keys",
			map[string]string{crioID: "pod", crioType: "container", mem: "99999999999", "io.kubernetes.cri.sandbox-name": "x"},
			map[string]string{crioID: "pod", crioType: "container"}},
		{"both grouping sets", map[string]string{crioID: "pod", crioType: "container", criID: "victim"}, nil},
		{"both grouping sets, other way", map[string]string{criID: "pod", criType: "container", crioID: "victim"}, nil},
		{"no CRI: sizing only", map[string]string{mem: "268435456", "io.kubernetes.cri.other": "x"},
			map[string]string{mem: "268435456"}},
		{"sandbox id not an identifier", map[string]string{criID: "../../pod", criType: "container"}, nil},
		{"sandbox id too long", map[string]string{crioID: strings.Repeat("a", 77), crioType: "container"}, nil},
		{"sandbox id of 76", map[string]string{crioID: strings.Repeat("a", 76), crioType: "container"},
			map[string]string{crioID: strings.Repeat("a", 76), crioType: "container"}},
		{"memory with a sign", map[string]string{mem: "+1073741824"}, nil},
		{"memory negative", map[string]string{criID: "p", criType: "sandbox", mem: "-1"}, nil},
		{"memory beyond 1 PiB", map[string]string{mem: "1125899906842625"}, nil},
		{"memory hex", map[string]string{mem: "0x10"}, nil},
		{"period below the kernel's", map[string]string{period: "10", quota: "100000"}, nil},
		{"period above the kernel's", map[string]string{period: "2000000"}, nil},
		{"quota unlimited", map[string]string{period: "100000", quota: "-1"}, map[string]string{period: "100000", quota: "-1"}},
		{"quota tiny", map[string]string{period: "100000", quota: "1"}, nil},
		{"zeros", map[string]string{period: "0", quota: "0", mem: "0"}, map[string]string{period: "0", quota: "0", mem: "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := trustedAnnotations(tc.in)
			if tc.want == nil {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %v, %v; want an invalid-argument error", got, err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestCRIOSizingIgnored(t *testing.T) {
	// A pod's user writes containerd's sizing annotation on a pod that
	// CRI-O runs: the VM keeps its base size.
	ann, err := trustedAnnotations(map[string]string{
		"io.kubernetes.cri-o.SandboxID":     "pod",
		"io.kubernetes.cri-o.ContainerType": "sandbox",
		"io.kubernetes.cri.sandbox-memory":  "68719476736",
	})
	if err != nil {
		t.Fatal(err)
	}
	base, limit := vmSize{1, 512}, vmSize{8, 65536}
	size, static, err := podSize(base, limit, ann)
	if err != nil || static || size != base {
		t.Fatalf("got %+v static=%t %v; want the base size %+v", size, static, err, base)
	}
	if got := sandboxID("c1", ann); got != "pod" {
		t.Fatalf("sandbox id %q, want pod", got)
	}
}

func TestHullAnnotations(t *testing.T) {
	allow, err := compileAllowList([]string{"debug", "net\\..*"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		allow bool
		in    map[string]string
		ok    bool
	}{
		{"none", false, map[string]string{"app": "x", "io.kubernetes.cri.sandbox-id": "p"}, true},
		{"empty list refuses io.hull", false, map[string]string{"io.hull.debug": "1"}, false},
		{"empty list refuses hull.io/", false, map[string]string{"hull.io/debug": "1"}, false},
		{"allowed", true, map[string]string{"io.hull.debug": "1", "hull.io/net.mtu": "9000"}, true},
		{"whole key must match", true, map[string]string{"io.hull.debugger": "1"}, false},
		{"not in the list", true, map[string]string{"io.hull.memory": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var list = allow
			if !tc.allow {
				list = nil
			}
			err := checkHullAnnotations(list, tc.in)
			if tc.ok != (err == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
				t.Fatalf("got %v, want ok=%t", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "enable_annotations") {
				t.Fatalf("error %q does not name the setting", err)
			}
		})
	}
	if _, err := compileAllowList([]string{"("}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad expression: %v", err)
	}
}

func TestVMOrphaned(t *testing.T) {
	exited := func() *proc {
		p := newProc("", stdioPaths{}, nil)
		p.finish(137, time.Now())
		return p
	}
	running := func() *proc { return newProc("", stdioPaths{}, nil) }
	for _, tc := range []struct {
		name   string
		killed role
		others []*proc
		want   bool
	}{
		{"single container", roleSingle, nil, true},
		{"pod sandbox with members running", rolePodSandbox, []*proc{running()}, true},
		{"member with others running", rolePodMember, []*proc{running(), exited()}, false},
		{"last member", rolePodMember, []*proc{exited()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &service{containers: map[string]*container{}}
			c := &container{id: "killed", role: tc.killed, init: exited()}
			s.containers[c.id] = c
			s.containers["reserved"] = nil
			for i, p := range tc.others {
				id := string(rune('a' + i))
				s.containers[id] = &container{id: id, role: rolePodMember, init: p}
			}
			if got := s.vmOrphaned(c); got != tc.want {
				t.Fatalf("vmOrphaned = %t, want %t", got, tc.want)
			}
		})
	}
}
