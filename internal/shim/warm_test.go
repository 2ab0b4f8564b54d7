package shim

import (
	"testing"

	"github.com/hull-runtime/hull/internal/sandbox"
)

func TestWarmSandboxHandedOnce(t *testing.T) {
	if sb := takeWarmSandbox(); sb != nil {
		t.Fatalf("a warm sandbox before any was given: %v", sb)
	}
	sb := &sandbox.Sandbox{}
	WithWarmSandbox(sb)
	if got := takeWarmSandbox(); got != sb {
		t.Fatalf("took %p, want %p", got, sb)
	}
	if got := takeWarmSandbox(); got != nil {
		t.Fatalf("the warm sandbox was handed out twice")
	}
}
