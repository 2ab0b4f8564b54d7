package channel

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseTransport(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Transport
		err  bool
	}{
		{in: "serial:agent.0", want: Transport{Kind: "serial", PortName: "agent.0"}},
		{in: "serial", want: Transport{Kind: "serial", PortName: DefaultSerialPortName}},
		{in: "serial:", want: Transport{Kind: "serial", PortName: DefaultSerialPortName}},
		{in: "vsock:1024", want: Transport{Kind: "vsock", Port: 1024}},
		{in: "vsock", want: Transport{Kind: "vsock", Port: DefaultVsockPort}},
		{in: "vsock:0", err: true},
		{in: "vsock:-1", err: true},
		{in: "vsock:4294967295", err: true},
		{in: "vsock:99999999999", err: true},
		{in: "vsock:abc", err: true},
		{in: "serial:../x", err: true},
		{in: "tcp:1", err: true},
		{in: "", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTransport(tc.in)
			if tc.err {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("ParseTransport(%q) = %+v, %v; want invalid argument", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTransport(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if back, err := ParseTransport(got.String()); err != nil || back != got {
				t.Fatalf("round trip of %q = %+v, %v", got.String(), back, err)
			}
		})
	}
}
