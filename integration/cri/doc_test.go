package cri

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/guestimage"
)

// docSamplePod runs the sample pod of docs/kubernetes.md through the
// RuntimeClass there (its handler is the runtime the daemon's
// configuration, also from the doc, defines): the container prints the
// guest kernel's release, which is not the host's. The suite's busybox
// stands in for the registry's image.
func docSamplePod(t *testing.T, s *session) {
	rc, manifest, err := e2e.KubernetesManifests()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Handler != s.h.name || manifest.Spec.RuntimeClassName != rc.Metadata.Name {
		t.Fatalf("the doc's pod asks for RuntimeClass %q (handler %q), the case runs handler %q",
			manifest.Spec.RuntimeClassName, rc.Handler, s.h.name)
	}
	m, err := guestimage.ReadManifest(env.assetsDir)
	if err != nil {
		t.Fatal(err)
	}
	host, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(host)) == m.Kernel.Release {
		t.Fatalf("the host runs the guest's kernel %s: the case would prove nothing", m.Kernel.Release)
	}

	p := s.runPod(manifest.Metadata.Name)
	c := manifest.Spec.Containers[0]
	config := containerConfig(c.Name, append(append([]string(nil), c.Command...), c.Args...)...)
	p.run(config)
	var out string
	waitFor(t, time.Minute, "the sample pod's output in "+p.logPath(config), func() bool {
		out, _ = criLog(p.logPath(config), "stdout")
		return strings.Contains(out, "\n")
	})
	if got := strings.TrimSpace(out); got != m.Kernel.Release {
		t.Errorf("the sample pod printed %q, want the guest kernel's release %q", got, m.Kernel.Release)
	}
	p.stop()
	p.remove()
}
