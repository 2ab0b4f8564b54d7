package shim

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/config"
)

// Annotations may come from a pod's user: CRI-O copies every pod annotation
// into the spec, and containerd's CRI those its pod_annotations setting
// lets through. Each runtime writes its own keys (io.kubernetes.cri.* for
// containerd, io.kubernetes.cri-o.* for CRI-O) over whatever the pod
// carried, so a runtime's own keys are trustworthy and the other runtime's
// are not. trustedAnnotations keeps only the owner's keys.
const (
	criPrefix  = "io.kubernetes.cri."
	crioPrefix = "io.kubernetes.cri-o."
)

// hullPrefixes are the namespaces of hull's own annotations, governed by
// runtime.enable_annotations.
var hullPrefixes = []string{"io.hull.", "hull.io/"}

// origin is the CRI runtime a spec came through.
type origin int

const (
	// originNone is a spec made by a containerd client (ctr, nerdctl),
	// without any CRI's grouping keys: its annotations are the caller's,
	// who controls the runtime anyway.
	originNone origin = iota
	originContainerd
	originCRIO
)

func (o origin) String() string {
	switch o {
	case originContainerd:
		return "containerd's CRI"
	case originCRIO:
		return "CRI-O"
	}
	return "no CRI"
}

// specOrigin tells the runtime a spec came through by the grouping keys
// each always writes on a pod's containers (sandbox ID and container
// type). A spec with both sets has one written by a pod's user, and which
// one cannot be told: it is refused.
func specOrigin(annotations map[string]string) (origin, error) {
	has := func(keys ...string) bool {
		for _, k := range keys {
			if _, ok := annotations[k]; ok {
				return true
			}
		}
		return false
	}
	cri := has(sandboxAnnotations[0], containerTypeAnnotations[0])
	crio := has(sandboxAnnotations[1], containerTypeAnnotations[1])
	switch {
	case cri && crio:
		return 0, fmt.Errorf("the spec carries the pod annotations of both containerd's CRI (%s, %s) and CRI-O (%s, %s): one set comes from the pod's user: %w",
			sandboxAnnotations[0], containerTypeAnnotations[0], sandboxAnnotations[1], containerTypeAnnotations[1], errdefs.ErrInvalidArgument)
	case cri:
		return originContainerd, nil
	case crio:
		return originCRIO, nil
	}
	return originNone, nil
}

// trustedAnnotations returns the runtime annotations hull acts on (pod
// grouping and sizing), their values checked:
//
//   - through containerd's CRI: its io.kubernetes.cri.* keys; any
//     io.kubernetes.cri-o.* key is a pod annotation the operator let
//     through, and is ignored;
//   - through CRI-O: its io.kubernetes.cri-o.* keys; io.kubernetes.cri.*
//     keys are the pod's own and are ignored (CRI-O passes no sizing
//     annotations: the VM grows by hotplug);
//   - from a containerd client without CRI: the sizing keys, which the
//     caller (root on the host) set.
//
// Sandbox IDs must be containerd identifiers; sizes decimal integers in the
// kernel's ranges. Anything else is an invalid argument.
func trustedAnnotations(annotations map[string]string) (map[string]string, error) {
	o, err := specOrigin(annotations)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range annotations {
		var keep bool
		switch o {
		case originContainerd:
			keep = strings.HasPrefix(k, criPrefix)
		case originCRIO:
			keep = strings.HasPrefix(k, crioPrefix)
		default:
			keep = slices.Contains(sizingAnnotations, k)
		}
		if keep {
			out[k] = v
		}
	}
	for _, k := range sandboxAnnotations {
		if v, ok := out[k]; ok {
			if err := identifiers.Validate(v); err != nil {
				return nil, fmt.Errorf("annotation %s: %w", k, err)
			}
		}
	}
	if err := checkSizing(out); err != nil {
		return nil, err
	}
	return out, nil
}

// sizingAnnotations are the keys podSize reads.
var sizingAnnotations = []string{annotationSandboxCPUPeriod, annotationSandboxCPUQuota, annotationSandboxMemory}

// Ranges of the sizing values: the kernel's CFS period and quota bounds in
// microseconds, and memory in bytes up to 1 PiB (far beyond any VM; the
// VM's own caps apply after).
const (
	minCFSPeriod   = 1000
	maxCFSPeriod   = 1000000
	minCFSQuota    = 1000
	maxSizingBytes = 1 << 50
	maxCFSQuota    = 1 << 40
)

// checkSizing checks the values of the sizing annotations: plain decimal
// integers (digits only, "-1" for an unlimited quota), zero or in range.
func checkSizing(annotations map[string]string) error {
	bounds := map[string][2]int64{
		annotationSandboxCPUPeriod: {minCFSPeriod, maxCFSPeriod},
		annotationSandboxCPUQuota:  {minCFSQuota, maxCFSQuota},
		annotationSandboxMemory:    {1, maxSizingBytes},
	}
	for _, k := range slices.Sorted(maps.Keys(bounds)) {
		v, ok := annotations[k]
		if !ok || v == "" {
			continue
		}
		if k == annotationSandboxCPUQuota && v == "-1" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || len(v) > 19 || strings.TrimLeft(v, "0123456789") != "" {
			return fmt.Errorf("annotation %s=%.32q: not a decimal integer: %w", k, v, errdefs.ErrInvalidArgument)
		}
		if b := bounds[k]; n != 0 && (n < b[0] || n > b[1]) {
			return fmt.Errorf("annotation %s=%d: want 0 or %d..%d: %w", k, n, b[0], b[1], errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// compileAllowList compiles runtime.enable_annotations.
func compileAllowList(exprs []string) ([]*regexp.Regexp, error) {
	res := make([]*regexp.Regexp, 0, len(exprs))
	for _, e := range exprs {
		re, err := config.CompileAnnotation(e)
		if err != nil {
			return nil, fmt.Errorf("runtime.enable_annotations: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		res = append(res, re)
	}
	return res, nil
}

// checkHullAnnotations refuses a spec with a hull annotation (io.hull.<key>
// or hull.io/<key>) whose <key> no entry of the allow-list matches: a
// pod's user must not set what the operator did not allow.
func checkHullAnnotations(allow []*regexp.Regexp, annotations map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(annotations)) {
		for _, p := range hullPrefixes {
			key, ok := strings.CutPrefix(k, p)
			if !ok {
				continue
			}
			if !slices.ContainsFunc(allow, func(re *regexp.Regexp) bool { return re.MatchString(key) }) {
				return fmt.Errorf("annotation %.80q is not enabled (runtime.enable_annotations in the hull configuration): %w", k, errdefs.ErrInvalidArgument)
			}
		}
	}
	return nil
}
