package guestimage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/containerd/errdefs"
)

// smallTree is a tree with one entry of every kind.
func smallTree(t *testing.T) *tree {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("from the host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr := newTree()
	for _, f := range []File{
		{Path: "/init", Mode: 0o755, Source: src},
		{Path: "/etc/hull/hello", Data: []byte("hi")},
		{Path: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Path: "/dev/vda", Mode: fs.ModeDevice | 0o660, Major: 254, Minor: 0},
		{Path: "/bin/sh", Mode: fs.ModeSymlink | 0o777, Target: "/init"},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/empty", Mode: 0o644},
	} {
		if err := tr.add(f); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

func TestWriteCPIOGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := writeCPIO(context.Background(), &buf, smallTree(t)); err != nil {
		t.Fatal(err)
	}
	compareGolden(t, filepath.Join("testdata", "small.cpio"), buf.Bytes(), false)
}

// TestWriteCPIORoundTrip reads the archive back with an independent reader.
func TestWriteCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := writeCPIO(context.Background(), &buf, smallTree(t)); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		mode cpio.FileMode
		data string
		link string
	}
	want := map[string]entry{
		"bin":            {cpio.TypeDir | 0o755, "", ""},
		"bin/sh":         {cpio.TypeSymlink | 0o777, "", "/init"},
		"dev":            {cpio.TypeDir | 0o755, "", ""},
		"dev/console":    {cpio.TypeChar | 0o600, "", ""},
		"dev/vda":        {cpio.TypeBlock | 0o660, "", ""},
		"empty":          {cpio.TypeReg | 0o644, "", ""},
		"etc":            {cpio.TypeDir | 0o755, "", ""},
		"etc/hull":       {cpio.TypeDir | 0o755, "", ""},
		"etc/hull/hello": {cpio.TypeReg | 0o644, "hi", ""},
		"init":           {cpio.TypeReg | 0o755, "from the host\n", ""},
		"tmp":            {cpio.TypeDir | cpio.ModeSticky | 0o777, "", ""},
	}
	r := cpio.NewReader(&buf)
	var names []string
	for i := int64(1); ; i++ {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		if h.Mode != w.mode || string(data) != w.data || h.Linkname != w.link || h.Inode != i ||
			h.Uid != 0 || h.Guid != 0 || !h.ModTime.Equal(h.ModTime.Truncate(0)) || h.ModTime.Unix() != 0 {
			t.Errorf("%s: mode %o data %q link %q inode %d uid %d mtime %v; want mode %o data %q link %q inode %d",
				h.Name, h.Mode, data, h.Linkname, h.Inode, h.Uid, h.ModTime, w.mode, w.data, w.link, i)
		}
	}
	if len(names) != len(want) {
		t.Errorf("entries %v, want %d", names, len(want))
	}
}

// TestWriteCPIODeviceNumbers checks the rdev fields with cpio(1), since the
// Go reader does not decode them.
func TestWriteCPIODeviceNumbers(t *testing.T) {
	cpioTool := requireTool(t, "cpio")
	var buf bytes.Buffer
	if err := writeCPIO(context.Background(), &buf, smallTree(t)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpioTool, "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"crw-------", "5,   1", "dev/console", "brw-rw----", "254,   0", "dev/vda", "bin/sh -> /init"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio -itv output lacks %q:\n%s", want, out)
		}
	}
}

func TestTreeAdd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   []File
		wantErr error
	}{
		{"relative path", []File{{Path: "etc/x"}}, errdefs.ErrInvalidArgument},
		{"unclean path", []File{{Path: "/etc/../x"}}, errdefs.ErrInvalidArgument},
		{"file twice", []File{{Path: "/x"}, {Path: "/x"}}, errdefs.ErrAlreadyExists},
		{"directory twice", []File{{Path: "/d", Mode: fs.ModeDir | 0o700}, {Path: "/d", Mode: fs.ModeDir | 0o755}}, nil},
		{"parent is a file", []File{{Path: "/x"}, {Path: "/x/y"}}, errdefs.ErrConflict},
		{"directory with data", []File{{Path: "/d", Mode: fs.ModeDir, Data: []byte("x")}}, errdefs.ErrInvalidArgument},
		{"symlink without target", []File{{Path: "/l", Mode: fs.ModeSymlink}}, errdefs.ErrInvalidArgument},
		{"fifo", []File{{Path: "/p", Mode: fs.ModeNamedPipe}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree()
			var err error
			for _, f := range tc.files {
				if err = tr.add(f); err != nil {
					break
				}
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}
