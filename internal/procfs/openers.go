package procfs

import (
	"os"
	"path/filepath"
	"strconv"
)

// An Opener is a descriptor of a process open on a file.
type Opener struct {
	PID, FD int
}

func (o Opener) String() string { return strconv.Itoa(o.PID) + "/" + strconv.Itoa(o.FD) }

// Openers lists the descriptors of the host's processes open on the file
// at path (the same device and inode), from /proc/<pid>/fd. Processes and
// descriptors that are gone, or that the caller may not read, are passed
// over.
func Openers(path string) ([]Opener, error) {
	want, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []Opener
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			n, err := strconv.Atoi(fd.Name())
			if err != nil {
				continue
			}
			if st, err := os.Stat(filepath.Join(dir, fd.Name())); err == nil && os.SameFile(st, want) {
				found = append(found, Opener{PID: pid, FD: n})
			}
		}
	}
	return found, nil
}
