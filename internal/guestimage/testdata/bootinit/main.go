// Command bootinit is a test /init for guest images: it loads every module
// in the image's module list, reports on the console, and powers off. The
// guestimage tests build it statically and boot it in QEMU.
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/modlist"
)

func main() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("bootinit: mount %s: %v\n", m.dst, err)
		}
	}
	fmt.Printf("bootinit: up at %s s\n", uptime())
	failed := 0
	list, err := modlist.Read(modlist.Path)
	if err != nil {
		fmt.Printf("bootinit: %v\n", err)
		failed++
	} else {
		var uname unix.Utsname
		_ = unix.Uname(&uname)
		release := unix.ByteSliceToString(uname.Release[:])
		if list.KernelRelease != release {
			fmt.Printf("bootinit: module list is for %s, kernel is %s\n", list.KernelRelease, release)
			failed++
		}
		for _, m := range list.Modules {
			if err := load(m.Path); err != nil {
				fmt.Printf("bootinit: load %s: %v\n", m.Name, err)
				failed++
				continue
			}
			if _, err := os.Stat("/sys/module/" + m.Name); err != nil {
				fmt.Printf("bootinit: %s loaded but not in /sys/module\n", m.Name)
				failed++
			}
		}
		fmt.Printf("bootinit: loaded %d modules at %s s\n", len(list.Modules)-failed, uptime())
	}
	if failed == 0 {
		fmt.Println("bootinit: BOOT-OK")
	} else {
		fmt.Printf("bootinit: BOOT-FAILED (%d errors)\n", failed)
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
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

func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
