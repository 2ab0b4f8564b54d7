package sandbox

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// startingVM is a VM whose Start returns err and counts its calls.
type startingVM struct {
	staticVM
	err    error
	starts int
	cfg    hypervisor.Config
}

func (v *startingVM) Start(context.Context) error { v.starts++; return v.err }

// TestStartVMAfterFailedRestore: a clone whose restore failed before it
// used its companions (hypervisor.ErrRestoreFailed) is replaced by a VM of
// the same configuration without the template, which boots; one whose
// restore failed after it used the virtio-fs daemon (which serves one
// connection), or whose start's context ended, is not: the start fails
// with the restore's error.
func TestStartVMAfterFailedRestore(t *testing.T) {
	restoreErr := fmt.Errorf("qemu exited while restoring from the template: %w", hypervisor.ErrRestoreFailed)
	usedErr := errors.New("adding virtio-fs \"rootfs\": device_add refused")
	tests := []struct {
		name     string
		err      error
		cancel   bool
		wantBoot bool
	}{
		{name: "restore failed", err: restoreErr, wantBoot: true},
		{name: "virtio-fs daemon used", err: usedErr},
		{name: "context done", err: restoreErr, cancel: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clone := &startingVM{err: tc.err}
			var booted []*startingVM
			cfg := Config{ID: "sb", NewVM: func(vc hypervisor.Config) (hypervisor.VM, error) {
				v := &startingVM{cfg: vc}
				booted = append(booted, v)
				return v, nil
			}}
			s := &Sandbox{
				id: "sb", stateDir: t.TempDir(), vm: clone, virtiofs: &virtiofs.Daemon{},
				restored: true, template: &hypervisor.Template{Dir: "/var/lib/hull/templates/k", Restore: true},
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			var undo cleanups
			err := s.startVM(ctx, cfg, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial}, &undo)
			if !tc.wantBoot {
				if !errors.Is(err, tc.err) {
					t.Errorf("startVM: %v, want the restore's error", err)
				}
				if len(booted) != 0 || len(undo) != 0 {
					t.Errorf("%d vms booted after the failed restore, %d undo steps: want none", len(booted), len(undo))
				}
				return
			}
			if err != nil {
				t.Fatalf("startVM: %v, want the vm booted", err)
			}
			if len(booted) != 1 || booted[0].starts != 1 || s.vm != booted[0] {
				t.Fatalf("after the failed restore: %d vms made, want one booted and the sandbox's", len(booted))
			}
			if booted[0].cfg.Template != nil || s.restored || s.template != nil {
				t.Errorf("the booted vm: template %v, restored %v: want none", booted[0].cfg.Template, s.restored)
			}
			if len(undo) != 1 {
				t.Errorf("%d undo steps, want the booted vm's stop", len(undo))
			}
		})
	}
}
