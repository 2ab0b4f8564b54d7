package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/ocispec"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// supervisorExitLimit bounds how long delete waits for the supervisor to
// tear the VM down and exit.
const supervisorExitLimit = teardownTimeout + 10*time.Second

// errNotImplementedClass is the class of what hull-runtime does not do.
var errNotImplementedClass = errdefs.ErrNotImplemented

func newStartCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "start CONTAINER_ID",
		Short: "Run the program of a created container",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			dir, rec, err := readRecord(g.root, args[0])
			if err != nil {
				return err
			}
			switch st := status(dir, rec); st {
			case statusCreated:
			case statusStopped:
				return fmt.Errorf("cannot start a container that has stopped: %w", errdefs.ErrFailedPrecondition)
			default:
				return fmt.Errorf("cannot start an already %s container: %w", st, errdefs.ErrFailedPrecondition)
			}
			if _, err := call(filepath.Join(dir, sockName), request{Op: opStart}); err != nil {
				return err
			}
			// A failing poststart hook is a warning (runtime-spec).
			if err := ocispec.RunHooks(ctx, "poststart", rec.Poststart, rec.hookState(statusRunning)); err != nil {
				log.G(ctx).WithError(err).Warn("poststart hook failed")
			}
			return nil
		},
	}
}

func newStateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state CONTAINER_ID",
		Short: "Print a container's state as JSON (runc's)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, rec, err := readRecord(g.root, args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), rec.state(status(dir, rec)))
		},
	}
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newKillCommand(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "kill [--all] CONTAINER_ID [SIGNAL]",
		Short: "Send a signal (default SIGTERM) to a container's init process, or with --all to all its processes",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sig := syscall.SIGTERM
			if len(args) == 2 {
				var err error
				if sig, err = parseSignal(args[1]); err != nil {
					return err
				}
			}
			dir, rec, err := readRecord(g.root, args[0])
			if err != nil {
				return err
			}
			if st := status(dir, rec); st == statusStopped {
				return fmt.Errorf("%w: %w", errNotRunning, errdefs.ErrNotFound)
			}
			_, err = call(filepath.Join(dir, sockName), request{Op: opKill, Signal: int(sig), All: all})
			return err
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "signal all the container's processes")
	return cmd
}

// parseSignal reads a signal as runc does: a number, or a name with or
// without SIG.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal %q: %w", s, errdefs.ErrInvalidArgument)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: %w", s, errdefs.ErrInvalidArgument)
}

func newDeleteCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete [--force] CONTAINER_ID",
		Short: "Delete a container: its VM and everything made for it (a running one only with --force, which kills it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return deleteContainer(cmd.Context(), g, args[0], force)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container and delete it")
	return cmd
}

func deleteContainer(ctx context.Context, g *globals, id string, force bool) error {
	dir, rec, err := readRecord(g.root, id)
	if errdefs.IsNotFound(err) {
		// As runc: a directory without a record is a create that died.
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		if force {
			return nil
		}
	}
	if err != nil {
		return err
	}
	if rec.Supervisor.Running() {
		_, err := call(filepath.Join(dir, sockName), request{Op: opDelete, Force: force})
		if err != nil && !errdefs.IsUnavailable(err) {
			return err
		}
		// Deleted, or tearing down after the workload's exit.
		if !waitExit(ctx, rec.Supervisor, supervisorExitLimit) {
			log.G(ctx).WithField("pid", rec.Supervisor.PID).Warn("the supervisor did not exit; killing it")
			if _, err := rec.Supervisor.Kill(); err != nil {
				return err
			}
			waitExit(ctx, rec.Supervisor, 5*time.Second)
		}
	}
	// What a supervisor that died left (nothing after a clean exit).
	if err := sandbox.Cleanup(ctx, rec.SandboxRoot, rec.SandboxID); err != nil {
		return fmt.Errorf("deleting container %s: %w", id, err)
	}
	if err := ocispec.RunHooks(ctx, "poststop", rec.Poststop, rec.hookState(statusStopped)); err != nil {
		log.G(ctx).WithError(err).Warn("poststop hook failed")
	}
	return os.RemoveAll(dir)
}

