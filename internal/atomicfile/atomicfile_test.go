package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		name    string
		before  func(t *testing.T, path string) // what stands at path before the write
		wantErr bool
		want    string // the file's content after, "" for no regular file
	}{
		{name: "new file", before: func(*testing.T, string) {}, want: "new"},
		{name: "replaces a file", before: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("old and longer"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: "new"},
		{name: "a directory in the way: an error, the directory kept", before: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, "x"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "record.json")
			tt.before(t, path)
			err := Write(path, []byte("new"))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Write: %v, want an error: %v", err, tt.wantErr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != "record.json" {
				t.Errorf("the directory holds %v, want record.json alone", names(entries))
			}
			if tt.want == "" {
				return
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != tt.want {
				t.Fatalf("the file holds %q (%v), want %q", b, err, tt.want)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
		})
	}
}

func TestWriteNoDirectory(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "gone", "record.json"), []byte("x")); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
}

func TestWriteFunc(t *testing.T) {
	fillErr := errors.New("fill failed")
	tests := []struct {
		name     string
		opts     Options
		fill     string // what fill writes
		fillErr  error  // what fill returns
		want     string // the file's content after
		wantMode os.FileMode
	}{
		{name: "default mode", fill: "new", want: "new", wantMode: 0o600},
		{name: "mode 0644, synced", opts: Options{Perm: 0o644}, fill: "new", want: "new", wantMode: 0o644},
		{name: "mode 0644, not synced", opts: Options{Perm: 0o644, NoSync: true}, fill: "new", want: "new", wantMode: 0o644},
		{name: "fill fails: the old file kept", opts: Options{Perm: 0o644}, fill: "part", fillErr: fillErr, want: "old", wantMode: 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "resolv.conf")
			if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := WriteFunc(path, tt.opts, func(w io.Writer) error {
				if _, err := io.WriteString(w, tt.fill); err != nil {
					return err
				}
				return tt.fillErr
			})
			if !errors.Is(err, tt.fillErr) || (tt.fillErr == nil && err != nil) {
				t.Fatalf("WriteFunc: %v, want %v", err, tt.fillErr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != "resolv.conf" {
				t.Errorf("the directory holds %v, want resolv.conf alone", names(entries))
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != tt.want {
				t.Fatalf("the file holds %q (%v), want %q", b, err, tt.want)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != tt.wantMode {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), tt.wantMode)
			}
		})
	}
}

func names(entries []os.DirEntry) []string {
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return slices.Sorted(slices.Values(n))
}
