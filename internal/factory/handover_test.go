package factory

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// warmSide is a warm shim's side in a test: its control socket and the
// factory's end of its lifeline.
type warmSide struct {
	socket  string
	factory *os.File
	result  chan waitResult
}

type waitResult struct {
	claim *Claim
	err   error
}

// startWarm runs WarmShim.Wait with prepare in the background.
func startWarm(t *testing.T, prepare func(Handover, *os.File) error) *warmSide {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "factory"), os.NewFile(uintptr(pair[1]), "lifeline")
	t.Cleanup(func() { _ = ours.Close() })
	w, ctx := Warm(context.Background(), theirs)
	socket := filepath.Join(t.TempDir(), "warm-1.sock")
	if err := w.Listen(socket); err != nil {
		t.Fatal(err)
	}
	if err := w.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := readReady(ours); err != nil {
		t.Fatalf("ready: %v", err)
	}
	ws := &warmSide{socket: socket, factory: ours, result: make(chan waitResult, 1)}
	go func() {
		c, err := w.Wait(ctx, prepare)
		ws.result <- waitResult{c, err}
	}()
	return ws
}

func (ws *warmSide) wait(t *testing.T) waitResult {
	t.Helper()
	select {
	case r := <-ws.result:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("warm shim still waiting")
		return waitResult{}
	}
}

// shimListener is a listening shim socket as Manager.Start makes it.
func shimListener(t *testing.T) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shim.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	t.Cleanup(func() { _ = f.Close() })
	return f, path
}

func validHandover(t *testing.T) Handover {
	return Handover{Namespace: "default", ID: "c1", Address: "/run/containerd/containerd.sock", Bundle: t.TempDir(), Env: []string{"TTRPC_ADDRESS=/run/containerd/containerd.sock.ttrpc"}}
}

func TestHandoff(t *testing.T) {
	t.Run("passes the socket and the parameters", func(t *testing.T) {
		var got Handover
		ws := startWarm(t, func(h Handover, _ *os.File) error { got = h; return nil })
		f, path := shimListener(t)
		h := validHandover(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		pidfd, err := Handoff(ctx, ws.socket, f, h)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = unix.Close(pidfd) }()
		if pid, err := PidfdPID(pidfd); pid != os.Getpid() {
			t.Fatalf("the pidfd is of PID %d (%v), want the warm shim's %d", pid, err, os.Getpid())
		}
		r := ws.wait(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		if got.ID != h.ID || got.Bundle != h.Bundle || len(got.Env) != 1 || r.claim.Namespace != "default" {
			t.Fatalf("hand-over %+v, want %+v", got, h)
		}
		// The descriptor received is the listening socket itself.
		l, err := net.FileListener(r.claim.Listener)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = l.Close() }()
		_ = l.(*net.UnixListener).SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			if c, err := net.Dial("unix", path); err == nil {
				_, _ = c.Write([]byte("x"))
				_ = c.Close()
			}
		}()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		if _, err := os.Stat(ws.socket); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("control socket left after the claim: %v", err)
		}
	})
	t.Run("bad parameters are refused", func(t *testing.T) {
		cases := map[string]func(*Handover){
			"no namespace":      func(h *Handover) { h.Namespace = "" },
			"bad id":            func(h *Handover) { h.ID = "../x" },
			"relative bundle":   func(h *Handover) { h.Bundle = "bundle" },
			"missing bundle":    func(h *Handover) { h.Bundle = "/nonexistent/bundle" },
			"env without value": func(h *Handover) { h.Env = []string{"NOEQUALS"} },
		}
		for name, mutate := range cases {
			t.Run(name, func(t *testing.T) {
				prepared := false
				ws := startWarm(t, func(Handover, *os.File) error { prepared = true; return nil })
				f, _ := shimListener(t)
				h := validHandover(t)
				mutate(&h)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := Handoff(ctx, ws.socket, f, h); !errors.Is(err, ErrRefused) {
					t.Fatalf("Handoff = %v, want ErrRefused", err)
				}
				r := ws.wait(t)
				if !errdefs.IsInvalidArgument(r.err) || prepared {
					t.Fatalf("warm side: %v (prepared %v), want an invalid-argument error before prepare", r.err, prepared)
				}
			})
		}
	})
	t.Run("a descriptor that is not a listening socket is refused", func(t *testing.T) {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		connected := os.NewFile(uintptr(pair[0]), "connected")
		defer func() { _ = connected.Close(); _ = unix.Close(pair[1]) }()
		null, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = null.Close() }()
		for name, f := range map[string]*os.File{"not a socket": null, "a connected socket": connected} {
			t.Run(name, func(t *testing.T) {
				ws := startWarm(t, func(Handover, *os.File) error { return nil })
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := Handoff(ctx, ws.socket, f, validHandover(t)); !errors.Is(err, ErrRefused) {
					t.Fatalf("Handoff = %v, want ErrRefused", err)
				}
				if r := ws.wait(t); !errdefs.IsInvalidArgument(r.err) {
					t.Fatalf("warm side: %v, want invalid argument", r.err)
				}
			})
		}
	})
	t.Run("a claimer out of time leaves the warm shim unclaimed", func(t *testing.T) {
		ws := startWarm(t, func(Handover, *os.File) error {
			time.Sleep(300 * time.Millisecond) // slower than the claimer's bound
			return nil
		})
		f, _ := shimListener(t)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := Handoff(ctx, ws.socket, f, validHandover(t)); err == nil {
			t.Fatal("Handoff succeeded past its deadline")
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Handoff took %s past a 100ms deadline", took)
		}
		r := ws.wait(t)
		if r.err == nil || r.claim != nil {
			t.Fatalf("warm side claimed (%v) without a commit", r.err)
		}
	})
	t.Run("the lifeline's end stops the wait", func(t *testing.T) {
		ws := startWarm(t, func(Handover, *os.File) error { return nil })
		_ = ws.factory.Close()
		if r := ws.wait(t); !errors.Is(r.err, ErrLifelineClosed) {
			t.Fatalf("wait = %v, want ErrLifelineClosed", r.err)
		}
		if _, err := os.Stat(ws.socket); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("control socket left: %v", err)
		}
	})
}