// waitExit waits until p no longer runs (a zombie its reaper has not
// reaped yet counts as gone).
func waitExit(ctx context.Context, p interface{ Running() bool }, limit time.Duration) bool {
	end := time.Now().Add(limit)
	for p.Running() {
		if time.Now().After(end) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// running returns the supervisor's socket of a container that runs.
func running(g *globals, id string) (string, error) {
	dir, rec, err := readRecord(g.root, id)
	if err != nil {
		return "", err
	}
	if !rec.Supervisor.Running() {
		return "", fmt.Errorf("%w: %w", errNotRunning, errdefs.ErrFailedPrecondition)
	}
	return filepath.Join(dir, sockName), nil
}

func newPsCommand(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ps [--format table|json] CONTAINER_ID",
		Short: "List a container's processes by their PIDs in the guest (they name no host process)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sock, err := running(g, args[0])
			if err != nil {
				return err
			}
			resp, err := call(sock, request{Op: opPids})
			if err != nil {
				return err
			}
			pids := resp.Pids
			if pids == nil {
				pids = []uint32{}
			}
			switch format {
			case "json":
				return json.NewEncoder(cmd.OutOrStdout()).Encode(pids)
			case "table":
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				_, _ = fmt.Fprintln(tw, "PID")
				for _, p := range pids {
					_, _ = fmt.Fprintln(tw, p)
				}
				return tw.Flush()
			}
			return fmt.Errorf("--format %q: want table or json: %w", format, errdefs.ErrInvalidArgument)
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	return cmd
}

func newPauseCommand(g *globals, pause bool) *cobra.Command {
	use, short, op := "pause", "Freeze a container's processes", opPause
	if !pause {
		use, short, op = "resume", "Thaw a paused container", opResume
	}
	return &cobra.Command{
		Use:   use + " CONTAINER_ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sock, err := running(g, args[0])
			if err != nil {
				return err
			}
			_, err = call(sock, request{Op: op})
			return err
		},
	}
}

func newUpdateCommand(g *globals) *cobra.Command {
	var resources string
	cmd := &cobra.Command{
		Use:   "update --resources FILE|- CONTAINER_ID",
		Short: "Change a container's resource limits (linux.resources of the spec, as JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if resources == "" {
				return fmt.Errorf("update takes its limits from --resources (a JSON file, or - for stdin): %w", errdefs.ErrInvalidArgument)
			}
			r := cmd.InOrStdin()
			if resources != "-" {
				f, err := os.Open(resources)
				if err != nil {
					return err
				}
				defer func() { _ = f.Close() }()
				r = f
			}
			var res specs.LinuxResources
			if err := json.NewDecoder(io.LimitReader(r, maxMessage)).Decode(&res); err != nil {
				return fmt.Errorf("reading --resources: %w: %w", err, errdefs.ErrInvalidArgument)
			}
			sock, err := running(g, args[0])
			if err != nil {
				return err
			}
			_, err = call(sock, request{Op: opUpdate, Resources: &res})
			return err
		},
	}
	cmd.Flags().StringVarP(&resources, "resources", "r", "", "JSON file of linux.resources, or - for stdin")
	return cmd
}

func newListCommand(g *globals) *cobra.Command {
	var format string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the containers under --root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ents, err := os.ReadDir(g.root)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			states := []containerState{}
			for _, e := range ents {
				dir, rec, err := readRecord(g.root, e.Name())
				if err != nil {
					continue
				}
				states = append(states, rec.state(status(dir, rec)))
			}
			out := cmd.OutOrStdout()
			switch {
			case quiet:
				for _, s := range states {
					_, _ = fmt.Fprintln(out, s.ID)
				}
				return nil
			case format == "json":
				return json.NewEncoder(out).Encode(states)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			_, _ = fmt.Fprintln(tw, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")
			for _, s := range states {
				_, _ = fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), s.Owner)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only IDs")
	return cmd
}

func newSuperviseCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "_supervise CONTAINER_ID",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := supervise(cmd.Context(), g.root, args[0]); code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
}
