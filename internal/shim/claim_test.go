package shim

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/internal/factory"
)

// fakeFactory answers Claim with a control socket, or with err; claims,
// when set, counts the claims.
type fakeFactory struct {
	socket string
	err    error
	claims *atomic.Int32
}

func (f fakeFactory) Claim(context.Context, *api.ClaimRequest) (*api.ClaimResponse, error) {
	if f.claims != nil {
		f.claims.Add(1)
	}
	if f.err != nil {
		return nil, errgrpc.ToGRPC(f.err)
	}
	return &api.ClaimResponse{WarmId: "warm-0000000000000000", ControlSocket: f.socket}, nil
}

func (fakeFactory) Status(context.Context, *api.StatusRequest) (*api.StatusResponse, error) {
	return &api.StatusResponse{}, nil
}

// serveFakeFactory serves f on socket; the returned function stops it and
// removes the socket.
func serveFakeFactory(t *testing.T, socket string, f fakeFactory) func() {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterFactoryService(srv, f)
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), l) }()
	return func() { _ = srv.Close(); _ = os.Remove(socket) }
}

// TestClaimWarmMisses checks that every way a claim can fail is a miss
// (the caller starts a cold server), within factory.claim_timeout.
func TestClaimWarmMisses(t *testing.T) {
	dir := t.TempDir()
	factorySocket := filepath.Join(dir, "factory.sock")
	writeConfig := func(vmCache int) {
		t.Helper()
		cfg := filepath.Join(dir, "hull.toml")
		body := fmt.Sprintf("[factory]\nvm_cache = %d\nsocket = %q\nclaim_timeout = \"300ms\"\n", vmCache, factorySocket)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(ConfigEnv, cfg)
	}
	// A warm shim that accepts the hand-over and never answers.
	silent := filepath.Join(dir, "silent.sock")
	sl, err := net.Listen("unixpacket", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sl.Close() }()
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			defer func() { _ = c.Close() }()
		}
	}()
	serve := func(f fakeFactory) func() {
		t.Helper()
		return serveFakeFactory(t, factorySocket, f)
	}
	listener, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = listener.Close() }()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	opts := shim.StartOpts{Address: "/run/containerd/containerd.sock"}

	// A factory that is off must not be asked: its claim would still be a
	// miss (the silent shim), so the count is what tells.
	var offClaims, bigClaims atomic.Int32
	cases := []struct {
		name        string
		setup       func() func()
		check       func(t *testing.T)
		annotations map[string]string
	}{
		{"factory off", func() func() { writeConfig(0); return serve(fakeFactory{socket: silent, claims: &offClaims}) }, func(t *testing.T) {
			if n := offClaims.Load(); n != 0 {
				t.Errorf("the factory was asked %d times with vm_cache = 0", n)
			}
		}, nil},
		{"factory absent", func() func() { writeConfig(1); return func() {} }, nil, nil},
		{"pool empty", func() func() { writeConfig(1); return serve(fakeFactory{err: errdefs.ErrNotFound}) }, nil, nil},
		{"warm shim gone", func() func() {
			writeConfig(1)
			return serve(fakeFactory{socket: filepath.Join(dir, "gone.sock")})
		}, nil, nil},
		{"warm shim silent past the timeout", func() func() { writeConfig(1); return serve(fakeFactory{socket: silent}) }, nil, nil},
		// A pod beyond what a warm VM grows to (here beyond the 512 GiB
		// cap of max_memory_mib's default) must not be asked for: the
		// claim would take a warm VM the pod cannot use.
		{"pod too big for a warm vm", func() func() { writeConfig(1); return serve(fakeFactory{socket: silent, claims: &bigClaims}) }, func(t *testing.T) {
			if n := bigClaims.Load(); n != 0 {
				t.Errorf("the factory was asked %d times for a pod no warm vm serves", n)
			}
		}, map[string]string{annotationSandboxMemory: fmt.Sprint(int64(1) << 40)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stop := c.setup()
			defer stop()
			start := time.Now()
			if pid, ok := claimWarm(ctx, "c1", dir, opts, nil, c.annotations, listener); ok {
				t.Fatalf("claim succeeded (pid %d), want a miss", pid)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("the miss took %s, past a claim_timeout of 300ms", took)
			}
			if c.check != nil {
				c.check(t)
			}
		})
	}
}

