package ociruntime

import (
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/spf13/cobra"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// theFeatures are what hull-runtime implements, in runtime-spec's
// features format: the hooks it runs (all kinds: the runtime namespace's
// on the host, startContainer in the guest), the namespaces the guest
// makes, and the cgroups it places the VM in.
func theFeatures() features.Features {
	yes := true
	return features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Hooks:         []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"},
		MountOptions: []string{
			"bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
			"private", "rprivate", "shared", "rshared", "slave", "rslave",
		},
		Linux: &features.Linux{
			Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "uts"},
			Cgroup:     &features.Cgroup{V1: &yes, V2: &yes, Systemd: &yes},
			Seccomp:    &features.Seccomp{Enabled: &yes},
		},
		Annotations: map[string]string{
			"io.github.hull-runtime.isolation": "vm",
		},
	}
}

func newFeaturesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "features",
		Short: "Print what hull-runtime implements, as runtime-spec's features JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printJSON(cmd.OutOrStdout(), theFeatures())
		},
	}
}
