package child

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// DefaultLogMax is the size bound of a LogFile when the caller gives none.
const DefaultLogMax = 1 << 20

// LogFile is a log file bounded in size for output that an untrusted party
// controls (the guest console, virtiofsd's stderr). It holds at most Max
// bytes in <path>; a write that would take it past Max renames it to
// <path>.1, replacing the previous one, and starts a new <path>. Together
// the two files never exceed 2*Max bytes, whatever is written and for how
// long. Writes go straight to the file: the only memory used is the
// caller's buffer.
type LogFile struct {
	max int64

	mu sync.Mutex
	// path is the current file's; it changes only when MoveLogs moves the
	// directory that holds it. Guarded by mu.
	path string
	// f is the current file, nil once closed; guarded by mu.
	f *os.File
	// size of the current file; guarded by mu.
	size int64
	// err is the first write or rotation error; guarded by mu.
	err error
}

// RotatedPath is where LogFile keeps the previous part of the log at path.
func RotatedPath(path string) string { return path + ".1" }

// OpenLog creates (or truncates) the log at path, removes an old rotated
// part, and bounds the log at limit bytes per file (DefaultLogMax when limit is
// not positive).
func OpenLog(path string, limit int64) (*LogFile, error) {
	if limit <= 0 {
		limit = DefaultLogMax
	}
	if err := os.Remove(RotatedPath(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640) //nolint:gosec // G302: logs sit in a 0700 state directory
	if err != nil {
		return nil, err
	}
	return &LogFile{path: path, max: limit, f: f}, nil
}

// Path is the current file of the log.
func (l *LogFile) Path() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.path
}

// Write appends p, rotating the file at the bound, possibly in the middle
// of p (TailLines joins the parts again). It never fails: a log that
// cannot be written must not stop the process writing to it, so after an
// error the rest is dropped and Err reports the first error. Writes after
// Close are dropped too.
func (l *LogFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 && l.f != nil && l.err == nil {
		if l.size >= l.max {
			l.err = l.rotate()
			continue
		}
		c := p[:min(int64(len(p)), l.max-l.size)]
		w, err := l.f.Write(c)
		l.size += int64(w)
		p = p[w:]
		if err != nil {
			l.err = err
		}
	}
	return n, nil
}

// rotate moves the current file to RotatedPath and starts a new one.
// l.mu is held.
func (l *LogFile) rotate() error {
	if err := os.Rename(l.path, RotatedPath(l.path)); err != nil {
		return err
	}
	_ = l.f.Close()
	l.f, l.size = nil, 0
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640) //nolint:gosec // G302: as in OpenLog
	if err != nil {
		return err
	}
	l.f = f
	return nil
}

// Err is the first error that made the log drop output, if any.
func (l *LogFile) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close closes the current file; the files stay.
func (l *LogFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// TailLines is the package function TailLines for this log, read without
// racing a rotation.
func (l *LogFile) TailLines(n int, limit int64) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return TailLines(l.path, n, limit)
}

// TailLines returns up to n last lines of the log at path (the rotated part
// and the current file, as LogFile writes them), reading at most limit
// bytes from their end. Carriage returns are dropped; when the window
// starts inside a line (or at the start of the rotated part, which may
// continue a dropped line), that part is left out unless it is the only
// line.
// Missing files read as empty.
func TailLines(path string, n int, limit int64) []string {
	if n <= 0 || limit <= 0 {
		return nil
	}
	// One byte more than the window tells whether it starts mid-file.
	b := readTail(path, limit+1)
	var cut bool
	if int64(len(b)) > limit {
		cut = b[0] != '\n'
		b = b[1:]
	} else {
		rest := limit - int64(len(b))
		prev := readTail(RotatedPath(path), rest+1)
		if int64(len(prev)) > rest {
			cut = prev[0] != '\n'
			prev = prev[1:]
		} else {
			// The rotated part began where an older one was dropped,
			// maybe in the middle of a line.
			cut = len(prev) > 0
		}
		b = append(prev, b...)
	}
	s := strings.ReplaceAll(string(b), "\r", "")
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	lines := strings.Split(s, "\n")
	if cut && len(lines) > 1 {
		lines = lines[1:]
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// readTail returns up to limit last bytes of the file at path.
func readTail(path string, limit int64) []byte {
	f, err := os.Open(path) //nolint:gosec // G304: the caller's own log
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(st.Size()-limit, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	return b
}

// Rebase is p moved from below dir to the same place below newDir: the path
// of a file after a rename of a directory that holds it. A path not below
// dir is returned as it is.
func Rebase(p, dir, newDir string) string {
	if p == dir {
		return newDir
	}
	if rel, ok := strings.CutPrefix(p, dir+"/"); ok {
		return filepath.Join(newDir, rel)
	}
	return p
}

// MoveLogs runs rename, which renames the directory dir (holding some of
// logs) to newDir, with the writes and rotations of every log held, so
// that none rotates by a path that no longer exists; when rename succeeds
// each log below dir then goes on below newDir. Nil logs are skipped.
func MoveLogs(dir, newDir string, rename func() error, logs ...*LogFile) error {
	var held []*LogFile
	for _, l := range logs {
		if l != nil {
			l.mu.Lock()
			held = append(held, l)
		}
	}
	defer func() {
		for _, l := range held {
			l.mu.Unlock()
		}
	}()
	if err := rename(); err != nil {
		return err
	}
	for _, l := range held {
		l.path = Rebase(l.path, dir, newDir)
	}
	return nil
}
