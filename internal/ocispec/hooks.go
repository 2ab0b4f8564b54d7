package ocispec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/internal/child"
)

// hookOutputMax bounds the output of a hook that an error quotes.
const hookOutputMax = 4096

// defaultHookTimeout bounds a hook whose spec gives no timeout: a hook
// that hangs must not hold a create or delete forever. A variable for
// tests.
var defaultHookTimeout = 2 * time.Minute

// hookKillGrace is how long a hook's output copies may outlast its kill.
const hookKillGrace = 2 * time.Second

// HostHooks are the hooks of a spec that run in the runtime namespace, on
// the host, in their order: everything but startContainer, which runs in
// the container (in the guest).
type HostHooks struct {
	Prestart, CreateRuntime, CreateContainer, Poststart, Poststop []specs.Hook
}

// Empty says there is no host hook.
func (h HostHooks) Empty() bool {
	return len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.Poststart)+len(h.Poststop) == 0
}

// First is the path of the first host hook, for error messages; empty when
// there is none.
func (h HostHooks) First() string {
	for _, l := range [][]specs.Hook{h.Prestart, h.CreateRuntime, h.CreateContainer, h.Poststart, h.Poststop} {
		if len(l) > 0 {
			return l[0].Path
		}
	}
	return ""
}

// BeforeStart runs the hooks of a create, in runc's order (prestart,
// createRuntime, createContainer), with the state st, and stops at the
// first that fails.
func (h HostHooks) BeforeStart(ctx context.Context, st specs.State) error {
	for _, k := range []struct {
		kind  string
		hooks []specs.Hook
	}{{"prestart", h.Prestart}, {"createRuntime", h.CreateRuntime}, {"createContainer", h.CreateContainer}} {
		if err := RunHooks(ctx, k.kind, k.hooks, st); err != nil {
			return err
		}
	}
	return nil
}

// SplitHooks takes the host hooks out of spec; the startContainer hooks
// stay for the guest, which runs them in the container. A hook without an
// absolute path or with a timeout that is not positive is an
// InvalidArgument error.
func SplitHooks(spec *specs.Spec) (HostHooks, error) {
	h := spec.Hooks
	if h == nil {
		return HostHooks{}, nil
	}
	out := HostHooks{
		Prestart:      h.Prestart, //nolint:staticcheck // deprecated, still what Docker 20.10 uses
		CreateRuntime: h.CreateRuntime, CreateContainer: h.CreateContainer,
		Poststart: h.Poststart, Poststop: h.Poststop,
	}
	for _, l := range [][]specs.Hook{out.Prestart, out.CreateRuntime, out.CreateContainer, out.Poststart, out.Poststop} {
		for _, hk := range l {
			if err := validateHook(hk); err != nil {
				return HostHooks{}, err
			}
		}
	}
	spec.Hooks = nil
	if len(h.StartContainer) > 0 {
		spec.Hooks = &specs.Hooks{StartContainer: h.StartContainer}
	}
	return out, nil
}

func validateHook(h specs.Hook) error {
	switch {
	case !filepath.IsAbs(h.Path):
		return fmt.Errorf("hook path %q is not absolute: %w", h.Path, errdefs.ErrInvalidArgument)
	case h.Timeout != nil && *h.Timeout <= 0:
		return fmt.Errorf("hook %s: timeout %d must be positive: %w", h.Path, *h.Timeout, errdefs.ErrInvalidArgument)
	}
	return nil
}

// RunHooks runs hooks in order, each with the state on its stdin, and stops
// at the first that fails (exits non-zero, or outlives its timeout, when it
// is killed). A hook without a timeout gets defaultHookTimeout.
func RunHooks(ctx context.Context, kind string, hooks []specs.Hook, st specs.State) error {
	if len(hooks) == 0 {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	for i, h := range hooks {
		if err := runHook(ctx, h, b); err != nil {
			return fmt.Errorf("%s hook #%d (%s): %w", kind, i, h.Path, err)
		}
	}
	return nil
}

func runHook(ctx context.Context, h specs.Hook, state []byte) error {
	if err := validateHook(h); err != nil {
		return err
	}
	timeout := defaultHookTimeout
	if h.Timeout != nil {
		timeout = time.Duration(*h.Timeout) * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := h.Args
	if len(args) == 0 {
		args = []string{h.Path}
	}
	out := &child.TailBuffer{Max: hookOutputMax}
	cmd := exec.CommandContext(ctx, h.Path)
	cmd.Args = args
	cmd.Env = h.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.Stdin = bytes.NewReader(state)
	cmd.Stdout, cmd.Stderr = out, out
	// A hook's children that keep its output open must not hold it.
	cmd.WaitDelay = hookKillGrace
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %s and was killed: %w", timeout, context.DeadlineExceeded)
	}
	if o := strings.TrimSpace(out.String()); o != "" {
		err = fmt.Errorf("%w; output: %s", err, o)
	}
	log.G(ctx).WithError(err).WithField("hook", h.Path).Debug("hook failed")
	return err
}
