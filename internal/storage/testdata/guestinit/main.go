// Command guestinit is the /init of the storage package's real-VM test. It
// loads the image's modules, mounts the virtio-fs share, waits for the host
// to add container c1 to it, reports on the console what it finds and
// powers off. Every report line starts with "GUEST:".
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/modlist"
)

const share = "/run/hull/shared"

func say(format string, args ...any) { fmt.Printf("GUEST: "+format+"\n", args...) }

func main() {
	defer func() {
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}()
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			say("mount %s: %v", m.dst, err)
		}
	}
	list, err := modlist.Read(modlist.Path)
	if err != nil {
		say("FAIL module list: %v", err)
		return
	}
	for _, m := range list.Modules {
		if err := load(m.Path); err != nil {
			say("FAIL load %s: %v", m.Name, err)
			return
		}
	}
	if err := os.MkdirAll(share, 0o755); err != nil {
		say("FAIL mkdir: %v", err)
		return
	}
	if err := unix.Mount("hull", share, "virtiofs", 0, ""); err != nil {
		say("FAIL mount virtiofs: %v", err)
		return
	}
	say("MOUNTED")

	// The host adds the container only now.
	c := share + "/c1"
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err := os.Stat(c + "/rootfs/etc/hello"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			say("FAIL container never appeared")
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	report("rootfs", c+"/rootfs/etc/hello")
	report("filebind", c+"/volumes/3-hosts")
	report("rovolume", c+"/volumes/2-ro/b")
	report("submount", c+"/volumes/2-ro/sub/c")
	say("rowrite %v", errString(os.WriteFile(c+"/volumes/2-ro/b", []byte("guest"), 0o644)))
	say("rofilewrite %v", errString(os.WriteFile(c+"/volumes/3-hosts", []byte("guest"), 0o644)))
	say("rosubwrite %v", errString(os.WriteFile(c+"/volumes/2-ro/sub/c", []byte("guest"), 0o644)))
	say("rwwrite %v", errString(os.WriteFile(c+"/volumes/1-rw/from-guest", []byte("hello host\n"), 0o644)))
	say("rootfswrite %v", errString(os.WriteFile(c+"/rootfs/from-guest", []byte("x"), 0o644)))
	say("topmkdir %v", errString(os.Mkdir(share+"/evil", 0o755)))
	say("dirmkdir %v", errString(os.Mkdir(c+"/volumes/evil", 0o755)))
	say("DONE")
}

func report(name, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		say("%s error %v", name, err)
		return
	}
	say("%s=%q", name, strings.TrimSpace(string(b)))
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

func load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err == unix.EEXIST {
		return nil
	}
	return err
}
