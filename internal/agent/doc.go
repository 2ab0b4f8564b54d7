// Package agent is the hull guest agent: the program that runs as PID 1 of
// every hull VM's initrd and serves the host's requests.
//
// As PID 1 it sets up the guest (pseudo file systems, device nodes), loads
// the kernel modules of the image in the order of the module list (the
// transport's first), reaps orphaned processes without stealing the exit
// status of children that their spawner waits for, and serves the channel
// protocol of internal/channel on the transport named on the kernel command
// line: a yamux session over a virtio-serial port, or AF_VSOCK. ttRPC
// channels go to one ttRPC server; log channels receive the agent's log as
// JSON lines, starting with the lines kept in a bounded ring from before the
// host connected.
//
// The Containers service (containers.go) runs the sandbox's containers
// with runc's libcontainer, which re-executes the agent binary as
// "hull-agent init" for every container process. Each process's stdio
// travels on its own stdio channels, which the host opens before the call
// that names them (stdio.go parks them until claimed); WaitProcess answers
// once the process has exited and its output has reached the host. As PID
// 1 the agent first moves its root off the initramfs so that containers
// can pivot_root, and the reaper leaves the children libcontainer waits
// for alone.
//
// System.DebugConsole (console.go), off unless the kernel command line
// has hull.debug_console=1, runs the image's debug shell as root in the
// guest's own namespaces on a new terminal, which one stdio channel carries
// both ways; the shell is hung up and then killed when the host goes away.
//
// System.GuestMetrics (guestmetrics.go) reads the guest's memory, CPU,
// load, interface and disk counters from /proc in the agent's own process,
// at most 64 interfaces and 64 disks, for the host's metrics endpoint.
//
// The Network service (network.go) gives the guest the pod's network: the
// host mirrors each pod interface as a virtio-net device with the same MAC,
// and the agent names it, addresses it and adds the routes, neighbours and
// resolv.conf. Pod containers have no network namespace of their own, so
// they share this one.
//
// Outside a VM the same serving code runs on a unix socket (Serve with
// "unix:<path>"), so that the host client can be tested without a VM.
package agent
