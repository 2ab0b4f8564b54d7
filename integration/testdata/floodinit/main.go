// Command floodinit is a guest /init for tests: it writes numbered lines to
// the serial console as fast as the console takes them, without end, like
// a guest that tries to fill the host's disk with its console output. It
// never answers the agent protocol.
package main

import (
	"os"
	"strconv"
	"time"
)

func main() {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		for {
			time.Sleep(time.Hour)
		}
	}
	// Lines of about 100 bytes: a number and padding.
	pad := " flooding the console...................................................................."
	buf := make([]byte, 0, 128)
	for i := 0; ; i++ {
		buf = append(buf[:0], "hull-flood: line "...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, pad...)
		buf = append(buf, '\n')
		_, _ = f.Write(buf)
	}
}
