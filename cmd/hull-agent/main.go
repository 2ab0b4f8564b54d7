// Command hull-agent is the hull guest agent. As PID 1 of a VM's initrd it
// sets up the guest and serves the host; elsewhere it serves the same
// protocol on the address given with --listen (for tests and tools).
//
// The first argument "init" belongs to the container runtime: libcontainer
// re-executes this binary as "hull-agent init" to set up every container
// process. The nsenter package's C constructor has by then joined or made
// the namespaces; init below hands over to libcontainer before main runs.
// The first arguments "pause-setup" and "pause" are the two stages of a pod
// sandbox's process, which the agent starts without libcontainer.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // the C constructor of "init"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/agent"
)

// init runs libcontainer's container setup when this process is
// "hull-agent init", as runc's own main package does; it does not return.
func init() {
	// The setup stage of a pod sandbox process is PID 1 of a new PID
	// namespace when the pod has one: the argument, not the PID, tells it
	// from the VM's init.
	if len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case "init":
		libcontainer.Init()
	case agent.PauseSetupArg:
		agent.PauseSetupMain()
	}
}

func main() {
	if os.Getpid() == 1 {
		agent.RunInit() // never returns
	}
	listen := flag.String("listen", "", "serve on `addr`: unix:<path> (yamux sessions, as on virtio-serial), vsock:<port>, or vsock-unix:<dir> (one connection per channel, as on vsock, at <dir>/1024)")
	level := flag.String("log-level", "info", "log `level`")
	debugShell := flag.String("debug-shell", "", "serve System.DebugConsole, running the shell at `path` (off by default)")
	flag.Parse()
	if *listen == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "hull-agent: not PID 1: give --listen to serve outside a VM")
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	o := agent.ServeOptions{Listen: *listen, LogLevel: *level, Console: os.Stderr, DebugConsole: *debugShell != "", DebugShell: *debugShell}
	if err := agent.Serve(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "hull-agent:", err)
		os.Exit(1)
	}
}
