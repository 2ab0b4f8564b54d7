// Command floorinit is the trivial guest /init of the boot-time floor: it
// writes a marker to the serial console as soon as it runs and powers off.
package main

import (
	"os"
	"syscall"
)

func main() {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		f.WriteString("hull-floor: init running\n")
		f.Close()
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
