package ociruntime

import (
	"fmt"
	"net"
	"os"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// newConsole makes a pseudo-terminal on the host for a process with a
// terminal, sends its master to the container manager's console socket (as
// runc does) and returns the slave, in raw mode: the guest's own terminal
// does the line discipline, the host's only carries bytes.
func newConsole(socketPath string) (*os.File, error) {
	if socketPath == "" {
		return nil, fmt.Errorf("the process has a terminal: --console-socket is required")
	}
	master, slavePath, err := console.NewPty()
	if err != nil {
		return nil, fmt.Errorf("creating a pseudo-terminal: %w", err)
	}
	defer func() { _ = master.Close() }() // the manager holds its copy
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", slavePath, err)
	}
	if err := setRaw(slave); err != nil {
		_ = slave.Close()
		return nil, err
	}
	if err := sendConsole(socketPath, master); err != nil {
		_ = slave.Close()
		return nil, err
	}
	return slave, nil
}

func setRaw(f *os.File) error {
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return fmt.Errorf("reading the terminal's mode: %w", err)
	}
	// cfmakeraw(3).
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t); err != nil {
		return fmt.Errorf("setting the terminal raw: %w", err)
	}
	return nil
}

// terminalSize reads the size of the terminal f.
func terminalSize(f *os.File) (width, height uint32, ok bool) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 0, 0, false
	}
	return uint32(ws.Col), uint32(ws.Row), true
}

// sendConsole sends the master's descriptor over the console socket, named
// by the pty's path, as runc sends it.
func sendConsole(socketPath string, master console.Console) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return fmt.Errorf("connecting to the console socket: %w", err)
	}
	defer func() { _ = c.Close() }()
	name := master.Name()
	if _, _, err := c.WriteMsgUnix([]byte(name), unix.UnixRights(int(master.Fd())), nil); err != nil {
		return fmt.Errorf("sending the terminal to the console socket: %w", err)
	}
	return nil
}
