package tracing

import (
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// FuzzGuestSpan feeds the host's span check whatever a guest could send:
// it must never panic, and what it accepts must keep every bound.
func FuzzGuestSpan(f *testing.F) {
	good, err := proto.Marshal(goodSpan("hull.agent.v1.System/Health"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s api.Span
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		ps, err := convert(&s)
		if err != nil {
			return
		}
		if len(ps.GetTraceId()) != 16 || len(ps.GetSpanId()) != 8 || len(ps.GetName()) > maxNameLen ||
			!utf8.ValidString(ps.GetName()) || len(ps.GetAttributes()) > maxAttributes ||
			ps.GetEndTimeUnixNano() < ps.GetStartTimeUnixNano() {
			t.Fatalf("accepted a span beyond the bounds: %v", ps)
		}
	})
}