// TestClaimOverTTRPC runs a claim through the factory's service: a miss on
// an empty pool, then a hit.
// TestHandoffChecksThePeer checks that the claimer takes the PID it acts
// on (cgroups, OOM score) from the kernel, not from the warm shim's
// reply: a reply naming another process is refused and never committed.
func TestHandoffChecksThePeer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "warm.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	committed := make(chan bool, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			committed <- false
			return
		}
		defer func() { _ = c.Close() }()
		buf := make([]byte, maxHandoverMessage)
		oob := make([]byte, unix.CmsgSpace(4))
		if _, _, _, _, err := c.ReadMsgUnix(buf, oob); err != nil {
			committed <- false
			return
		}
		_ = writeJSON(c, handoverReply{PID: 1}) // not this process
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(buf)
		committed <- string(buf[:n]) == commitMessage
	}()
	f, _ := shimListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if pid, err := Handoff(ctx, socket, f, validHandover(t)); err == nil {
		t.Fatalf("Handoff took a reply naming PID %d, not the peer's", pid)
	}
	if <-committed {
		t.Fatal("hand-over committed to a peer whose reply named another PID")
	}
}

func TestClaimOverTTRPC(t *testing.T) {
	s := newFakeStarter()
	p, _, _ := runPool(t, 1, s)
	socket := filepath.Join(t.TempDir(), "factory.sock")
	stop := serveForTest(t, p, socket)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	f := s.next(t)
	if _, err := c.Claim(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Fatalf("claim on an empty pool = %v, want not found", err)
	}
	f.ready <- nil
	waitStatus(t, p, "ready", func(r, _ uint32) bool { return r == 1 })
	r, err := c.Claim(ctx, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if r.WarmId != f.id {
		t.Fatalf("claimed %s, want %s", r.WarmId, f.id)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Hits != 1 || st.Misses != 1 {
		t.Fatalf("hits %d misses %d, want 1 1", st.Hits, st.Misses)
	}
}

// serveForTest serves p's ttRPC service on socket until the returned stop.
func serveForTest(t *testing.T, p *Pool, socket string) func() {
	t.Helper()
	srv, err := newServer(p)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), l) }()
	return func() { _ = srv.Close() }
}

// TestHandoffNoPidfd: a claimer that cannot hold the warm shim by a pidfd
// (here no descriptor is left: EMFILE; also ENOSYS, or EPERM from a
// seccomp filter) sends it nothing: the warm shim is claimed by no one
// (its wait ends, it stops its VM and exits), rather than serving the pod
// unsupervised.
func TestHandoffNoPidfd(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "warm.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	peer, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = peer.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	f, _ := shimListener(t)
	// No descriptor left: the lowest free one is the limit.
	free, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.Close(free)
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(free)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	pidfd, err := handoff(conn, f, validHandover(t))
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		_ = unix.Close(pidfd)
		t.Fatal("hand-over made without a pidfd of the warm shim")
	}
	if !errors.Is(err, unix.EMFILE) {
		t.Errorf("handoff: %v, want EMFILE", err)
	}
	_ = conn.Close()
	_ = peer.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, maxHandoverMessage)); n != 0 {
		t.Errorf("the warm shim got %d bytes (%v), want none", n, err)
	}
}
