// Command silentinit is a guest /init for tests: it says it booted on the
// console and then never answers anything, like an agent that hangs.
package main

import (
	"os"
	"time"
)

func main() {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		f.WriteString("hull-test: silent init started\n")
		f.Close()
	}
	for {
		time.Sleep(time.Hour)
	}
}
