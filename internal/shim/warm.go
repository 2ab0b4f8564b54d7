package shim

import (
	"context"
	"errors"
	"sync"

	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/podmetrics"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// warmSandbox is the sandbox that the next service built holds for its
// pod; set by WithWarmSandbox, taken by newService. Guarded by warmMu.
var (
	warmMu      sync.Mutex
	warmSandbox *sandbox.Sandbox
)

// WithWarmSandbox gives sb, a sandbox booted by sandbox.StartWarm, to the
// task service that the shim library builds next in this process (a warm
// shim of a VM factory calls it before it runs the shim library's server
// for its pod): the service's first create, the pod's sandbox container,
// adopts sb with the pod's configuration (sandbox.Adopt), or stops it and
// starts a sandbox when sb cannot serve the pod. A service that shuts down
// before any create stops sb.
func WithWarmSandbox(sb *sandbox.Sandbox) {
	warmMu.Lock()
	defer warmMu.Unlock()
	warmSandbox = sb
}

// takeWarmSandbox hands the warm sandbox, if any, to a new service.
func takeWarmSandbox() *sandbox.Sandbox {
	warmMu.Lock()
	defer warmMu.Unlock()
	sb := warmSandbox
	warmSandbox = nil
	return sb
}

// warmSandbox is the warm sandbox the service still holds, if any.
func (s *service) warmSandbox() *sandbox.Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.warm
}

// startSandbox gives the pod its sandbox: the warm sandbox adopted with sc,
// or, without one or when the adoption fails, a sandbox started with sc. It
// says which (podmetrics.StartCold, ...). A warm sandbox that is not
// adopted is stopped before the start.
func (s *service) startSandbox(ctx context.Context, sc sandbox.Config) (*sandbox.Sandbox, string, error) {
	s.mu.Lock()
	warm := s.warm
	s.warm = nil
	s.mu.Unlock()
	if warm == nil {
		sb, err := sandbox.Start(ctx, sc)
		if err == nil && sb.Restored() {
			return sb, podmetrics.StartRestored, nil
		}
		return sb, podmetrics.StartCold, err
	}
	warmID := warm.ID()
	err := warm.Adopt(ctx, sc)
	if err == nil {
		return warm, podmetrics.StartAdopted, nil
	}
	logger := log.G(ctx).WithError(err).WithFields(log.Fields{"sandbox": sc.ID, "warm_sandbox": warmID})
	var na *sandbox.NotAdoptableError
	if errors.As(err, &na) {
		logger.WithField("field", na.Field).Info("the warm sandbox cannot serve the pod; starting one for it")
	} else {
		logger.Warn("adopting the warm sandbox failed; starting a sandbox for the pod")
	}
	stopUnserved(ctx, warm)
	sb, err := sandbox.Start(ctx, sc)
	return sb, podmetrics.StartWarmRefused, err
}

// stopWarm stops the warm sandbox when no create adopted it.
func (s *service) stopWarm(ctx context.Context) {
	s.mu.Lock()
	warm := s.warm
	s.warm = nil
	s.mu.Unlock()
	if warm != nil {
		stopUnserved(ctx, warm)
	}
}

// stopUnserved stops a sandbox that serves no pod, within stopTimeout.
func stopUnserved(ctx context.Context, sb *sandbox.Sandbox) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancel()
	if err := sb.Stop(ctx); err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", sb.ID()).Error("stopping the warm sandbox")
	}
}