// TestClaimWarmHit checks the claim that succeeds: the warm shim gets the
// listening socket and the server's parameters, and claimWarm its PID.
func TestClaimWarmHit(t *testing.T) {
	dir := t.TempDir()
	factorySocket := filepath.Join(dir, "factory.sock")
	cfg := filepath.Join(dir, "hull.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[factory]\nvm_cache = 1\nsocket = %q\n", factorySocket)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ConfigEnv, cfg)

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	lifeline := os.NewFile(uintptr(pair[0]), "factory")
	defer func() { _ = lifeline.Close() }()
	w, wctx := factory.Warm(context.Background(), os.NewFile(uintptr(pair[1]), "lifeline"))
	control := filepath.Join(dir, "warm.sock")
	if err := w.Listen(control); err != nil {
		t.Fatal(err)
	}
	claimed := make(chan *factory.Claim, 1)
	go func() {
		c, err := w.Wait(wctx, func(factory.Handover, *os.File) error { return nil })
		if err != nil {
			t.Errorf("warm side: %v", err)
		}
		claimed <- c
	}()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterFactoryService(srv, fakeFactory{socket: control})
	l, err := net.Listen("unix", factorySocket)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), l) }()
	defer func() { _ = srv.Close() }()

	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "shim.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sl.Close() }()
	listener, err := sl.File()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = listener.Close() }()
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	pidfd, ok := claimWarm(ctx, "c1", dir, shim.StartOpts{Address: "/run/containerd/containerd.sock", Debug: true}, nil, nil, listener)
	if !ok {
		t.Fatal("claimWarm missed, want a hit")
	}
	defer func() { _ = unix.Close(pidfd) }()
	if pid, err := factory.PidfdPID(pidfd); pid != os.Getpid() {
		t.Fatalf("claimWarm's pidfd is of PID %d (%v), want %d", pid, err, os.Getpid())
	}
	c := <-claimed
	if c == nil || c.Namespace != "k8s.io" || c.ID != "c1" || c.Bundle != dir || !c.Debug || len(c.Env) == 0 {
		t.Fatalf("hand-over %+v", c)
	}
	_ = c.Listener.Close()
}

// TestWarmFit checks the decision a claim makes by the pod's size before
// it takes a warm VM: a pod whose size the warm VM grows to by hotplug
// claims, one beyond (past the memory a warm VM reaches in whole blocks,
// or past the caps) does not, and neither does one whose annotations are
// malformed.
func TestWarmFit(t *testing.T) {
	base := vmSize{vcpus: 1, memoryMiB: 512}
	// 512 MiB plus one 128 MiB block is what the warm VM reaches below
	// a cap of 700 MiB.
	limit := vmSize{vcpus: 4, memoryMiB: 700}
	mib := func(n int64) string { return fmt.Sprint(n << 20) }
	for _, tc := range []struct {
		name string
		ann  map[string]string
		fits bool
	}{
		{"no annotations", nil, true},
		{"grows by one block", map[string]string{annotationSandboxMemory: mib(128)}, true},
		{"grows to the cap in vcpus", map[string]string{annotationSandboxCPUQuota: "300000", annotationSandboxCPUPeriod: "100000"}, true},
		{"below the cap, beyond the blocks", map[string]string{annotationSandboxMemory: mib(129)}, false},
		{"beyond the memory cap", map[string]string{annotationSandboxMemory: mib(1024)}, false},
		{"beyond the vcpu cap", map[string]string{annotationSandboxCPUQuota: "400000", annotationSandboxCPUPeriod: "100000"}, false},
		{"malformed", map[string]string{annotationSandboxMemory: "lots"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := warmFit(base, limit, tc.ann)
			if (err == nil) != tc.fits {
				t.Fatalf("warmFit: %v, want fits %v", err, tc.fits)
			}
		})
	}
}
