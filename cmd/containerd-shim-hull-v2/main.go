// Command containerd-shim-hull-v2 is hull's containerd shim: containerd
// runs it for the runtime io.containerd.hull.v2, and it runs each pod in a
// VM of its own. See internal/shim.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"

	hullshim "github.com/hull-runtime/hull/internal/shim"
)

func main() {
	shim.RunManager(context.Background(), hullshim.Manager{}, hullshim.WithoutReaper)
}
