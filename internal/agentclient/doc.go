// Package agentclient is the host's client of the hull agent. Dial reaches
// the agent of a VM over vsock or over a virtio-serial port multiplexed with
// yamux, waits until it answers, and returns a Client whose typed service
// clients share one ttRPC connection. Every call gets a timeout unless its
// context has an earlier one, and the agent's log is re-logged on the host
// with source=agent (logs.go): the agent is untrusted, so its fields are
// renamed guest.<key> with a safe charset, control characters are escaped,
// each line is bounded and the stream is rate-limited, with a count of the
// dropped lines (Client.DroppedLogLines).
package agentclient
