package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// starter injects the results of whole start attempts in turn (success
// once they run out) and records the endpoint of each.
type starter struct {
	errs     []error
	attempts []hypervisor.AgentEndpoint
}

func (s *starter) start(_ context.Context, _ Config, ep hypervisor.AgentEndpoint) (*Sandbox, error) {
	s.attempts = append(s.attempts, ep)
	if len(s.errs) == 0 {
		return &Sandbox{id: "x"}, nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return nil, err
}

func TestStartAttempts(t *testing.T) {
	// As the QEMU driver reports them.
	cidInUse := fmt.Errorf("starting vm x: qemu exited: ...: %w: %w", hypervisor.ErrVMExited, hypervisor.ErrCIDInUse)
	noVsock := fmt.Errorf("starting vm x: qemu exited: ...: %w: %w", hypervisor.ErrVMExited, hypervisor.ErrVsockUnavailable)
	other := fmt.Errorf("starting vm x: qemu exited: bad kernel: %w", hypervisor.ErrVMExited)
	for _, tc := range []struct {
		name      string
		transport hypervisor.Transport
		fallback  bool
		errs      []error
		// transports of every attempt, in order.
		attempts []hypervisor.Transport
		// wantErr: the error the start fails with; nil for success.
		wantErr error
	}{
		{name: "vsock first time", transport: hypervisor.TransportVsock, attempts: []hypervisor.Transport{"vsock"}},
		{name: "serial first time", transport: hypervisor.TransportSerial, attempts: []hypervisor.Transport{"serial"}},
		{
			name: "cid collision retried", transport: hypervisor.TransportVsock,
			errs:     []error{cidInUse, cidInUse},
			attempts: []hypervisor.Transport{"vsock", "vsock", "vsock"},
		},
		{
			name: "cid collisions bounded", transport: hypervisor.TransportVsock, fallback: true,
			errs:     []error{cidInUse, cidInUse, cidInUse, cidInUse, cidInUse, cidInUse},
			attempts: []hypervisor.Transport{"vsock", "vsock", "vsock", "vsock", "vsock"},
			wantErr:  hypervisor.ErrCIDInUse,
		},
		{
			name: "no vsock falls back", transport: hypervisor.TransportVsock, fallback: true,
			errs:     []error{noVsock},
			attempts: []hypervisor.Transport{"vsock", "serial"},
		},
		{
			name: "no vsock without fallback fails", transport: hypervisor.TransportVsock,
			errs:     []error{noVsock},
			attempts: []hypervisor.Transport{"vsock"},
			wantErr:  hypervisor.ErrVsockUnavailable,
		},
		{
			name: "collision then no vsock", transport: hypervisor.TransportVsock, fallback: true,
			errs:     []error{cidInUse, noVsock},
			attempts: []hypervisor.Transport{"vsock", "vsock", "serial"},
		},
		{
			name: "other failure is not retried", transport: hypervisor.TransportVsock, fallback: true,
			errs:     []error{other},
			attempts: []hypervisor.Transport{"vsock"},
			wantErr:  other,
		},
		{
			name: "serial failure is not retried", transport: hypervisor.TransportSerial, fallback: true,
			errs:     []error{noVsock},
			attempts: []hypervisor.Transport{"serial"},
			wantErr:  hypervisor.ErrVsockUnavailable,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &starter{errs: tc.errs}
			cfg := Config{ID: "x", Transport: tc.transport, VsockPort: 1024, VsockFallback: tc.fallback}
			sb, err := startAttempts(context.Background(), cfg, st.start)
			if tc.wantErr == nil && (err != nil || sb == nil) {
				t.Fatalf("startAttempts = %v, %v", sb, err)
			}
			if tc.wantErr != nil && (!errors.Is(err, tc.wantErr) || sb != nil) {
				t.Fatalf("startAttempts = %v, %v; want %v", sb, err, tc.wantErr)
			}
			var got []hypervisor.Transport
			cids := map[uint32]bool{}
			for _, ep := range st.attempts {
				got = append(got, ep.Transport)
				switch ep.Transport {
				case hypervisor.TransportVsock:
					if ep.CID < 3 || ep.CID == 0xffffffff || cids[ep.CID] || ep.Port != 1024 {
						t.Errorf("vsock endpoint %+v: CID reserved or tried before, or not the port", ep)
					}
					cids[ep.CID] = true
				case hypervisor.TransportSerial:
					if ep.PortName != channel.DefaultSerialPortName {
						t.Errorf("serial endpoint %+v", ep)
					}
				}
			}
			if !slices.Equal(got, tc.attempts) {
				t.Errorf("attempts over %v, want %v", got, tc.attempts)
			}
		})
	}
}

func TestStartAttemptsCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st := &starter{errs: []error{fmt.Errorf("%w: %w", context.Canceled, hypervisor.ErrCIDInUse)}}
	if _, err := startAttempts(ctx, Config{Transport: hypervisor.TransportVsock, VsockFallback: true}, st.start); err == nil || len(st.attempts) != 1 {
		t.Fatalf("startAttempts after cancel = %v after %d attempts, want the error after 1", err, len(st.attempts))
	}
}
