package launch

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// AgentBinary finds the hull-agent binary the host runs from: beside the
// running executable, or in the install layout (<prefix>/bin/...,
// <prefix>/libexec/hull/hull-agent).
func AgentBinary() (string, error) {
	return besideSelf("hull-agent")
}

// PauseBinary finds hull-pause, the waiting stage of a pod sandbox
// process, as AgentBinary finds hull-agent.
func PauseBinary() (string, error) {
	return besideSelf("hull-pause")
}

// besideSelf finds the binary name beside this process's own, or in
// ../libexec/hull.
func besideSelf(name string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(self)
	for _, p := range []string{
		filepath.Join(dir, name),
		filepath.Join(dir, "..", "libexec", "hull", name),
	} {
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("%s not found beside %s or in ../libexec/hull", name, self)
}

// WarmUp sets the warm-up of a warm sandbox's configuration sc
// (sandbox.Config.WarmUp) as c's factory.warm_up says, running the
// hull-agent binary AgentBinary finds. For a VM factory, before
// sandbox.StartWarm.
func WarmUp(c *config.Config, sc *sandbox.Config) error {
	sc.WarmUp, sc.WarmUpBinary = false, ""
	if !c.Factory.WarmUp {
		return nil
	}
	bin, err := AgentBinary()
	if err != nil {
		return fmt.Errorf("factory.warm_up: %w", err)
	}
	sc.WarmUp, sc.WarmUpBinary = true, bin
	return nil
}
