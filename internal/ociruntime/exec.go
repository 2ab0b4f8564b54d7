package ociruntime

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/ocispec"
)

type execOptions struct {
	process, pidFile, consoleSocket, cwd, user string
	env                                        []string
	detach, tty                                bool
	preserveFDs                                int
}

func newExecCommand(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [flags] CONTAINER_ID [COMMAND [ARG...]]",
		Short: "Run a process in a running container; this process (or with --detach its stand-in) carries its stdio and exits with its status",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return execProcess(g, args[0], args[1:], o)
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.StringVarP(&o.process, "process", "p", "", "JSON file of the process (runtime-spec's process)")
	f.BoolVarP(&o.detach, "detach", "d", false, "detach: a stand-in process carries the exec; its PID goes to --pid-file")
	f.BoolVarP(&o.tty, "tty", "t", false, "give the process a terminal")
	f.StringVar(&o.pidFile, "pid-file", "", "file to write the PID that stands for the process to")
	f.StringVar(&o.consoleSocket, "console-socket", "", "unix socket to send the terminal's master to")
	f.StringVar(&o.cwd, "cwd", "", "working directory in the container")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable (KEY=value)")
	f.StringVarP(&o.user, "user", "u", "", "uid[:gid] (numeric)")
	f.IntVar(&o.preserveFDs, "preserve-fds", 0, "extra descriptors to pass (not supported)")
	return cmd
}

// execSpec is the process to run: --process, or the container's own with
// the command line's changes.
func execSpec(bundle string, args []string, o execOptions) (*specs.Process, error) {
	if o.process != "" {
		b, err := os.ReadFile(o.process)
		if err != nil {
			return nil, err
		}
		var p specs.Process
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("reading --process %s: %w: %w", o.process, err, errdefs.ErrInvalidArgument)
		}
		return &p, nil
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("exec needs a command or --process: %w", errdefs.ErrInvalidArgument)
	}
	spec, err := ocispec.ReadSpec(bundle)
	if err != nil {
		return nil, err
	}
	p := spec.Process
	if p == nil {
		p = &specs.Process{}
	}
	p.Args, p.Terminal = args, o.tty
	p.Env = append(p.Env, o.env...)
	if o.cwd != "" {
		p.Cwd = o.cwd
	}
	if o.user != "" {
		var uid, gid uint32
		if n, _ := fmt.Sscanf(o.user, "%d:%d", &uid, &gid); n == 0 {
			return nil, fmt.Errorf("--user %q: want uid[:gid]: %w", o.user, errdefs.ErrInvalidArgument)
		}
		p.User = specs.User{UID: uid, GID: gid}
	}
	return p, nil
}

func execProcess(g *globals, id string, args []string, o execOptions) (retErr error) {
	if o.preserveFDs > 0 {
		return errNotImplemented("--preserve-fds (a host descriptor cannot reach a process in a VM)")
	}
	dir, rec, err := readRecord(g.root, id)
	if err != nil {
		return err
	}
	if st := status(dir, rec); st != statusRunning {
		return fmt.Errorf("cannot exec in a %s container: %w", st, errdefs.ErrFailedPrecondition)
	}
	proc, err := execSpec(rec.Bundle, args, o)
	if err != nil {
		return err
	}
	if o.tty {
		proc.Terminal = true
	}
	var tty *os.File
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	if proc.Terminal {
		if tty, err = newConsole(o.consoleSocket); err != nil {
			return err
		}
		defer func() { _ = tty.Close() }()
		files = []*os.File{tty}
	}
	c, err := dial(filepath.Join(dir, sockName))
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	if err := send(c, request{Op: opExec, Process: proc}, files...); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	var resp response
	if _, err := recv(c, &resp); err != nil {
		return fmt.Errorf("exec: reading the answer: %w", err)
	}
	if err := resp.Error.err(); err != nil {
		return err
	}
	if !o.detach {
		if code := standIn(c, tty); code != 0 {
			return exitStatus(code)
		}
		return nil
	}
	// The stand-in takes the connection over; this process only reports.
	cf, err := c.File()
	if err != nil {
		return err
	}
	defer func() { _ = cf.Close() }()
	cmd := exec.Command("/proc/self/exe", append(g.selfArgs(), "_standin")...) //nolint:gosec // G204: ourselves
	cmd.Args[0] = "hull-runtime"
	cmd.ExtraFiles = []*os.File{cf}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if tty != nil {
		// Its controlling terminal, for SIGWINCH.
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the exec's stand-in: %w", err)
	}
	if o.pidFile != "" {
		if err := writePidFile(o.pidFile, cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill() // its connection closes: the exec is killed
			_ = cmd.Wait()
			return err
		}
	}
	return cmd.Process.Release()
}

func newStandinCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "_standin",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_ = g
			c, err := fileConn(os.NewFile(3, "exec"))
			if err != nil {
				return err
			}
			var tty *os.File
			if _, _, ok := terminalSize(os.Stdin); ok {
				tty = os.Stdin
			}
			if code := standIn(c, tty); code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
}

// standIn stands for a running exec on the host: it forwards the signals
// it receives (a resize of tty, when the exec has a terminal) and returns
// the exec's exit status.
func standIn(c *net.UnixConn, tty *os.File) int {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	defer signal.Stop(sigs)
	exit := make(chan int, 1)
	go func() {
		for {
			var r response
			if _, err := recv(c, &r); err != nil {
				exit <- lostStatus
				return
			}
			if r.Exit != nil {
				exit <- *r.Exit
				return
			}
		}
	}()
	for {
		select {
		case code := <-exit:
			return code
		case s := <-sigs:
			sig := s.(syscall.Signal)
			switch sig {
			case syscall.SIGCHLD, syscall.SIGURG, syscall.SIGPIPE:
			case syscall.SIGWINCH:
				if tty == nil {
					continue
				}
				if w, h, ok := terminalSize(tty); ok {
					_ = send(c, request{Op: opResize, Width: w, Height: h})
				}
			default:
				_ = send(c, request{Op: opSignal, Signal: int(sig)})
			}
		}
	}
}
