package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// scriptedVM is a VM whose Start returns the next error of its starter.
type scriptedVM struct {
	hypervisor.VM // nil: only Start and Agent are called
	cfg           hypervisor.Config
	start         func(hypervisor.Config) error
}

func (v *scriptedVM) Start(context.Context) error     { return v.start(v.cfg) }
func (v *scriptedVM) Agent() hypervisor.AgentEndpoint { return v.cfg.Agent }

// starter injects Start's results in turn (nil once they run out) and
// records the configuration of every VM built.
type starter struct {
	errs    []error
	started []hypervisor.Config
}

func (s *starter) newVM(c hypervisor.Config) (hypervisor.VM, error) {
	return &scriptedVM{cfg: c, start: func(c hypervisor.Config) error {
		s.started = append(s.started, c)
		if len(s.errs) == 0 {
			return nil
		}
		err := s.errs[0]
		s.errs = s.errs[1:]
		return err
	}}, nil
}

func TestStartVM(t *testing.T) {
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
			cfg := Config{Transport: tc.transport, VsockPort: 1024, VsockFallback: tc.fallback, NewVM: st.newVM, AgentLogLevel: "debug"}
			vc := hypervisor.Config{ID: "x", KernelParams: []string{"user=1"}}
			vm, err := startVM(context.Background(), cfg, vc)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("startVM = %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("startVM = %v, want %v", err, tc.wantErr)
			}
			var got []hypervisor.Transport
			cids := map[uint32]bool{}
			for _, c := range st.started {
				got = append(got, c.Agent.Transport)
				// The kernel command line tells the agent the
				// transport of this attempt; the caller's own
				// parameters follow.
				param := channel.ParamTransport + "=" + string(c.Agent.Transport) + ":"
				if !strings.HasPrefix(c.KernelParams[0], param) || c.KernelParams[len(c.KernelParams)-1] != "user=1" {
					t.Errorf("attempt over %s: kernel params %q", c.Agent.Transport, c.KernelParams)
				}
				if c.Agent.Transport == hypervisor.TransportVsock {
					if c.Agent.CID < 3 || cids[c.Agent.CID] {
						t.Errorf("guest CID %d: reserved or tried before", c.Agent.CID)
					}
					cids[c.Agent.CID] = true
				}
			}
			if !slices.Equal(got, tc.attempts) {
				t.Errorf("attempts over %v, want %v", got, tc.attempts)
			}
			if vm == nil || vm.Agent() != st.started[len(st.started)-1].Agent {
				t.Errorf("startVM returned %v, want the last attempt's VM", vm)
			}
		})
	}
}

func TestStartVMNewVMError(t *testing.T) {
	cfg := Config{Transport: hypervisor.TransportVsock, NewVM: func(hypervisor.Config) (hypervisor.VM, error) {
		return nil, fmt.Errorf("bad options: %w", errdefs.ErrInvalidArgument)
	}}
	if vm, err := startVM(context.Background(), cfg, hypervisor.Config{}); vm != nil || !errdefs.IsInvalidArgument(err) {
		t.Fatalf("startVM = %v, %v; want no VM, invalid argument", vm, err)
	}
}
