package factory

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	api "github.com/hull-runtime/hull/api/factory/v1"
)

// Client talks to a factory.
type Client struct {
	conn net.Conn
	c    *ttrpc.Client
	api  api.FactoryService
}

// Dial connects to the factory at socket.
func Dial(ctx context.Context, socket string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("dialing the factory: %w", err)
	}
	c := ttrpc.NewClient(conn)
	return &Client{conn: conn, c: c, api: api.NewFactoryClient(c)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// Claim claims a warm shim for the container id: its control socket, on
// which the caller hands the pod's shim socket over (Handoff). An empty
// pool is an ErrNotFound-class error.
func (c *Client) Claim(ctx context.Context, id string) (*api.ClaimResponse, error) {
	r, err := c.api.Claim(ctx, &api.ClaimRequest{Id: id})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return r, nil
}

// Status describes the factory's pool.
func (c *Client) Status(ctx context.Context) (*api.StatusResponse, error) {
	r, err := c.api.Status(ctx, &api.StatusRequest{})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return r, nil
}
