// Command floorinit is the trivial guest /init of the boot-time floor: it
// writes a marker with the guest clock (CLOCK_BOOTTIME, seconds) to the
// serial console as soon as it runs and powers off. It uses only os and
// syscall, to stay as small as a Go init can be.
package main

import (
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

const clockBoottime = 7

func main() {
	var ts syscall.Timespec
	_, _, _ = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockBoottime, uintptr(unsafe.Pointer(&ts)), 0)
	up := strconv.FormatFloat(float64(ts.Sec)+float64(ts.Nsec)/1e9, 'f', 6, 64)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("hull-floor: init running at " + up + "\n")
		_ = f.Close()
	}
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
