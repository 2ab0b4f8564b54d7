package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/factory"
)

// shimBinaryName is the shim the factory runs its warm shims from.
const shimBinaryName = "containerd-shim-hull-v2"

// newFactoryCommand is the parent of the commands that make pod VMs start
// faster than a boot: the factory of warm VMs and VM templates.
func newFactoryCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "factory",
		Short: "Keep booted VMs ready and VM templates for pod starts (docs/factory.md)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newFactoryServeCommand(g), newFactoryStatusCommand(g), newFactoryTemplateCommand(g))
	return cmd
}

func newFactoryServeCommand(g *globalFlags) *cobra.Command {
	var (
		shimPath    string
		bootTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the VM factory in the foreground",
		Long: "Keep factory.vm_cache warm shims, each holding a booted VM, and hand one to each\n" +
			"starting pod shim that asks (factory.socket). On exit (SIGTERM, SIGINT) the warm VMs not\n" +
			"claimed stop; claimed ones belong to their pods and live on.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load(cmd.Context())
			if err != nil {
				return err
			}
			shim, err := findShim(shimPath)
			if err != nil {
				return err
			}
			src := c.Source
			if src != "" {
				if src, err = filepath.Abs(src); err != nil {
					return err
				}
			}
			if bootTimeout <= 0 {
				// A boot waits for its slot, then for the agent.
				bootTimeout = c.Runtime.BootWaitTimeout.Duration + time.Duration(float64(c.Agent.DialTimeout.Duration)*max(1, float64(c.Agent.DialTimeoutMaxScale)))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), unix.SIGTERM, unix.SIGINT)
			defer stop()
			return factory.Serve(ctx, factory.Options{Config: c, ConfigPath: src, ShimBinary: shim, BootTimeout: bootTimeout})
		},
	}
	cmd.Flags().StringVar(&shimPath, "shim", "", "the "+shimBinaryName+" binary (default: next to hull, then $PATH)")
	cmd.Flags().DurationVar(&bootTimeout, "boot-timeout", 0, "how long a warm VM may take to become ready (default: runtime.boot_wait_timeout plus the agent's longest dial timeout)")
	return cmd
}

// findShim returns the shim binary: path when given, else the one next to
// this executable, else the one on $PATH.
func findShim(path string) (string, error) {
	if path != "" {
		return filepath.Abs(path)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), shimBinaryName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, shimBinaryName)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && filepath.IsAbs(p) { //nolint:gosec // G703: $PATH is the administrator's
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found next to hull nor on $PATH (use --shim): %w", shimBinaryName, errdefs.ErrNotFound)
}

func newFactoryStatusCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the factory's warm VMs and its hits and misses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load(cmd.Context())
			if err != nil {
				return err
			}
			st, err := factoryStatus(cmd.Context(), c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(statusJSON(st))
			}
			_, err = fmt.Fprint(out, formatStatus(st))
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// factoryStatus asks the factory of c for its status, within 5 seconds.
func factoryStatus(ctx context.Context, c *config.Config) (*api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := factory.Dial(ctx, c.Factory.Socket)
	if err != nil {
		return nil, err
	}
	defer func() { _ = cl.Close() }()
	return cl.Status(ctx)
}

// factoryStatusJSON is `hull factory status --json`.
type factoryStatusJSON struct {
	Wanted       uint32       `json:"wanted"`
	Ready        uint32       `json:"ready"`
	Booting      uint32       `json:"booting"`
	Hits         uint64       `json:"hits"`
	Misses       uint64       `json:"misses"`
	RefillErrors uint64       `json:"refill_errors"`
	LastError    string       `json:"last_error,omitempty"`
	VMs          []warmVMJSON `json:"vms"`
}

type warmVMJSON struct {
	ID         string  `json:"id"`
	Ready      bool    `json:"ready"`
	AgeSeconds float64 `json:"age_seconds"`
	PID        uint32  `json:"pid"`
}

func statusJSON(st *api.StatusResponse) factoryStatusJSON {
	j := factoryStatusJSON{
		Wanted: st.GetWanted(), Ready: st.GetReady(), Booting: st.GetBooting(),
		Hits: st.GetHits(), Misses: st.GetMisses(), RefillErrors: st.GetRefillErrors(), LastError: st.GetLastError(),
		VMs: []warmVMJSON{},
	}
	for _, v := range st.GetVms() {
		j.VMs = append(j.VMs, warmVMJSON{ID: v.GetId(), Ready: v.GetReady(), AgeSeconds: v.GetAgeSeconds(), PID: v.GetPid()})
	}
	return j
}

// formatStatus is the text form of a status.
func formatStatus(st *api.StatusResponse) string {
	var b strings.Builder
	fmt.Fprintf(&b, "warm VMs: %d ready, %d booting, %d wanted\n", st.GetReady(), st.GetBooting(), st.GetWanted())
	fmt.Fprintf(&b, "claims:   %d hits, %d misses\n", st.GetHits(), st.GetMisses())
	fmt.Fprintf(&b, "refill errors: %d", st.GetRefillErrors())
	if st.GetLastError() != "" {
		fmt.Fprintf(&b, " (last: %s)", st.GetLastError())
	}
	b.WriteString("\n")
	for _, v := range st.GetVms() {
		state := "booting"
		if v.GetReady() {
			state = "ready"
		}
		fmt.Fprintf(&b, "  %-22s %-8s pid %-8d age %s\n", v.GetId(), state, v.GetPid(), (time.Duration(v.GetAgeSeconds() * float64(time.Second))).Round(time.Second))
	}
	return b.String()
}

// factoryCheck is `hull check`'s line about the factory.
func factoryCheck(ctx context.Context, c *config.Config) checkResult {
	if c.Factory.VMCache == 0 {
		return checkResult{"vm factory", statusOK, "off (factory.vm_cache = 0): every pod boots its VM"}
	}
	st, err := factoryStatus(ctx, c)
	switch {
	case err != nil:
		return checkResult{"vm factory", statusWarn, fmt.Sprintf("factory.vm_cache = %d but the factory at %s does not answer (%v): pods boot their VMs (run hull factory serve)", c.Factory.VMCache, c.Factory.Socket, err)}
	case st.GetReady() == 0:
		return checkResult{"vm factory", statusWarn, fmt.Sprintf("serving at %s, no warm VM ready (%d booting, %d refill errors): pods boot their VMs for now", c.Factory.Socket, st.GetBooting(), st.GetRefillErrors())}
	}
	return checkResult{"vm factory", statusOK, fmt.Sprintf("serving at %s: %d of %d warm VMs ready, %d hits, %d misses", c.Factory.Socket, st.GetReady(), st.GetWanted(), st.GetHits(), st.GetMisses())}
}
