package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"
)

// Epoch stamps every file, the image config and the archive entries.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// DefaultBusybox is Debian's busybox-static binary.
const DefaultBusybox = "/bin/busybox"

// DefaultName is the name the busybox image is imported under.
const DefaultName = "docker.io/hull/busybox:latest"

// DefaultPauseName is the name the pause image (see PauseOptions) is
// imported under.
const DefaultPauseName = "docker.io/hull/pause:latest"

// pauseScript is the pause image's program: it sleeps until SIGTERM or
// SIGINT, then exits 0. The sleep runs in the background so that the shell
// runs its trap as soon as the signal arrives rather than when sleep ends.
const pauseScript = `trap 'kill $! 2>/dev/null; exit 0' TERM INT; while :; do sleep 3600 & wait $!; done`

// BusyboxOptions configures WriteBusybox.
type BusyboxOptions struct {
	// Busybox is a statically linked busybox; DefaultBusybox when empty.
	Busybox string
	// Name is the image's full reference; DefaultName when empty.
	Name string
	// Entrypoint and Cmd are the image configuration's; when both are
	// empty, Cmd is ["sh"].
	Entrypoint []string
	Cmd        []string
}

// PauseOptions returns the options of a pause image, the program a pod
// sandbox runs (the CRI's sandbox image): busybox whose entrypoint sleeps
// until SIGTERM or SIGINT and then exits 0. It is named DefaultPauseName.
func PauseOptions() BusyboxOptions {
	return BusyboxOptions{
		Name:       DefaultPauseName,
		Entrypoint: []string{"/bin/sh", "-c", pauseScript},
	}
}

// file is one entry of a layer.
type file struct {
	name     string
	mode     int64
	typeflag byte
	linkname string
	data     []byte
}

// WriteBusybox writes an OCI layout archive of a one-layer busybox image:
// /bin/busybox with a symlink per applet, the usual empty directories and
// minimal /etc files. Import it with `ctr images import FILE`; it is named
// by opts.Name.
func WriteBusybox(w io.Writer, opts BusyboxOptions) error {
	if opts.Busybox == "" {
		opts.Busybox = DefaultBusybox
	}
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if len(opts.Entrypoint) == 0 && len(opts.Cmd) == 0 {
		opts.Cmd = []string{"sh"}
	}
	bin, err := os.ReadFile(opts.Busybox)
	if err != nil {
		return fmt.Errorf("reading busybox: %w", err)
	}
	applets, err := applets(opts.Busybox)
	if err != nil {
		return err
	}
	files := []file{
		{name: "bin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "bin/busybox", mode: 0o755, typeflag: tar.TypeReg, data: bin},
		{name: "dev/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "etc/group", mode: 0o644, typeflag: tar.TypeReg, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{name: "etc/passwd", mode: 0o644, typeflag: tar.TypeReg, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{name: "proc/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "root/", mode: 0o700, typeflag: tar.TypeDir},
		{name: "sys/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "tmp/", mode: 0o1777, typeflag: tar.TypeDir},
		{name: "usr/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "usr/bin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "usr/sbin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "sbin/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "var/", mode: 0o755, typeflag: tar.TypeDir},
	}
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.name] = true
	}
	for _, a := range applets {
		name := strings.TrimPrefix(a, "/")
		if seen[name] || !strings.Contains(name, "/") {
			continue
		}
		seen[name] = true
		files = append(files, file{name: name, mode: 0o777, typeflag: tar.TypeSymlink, linkname: "/bin/busybox"})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })

	layerTar, err := tarball(files)
	if err != nil {
		return err
	}
	layer, err := gzipped(layerTar)
	if err != nil {
		return err
	}
	imageConfig := map[string]any{
		"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}
	if len(opts.Entrypoint) > 0 {
		imageConfig["Entrypoint"] = opts.Entrypoint
	}
	if len(opts.Cmd) > 0 {
		imageConfig["Cmd"] = opts.Cmd
	}
	config, err := json.Marshal(map[string]any{
		"created":      Epoch,
		"architecture": "amd64",
		"os":           "linux",
		"config":       imageConfig,
		"rootfs": map[string]any{
			"type":     "layers",
			"diff_ids": []string{digest(layerTar)},
		},
		"history": []map[string]any{{"created": Epoch, "created_by": "hull ociimage: busybox from " + opts.Busybox}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config, nil),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer, nil)},
	})
	if err != nil {
		return err
	}
	tag := opts.Name[strings.LastIndex(opts.Name, ":")+1:]
	if strings.Contains(tag, "/") {
		tag = "latest"
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{descriptor("application/vnd.oci.image.manifest.v1+json", manifest, map[string]string{
			"io.containerd.image.name":          opts.Name,
			"org.opencontainers.image.ref.name": tag,
		})},
	})
	if err != nil {
		return err
	}
	// Docker 20.10's `docker load` reads only docker-save archives: the
	// same blobs named by a manifest.json beside the OCI layout (which
	// containerd's import reads, ignoring manifest.json).
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config":   layoutPath(config),
		"RepoTags": []string{opts.Name},
		"Layers":   []string{layoutPath(layer)},
	}})
	if err != nil {
		return err
	}
	blobs := [][]byte{config, layer, manifest}
	out := []file{
		{name: "manifest.json", mode: 0o644, typeflag: tar.TypeReg, data: dockerManifest},
		{name: "blobs/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "blobs/sha256/", mode: 0o755, typeflag: tar.TypeDir},
		{name: "index.json", mode: 0o644, typeflag: tar.TypeReg, data: index},
		{name: "oci-layout", mode: 0o644, typeflag: tar.TypeReg, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	}
	for _, b := range blobs {
		out = append(out, file{name: layoutPath(b), mode: 0o644, typeflag: tar.TypeReg, data: b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	archive, err := tarball(out)
	if err != nil {
		return err
	}
	_, err = w.Write(archive)
	return err
}

// WriteBusyboxFile writes the archive to path.
func WriteBusyboxFile(path string, opts BusyboxOptions) (retErr error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		retErr = errors.Join(retErr, f.Close())
		if retErr != nil {
			_ = os.Remove(path) // best effort: the error being returned is the one that matters
		}
	}()
	return WriteBusybox(f, opts)
}

// applets lists the paths busybox installs its applets at.
func applets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets: %w", err)
	}
	var paths []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && path.IsAbs("/"+l) {
			paths = append(paths, l)
		}
	}
	return paths, nil
}

func tarball(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name:     f.name,
			Mode:     f.mode,
			Typeflag: f.typeflag,
			Linkname: f.linkname,
			Size:     int64(len(f.data)),
			ModTime:  Epoch,
			Format:   tar.FormatPAX,
		}
		if f.typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Size > 0 {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func gzipped(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	// A zero header: no name, no time.
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layoutPath is where the OCI layout keeps blob b.
func layoutPath(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, b []byte, annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}
