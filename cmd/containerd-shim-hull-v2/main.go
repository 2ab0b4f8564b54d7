// Command containerd-shim-hull-v2 is hull's containerd shim: containerd
// runs it for the runtime io.containerd.hull.v2, and it runs each pod in a
// VM of its own. See internal/shim. Started as `containerd-shim-hull-v2
// warm` by the VM factory, it boots a VM ahead of its pod and becomes that
// pod's shim server once claimed (docs/factory.md).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/runtime/v2/shim"

	hullshim "github.com/hull-runtime/hull/internal/shim"
)

func main() {
	if hullshim.InfoRequested(os.Args[1:]) {
		if err := hullshim.WriteInfo(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "containerd-shim-hull-v2 -info: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if hullshim.WarmRequested(os.Args[1:]) {
		sb, err := hullshim.RunWarm(os.Args[2:])
		if err != nil {
			fmt.Fprintf(os.Stderr, "containerd-shim-hull-v2 warm: %v\n", err)
			os.Exit(1)
		}
		hullshim.WithWarmSandbox(sb)
	}
	shim.RunManager(context.Background(), hullshim.Manager{}, hullshim.WithoutReaper)
}
