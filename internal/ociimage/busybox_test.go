package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireBusybox skips the test without the host's busybox, or fails it
// when CI is set.
func requireBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(DefaultBusybox); err != nil {
		msg := fmt.Sprintf("no %s (apt-get install busybox-static): %v", DefaultBusybox, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (required when CI is set)")
		}
		t.Skip(msg)
	}
}

func TestWriteBusyboxReproducible(t *testing.T) {
	requireBusybox(t)
	var a, b bytes.Buffer
	if err := WriteBusybox(&a, BusyboxOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := WriteBusybox(&b, BusyboxOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two builds differ")
	}
	names := map[string]bool{}
	tr := tar.NewReader(&a)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
		if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want %v 0 0", h.Name, h.ModTime, h.Uid, h.Gid, Epoch)
		}
	}
	for _, n := range []string{"oci-layout", "index.json", "blobs/sha256/"} {
		if !names[n] {
			t.Errorf("archive lacks %s", n)
		}
	}
}

func TestWriteBusyboxConfig(t *testing.T) {
	requireBusybox(t)
	for _, tc := range []struct {
		name           string
		opts           BusyboxOptions
		wantName       string
		wantEntrypoint []string
		wantCmd        []string
	}{
		{"default", BusyboxOptions{}, DefaultName, nil, []string{"sh"}},
		{"cmd", BusyboxOptions{Cmd: []string{"echo", "hi"}}, DefaultName, nil, []string{"echo", "hi"}},
		{"pause", PauseOptions(), DefaultPauseName, PauseOptions().Entrypoint, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteBusybox(&buf, tc.opts); err != nil {
				t.Fatal(err)
			}
			blobs := archiveFiles(t, buf.Bytes())
			var index struct {
				Manifests []struct {
					Digest      string
					Annotations map[string]string
				}
			}
			mustUnmarshal(t, blobs["index.json"], &index)
			if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != tc.wantName {
				t.Fatalf("index: %s, want one manifest named %s", blobs["index.json"], tc.wantName)
			}
			var manifest struct{ Config struct{ Digest string } }
			mustUnmarshal(t, blobs[blobPath(index.Manifests[0].Digest)], &manifest)
			var config struct {
				Config struct{ Entrypoint, Cmd []string }
			}
			mustUnmarshal(t, blobs[blobPath(manifest.Config.Digest)], &config)
			if !slices.Equal(config.Config.Entrypoint, tc.wantEntrypoint) || !slices.Equal(config.Config.Cmd, tc.wantCmd) {
				t.Errorf("entrypoint %q cmd %q, want %q %q", config.Config.Entrypoint, config.Config.Cmd, tc.wantEntrypoint, tc.wantCmd)
			}
			// The docker-save view names the same config and layer.
			var saved []struct {
				Config   string
				RepoTags []string
				Layers   []string
			}
			mustUnmarshal(t, blobs["manifest.json"], &saved)
			var layers struct{ Layers []struct{ Digest string } }
			mustUnmarshal(t, blobs[blobPath(index.Manifests[0].Digest)], &layers)
			if len(saved) != 1 || saved[0].Config != blobPath(manifest.Config.Digest) ||
				!slices.Equal(saved[0].RepoTags, []string{tc.wantName}) ||
				len(layers.Layers) != 1 || !slices.Equal(saved[0].Layers, []string{blobPath(layers.Layers[0].Digest)}) {
				t.Errorf("manifest.json %s does not match the OCI manifest %s", blobs["manifest.json"], blobs[blobPath(index.Manifests[0].Digest)])
			}
			for _, p := range append([]string{saved[0].Config}, saved[0].Layers...) {
				if _, ok := blobs[p]; !ok {
					t.Errorf("manifest.json names %s, which the archive lacks", p)
				}
			}
		})
	}
}

// TestPauseExitsOnSignal runs the pause program with the host's busybox
// shell and checks that SIGTERM and SIGINT end it at once with status 0.
func TestPauseExitsOnSignal(t *testing.T) {
	requireBusybox(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			entrypoint := PauseOptions().Entrypoint
			cmd := exec.Command(DefaultBusybox, append([]string{"sh"}, entrypoint[1:]...)...)
			// Its own process group, so that SIGINT reaches only the shell
			// (as it would as PID 1 of a container).
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// Let the shell install its trap; a signal that arrives before
			// would kill it with the signal's status rather than 0.
			time.Sleep(300 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("pause ended by itself: %v", err)
			default:
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("after %v: %v, want exit status 0", sig, err)
				}
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("pause did not end within 5s of %v (killed: %v)", sig, <-done)
			}
		})
	}
}

// archiveFiles returns the regular files of a tar archive by name.
func archiveFiles(t *testing.T, archive []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
}
