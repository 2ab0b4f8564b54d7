// Package hypervisor is the contract between hull's sandbox core and the
// drivers that run VMs. The core contract, VM, is deliberately small: start,
// stop, wait, describe, and where to reach the agent. Everything a driver may
// or may not do (pause, hotplug, snapshot) is a separate capability interface
// that callers discover with a type assertion through the As* helpers, which
// turn a missing capability into an error of class errdefs.ErrNotImplemented.
//
// Devices are typed structs per kind; no driver-specific value crosses this
// package.
package hypervisor
