package shim

// Annotations that group the containers of a pod in one sandbox: CRI's and
// CRI-O's.
var sandboxAnnotations = []string{
	"io.kubernetes.cri.sandbox-id",
	"io.kubernetes.cri-o.SandboxID",
}

// sandboxID returns the sandbox a container belongs to: its pod's, or its
// own for a container that is a pod of one.
func sandboxID(id string, annotations map[string]string) string {
	for _, a := range sandboxAnnotations {
		if v := annotations[a]; v != "" {
			return v
		}
	}
	return id
}
