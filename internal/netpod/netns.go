package netpod

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// openNamespace opens the network namespace file at path (a bind mount
// under /var/run/netns or /proc/<pid>/ns/net). A missing path is
// errdefs.ErrNotFound; a path that is not a network namespace is
// errdefs.ErrInvalidArgument.
func openNamespace(path string, allowOwn bool) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), fmt.Errorf("network namespace path is empty: %w", errdefs.ErrInvalidArgument)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("opening network namespace %s: %w", path, classify(err))
	}
	ns := netns.NsHandle(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		_ = ns.Close()
		return netns.None(), fmt.Errorf("network namespace %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		_ = ns.Close()
		return netns.None(), fmt.Errorf("%s is not a namespace file: %w", path, errdefs.ErrInvalidArgument)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		_ = ns.Close()
		return netns.None(), fmt.Errorf("network namespace %s: type: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		_ = ns.Close()
		return netns.None(), fmt.Errorf("%s is not a network namespace: %w", path, errdefs.ErrInvalidArgument)
	}
	if host, err := isHostNamespace(fd, allowOwn); err != nil || host {
		_ = ns.Close()
		if err != nil {
			return netns.None(), fmt.Errorf("network namespace %s: %w", path, err)
		}
		return netns.None(), fmt.Errorf("%s is the host's (or the runtime's own) network namespace; hull mirrors only a pod's: %w", path, errdefs.ErrInvalidArgument)
	}
	return ns, nil
}

// inNamespace runs fn on an OS thread that is in the network namespace ns.
// Sockets and /dev/net/tun descriptors opened by fn belong to ns for
// their whole life.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening the thread's network namespace: %w", err)
			return
		}
		defer func() { _ = orig.Close() }()
		if err := netns.Set(ns); err != nil {
			// setns failed: the thread is still where it was.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering the network namespace: %w", classify(err))
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime ends it with this
			// goroutine rather than run other code in the pod's namespace.
			errc <- errors.Join(ferr, fmt.Errorf("restoring the thread's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newHandle opens an rtnetlink handle whose socket lives in ns.
//
// netlink.NewHandleAt would switch namespaces itself but unlocks the
// thread even when it could not switch back; opening the socket on our
// own thread avoids that.
func newHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNamespace(ns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		if h != nil {
			h.Close()
		}
		return nil, fmt.Errorf("opening an rtnetlink socket: %w", err)
	}
	return h, nil
}

// tapFlags are the tap's TUNSETIFF flags: Ethernet frames, no packet
// information header, a virtio-net header (QEMU probes it), one queue, and
// never attach to an existing device of the same name.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL

// createTap creates the non-persistent tap name in ns and returns the
// descriptor that keeps it alive. The descriptor is blocking: the
// hypervisor sets its own copy's flags.
func createTap(ns netns.NsHandle, name string) (*os.File, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("tap name %q: %w: %w", name, err, errdefs.ErrInvalidArgument)
	}
	ifr.SetUint16(tapFlags)
	fd := -1
	err = inNamespace(ns, func() error {
		// The namespace is fixed here, at open: tun takes the opener's.
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("opening /dev/net/tun: %w", classify(err))
	}
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("creating tap %s: %w", name, classify(err))
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// classify adds the errdefs class that an errno stands for, so callers
// can test it with errdefs.Is*; other errors are returned as they are.
func classify(err error) error {
	var class error
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV):
		class = errdefs.ErrNotFound
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.EBUSY):
		class = errdefs.ErrAlreadyExists
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		class = errdefs.ErrPermissionDenied
	case errors.Is(err, unix.EINVAL):
		class = errdefs.ErrInvalidArgument
	default:
		return err
	}
	return fmt.Errorf("%w: %w", err, class)
}

// isHostNamespace reports whether the namespace fd is the network namespace
// of the host's init or, unless allowOwn, of this process: mirroring it would
// redirect the host's own traffic into a VM.
func isHostNamespace(fd int, allowOwn bool) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, err
	}
	refused := []string{"/proc/1/ns/net", "/proc/self/ns/net"}
	if allowOwn {
		refused = refused[:1]
	}
	for _, p := range refused {
		var o unix.Stat_t
		if err := unix.Stat(p, &o); err != nil {
			continue
		}
		if o.Dev == st.Dev && o.Ino == st.Ino {
			return true, nil
		}
	}
	return false, nil
}
