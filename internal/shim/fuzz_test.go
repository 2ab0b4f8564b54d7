package shim

import (
	"encoding/json"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
)

// FuzzMetrics maps whatever Stats reply the guest sends to containerd's
// metrics as the shim's Stats does: it must not panic, and what containerd
// decodes must be the guest's numbers, no more.
func FuzzMetrics(f *testing.F) {
	f.Fuzz(func(t *testing.T, reply []byte) {
		var st agent.StatsResponse
		if err := proto.Unmarshal(reply, &st); err != nil {
			return
		}
		a, err := typeurl.MarshalAnyToProto(metrics(&st))
		if err != nil {
			t.Fatalf("marshaling the metrics: %v", err)
		}
		v, err := typeurl.UnmarshalAny(a)
		if err != nil {
			t.Fatalf("containerd cannot decode the metrics: %v", err)
		}
		m, ok := v.(*stats.Metrics)
		if !ok {
			t.Fatalf("decoded %T, want *stats.Metrics", v)
		}
		if got, want := len(m.GetIo().GetUsage()), len(st.GetIo()); got != want {
			t.Fatalf("%d io entries from %d in the reply", got, want)
		}
		if m.GetMemory().GetUsage() != st.GetMemory().GetUsage() || m.GetCPU().GetUsageUsec() != st.GetCpu().GetUsageUsec() {
			t.Fatal("memory or CPU usage changed on the way")
		}
	})
}

// FuzzAnnotations reads the pod annotations an untrusted pod spec sets:
// the sandbox ID, the container role and the sizing. Bad values are
// InvalidArgument errors; the size stays within [base, limit].
func FuzzAnnotations(f *testing.F) {
	f.Fuzz(func(t *testing.T, id, sbAnn, ctype, period, quota, memory string) {
		ann := map[string]string{}
		for k, v := range map[string]string{
			sandboxAnnotations[0]:         sbAnn,
			containerTypeAnnotations[0]:   ctype,
			annotationSandboxCPUPeriod:    period,
			annotationSandboxCPUQuota:     quota,
			annotationSandboxMemory:       memory,
			containerTypeAnnotations[1]:   ctype,
			"io.kubernetes.cri-o.Unknown": ctype,
		} {
			if v != "\x00" { // a lone NUL: the annotation is absent
				ann[k] = v
			}
		}
		if sb := sandboxID(id, ann); sb != id && sb != ann[sandboxAnnotations[0]] {
			t.Fatalf("sandbox ID %q is neither the container's %q nor the annotation's", sb, id)
		}
		if _, err := containerRole(ann); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("role error %v is not InvalidArgument", err)
		}
		base, limit := vmSize{vcpus: 1, memoryMiB: 512}, vmSize{vcpus: 8, memoryMiB: 8192}
		size, _, err := podSize(base, limit, ann)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("sizing error %v is not InvalidArgument", err)
			}
			return
		}
		if size.vcpus < base.vcpus || size.vcpus > limit.vcpus || size.memoryMiB < base.memoryMiB || size.memoryMiB > limit.memoryMiB {
			t.Fatalf("size %+v outside [%+v, %+v] for %v", size, base, limit, ann)
		}
	})
}

// FuzzPodSpec runs podSpec on untrusted container specs (config.json as
// the pod's author shaped it). Whatever it accepts may join only the
// namespaces of the pod's sandbox container (reported as PID 42, in the guest
// PID 7), never a host path,
// and rewrites no mount but /dev/shm binds.
func FuzzPodSpec(f *testing.F) {
	f.Fuzz(func(t *testing.T, config []byte, ctype string) {
		var spec specs.Spec
		if err := json.Unmarshal(config, &spec); err != nil {
			return
		}
		r, err := containerRole(map[string]string{containerTypeAnnotations[0]: ctype})
		if err != nil {
			return
		}
		before := make([]specs.Mount, len(spec.Mounts))
		copy(before, spec.Mounts)
		// 42 is the VMM's PID as reported for the sandbox container;
		// 7 that container's init in the guest.
		guestNsPid := func(pid uint32) (uint32, bool) { return 7, pid == 42 }
		plan, err := podSpec(&spec, r, guestNsPid, "/run/pod/shm")
		if err != nil {
			return
		}
		if spec.Linux != nil {
			for _, ns := range spec.Linux.Namespaces {
				if ns.Path == "" {
					continue
				}
				if ns.Type == specs.NetworkNamespace {
					t.Fatalf("a network namespace path stays in the guest's spec: %q", ns.Path)
				}
				pid, ok := nsPathPID(ns.Path, ns.Type)
				if r != rolePodMember || !ok || pid != 7 {
					t.Fatalf("%s (%s) joins %s namespace %q", r, ctype, ns.Type, ns.Path)
				}
			}
		}
		for _, i := range plan.guestMounts {
			if path.Clean(before[i].Destination) != "/dev/shm" {
				t.Fatalf("mount %d (%q) rewritten", i, before[i].Destination)
			}
		}
		for i, m := range spec.Mounts {
			if m.Source != before[i].Source && !strings.HasPrefix(path.Clean(before[i].Destination), "/dev/shm") {
				t.Fatalf("mount %d source changed from %q to %q", i, before[i].Source, m.Source)
			}
		}
	})
}

// FuzzStartOptions decodes whatever `start` reads on its standard input:
// it must not panic, and options it returns must survive a round trip.
func FuzzStartOptions(f *testing.F) {
	for _, name := range []string{"legacy-options.bin", "bootstrap-options.bin", "bootstrap-none.bin"} {
		if b, err := os.ReadFile(filepath.Join("testdata", "startopts", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		opts, err := startOptions(in, "pod1", "k8s.io")
		if err != nil || opts == nil {
			return
		}
		if _, err := proto.Marshal(opts); err != nil {
			t.Fatalf("options that do not marshal: %v", err)
		}
		_, _ = configPath(opts)
	})
}
