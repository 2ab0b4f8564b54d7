package e2e

import (
	"fmt"
	"time"
)

// StartsOf returns the start field of every "sandbox started" line the
// hull shim logged for the sandbox vmID (its VM ID: the pod's ID @ the
// containerd namespace) in log: how its sandbox came up, "cold",
// "restored" (from a VM template), "adopted" (a VM factory's warm VM) or
// "warm_refused".
func StartsOf(log, vmID string) []string {
	var starts []string
	for _, s := range SandboxStarts(log) {
		if s.Sandbox == vmID {
			starts = append(starts, s.Start)
		}
	}
	return starts
}

// WaitSandboxStart waits up to wait for the shim's "sandbox started" line
// of vmID in the log that logOf returns (containerd copies its shims' logs
// asynchronously) and returns its start field, or an error when no such
// line or more than one is there.
func WaitSandboxStart(logOf func() string, vmID string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		switch starts := StartsOf(logOf(), vmID); {
		case len(starts) == 1:
			return starts[0], nil
		case len(starts) > 1:
			return "", fmt.Errorf("sandbox %s: %d \"sandbox started\" lines in the log: %v", vmID, len(starts), starts)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("sandbox %s: no \"sandbox started\" line in the log after %s", vmID, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
