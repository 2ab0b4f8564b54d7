package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// hostileTag is the build tag of the hostile test agent
// (internal/agent/hostile.go).
const hostileTag = "hulltest_hostile"

// TestDefaultBuildHasNoHostileCode shows that the hostile test agent stays
// out of every agent that is not built with its tag: the Makefile's agent
// tags (what `make build`, `make image` and `make install` use) do not name
// it, the agent package without the tag holds none of its files, and a
// default agent binary has none of its symbols while a tagged one does
// (so the symbol check can fail).
func TestDefaultBuildHasNoHostileCode(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	tags := regexp.MustCompile(`(?m)^AGENT_TAGS\s*:?=\s*(.*)$`).FindSubmatch(mk)
	if tags == nil {
		t.Fatal("Makefile: no AGENT_TAGS")
	}
	if strings.Contains(string(tags[1]), hostileTag) {
		t.Errorf("Makefile AGENT_TAGS = %q names %s", tags[1], hostileTag)
	}
	agentTags := strings.TrimSpace(string(tags[1]))

	files := func(tags string) string {
		out, err := exec.Command("go", "list", "-tags", tags, "-f", "{{.GoFiles}}", "../../internal/agent").CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return string(out)
	}
	if f := files(agentTags); strings.Contains(f, "hostile") {
		t.Errorf("agent package with tags %q holds hostile files: %s", agentTags, f)
	}
	if f := files(agentTags + "," + hostileTag); !strings.Contains(f, "hostile.go") {
		t.Errorf("agent package with the hostile tag lacks hostile.go: %s", f)
	}

	if testing.Short() {
		t.Skip("-short: not building the agent binaries")
	}
	dir := t.TempDir()
	symbols := func(tags string) string {
		bin := filepath.Join(dir, "hull-agent")
		if out, err := exec.Command("go", "build", "-tags", tags, "-o", bin, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build -tags %s: %v\n%s", tags, err, out)
		}
		out, err := exec.Command("go", "tool", "nm", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool nm: %v\n%s", err, out)
		}
		return strings.ToLower(string(out))
	}
	if n := strings.Count(symbols(agentTags), "hostile"); n != 0 {
		t.Errorf("default agent binary has %d hostile symbols", n)
	}
	if n := strings.Count(symbols(agentTags+","+hostileTag), "hostile"); n == 0 {
		t.Error("hostile agent binary has no hostile symbols: the check above proves nothing")
	}
}
