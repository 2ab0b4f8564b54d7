package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// listShimTimeout bounds asking one shim for its sandbox's details.
const listShimTimeout = 2 * time.Second

// listEntry is one sandbox of `hull list`.
type listEntry struct {
	ID           string `json:"id"`
	PodName      string `json:"pod_name,omitempty"`
	PodNamespace string `json:"pod_namespace,omitempty"`
	PodUID       string `json:"pod_uid,omitempty"`
	// VMMPID is 0 when the recorded hypervisor no longer runs.
	VMMPID    int    `json:"vmm_pid"`
	VCPUs     uint32 `json:"vcpus,omitempty"`
	MemoryMiB uint32 `json:"memory_mib,omitempty"`
	// HostRSSBytes is the hypervisor's resident memory.
	HostRSSBytes uint64   `json:"host_rss_bytes"`
	Containers   []string `json:"containers"`
	// Error says why the shim's details are missing, if they are.
	Error string `json:"error,omitempty"`
}

func newListCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the sandboxes of this node",
		Long: "List the sandboxes under runtime.state_dir: the pod each runs, its VMM's PID, vCPUs,\n" +
			"memory, the VMM's resident memory on the host and its containers (as the sandbox's\n" +
			"shim reports them on its metrics endpoint).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			entries, err := listSandboxes(ctx, c.Runtime.StateDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			_, _ = fmt.Fprintln(w, "SANDBOX\tPOD\tVMM PID\tVCPUS\tMEMORY\tHOST RSS\tCONTAINERS")
			for _, e := range entries {
				pod := "-"
				if e.PodName != "" {
					pod = e.PodNamespace + "/" + e.PodName
				}
				_, _ = fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%dMiB\t%dMiB\t%d\n", e.ID, pod, e.VMMPID, e.VCPUs, e.MemoryMiB, e.HostRSSBytes>>20, len(e.Containers))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// listSandboxes reads every sandbox's record and asks its shim for the
// rest; a shim that does not answer leaves its entry's details empty.
func listSandboxes(ctx context.Context, stateRoot string) ([]listEntry, error) {
	sbs, err := sandbox.List(stateRoot)
	if err != nil {
		return nil, err
	}
	entries := []listEntry{}
	for _, sb := range sbs {
		e := listEntry{ID: sb.ID, Containers: []string{}}
		if sb.VM.Running() {
			e.VMMPID = sb.VM.PID
			e.HostRSSBytes, _ = podmetrics.RSS(sb.VM.PID)
		}
		sctx, cancel := context.WithTimeout(ctx, listShimTimeout)
		info, err := podmetrics.ShimInfo(sctx, filepath.Join(sb.Dir, podmetrics.SocketName))
		cancel()
		if err != nil {
			e.Error = strings.TrimSpace(err.Error())
		} else {
			e.PodName, e.PodNamespace, e.PodUID = info.PodName, info.PodNamespace, info.PodUID
			e.VCPUs, e.MemoryMiB, e.Containers = info.VCPUs, info.MemoryMiB, info.Containers
		}
		entries = append(entries, e)
	}
	return entries, nil
}
