package channel

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Kernel command line parameters read by the agent.
const (
	// ParamTransport names where the agent listens:
	// "serial:<port name>" or "vsock:<port>".
	ParamTransport = "hull.transport"
	// ParamLog is the agent's log level (logrus names: debug, info, ...).
	ParamLog = "hull.log"
	// ParamDebugConsole=1 lets the agent serve System.DebugConsole.
	ParamDebugConsole = "hull.debug_console"
	// ParamTracing=1 makes the agent record spans of the calls that carry
	// a sampled trace context and serve them to the host (Tracing).
	ParamTracing = "hull.tracing"
)

// DebugShellPath is where a guest image holds its debug shell (a static
// binary that runs a shell when called as "sh", such as busybox), if it
// has one.
const DebugShellPath = "/usr/libexec/hull/debug-shell"

// PauseBinaryPath is where a guest image holds the waiting stage of a pod
// sandbox process (cmd/hull-pause): a static program with no Go runtime
// that the agent binds at /pause of the process's root.
const PauseBinaryPath = "/usr/libexec/hull/pause"

// Defaults of the agent endpoint.
const (
	// DefaultVsockPort is the AF_VSOCK port the agent listens on.
	DefaultVsockPort uint32 = 1024
	// DefaultSerialPortName is the virtio-serial port name the agent opens.
	DefaultSerialPortName = "agent.0"
)

// Transport is the parsed value of ParamTransport.
type Transport struct {
	// Kind is "serial" or "vsock".
	Kind string
	// PortName of the virtio-serial port, for serial.
	PortName string
	// Port of AF_VSOCK, for vsock.
	Port uint32
}

// Transport kinds.
const (
	TransportSerial = "serial"
	TransportVsock  = "vsock"
	// TransportVsockUnix is vsock's channel model (one connection per
	// channel) over unix sockets, for an agent serving outside a VM:
	// "vsock-unix:<dir>" listens on VsockUnixSocket(dir, DefaultVsockPort).
	// The kernel command line never names it.
	TransportVsockUnix = "vsock-unix"
)

// VsockUnixSocket is the unix socket that stands for vsock port in dir
// (TransportVsockUnix): dir plays the guest's context ID, one socket per
// port.
func VsockUnixSocket(dir string, port uint32) string {
	return filepath.Join(dir, strconv.FormatUint(uint64(port), 10))
}

// DefaultTransport is what the agent uses when the kernel command line names
// none: the virtio-serial port that needs no vhost-vsock on the host.
var DefaultTransport = Transport{Kind: TransportSerial, PortName: DefaultSerialPortName}

func (t Transport) String() string {
	switch t.Kind {
	case TransportSerial:
		return TransportSerial + ":" + t.PortName
	case TransportVsock:
		return TransportVsock + ":" + strconv.FormatUint(uint64(t.Port), 10)
	}
	if t.PortName != "" {
		return t.Kind + ":" + t.PortName
	}
	return t.Kind
}

// ParseTransport parses a ParamTransport value.
func ParseTransport(v string) (Transport, error) {
	kind, arg, _ := strings.Cut(v, ":")
	switch kind {
	case TransportSerial:
		if arg == "" {
			return Transport{Kind: kind, PortName: DefaultSerialPortName}, nil
		}
		if strings.ContainsAny(arg, "/ \t") {
			return Transport{}, fmt.Errorf("%s=%q: bad serial port name: %w", ParamTransport, v, errdefs.ErrInvalidArgument)
		}
		return Transport{Kind: kind, PortName: arg}, nil
	case TransportVsock:
		if arg == "" {
			return Transport{Kind: kind, Port: DefaultVsockPort}, nil
		}
		p, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || p == 0 || p == 0xffffffff {
			return Transport{}, fmt.Errorf("%s=%q: bad vsock port: %w", ParamTransport, v, errdefs.ErrInvalidArgument)
		}
		return Transport{Kind: kind, Port: uint32(p)}, nil
	}
	return Transport{}, fmt.Errorf("%s=%q: unknown transport (want serial:<port name> or vsock:<port>): %w", ParamTransport, v, errdefs.ErrInvalidArgument)
}
