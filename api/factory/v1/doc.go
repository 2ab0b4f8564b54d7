// Package factory holds the VM factory's protocol: the protobuf definitions
// in factory.proto and the Go code that `make protos` generates from them.
// The generated files are never edited by hand; `make check-protos` fails
// when they differ from what the pinned generators produce.
package factory
