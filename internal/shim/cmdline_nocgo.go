//go:build !cgo

package shim

// keepBreak has nothing to do without cgo: no C allocator runs, and the Go
// runtime never moves the program break.
func keepBreak() error { return nil }
