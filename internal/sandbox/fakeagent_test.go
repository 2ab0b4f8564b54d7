package sandbox

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// fakeAgent is an agent for unit tests that behaves as told: it serves the
// agent's ttRPC services on the serial transport's protocol (sync, yamux,
// channel headers) on a unix socket, as QEMU's end of the port would carry
// them.
type fakeAgent struct {
	api.ContainersService

	// exits delivers the answer of each WaitProcess, by "container/exec";
	// a WaitProcess without one blocks until its context ends.
	mu    sync.Mutex
	exits map[string]chan int32
	// signals records the SignalProcess calls, as "container/exec/signal".
	signals []string
	// signalErr is SignalProcess's answer.
	signalErr error
	// removeErr is RemoveContainer's answer; hangRemove makes it block.
	removeErr  error
	hangRemove bool
	// ooms feeds WaitOOM.
	ooms chan string
	// destroyErr is DestroySandbox's answer; destroys counts the calls.
	destroyErr error
	destroys   int
	// shutdowns counts the System.Shutdown calls.
	shutdowns int
	// sandboxCreated, when set, is closed by CreateSandbox's call;
	// timeSetAfter, when set, makes SetTime wait for it (at most 5 s,
	// then fail).
	sandboxCreated chan struct{}
	timeSetAfter   chan struct{}
	// entropyAdded counts the AddEntropy calls answered;
	// entropyAtSandbox is its value when CreateSandbox arrived (-1:
	// never arrived).
	entropyAdded     int
	entropyAtSandbox int
	// created records the CreateContainer requests.
	created []*api.CreateContainerRequest
}

func (a *fakeAgent) CreateContainer(_ context.Context, r *api.CreateContainerRequest) (*api.CreateContainerResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.created = append(a.created, r)
	return &api.CreateContainerResponse{Pid: uint32(len(a.created) + 1)}, nil
}

func (a *fakeAgent) CreateSandbox(context.Context, *api.CreateSandboxRequest) (*api.CreateSandboxResponse, error) {
	a.mu.Lock()
	a.entropyAtSandbox = a.entropyAdded
	a.mu.Unlock()
	if a.sandboxCreated != nil {
		close(a.sandboxCreated)
	}
	return &api.CreateSandboxResponse{}, nil
}

func (a *fakeAgent) DestroySandbox(context.Context, *api.DestroySandboxRequest) (*api.DestroySandboxResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.destroys++
	if a.destroyErr != nil {
		return nil, errgrpc.ToGRPC(a.destroyErr)
	}
	return &api.DestroySandboxResponse{}, nil
}

// fakeSystem answers Health and counts Shutdown calls in its agent.
type fakeSystem struct {
	healthySystem
	a *fakeAgent
}

func (s fakeSystem) SetTime(ctx context.Context, _ *api.SetTimeRequest) (*api.SetTimeResponse, error) {
	if s.a.timeSetAfter == nil {
		return &api.SetTimeResponse{}, nil
	}
	select {
	case <-s.a.timeSetAfter:
		return &api.SetTimeResponse{}, nil
	case <-time.After(5 * time.Second):
		return nil, errgrpc.ToGRPC(errdefs.ErrUnavailable)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s fakeSystem) AddEntropy(context.Context, *api.AddEntropyRequest) (*api.AddEntropyResponse, error) {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	s.a.entropyAdded++
	return &api.AddEntropyResponse{}, nil
}

func (s fakeSystem) OnlineResources(_ context.Context, r *api.OnlineResourcesRequest) (*api.OnlineResourcesResponse, error) {
	return &api.OnlineResourcesResponse{OnlineVcpus: r.GetVcpus(), MemoryMib: r.GetMemoryMib()}, nil
}

func (s fakeSystem) Shutdown(context.Context, *api.ShutdownRequest) (*api.ShutdownResponse, error) {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	s.a.shutdowns++
	return &api.ShutdownResponse{}, nil
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{exits: map[string]chan int32{}, ooms: make(chan string, 1024)}
}

func (a *fakeAgent) exitChan(key string) chan int32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch, ok := a.exits[key]
	if !ok {
		ch = make(chan int32, 1)
		a.exits[key] = ch
	}
	return ch
}

// exit makes the guest report the exit of a process.
func (a *fakeAgent) exit(container, exec string, status int32) {
	a.exitChan(container + "/" + exec) <- status
}

