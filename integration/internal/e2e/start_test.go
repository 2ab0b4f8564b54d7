package e2e

import (
	"slices"
	"testing"
)

func TestStartsOf(t *testing.T) {
	log := `time="2026-12-07T06:00:00Z" level=info msg="sandbox started" memory_mib=512 netns= sandbox=a@default start=restored vcpus=1
time="2026-12-07T06:00:01Z" level=info msg="sandbox started" memory_mib=512 netns= sandbox=ab@default start=cold vcpus=1
time="2026-12-07T06:00:02Z" level=info msg="container created" sandbox=a@default start=cold
time="2026-12-07T06:00:03Z" level=info msg="sandbox started" memory_mib=512 netns=/var/run/netns/x sandbox="b c@k8s.io" start=adopted vcpus=1
`
	for _, c := range []struct {
		id   string
		want []string
	}{
		{"a@default", []string{"restored"}},
		{"ab@default", []string{"cold"}},
		{"b c@k8s.io", []string{"adopted"}},
		{"c@default", nil},
	} {
		if got := StartsOf(log, c.id); !slices.Equal(got, c.want) {
			t.Errorf("StartsOf(%q) = %v, want %v", c.id, got, c.want)
		}
	}
	if _, err := WaitSandboxStart(func() string { return log + log }, "a@default", 0); err == nil {
		t.Error("two start lines of one sandbox: no error")
	}
	if got, err := WaitSandboxStart(func() string { return log }, "a@default", 0); err != nil || got != "restored" {
		t.Errorf("WaitSandboxStart: %q, %v", got, err)
	}
}
