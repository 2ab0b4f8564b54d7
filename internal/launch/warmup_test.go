package launch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
)

func TestWarmUp(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	beside := filepath.Join(filepath.Dir(self), "hull-agent")
	if _, err := os.Stat(beside); err == nil {
		t.Skipf("%s exists: the not-found case cannot be shown here", beside)
	}
	t.Run("off", func(t *testing.T) {
		c := config.Defaults()
		c.Factory.WarmUp = false
		sc := sandbox.Config{WarmUp: true, WarmUpBinary: "/x"}
		if err := WarmUp(c, &sc); err != nil || sc.WarmUp || sc.WarmUpBinary != "" {
			t.Fatalf("got %v, warm-up %v %q, want it off", err, sc.WarmUp, sc.WarmUpBinary)
		}
	})
	t.Run("on without an agent binary", func(t *testing.T) {
		var sc sandbox.Config
		err := WarmUp(config.Defaults(), &sc)
		if err == nil || !strings.Contains(err.Error(), "factory.warm_up") || !strings.Contains(err.Error(), "hull-agent not found") {
			t.Fatalf("got %v, want factory.warm_up: hull-agent not found", err)
		}
		if sc.WarmUp {
			t.Error("warm-up on without a binary")
		}
	})
	t.Run("on", func(t *testing.T) {
		if err := os.WriteFile(beside, []byte("agent"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Remove(beside) })
		var sc sandbox.Config
		if err := WarmUp(config.Defaults(), &sc); err != nil || !sc.WarmUp || sc.WarmUpBinary != beside {
			t.Fatalf("got %v, warm-up %v %q, want it on with %s", err, sc.WarmUp, sc.WarmUpBinary, beside)
		}
	})
}
