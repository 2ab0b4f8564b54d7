package sandbox

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// staticVM is a VM without capabilities that never runs anything.
type staticVM struct{}

func (staticVM) Start(context.Context) error                   { return nil }
func (staticVM) Stop(context.Context) error                    { return nil }
func (staticVM) Wait(context.Context) (hypervisor.Exit, error) { return hypervisor.Exit{}, nil }
func (staticVM) Done() <-chan struct{}                         { return nil }
func (staticVM) Agent() hypervisor.AgentEndpoint               { return hypervisor.AgentEndpoint{} }
func (staticVM) Describe() hypervisor.Description              { return hypervisor.Description{Driver: "static"} }
func (staticVM) ConsoleTail(int) []string                      { return nil }

// refusingVM can resize but refuses every size.
type refusingVM struct{ staticVM }

func (refusingVM) Resize(context.Context, uint32, uint32) (hypervisor.Size, error) {
	return hypervisor.Size{}, errdefs.ErrInvalidArgument
}

func TestResizePassesDriverErrors(t *testing.T) {
	tests := []struct {
		name  string
		vm    hypervisor.VM
		state State
		class error
	}{
		{"driver cannot resize", staticVM{}, StateRunning, errdefs.ErrNotImplemented},
		{"driver refuses", refusingVM{}, StateRunning, errdefs.ErrInvalidArgument},
		{"not running", refusingVM{}, StateStopping, errdefs.ErrFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Sandbox{id: "sb", state: tc.state, vm: tc.vm}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := s.Resize(ctx, 4, 1024); !errors.Is(err, tc.class) {
				t.Errorf("got %v, want class %v", err, tc.class)
			}
		})
	}
}
