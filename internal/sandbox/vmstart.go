package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// maxCIDAttempts bounds the guest CIDs startAttempts tries when the
// hypervisor finds each one taken by another VM. Collisions of random
// 32-bit CIDs are rare; several in a row mean something else is wrong.
const maxCIDAttempts = 5

// startAttempts runs start with an agent endpoint on cfg.Transport. For
// vsock it picks a random guest CID, and starts again with another one when
// the hypervisor reports it in use (hypervisor.ErrCIDInUse), at most
// maxCIDAttempts times. When the hypervisor cannot set up vsock at all
// (hypervisor.ErrVsockUnavailable) and cfg.VsockFallback is set, it starts
// again with the serial transport and logs a warning; without VsockFallback
// that error is returned. Each attempt is a whole start: a failed one has
// undone everything it made, the VM's companions included (virtiofsd
// serves one hypervisor connection, so a new QEMU needs a new one).
func startAttempts(ctx context.Context, cfg Config, start func(context.Context, Config, hypervisor.AgentEndpoint) (*Sandbox, error)) (*Sandbox, error) {
	transport := cfg.Transport
	cidAttempts := 0
	for {
		ep, err := endpoint(transport, cfg.VsockPort)
		if err != nil {
			return nil, err
		}
		s, err := start(ctx, cfg, ep)
		if err == nil {
			return s, nil
		}
		if transport != hypervisor.TransportVsock || ctx.Err() != nil {
			return nil, err
		}
		switch {
		case errors.Is(err, hypervisor.ErrCIDInUse):
			cidAttempts++
			if cidAttempts >= maxCIDAttempts {
				return nil, fmt.Errorf("%d random guest CIDs in use in a row: %w", cidAttempts, err)
			}
			log.G(ctx).WithError(err).WithFields(log.Fields{"sandbox": cfg.ID, "cid": ep.CID}).Warn("vsock guest CID in use; starting again with another")
		case errors.Is(err, hypervisor.ErrVsockUnavailable) && cfg.VsockFallback:
			log.G(ctx).WithError(err).WithField("sandbox", cfg.ID).
				Warn("vsock unavailable to the hypervisor; starting again with the serial agent transport (set agent.transport to skip vsock)")
			transport = hypervisor.TransportSerial
		default:
			return nil, err
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
// with hypervisor.ErrCIDInUse, and startAttempts tries another.
func randomCID() (uint32, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return 3 + binary.LittleEndian.Uint32(b[:])%(0xfffffffe-3), nil
}
