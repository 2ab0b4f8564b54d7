package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/hull-runtime/hull/internal/channel"
)

func testAgent(t *testing.T) (*Agent, context.Context) {
	t.Helper()
	ring := newLogRing(100, 1<<20)
	a, err := newAgent(false, channel.DefaultTransport, ring)
	if err != nil {
		t.Fatal(err)
	}
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(newLogger(io.Discard, ring, logrus.DebugLevel)))
	return a, ctx
}

func TestHandleChannel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		send     string
		stopping bool
		ack      channel.Ack
		rpc      bool // the conn reaches the ttRPC listener
		logs     bool // the conn gets the log stream
		stdio    bool // the conn is parked as stdio stream 1
	}{
		{name: "rpc", send: "HULL\x01\x01", ack: channel.AckOK, rpc: true},
		{name: "log", send: "HULL\x01\x02", ack: channel.AckOK, logs: true},
		{name: "stdio", send: "HULL\x01\x03\x00\x00\x00\x00\x00\x00\x00\x01", ack: channel.AckOK, stdio: true},
		{name: "stdio id 0", send: "HULL\x01\x03\x00\x00\x00\x00\x00\x00\x00\x00", ack: channel.AckBadHeader},
		{name: "bad magic", send: "GET / ", ack: channel.AckBadHeader},
		{name: "bad version", send: "HULL\x09\x01", ack: channel.AckBadVersion},
		{name: "shutting down", send: "HULL\x01\x01", stopping: true, ack: channel.AckUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, ctx := testAgent(t)
			a.stopping.Store(tc.stopping)
			log.G(ctx).Info("before the channel")
			host, agentEnd := net.Pipe()
			defer func() { _ = host.Close() }()
			go a.handleChannel(ctx, agentEnd)
			_ = host.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := host.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			var ack [1]byte
			if _, err := io.ReadFull(host, ack[:]); err != nil {
				t.Fatal(err)
			}
			if channel.Ack(ack[0]) != tc.ack {
				t.Fatalf("ack = %d, want %d", ack[0], tc.ack)
			}
			if tc.rpc {
				c, err := a.rpcListener.Accept()
				if err != nil || c != agentEnd {
					t.Fatalf("listener gave %v, %v", c, err)
				}
			}
			if tc.logs {
				line, err := bufio.NewReader(host).ReadString('\n')
				if err != nil || !strings.Contains(line, `"msg":"before the channel"`) {
					t.Fatalf("first log line %q, %v", line, err)
				}
			}
			if tc.stdio {
				c, err := a.streams.claim(ctx, 1, 5*time.Second)
				if err != nil || c != agentEnd {
					t.Fatalf("claim gave %v, %v", c, err)
				}
				return
			}
			if !tc.rpc && !tc.logs {
				if _, err := host.Read(ack[:]); !errors.Is(err, io.EOF) {
					t.Fatalf("refused channel still open: %v", err)
				}
			}
		})
	}
}

func TestConnListenerClose(t *testing.T) {
	l := newConnListener()
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	_ = l.Close()
	_ = l.Close()
	if err := <-done; err == nil {
		t.Fatal("Accept after Close succeeded")
	}
	a, b := net.Pipe()
	defer func() { _ = a.Close() }()
	defer func() { _ = b.Close() }()
	if err := l.deliver(a); err == nil {
		t.Fatal("deliver after Close succeeded")
	}
}
