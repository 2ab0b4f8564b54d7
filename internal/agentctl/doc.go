// Package agentctl calls the hull agent's ttRPC methods by name, with
// requests and responses written as protojson: the machinery of
// `hull agent`. Methods are found in the protobuf descriptors that the
// generated code of api/agent/v1 registers, so a method added to the protos
// is callable without a change here. Requests and responses are dynamic
// messages built from those descriptors; the call itself goes through an
// agentclient.Client, with its timeouts and errdefs classes.
package agentctl
