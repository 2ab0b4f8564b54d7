// Package channel is the wire contract between the host runtime and the
// hull agent below ttRPC: how a connection says what it carries, how the
// virtio-serial port is multiplexed, and the kernel parameters that tell the
// agent where to listen.
//
// Every connection from host to agent, a vsock connection or a yamux stream
// over the virtio-serial port, starts with a Header written by the host. The
// agent answers with one Ack byte; after an AckOK the connection belongs to
// the kind named in the header (ttRPC, the agent's log stream, or a stdio
// stream). The host always opens, the agent only accepts.
//
// The package is shared by the agent (internal/agent) and the host client
// (internal/agentclient) so that both sides encode the same bytes.
package channel
