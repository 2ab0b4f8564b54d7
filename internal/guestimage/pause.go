package guestimage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
)

// pauseAdvice ends the errors of a pod sandbox binary the image cannot
// hold.
const pauseAdvice = "build it with make build (bin/hull-pause, from cmd/hull-pause) and pass it with --pause"

// readPause reads the pod sandbox binary at p, the waiting stage of a pod
// sandbox process, and checks that the guest can run it: a static x86-64
// ELF executable. It is read once, so the bytes checked, hashed and packed
// are the same.
func readPause(p string) (File, *AgentInfo, error) {
	if p == "" {
		return File{}, nil, fmt.Errorf("no pod sandbox binary given; %s: %w", pauseAdvice, errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return File{}, nil, fmt.Errorf("pod sandbox binary %s does not exist (%w); %s: %w", p, err, pauseAdvice, errdefs.ErrInvalidArgument)
		}
		return File{}, nil, fmt.Errorf("pod sandbox binary %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		return File{}, nil, fmt.Errorf("pod sandbox binary %s is not a regular file (mode %v); %s: %w", p, st.Mode(), pauseAdvice, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return File{}, nil, fmt.Errorf("reading pod sandbox binary %s: %w", p, err)
	}
	if err := checkStaticELF("pod sandbox binary", p, pauseAdvice, data); err != nil {
		return File{}, nil, err
	}
	sum := sha256.Sum256(data)
	return File{Path: channel.PauseBinaryPath, Mode: 0o755, Data: data},
		&AgentInfo{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}, nil
}
