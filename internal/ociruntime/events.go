package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/types"
	"github.com/spf13/cobra"

	agent "github.com/hull-runtime/hull/api/agent/v1"
)

// maxIODevices bounds the block devices a stats event lists: the guest
// chooses how many it reports.
const maxIODevices = 64

// runcStats turns the guest's statistics of a container (its cgroup in the
// guest) into runc's stats, the data of `runc events` that containerd's
// runc shim reads for `docker stats` and `ctr task metrics`. CPU times
// become nanoseconds; what the guest does not measure stays zero.
func runcStats(s *agent.StatsResponse) *types.Stats {
	out := &types.Stats{}
	if c := s.GetCpu(); c != nil {
		out.CPU.Usage = types.CpuUsage{Total: c.GetUsageUsec() * 1000, User: c.GetUserUsec() * 1000, Kernel: c.GetSystemUsec() * 1000}
		out.CPU.Throttling = types.Throttling{Periods: c.GetNrPeriods(), ThrottledPeriods: c.GetNrThrottled(), ThrottledTime: c.GetThrottledUsec() * 1000}
	}
	if m := s.GetMemory(); m != nil {
		out.Memory.Usage = types.MemoryEntry{Usage: m.GetUsage(), Limit: m.GetLimit(), Failcnt: m.GetOomEvents()}
		out.Memory.Swap = types.MemoryEntry{Usage: m.GetSwapUsage()}
		out.Memory.Kernel = types.MemoryEntry{Usage: m.GetKernelStack() + m.GetSlab()}
		out.Memory.Cache = m.GetFile()
		out.Memory.Raw = map[string]uint64{
			"anon": m.GetAnon(), "file": m.GetFile(), "kernel_stack": m.GetKernelStack(), "slab": m.GetSlab(),
			"sock": m.GetSock(), "shmem": m.GetShmem(), "max": m.GetMaxEvents(), "oom": m.GetOomEvents(), "oom_kill": m.GetOomKillEvents(),
		}
	}
	if p := s.GetPids(); p != nil {
		out.Pids = types.Pids{Current: p.GetCurrent(), Limit: p.GetLimit()}
	}
	for i, d := range s.GetIo() {
		if i == maxIODevices {
			break
		}
		maj, mnr := d.GetMajor(), d.GetMinor()
		out.Blkio.IoServiceBytesRecursive = append(out.Blkio.IoServiceBytesRecursive,
			types.BlkioEntry{Major: maj, Minor: mnr, Op: "Read", Value: d.GetRbytes()},
			types.BlkioEntry{Major: maj, Minor: mnr, Op: "Write", Value: d.GetWbytes()})
		out.Blkio.IoServicedRecursive = append(out.Blkio.IoServicedRecursive,
			types.BlkioEntry{Major: maj, Minor: mnr, Op: "Read", Value: d.GetRios()},
			types.BlkioEntry{Major: maj, Minor: mnr, Op: "Write", Value: d.GetWios()})
	}
	return out
}

// statsEvent asks the supervisor for the container's statistics, as runc's
// stats event.
func statsEvent(dir, id string) (types.Event, error) {
	resp, err := call(filepath.Join(dir, sockName), request{Op: opStats})
	if err != nil {
		return types.Event{}, err
	}
	if resp.Stats == nil {
		return types.Event{}, fmt.Errorf("container %s: the supervisor sent no statistics: %w", id, errdefs.ErrUnknown)
	}
	return types.Event{Type: "stats", ID: id, Data: resp.Stats}, nil
}

func newEventsCommand(g *globals) *cobra.Command {
	var stats bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "events CONTAINER_ID",
		Short: "Print the container's statistics as runc's JSON events: once with --stats, else every --interval until it stops",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval <= 0 {
				return fmt.Errorf("--interval %s: must be positive: %w", interval, errdefs.ErrInvalidArgument)
			}
			dir, rec, err := readRecord(g.root, args[0])
			if err != nil {
				return err
			}
			if st := status(dir, rec); st == statusStopped {
				return fmt.Errorf("container %s: %w: %w", rec.ID, errNotRunning, errdefs.ErrFailedPrecondition)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			if stats {
				ev, err := statsEvent(dir, rec.ID)
				if err != nil {
					return err
				}
				return enc.Encode(ev)
			}
			return streamEvents(cmd.Context(), enc, dir, rec, interval)
		},
	}
	cmd.Flags().BoolVar(&stats, "stats", false, "print the statistics once and exit")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "how often to print statistics")
	return cmd
}

// streamEvents prints a stats event every interval until the container's
// supervisor is gone (its workload exited) or ctx ends. OOM events are not
// reported.
func streamEvents(ctx context.Context, enc *json.Encoder, dir string, rec record, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ev, err := statsEvent(dir, rec.ID)
		switch {
		case err == nil:
			if err := enc.Encode(ev); err != nil {
				if errors.Is(err, io.ErrClosedPipe) {
					return nil
				}
				return err
			}
		case !rec.Supervisor.Running():
			return nil
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if !rec.Supervisor.Running() {
			return nil
		}
	}
}
