package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
)

// MakeExt4 makes the ext4 image file img of size (mkfs.ext4's notation,
// "32M"), holding the tree at from when from is not "". A missing
// mkfs.ext4 fails the test.
func MakeExt4(t testing.TB, img, size, from string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("mkfs.ext4 not found (apt-get install e2fsprogs): %v", err)
	}
	args := []string{"-q", "-F"}
	if from != "" {
		args = append(args, "-d", from)
	}
	if out, err := exec.Command("mkfs.ext4", append(args, img, size)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

// BlockfileSnapshotter makes an empty ext4 scratch image of 128 MiB in a
// directory of the test's and returns the containerd 2.x configuration of
// the blockfile snapshotter that copies it for each snapshot.
func BlockfileSnapshotter(t testing.TB) string {
	t.Helper()
	scratch := filepath.Join(t.TempDir(), "scratch.ext4")
	MakeExt4(t, scratch, "128M", "")
	return fmt.Sprintf(`[plugins."io.containerd.snapshotter.v1.blockfile"]
  scratch_file = %q
  fs_type = "ext4"
  mount_options = []
`, scratch)
}
