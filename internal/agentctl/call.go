package agentctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/hull-runtime/hull/internal/agentclient"
)

// NewRequest returns a request message of m filled from js, protojson with
// the field names of the proto or their JSON names. Empty js is an empty
// request. Unknown fields and malformed JSON are InvalidArgument errors
// that name the offending field or position.
func (m Method) NewRequest(js string) (proto.Message, error) {
	req := dynamicpb.NewMessage(m.desc.Input())
	if strings.TrimSpace(js) == "" {
		return req, nil
	}
	if err := protojson.Unmarshal([]byte(js), req); err != nil {
		return nil, fmt.Errorf("request of %s (%s): %w: %w", m.Name(), m.Request(), err, errdefs.ErrInvalidArgument)
	}
	return req, nil
}

// Format renders a message as multi-line protojson with the proto's field
// names, leaving out fields that hold their zero value. The layout is
// normalized: protojson varies its spacing on purpose from build to build.
func Format(msg proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true, EmitUnpopulated: false}.Marshal(msg)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Caller calls methods of one agent connection.
type Caller struct {
	client  *agentclient.Client
	timeout time.Duration
}

// NewCaller returns a Caller on c whose calls each end after timeout; zero
// leaves them to c's call timeout, which the methods that block by design
// (Containers.WaitProcess, Containers.WaitOOM) do not have.
func NewCaller(c *agentclient.Client, timeout time.Duration) *Caller {
	return &Caller{client: c, timeout: timeout}
}

// Call calls m with req and returns the agent's answer. An error of the
// agent is a *CallError that keeps its errdefs class.
func (c *Caller) Call(ctx context.Context, m Method, req proto.Message) (proto.Message, error) {
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if c.timeout > 0 {
		cctx, cancel = context.WithTimeout(ctx, c.timeout)
	}
	defer cancel()
	resp := dynamicpb.NewMessage(m.desc.Output())
	if err := c.client.Invoke(cctx, m.Service(), string(m.desc.Name()), req, resp); err != nil {
		ce := &CallError{Method: m.Name(), Err: err}
		// The agent's DeadlineExceeded, on its copy of our deadline, can
		// arrive before the client's own timer has fired.
		if dl, ok := cctx.Deadline(); ok && c.timeout > 0 && ctx.Err() == nil &&
			errdefs.IsDeadlineExceeded(err) && !time.Now().Before(dl) {
			ce.Timeout = c.timeout
		}
		return nil, ce
	}
	return resp, nil
}

// CallError is a failed call. Its message puts the errdefs class first:
// "Containers.RemoveContainer: not found: container "x"".
type CallError struct {
	// Method is the short name of the method called.
	Method string
	// Err is the error of the call, with its class.
	Err error
	// Timeout is the Caller's timeout when it ended the call, else zero.
	Timeout time.Duration
}

func (e *CallError) Error() string {
	class := errdefs.Resolve(e.Err).Error()
	detail := strings.TrimSuffix(strings.TrimSuffix(e.Err.Error(), class), ": ")
	msg := e.Method + ": " + class
	if detail != "" {
		msg += ": " + detail
	}
	if e.Timeout > 0 {
		msg += fmt.Sprintf(" (no answer within %s)", e.Timeout)
	}
	return msg
}

func (e *CallError) Unwrap() error { return e.Err }
