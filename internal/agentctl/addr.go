package agentctl

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// ParseAddr reads the address of an agent: "unix:PATH", a socket on which
// every connection is a yamux session as on the virtio-serial port
// (`hull-agent --listen unix:PATH`), or "vsock:CID:PORT".
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
	}
	return hypervisor.AgentEndpoint{}, fmt.Errorf("address %q: want unix:PATH or vsock:CID:PORT: %w", addr, errdefs.ErrInvalidArgument)
}
