package hostcgroup

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no cgroups path: parent and id", "", "/hull/pod1@default"},
		{"ctr run", "/default/c1", "/default/c1"},
		{"kubelet cgroupfs", "/kubepods/burstable/pod0a-1b/abc123", "/kubepods/burstable/pod0a-1b/abc123"},
		{"kubelet systemd", "kubepods-burstable-pod0a_1b.slice:cri-containerd:abc123",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a_1b.slice/cri-containerd-abc123.scope"},
		{"systemd, default slice", ":hull:abc", "/system.slice/hull-abc.scope"},
		{"systemd, root slice", "-.slice:hull:abc", "/hull-abc.scope"},
		{"systemd, a slice as the unit", "user.slice::sub.slice", "/user.slice/sub.slice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.in, "hull", "pod1@default")
			if err != nil || got != tc.want {
				t.Errorf("Resolve(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestResolveRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, in string
	}{
		{"traversal", "/kubepods/../../etc"},
		{"traversal at the end", "/kubepods/.."},
		{"relative traversal", "../../x"},
		{"relative", "default/c1"},
		{"dot element", "/kubepods/./x"},
		{"empty element", "/kubepods//x"},
		{"trailing slash", "/kubepods/x/"},
		{"the root", "/"},
		{"newline", "/kubepods/x\ny"},
		{"NUL", "/kubepods/x\x00"},
		{"long element", "/" + strings.Repeat("a", 256)},
		{"too long", strings.Repeat("/a", 600)},
		{"systemd traversal in the name", "kubepods.slice:cri-containerd:../../x"},
		{"systemd slash in the name", "kubepods.slice:p:a/b"},
		{"systemd traversal in the slice", "../x.slice:p:n"},
		{"systemd slice without .slice", "kubepods:p:n"},
		{"systemd empty slice component", "kube--pods.slice:p:n"},
		{"systemd no name", "kubepods.slice:p:"},
		{"systemd no prefix", "kubepods.slice::n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.in, "hull", "id")
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Resolve(%q) = %q, %v; want an invalid argument", tc.in, got, err)
			}
		})
	}
	if got, err := Resolve("", "..", "x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("parent ..: %q, %v", got, err)
	}
	if got, err := Resolve("", "hull", ".."); !errdefs.IsInvalidArgument(err) {
		t.Errorf("id ..: %q, %v", got, err)
	}
}
