package agentctl

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// ParseAddr reads the address of an agent: "unix:PATH", a socket on which
// every connection is a yamux session as on the virtio-serial port
// (`hull-agent --listen unix:PATH`), "vsock:CID:PORT", or "vsock-unix:DIR",
// the unix socket standing for the agent's vsock port in DIR, one
// connection per channel as on vsock (`hull-agent --listen vsock-unix:DIR`).
func ParseAddr(addr string) (hypervisor.AgentEndpoint, error) {
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "unix":
		if rest == "" {
			return hypervisor.AgentEndpoint{}, fmt.Errorf("address %q: empty socket path: %w", addr, errdefs.ErrInvalidArgument)
		}
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: rest}, nil
	case "vsock":
		cid, port, ok := strings.Cut(rest, ":")
		c, cerr := strconv.ParseUint(cid, 10, 32)
		p, perr := strconv.ParseUint(port, 10, 32)
		if !ok || cerr != nil || perr != nil {
			return hypervisor.AgentEndpoint{}, fmt.Errorf("address %q: want vsock:CID:PORT with decimal numbers: %w", addr, errdefs.ErrInvalidArgument)
		}
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: uint32(c), Port: uint32(p)}, nil
	case channel.TransportVsockUnix:
		if rest == "" {
			return hypervisor.AgentEndpoint{}, fmt.Errorf("address %q: empty directory: %w", addr, errdefs.ErrInvalidArgument)
		}
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, Port: channel.DefaultVsockPort, VsockUnixDir: rest}, nil
	}
	return hypervisor.AgentEndpoint{}, fmt.Errorf("address %q: want unix:PATH, vsock:CID:PORT or vsock-unix:DIR: %w", addr, errdefs.ErrInvalidArgument)
}
