// Command hull-runtime is an OCI runtime with runc's command line that
// runs each container in a VM of its own (see internal/ociruntime), for
// Docker, Podman, nerdctl and other managers that drive runc.
package main

import (
	"os"

	"github.com/hull-runtime/hull/internal/ociruntime"
)

func main() {
	os.Exit(ociruntime.Main(os.Args[1:]))
}
