package podmetrics

import (
	"strings"
	"unicode/utf8"
)

// Bounds of label values taken from untrusted input.
const (
	// maxPodLabel bounds a pod label value (Kubernetes names are at most
	// 253 bytes, UIDs 36).
	maxPodLabel = 253
	// maxDeviceLabel bounds a guest interface or disk name.
	maxDeviceLabel = 32
	// maxGuestDevices bounds the interfaces and the disks of one guest
	// that become series.
	maxGuestDevices = 32
	// maxContainers bounds the containers of one sandbox that become
	// series.
	maxContainers = 256
)

// PodLabels label every series of a sandbox.
type PodLabels struct {
	// Sandbox is the sandbox's ID.
	Sandbox string
	// PodName, PodNamespace and PodUID are a CRI pod's, from its
	// annotations; empty otherwise.
	PodName, PodNamespace, PodUID string
}

// The annotations containerd's CRI writes on a pod's containers to name
// the pod.
const (
	annotationPodName      = "io.kubernetes.cri.sandbox-name"
	annotationPodNamespace = "io.kubernetes.cri.sandbox-namespace"
	annotationPodUID       = "io.kubernetes.cri.sandbox-uid"
)

// LabelsFor returns the labels of sandbox id from its sandbox container's
// annotations, those the shim trusts (containerd's CRI keys). Values are
// bounded and sanitized all the same: a pod's user chose them.
func LabelsFor(id string, annotations map[string]string) PodLabels {
	return PodLabels{
		Sandbox:      podLabel(id),
		PodName:      podLabel(annotations[annotationPodName]),
		PodNamespace: podLabel(annotations[annotationPodNamespace]),
		PodUID:       podLabel(annotations[annotationPodUID]),
	}
}

func (l PodLabels) constLabels() map[string]string {
	return map[string]string{
		"sandbox": l.Sandbox, "pod_name": l.PodName, "pod_namespace": l.PodNamespace, "pod_uid": l.PodUID,
	}
}

// podLabel bounds and cleans a pod label value: valid UTF-8 without
// control characters, at most maxPodLabel bytes.
func podLabel(s string) string {
	return clean(s, maxPodLabel, func(r rune) bool { return r >= 0x20 && r != 0x7f && (r < 0x80 || r > 0x9f) && r != utf8.RuneError })
}

// deviceLabel bounds and cleans a guest device name: [A-Za-z0-9_.:@-], at
// most maxDeviceLabel bytes; anything else becomes '_'.
func deviceLabel(s string) string {
	return clean(s, maxDeviceLabel, func(r rune) bool {
		return r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.:@-", r))
	})
}

func clean(s string, limit int, ok func(rune) bool) string {
	var b strings.Builder
	for _, r := range s {
		if !ok(r) {
			r = '_'
		}
		if b.Len()+utf8.RuneLen(r) > limit {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
