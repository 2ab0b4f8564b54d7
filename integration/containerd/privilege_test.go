package containerd

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// privResult is a "r-<name>:<status>" line a console script printed (the
// terminal's echo of the input shows "$?" instead of a number).
var privResult = regexp.MustCompile(`(?m)^r-([a-z0-9-]+):(\d+)\r?$`)

// TestContainerdGuestRootCannotPlantPrivilegedFiles runs a container under
// containerd (overlay root from the snapshotter, a read-write bind volume)
// with QEMU as a user of its own, and from the guest's root shell tries to
// leave a block device and a set-user-ID shell in the volume and in the
// container's root: both are refused, and neither the volume nor the
// snapshotter's upper directories on the host hold such a file.
func TestContainerdGuestRootCannotPlantPrivilegedFiles(t *testing.T) {
	containerdPath, ctrPath := daemonBinaries(t, "1.6")
	d := startDaemon(t, containerdPath, ctrPath)
	defer d.checkClean(t)
	vol := filepath.Join(d.dir, "privvol")
	if err := os.Mkdir(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.RemoveAll(vol) }()
	cfg := filepath.Join(d.dir, "hull-priv.toml")
	body := fmt.Sprintf("[image]\nassets_dir = %q\n[agent]\ndebug_console = true\n[runtime]\nstate_dir = %q\n"+
		"[hypervisor.qemu]\nrun_as_uid_base = %d\nrun_as_uid_count = 8\n", debugImage(t), d.stateRoot, 1<<31-2000)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	const id = "priv"
	d.mustCtr(t, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", cfg,
		"--mount", "type=bind,src="+vol+",dst=/vol,options=rbind:rw", imageName, id, "sleep", "600")
	defer d.forget(t, id)

	script := `for d in $(ls -d /run/hull/shared/*/volumes/*-privvol) $(ls -d /run/hull/shared/*/rootfs/tmp); do
cd $d; echo r-cd:$?
mknod plant-blk b 8 0; echo r-mknod:$?
cat /proc/$$/exe > plant-shell; echo r-copy:$?
chmod 0755 plant-shell; echo r-chmod-0755:$?
chmod 4755 plant-shell; echo r-chmod-4755:$?
chmod g+s plant-shell; echo r-chmod-gs:$?
done
`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(env.binDir, "hull"), "--config", cfg, "exec", id)
	cmd.Stdin = strings.NewReader(script)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("hull exec: %v; output %q", err, out)
	}
	counts := map[string]map[string]int{}
	for _, m := range privResult.FindAllStringSubmatch(out, -1) {
		if counts[m[1]] == nil {
			counts[m[1]] = map[string]int{}
		}
		counts[m[1]][m[2]]++
	}
	t.Logf("guest results (status: count) %v", counts)
	for _, step := range []string{"cd", "copy", "chmod-0755"} {
		if counts[step]["0"] != 2 {
			t.Errorf("%s: want success in both directories, got %v", step, counts[step])
		}
	}
	for _, step := range []string{"mknod", "chmod-4755", "chmod-gs"} {
		if n := counts[step]["0"]; n != 0 || len(counts[step]) == 0 {
			t.Errorf("%s: want failure in both directories, got %v", step, counts[step])
		}
	}

	// The host: the volume and every snapshot's upper directory.
	found := 0
	for _, root := range []string{vol, filepath.Join(d.dir, "root")} {
		_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !strings.HasPrefix(e.Name(), "plant-") {
				return nil
			}
			st, err := os.Lstat(p)
			if err != nil {
				return nil
			}
			found++
			if st.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeDevice) != 0 {
				t.Errorf("%s is on the host with mode %v", p, st.Mode())
			}
			return nil
		})
	}
	if found < 2 {
		t.Errorf("found %d of the guest's plant-shell copies on the host, want both", found)
	}
	d.mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, d, id, "STOPPED")
}
