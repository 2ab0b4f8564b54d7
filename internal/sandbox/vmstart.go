package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// maxCIDAttempts bounds the guest CIDs startVM tries when the hypervisor
// finds each one taken by another VM. Collisions of random 32-bit CIDs are
// rare; several in a row mean something else is wrong.
const maxCIDAttempts = 5

// startVM builds the VM of vc with cfg's agent endpoint and starts it. For
// vsock it picks a random guest CID, and another one when the hypervisor
// reports it in use (hypervisor.ErrCIDInUse), at most maxCIDAttempts times.
// When the hypervisor cannot set up vsock at all
// (hypervisor.ErrVsockUnavailable) and cfg.VsockFallback is set, it starts
// the VM once more with the serial transport and logs a warning; without
// VsockFallback that error is returned. A failed Start leaves nothing
// behind (the hypervisor.VM contract), so each attempt starts clean. The VM
// of the last attempt is returned also on error, for its console.
func startVM(ctx context.Context, cfg Config, vc hypervisor.Config) (hypervisor.VM, error) {
	transport := cfg.Transport
	cidAttempts := 0
	for {
		ep, err := endpoint(transport, cfg.VsockPort)
		if err != nil {
			return nil, err
		}
		c := vc
		c.Agent = ep
		params := agentclient.KernelParams(ep, cfg.AgentLogLevel)
		if cfg.DebugConsole {
			params = append(params, channel.ParamDebugConsole+"=1")
		}
		c.KernelParams = append(params, vc.KernelParams...)
		vm, err := cfg.NewVM(c)
		if err != nil {
			return nil, err
		}
		err = vm.Start(ctx)
		if err == nil {
			return vm, nil
		}
		if transport != hypervisor.TransportVsock || ctx.Err() != nil {
			return vm, err
		}
		switch {
		case errors.Is(err, hypervisor.ErrCIDInUse):
			cidAttempts++
			if cidAttempts >= maxCIDAttempts {
				return vm, fmt.Errorf("%d random guest CIDs in use in a row: %w", cidAttempts, err)
			}
			log.G(ctx).WithError(err).WithField("cid", ep.CID).Warn("vsock guest CID in use; trying another")
		case errors.Is(err, hypervisor.ErrVsockUnavailable) && cfg.VsockFallback:
			log.G(ctx).WithError(err).Warn("vsock unavailable to the hypervisor; starting the VM with the serial agent transport")
			transport = hypervisor.TransportSerial
		default:
			return vm, err
		}
	}
}

// endpoint is the agent endpoint of a new VM on transport: for vsock a
// random guest CID.
func endpoint(transport hypervisor.Transport, vsockPort uint32) (hypervisor.AgentEndpoint, error) {
	switch transport {
	case hypervisor.TransportVsock:
		cid, err := randomCID()
		if err != nil {
			return hypervisor.AgentEndpoint{}, err
		}
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: cid, Port: vsockPort}, nil
	default:
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}, nil
	}
}

// randomCID picks a guest context ID. CIDs 0-2 are reserved and 0xffffffff
// is VMADDR_CID_ANY; a collision with another VM makes the hypervisor fail
// with hypervisor.ErrCIDInUse, and startVM tries another.
func randomCID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return 3 + binary.LittleEndian.Uint32(b[:])%(0xfffffffe-3), nil
}
