package guestimage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
)

// pauseAdvice ends the errors of a pod sandbox binary the image cannot
// hold.
const pauseAdvice = "build it with make build (bin/hull-pause, from cmd/hull-pause) and pass it with --pause"

// maxPackedBinary bounds what readRegular reads: far above a static
// busybox (about 2 MB) or hull-pause (under 1 MB).
const maxPackedBinary = 64 << 20

// readPause reads the pod sandbox binary at p, the waiting stage of a pod
// sandbox process, and checks that the guest can run it: a static x86-64
// ELF executable. It is read once, so the bytes checked, hashed and packed
// are the same.
func readPause(p string) (File, *AgentInfo, error) {
	if p == "" {
		return File{}, nil, fmt.Errorf("no pod sandbox binary given; %s: %w", pauseAdvice, errdefs.ErrInvalidArgument)
	}
	data, err := readRegular("pod sandbox binary", p, pauseAdvice)
	if err != nil {
		return File{}, nil, err
	}
	if err := checkStaticELF("pod sandbox binary", p, pauseAdvice, data); err != nil {
		return File{}, nil, err
	}
	sum := sha256.Sum256(data)
	return File{Path: channel.PauseBinaryPath, Mode: 0o755, Data: data},
		&AgentInfo{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}, nil
}

// readRegular reads the regular file at p (symbolic links followed), at
// most maxPackedBinary bytes. The file is opened once and checked through
// its descriptor, so what is read is what was checked: a FIFO or device
// put at p meanwhile is refused, not read (the open does not wait for a
// FIFO's writer). Errors of a file that cannot be packed wrap
// errdefs.ErrInvalidArgument; what names the file, advice, if not empty,
// ends them.
func readRegular(what, p, advice string) ([]byte, error) {
	if advice != "" {
		advice = "; " + advice
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s %s does not exist (%w)%s: %w", what, p, err, advice, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("%s %s: %w", what, p, err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, p, err)
	}
	switch {
	case st.IsDir():
		return nil, fmt.Errorf("%s %s is a directory, not a regular file%s: %w", what, p, advice, errdefs.ErrInvalidArgument)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%s %s is not a regular file (mode %v)%s: %w", what, p, st.Mode(), advice, errdefs.ErrInvalidArgument)
	case st.Size() > maxPackedBinary:
		return nil, fmt.Errorf("%s %s holds %d bytes, more than the %d a guest image packs%s: %w", what, p, st.Size(), maxPackedBinary, advice, errdefs.ErrInvalidArgument)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPackedBinary+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", what, p, err)
	}
	if len(data) > maxPackedBinary {
		return nil, fmt.Errorf("%s %s grew past the %d bytes a guest image packs while it was read%s: %w", what, p, maxPackedBinary, advice, errdefs.ErrInvalidArgument)
	}
	return data, nil
}
