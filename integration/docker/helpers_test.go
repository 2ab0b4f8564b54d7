package docker

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

func openTTY(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

type errStatus string

func (e errStatus) Error() string { return "status " + string(e) }
