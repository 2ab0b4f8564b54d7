package agent

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func sockPair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

func TestRecvFD(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close(); _ = w.Close() }()

	t.Run("one descriptor", func(t *testing.T) {
		send, recv := sockPair(t)
		if err := unix.Sendmsg(int(send.Fd()), []byte("/dev/pts/0"), unix.UnixRights(int(w.Fd())), nil, 0); err != nil {
			t.Fatal(err)
		}
		fd, err := recvFD(recv)
		if err != nil {
			t.Fatal(err)
		}
		got := os.NewFile(uintptr(fd), "received")
		defer func() { _ = got.Close() }()
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("received descriptor not close-on-exec: %#x %v", flags, err)
		}
		// It is the pipe's write end: what goes in comes out of r.
		if _, err := got.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := r.Read(b); err != nil || b[0] != 'x' {
			t.Errorf("read %q, %v", b, err)
		}
	})
	t.Run("no descriptor", func(t *testing.T) {
		send, recv := sockPair(t)
		if _, err := send.Write([]byte("name only")); err != nil {
			t.Fatal(err)
		}
		if fd, err := recvFD(recv); err == nil {
			_ = unix.Close(fd)
			t.Fatal("a message without a descriptor was accepted")
		}
	})
	t.Run("two descriptors", func(t *testing.T) {
		send, recv := sockPair(t)
		if err := unix.Sendmsg(int(send.Fd()), []byte("x"), unix.UnixRights(int(r.Fd()), int(w.Fd())), nil, 0); err != nil {
			t.Fatal(err)
		}
		if fd, err := recvFD(recv); err == nil {
			_ = unix.Close(fd)
			t.Fatal("a message with two descriptors was accepted")
		}
	})
	t.Run("peer gone", func(t *testing.T) {
		send, recv := sockPair(t)
		_ = send.Close()
		if fd, err := recvFD(recv); err == nil {
			_ = unix.Close(fd)
			t.Fatal("a closed socket gave a descriptor")
		}
	})
}
