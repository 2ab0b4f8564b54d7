package e2e

import (
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// TestKubernetesDoc checks that the marked blocks of docs/kubernetes.md are
// well-formed and agree with each other: the containerd configurations
// name the hull runtime, the RuntimeClass's handler is that runtime, the
// node label command sets the label its node selector wants, and the
// sample pod asks for the RuntimeClass. integration/cri runs the same
// blocks.
func TestKubernetesDoc(t *testing.T) {
	blocks, err := DocBlocks(KubernetesDoc)
	if err != nil {
		t.Fatal(err)
	}
	rc, pod, err := KubernetesManifests()
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		version string
		want    int64
		cri     string
	}{
		{"1.6", 2, "io.containerd.grpc.v1.cri"},
		{"2", 3, "io.containerd.cri.v1.runtime"},
	} {
		t.Run("containerd-"+c.version, func(t *testing.T) {
			var cfg struct {
				Version int64 `toml:"version"`
				Plugins map[string]struct {
					Containerd struct {
						Runtimes map[string]map[string]any `toml:"runtimes"`
					} `toml:"containerd"`
				} `toml:"plugins"`
			}
			if err := toml.Unmarshal([]byte(blocks["containerd-"+c.version]), &cfg); err != nil {
				t.Fatalf("block containerd-%s: %v", c.version, err)
			}
			if cfg.Version != c.want {
				t.Errorf("version %d, want %d", cfg.Version, c.want)
			}
			rt, ok := cfg.Plugins[c.cri].Containerd.Runtimes[rc.Handler]
			if !ok {
				t.Fatalf("no runtime %q (the RuntimeClass's handler) in plugin %s", rc.Handler, c.cri)
			}
			if rt["runtime_type"] != "io.containerd.hull.v2" {
				t.Errorf("runtime_type %v, want io.containerd.hull.v2", rt["runtime_type"])
			}
			// A named configuration file that does not exist fails every
			// pod; make install writes none under /etc.
			if opts, ok := rt["options"].(map[string]any); ok && opts["ConfigPath"] != nil {
				t.Errorf("ConfigPath %v in the tested configuration: the suites cannot provide it", opts["ConfigPath"])
			}
		})
	}

	t.Run("runtimeclass", func(t *testing.T) {
		if rc.APIVersion != "node.k8s.io/v1" || rc.Kind != "RuntimeClass" {
			t.Errorf("%s %s, want node.k8s.io/v1 RuntimeClass", rc.APIVersion, rc.Kind)
		}
		for _, r := range []string{"memory", "cpu"} {
			if rc.Overhead.PodFixed[r] == "" {
				t.Errorf("no overhead.podFixed.%s", r)
			}
		}
		if len(rc.Scheduling.NodeSelector) != 1 {
			t.Fatalf("node selector %v, want one label", rc.Scheduling.NodeSelector)
		}
		for k, v := range rc.Scheduling.NodeSelector {
			if want := "kubectl label node <node> " + k + "=" + v; strings.TrimSpace(blocks["node-label"]) != want {
				t.Errorf("block node-label is %q, want %q", blocks["node-label"], want)
			}
		}
	})

	t.Run("pod", func(t *testing.T) {
		if pod.APIVersion != "v1" || pod.Kind != "Pod" {
			t.Errorf("%s %s, want v1 Pod", pod.APIVersion, pod.Kind)
		}
		if pod.Spec.RuntimeClassName != rc.Metadata.Name {
			t.Errorf("runtimeClassName %q, want the RuntimeClass %q", pod.Spec.RuntimeClassName, rc.Metadata.Name)
		}
		if len(pod.Spec.Containers) != 1 || len(pod.Spec.Containers[0].Command) == 0 {
			t.Errorf("containers %+v, want one with a command", pod.Spec.Containers)
		}
	})
}

func TestDocBlocks(t *testing.T) {
	for _, marker := range []string{"containerd-1.6", "containerd-2", "runtimeclass", "pod", "node-label"} {
		if _, err := DocBlock(KubernetesDoc, marker); err != nil {
			t.Error(err)
		}
	}
	if _, err := DocBlock(KubernetesDoc, "no-such-block"); err == nil {
		t.Error("no error for a missing block")
	}
}
