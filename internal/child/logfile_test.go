package child

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func fileBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

func TestLogFileRotates(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int64
		writes  []string
		cur     string
		rotated string
	}{
		{"under the bound", 10, []string{"abc\n", "def\n"}, "abc\ndef\n", ""},
		{"exactly the bound", 8, []string{"abc\n", "def\n"}, "abc\ndef\n", ""},
		{"one past the bound", 8, []string{"abc\n", "def\n", "g"}, "g", "abc\ndef\n"},
		{"a write split across the rotation", 4, []string{"ab", "cdef"}, "ef", "abcd"},
		{"one write of many bounds keeps the last two", 3, []string{"0123456789"}, "9", "678"},
		{"old rotations are replaced", 2, []string{"aa", "bb", "cc", "d"}, "d", "cc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := OpenLog(path, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.writes {
				if n, err := l.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if got := string(fileBytes(t, path)); got != tc.cur {
				t.Errorf("%s = %q, want %q", path, got, tc.cur)
			}
			if got := string(fileBytes(t, RotatedPath(path))); got != tc.rotated {
				t.Errorf("rotated = %q, want %q", got, tc.rotated)
			}
			if l.Err() != nil {
				t.Errorf("Err = %v", l.Err())
			}
		})
	}
}

func TestOpenLogStartsOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "virtiofsd.log")
	for _, f := range []string{path, RotatedPath(path)} {
		if err := os.WriteFile(f, []byte("old run\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := OpenLog(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	if _, err := os.Stat(RotatedPath(path)); !os.IsNotExist(err) {
		t.Errorf("the rotated part of the last run is still there: %v", err)
	}
	if b := fileBytes(t, path); len(b) != 0 {
		t.Errorf("log not truncated: %q", b)
	}
	if l.max != DefaultLogMax {
		t.Errorf("default bound %d, want %d", l.max, DefaultLogMax)
	}
}

func TestLogFileWriteAfterErrorDrops(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	l, err := OpenLog(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	// Rotation fails once the directory is gone.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Write([]byte("0123456789")); n != 10 || err != nil {
		t.Fatalf("Write = %d, %v; want the write reported done", n, err)
	}
	if l.Err() == nil {
		t.Fatal("Err is nil after a failed rotation")
	}
}

func TestTailLines(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rotated string
		cur     string
		n       int
		max     int64
		want    []string
	}{
		{"empty", "", "", 5, 100, nil},
		{"current only", "", "a\r\nb\nc\n", 2, 100, []string{"b", "c"}},
		{"across the rotation", "zero\none\ntw", "o\nthree\n", 5, 100, []string{"one", "two", "three"}},
		{"the start of the rotated part may be cut", "ne\n", "two\n", 5, 100, []string{"two"}},
		{"a rotated part alone is kept", "one", "", 5, 100, []string{"one"}},
		{"window inside the rotated part cuts its first line", "one\ntwo\n", "three\n", 5, 10, []string{"two", "three"}},
		{"window at the file boundary cuts the rotated line", "one\ntw", "o\nthree\n", 5, 8, []string{"three"}},
		{"window inside the current file", "old\n", "abc\ndef\nghi\n", 5, 8, []string{"def", "ghi"}},
		{"one long line keeps its end", "", "0123456789", 5, 4, []string{"6789"}},
		{"n bounds the lines", "a\nb\n", "c\nd\n", 3, 100, []string{"b", "c", "d"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			if tc.rotated != "" {
				if err := os.WriteFile(RotatedPath(path), []byte(tc.rotated), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(path, []byte(tc.cur), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := TailLines(path, tc.n, tc.max); !slices.Equal(got, tc.want) {
				t.Fatalf("TailLines = %q, want %q", got, tc.want)
			}
		})
	}
	if got := TailLines("/nonexistent/console.log", 5, 100); got != nil {
		t.Errorf("missing log: %q", got)
	}
}

// TestLogFileBoundedUnderFlood writes far more than the bound in
// console-sized chunks and checks the files stay bounded and the tail is
// the end of what was written.
func TestLogFileBoundedUnderFlood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	const bound = 4096
	l, err := OpenLog(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	for i := range 10000 {
		if _, err := fmt.Fprintf(l, "flood line %d\r\n", i); err != nil {
			t.Fatal(err)
		}
		if i%997 == 0 {
			if a, b := len(fileBytes(t, path)), len(fileBytes(t, RotatedPath(path))); a > bound || b > bound {
				t.Fatalf("after line %d: %d and %d bytes, bound %d", i, a, b, bound)
			}
		}
	}
	got := l.TailLines(3, 64<<10)
	want := []string{"flood line 9997", "flood line 9998", "flood line 9999"}
	if !slices.Equal(got, want) {
		t.Fatalf("tail %q, want %q", got, want)
	}
	// The window spans both files: every line it returns is whole.
	for _, line := range l.TailLines(1000, 2*bound) {
		if !strings.HasPrefix(line, "flood line ") {
			t.Fatalf("cut line %q in the tail", line)
		}
	}
}

// FuzzTailLines writes arbitrary bytes through a small LogFile in arbitrary
// chunks and checks the bound and what TailLines returns: at most n lines,
// none holding a line break, and, when the window covers everything kept,
// exactly the last lines of what the files hold.
func FuzzTailLines(f *testing.F) {
	f.Add([]byte("one\ntwo\nthree\n"), uint8(3), uint8(2), uint16(64))
	f.Add([]byte("a\r\nb\r\n\r\n\nc"), uint8(1), uint8(5), uint16(3))
	f.Add(bytes.Repeat([]byte("x"), 300), uint8(7), uint8(1), uint16(10))
	f.Fuzz(func(t *testing.T, data []byte, chunk, n uint8, window uint16) {
		const bound = 16
		path := filepath.Join(t.TempDir(), "console.log")
		l, err := OpenLog(path, bound)
		if err != nil {
			t.Fatal(err)
		}
		step := int(chunk%32) + 1
		for rest := data; len(rest) > 0; {
			c := rest[:min(step, len(rest))]
			rest = rest[len(c):]
			if _, err := l.Write(c); err != nil {
				t.Fatal(err)
			}
		}
		_ = l.Close()
		cur, rot := fileBytes(t, path), fileBytes(t, RotatedPath(path))
		if len(cur) > bound || len(rot) > bound {
			t.Fatalf("files of %d and %d bytes, bound %d", len(cur), len(rot), bound)
		}
		kept := append(append([]byte(nil), rot...), cur...)
		if !bytes.HasSuffix(data, kept) {
			t.Fatalf("the files hold %q, not the end of %q", kept, data)
		}
		lines := TailLines(path, int(n), int64(window))
		if len(lines) > int(n) {
			t.Fatalf("%d lines, asked for %d", len(lines), n)
		}
		for _, line := range lines {
			if strings.ContainsAny(line, "\r\n") {
				t.Fatalf("line %q holds a line break", line)
			}
		}
		if int(window) >= len(kept) {
			s := strings.TrimRight(strings.ReplaceAll(string(kept), "\r", ""), "\n")
			var want []string
			if s != "" {
				want = strings.Split(s, "\n")
				if len(rot) > 0 && len(want) > 1 {
					want = want[1:]
				}
				want = want[max(0, len(want)-int(n)):]
			}
			if n == 0 {
				want = nil
			}
			if !slices.Equal(lines, want) {
				t.Fatalf("TailLines = %q, want %q", lines, want)
			}
		}
	})
}
