package sandbox

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// ownNetVM is a running VM whose VMM is this process, so that
// AttachOwnNetwork finds its network namespace; it cannot hot-add NICs.
type ownNetVM struct{ stoppableVM }

func (*ownNetVM) Describe() hypervisor.Description {
	return hypervisor.Description{Driver: "own-net", PID: os.Getpid()}
}

// TestAttachOwnNetworkRace: AttachOwnNetwork sets (and on failure resets)
// the sandbox's network while others read it (HostProcesses writes the
// record from it, Stop closes it). Run with -race: the race detector
// fails the test when the fields are touched outside the sandbox's mutex.
func TestAttachOwnNetworkRace(t *testing.T) {
	s := testSandbox(t, newFakeAgent(), 0)
	s.vm = &ownNetVM{stoppableVM{done: make(chan struct{})}}
	s.ownNetNS, s.hotplugNICs = true, 1
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = s.HostProcesses()
			}
		}
	}()
	for range 50 {
		if err := s.AttachOwnNetwork(context.Background(), nil); err == nil {
			t.Fatal("AttachOwnNetwork on a vm that cannot hot-add NICs succeeded")
		}
	}
	close(stop)
	wg.Wait()
}