func (a *fakeAgent) WaitProcess(ctx context.Context, r *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	select {
	case st := <-a.exitChan(r.GetContainerId() + "/" + r.GetExecId()):
		return &api.WaitProcessResponse{ExitStatus: st, ExitedAt: timestamppb.Now()}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *fakeAgent) SignalProcess(_ context.Context, r *api.SignalProcessRequest) (*api.SignalProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.signals = append(a.signals, r.GetContainerId()+"/"+r.GetExecId())
	if a.signalErr != nil {
		return nil, a.signalErr
	}
	return &api.SignalProcessResponse{}, nil
}

func (a *fakeAgent) RemoveContainer(ctx context.Context, _ *api.RemoveContainerRequest) (*api.RemoveContainerResponse, error) {
	a.mu.Lock()
	err, hang := a.removeErr, a.hangRemove
	a.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.RemoveContainerResponse{}, nil
}

func (a *fakeAgent) WaitOOM(ctx context.Context, _ *api.WaitOOMRequest) (*api.WaitOOMResponse, error) {
	select {
	case id := <-a.ooms:
		return &api.WaitOOMResponse{ContainerId: id}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// healthySystem answers Health.
type healthySystem struct{ api.SystemService }

func (healthySystem) Health(context.Context, *api.HealthRequest) (*api.HealthResponse, error) {
	return &api.HealthResponse{Status: api.HealthResponse_STATUS_SERVING}, nil
}

// connListener hands the RPC channels to the ttRPC server.
type connListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake-agent"} }

// serve runs the fake agent on a unix socket and returns a client
// connected to it.
func (a *fakeAgent) serve(t *testing.T) *agentclient.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterContainersService(srv, a)
	api.RegisterSystemService(srv, fakeSystem{a: a})
	rpcs := &connListener{c: make(chan net.Conn), done: make(chan struct{})}
	go func() { _ = srv.Serve(ctx, rpcs) }()
	go func() {
		conn, err := ul.Accept()
		if err != nil {
			return
		}
		synced, err := channel.SyncAgent(conn)
		if err != nil {
			_ = conn.Close()
			return
		}
		sess, err := yamux.Server(synced, channel.YamuxConfig(ctx))
		if err != nil {
			_ = conn.Close()
			return
		}
		context.AfterFunc(ctx, func() { _ = sess.Close() })
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				h, err := channel.ReadHeader(st)
				if err != nil || h.Kind != channel.KindRPC {
					_ = channel.WriteAck(st, channel.AckBadKind)
					_ = st.Close()
					return
				}
				if channel.WriteAck(st, channel.AckOK) != nil {
					return
				}
				select {
				case rpcs.c <- st:
				case <-ctx.Done():
				}
			}()
		}
	}()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := agentclient.Dial(dctx, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: sock},
		agentclient.Options{DialTimeout: 10 * time.Second, CallTimeout: 10 * time.Second, NoLogStream: true})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		cancel()
		_ = srv.Close()
		_ = ul.Close()
	})
	return c
}

// stoppableVM is a VM that runs until Stop.
type stoppableVM struct {
	staticVM
	done chan struct{}
	once sync.Once
}

func (v *stoppableVM) Stop(context.Context) error {
	v.once.Do(func() { close(v.done) })
	return nil
}
func (v *stoppableVM) Done() <-chan struct{} { return v.done }

// testSandbox is a running sandbox whose agent is a.
func testSandbox(t *testing.T, a *fakeAgent, killTimeout time.Duration) *Sandbox {
	t.Helper()
	s := &Sandbox{
		id:          "sb",
		stateDir:    t.TempDir(),
		state:       StateRunning,
		vm:          &stoppableVM{done: make(chan struct{})},
		client:      a.serve(t),
		oom:         make(chan string, oomBuffer),
		killTimeout: killTimeout,
		containers:  map[string]*Container{},
	}
	s.bg, s.cancelBg = context.WithCancel(context.Background())
	t.Cleanup(s.cancelBg)
	return s
}

// runningContainer adds a started container to s, as CreateContainer and
// Start leave it (without storage or stdio).
func runningContainer(s *Sandbox, id string) *Container {
	c := &Container{sb: s, id: id, state: ContainerRunning, execs: map[string]*Process{}}
	c.init = &Process{c: c, pid: 1, io: &stdio{}, done: make(chan struct{}), state: ProcessRunning}
	s.release(id, c)
	go c.init.watch()
	return c
}

// runningExec adds a started exec to c.
func runningExec(c *Container, id string) *Process {
	p := &Process{c: c, execID: id, pid: 2, io: &stdio{}, done: make(chan struct{}), state: ProcessRunning}
	c.mu.Lock()
	c.execs[id] = p
	c.mu.Unlock()
	go p.watch()
	return p
}

// waitWithin waits for p's exit for at most d.
func waitWithin(t *testing.T, p *Process, d time.Duration) ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("waiting for %s: %v", p.name(), err)
	}
	return st
}

// stillRunning fails when p exits within d.
func stillRunning(t *testing.T, p *Process, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if st, err := p.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s ended (%+v, %v); want it running", p.name(), st, err)
	}
}
