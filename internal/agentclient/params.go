package agentclient

import (
	"strconv"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// Defaults of the agent endpoint.
const (
	// DefaultVsockPort is the AF_VSOCK port the agent listens on.
	DefaultVsockPort = channel.DefaultVsockPort
	// DefaultSerialPortName is the name of the agent's virtio-serial port.
	DefaultSerialPortName = channel.DefaultSerialPortName
)

// KernelParams returns the kernel command line parameters that tell the
// agent where to listen and how much to log. Empty endpoint fields take the
// defaults; an empty logLevel leaves the agent's default (info).
func KernelParams(ep hypervisor.AgentEndpoint, logLevel string) []string {
	var t string
	switch ep.Transport {
	case hypervisor.TransportVsock:
		port := ep.Port
		if port == 0 {
			port = DefaultVsockPort
		}
		t = channel.TransportVsock + ":" + strconv.FormatUint(uint64(port), 10)
	default:
		name := ep.PortName
		if name == "" {
			name = DefaultSerialPortName
		}
		t = channel.TransportSerial + ":" + name
	}
	p := []string{channel.ParamTransport + "=" + t}
	if logLevel != "" {
		p = append(p, channel.ParamLog+"="+logLevel)
	}
	return p
}
