package sandbox

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/storage"
)

func TestValidateContainer(t *testing.T) {
	good := func() ContainerConfig {
		return ContainerConfig{
			ID:     "c1",
			Bundle: "/b",
			Spec: &specs.Spec{
				Root:    &specs.Root{Path: "rootfs"},
				Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"},
				Linux:   &specs.Linux{},
			},
		}
	}
	cases := []struct {
		name   string
		change func(*ContainerConfig)
		want   string // "" for valid
	}{
		{"valid", func(*ContainerConfig) {}, ""},
		{"bad id", func(c *ContainerConfig) { c.ID = "../x" }, "container id"},
		{"no spec", func(c *ContainerConfig) { c.Spec = nil }, "no spec"},
		{"relative bundle", func(c *ContainerConfig) { c.Bundle = "b" }, "not absolute"},
		{"no root", func(c *ContainerConfig) { c.Spec.Root = nil }, "no root.path"},
		{"no root but rootfs mounts", func(c *ContainerConfig) {
			c.Spec.Root = nil
			c.Rootfs = []storage.Mount{{Type: "bind", Source: "/x"}}
		}, ""},
		{"no linux", func(c *ContainerConfig) { c.Spec.Linux = nil }, "no linux"},
		{"no process", func(c *ContainerConfig) { c.Spec.Process = nil }, "no process"},
		{"no args", func(c *ContainerConfig) { c.Spec.Process.Args = nil }, "no args"},
		{"relative cwd", func(c *ContainerConfig) { c.Spec.Process.Cwd = "tmp" }, "cwd"},
		{"terminal mismatch", func(c *ContainerConfig) { c.Spec.Process.Terminal = true }, "terminal"},
		{"terminal both", func(c *ContainerConfig) { c.Spec.Process.Terminal = true; c.Stdio.Terminal = true }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			err := validateContainer(c)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Errorf("no error, want one about %q", tc.want)
			case tc.want != "" && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want an invalid-argument error about %q", err, tc.want)
			}
		})
	}
}

func TestContainerTransitions(t *testing.T) {
	cases := []struct {
		from, to ContainerState
		ok       bool
	}{
		{ContainerCreated, ContainerRunning, true},
		{ContainerRunning, ContainerPaused, true},
		{ContainerPaused, ContainerRunning, true},
		{ContainerRunning, ContainerStopped, true},
		{ContainerStopped, ContainerRunning, false},
		{ContainerCreated, ContainerPaused, false},
		{ContainerStopped, ContainerDeleted, true},
		{ContainerDeleted, ContainerCreated, false},
	}
	for _, tc := range cases {
		t.Run(string(tc.from)+"->"+string(tc.to), func(t *testing.T) {
			c := &Container{id: "c", state: tc.from}
			err := c.transition(tc.to)
			if (err == nil) != tc.ok {
				t.Errorf("transition: %v, want ok=%t", err, tc.ok)
			}
			if err != nil && !errdefs.IsFailedPrecondition(err) {
				t.Errorf("error class: %v", err)
			}
		})
	}
}
