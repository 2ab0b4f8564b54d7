package e2e

import (
	"reflect"
	"testing"
)

func TestSandboxStarts(t *testing.T) {
	log := `time="2026-12-07T06:00:00Z" level=info msg="starting containerd" revision= version=1.6.20
time="2026-12-07T06:00:01.1Z" level=info msg="sandbox started" memory_mib=512 netns= sandbox=a@default start=adopted vcpus=1
time="2026-12-07T06:00:01.2Z" level=info msg="the warm sandbox cannot serve the pod; starting one for it" field=kernel sandbox=b@default warm_sandbox=warm-0123456789abcdef
time="2026-12-07T06:00:02Z" level=info msg="sandbox started" memory_mib=768 netns=/var/run/netns/cni-1 sandbox="b c@k8s.io" start=warm_refused vcpus=2
time="2026-12-07T06:00:03Z" level=info msg="sandbox started" sandbox=c@default start=restored runtime=io.containerd.hull.v2
time="2026-12-07T06:00:04Z" level=info msg="sandbox started" sandbox=d@default start=cold zphases="create guest sandbox=129.0ms,warm start=1.0ms"
`
	want := []SandboxStart{{"a@default", "adopted"}, {"b c@k8s.io", "warm_refused"}, {"c@default", "restored"}, {"d@default", "cold"}}
	if got := SandboxStarts(log); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := SandboxStarts("level=info msg=\"sandbox stopped\" sandbox=a start=cold\n"); len(got) != 0 {
		t.Errorf("another message counted: %v", got)
	}
}

func TestColdPods(t *testing.T) {
	for _, tc := range []struct {
		name string
		cold Cold
		mode FactoryMode
		want int
	}{
		{"every mode", Cold{Pods: 2}, ModeCache, 2},
		{"listed mode", Cold{Pods: 1, Modes: []FactoryMode{ModeTemplate}}, ModeTemplate, 1},
		{"another mode", Cold{Pods: 1, Modes: []FactoryMode{ModeTemplate}}, ModeCache, 0},
		{"none", Cold{}, ModeTemplate, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cold.colds(tc.mode); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestFactoryModeFromEnv(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  FactoryMode
		err   bool
	}{{"", ModeCold, false}, {"cache", ModeCache, false}, {"template", ModeTemplate, false}, {"warm", "", true}} {
		t.Run(tc.value, func(t *testing.T) {
			t.Setenv(FactoryModeEnv, tc.value)
			got, err := FactoryModeFromEnv()
			if got != tc.want || (err != nil) != tc.err {
				t.Errorf("got %q, %v; want %q, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestFilterWithoutFactory(t *testing.T) {
	lines := []string{"process 1: qemu-system-x86_64 -name warm-0123456789abcdef"}
	for _, f := range []*Factory{nil, {Mode: ModeTemplate}, {Mode: ModeCache}} {
		if got := f.Filter(func() []string { return lines }); !reflect.DeepEqual(got, lines) {
			t.Errorf("%+v: got %v, want the lines as they are", f, got)
		}
	}
}
