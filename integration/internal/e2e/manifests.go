package e2e

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// RuntimeClass is the part of a node.k8s.io/v1 RuntimeClass that the
// how-to sets.
type RuntimeClass struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Handler  string `yaml:"handler"`
	Overhead struct {
		PodFixed map[string]string `yaml:"podFixed"`
	} `yaml:"overhead"`
	Scheduling struct {
		NodeSelector map[string]string `yaml:"nodeSelector"`
	} `yaml:"scheduling"`
}

// Pod is the part of a v1 Pod that the how-to's sample sets.
type Pod struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		RuntimeClassName string      `yaml:"runtimeClassName"`
		Containers       []Container `yaml:"containers"`
	} `yaml:"spec"`
}

// Container is one container of a Pod.
type Container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
}

// KubernetesManifests returns the RuntimeClass and the sample pod of
// docs/kubernetes.md. A field the types above do not know is an error, so
// that the how-to cannot set what the suites do not look at.
func KubernetesManifests() (*RuntimeClass, *Pod, error) {
	blocks, err := DocBlocks(KubernetesDoc)
	if err != nil {
		return nil, nil, err
	}
	rc, pod := &RuntimeClass{}, &Pod{}
	for _, m := range []struct {
		marker string
		into   any
	}{{"runtimeclass", rc}, {"pod", pod}} {
		b, ok := blocks[m.marker]
		if !ok {
			return nil, nil, fmt.Errorf("%s has no block marked %q", KubernetesDoc, m.marker)
		}
		dec := yaml.NewDecoder(bytes.NewReader([]byte(b)))
		dec.KnownFields(true)
		if err := dec.Decode(m.into); err != nil {
			return nil, nil, fmt.Errorf("%s, block %s: %w", KubernetesDoc, m.marker, err)
		}
	}
	return rc, pod, nil
}
