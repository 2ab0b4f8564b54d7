package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestShippedFileMatchesDefaults(t *testing.T) {
	c, err := Load(filepath.Join("..", "..", "config", "configuration.toml"))
	if err != nil {
		t.Fatal(err)
	}
	c.Source = ""
	if !reflect.DeepEqual(c, Defaults()) {
		t.Fatalf("config/configuration.toml differs from Defaults():\nfile:     %+v\ndefaults: %+v", c, Defaults())
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		wantErr []string
		check   func(*testing.T, *Config)
	}{
		{
			name: "empty document gives defaults",
			doc:  "",
			check: func(t *testing.T, c *Config) {
				if !reflect.DeepEqual(c, Defaults()) {
					t.Fatalf("got %+v", c)
				}
			},
		},
		{
			name: "overrides",
			doc:  "[hypervisor]\nvcpus = 2\n[hypervisor.qemu]\nmachine = \"microvm\"\n[agent]\ndial_timeout = \"2s\"\ntransport = \"serial\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Hypervisor.VCPUs != 2 || c.Hypervisor.QEMU.Machine != "microvm" || c.Agent.DialTimeout.Duration != 2*time.Second || c.Agent.Transport != "serial" {
					t.Fatalf("overrides not applied: %+v", c)
				}
				if c.Hypervisor.MemoryMiB != 512 {
					t.Fatalf("untouched default changed: %d", c.Hypervisor.MemoryMiB)
				}
			},
		},
		{name: "unknown key", doc: "[agent]\ntransprot = \"vsock\"\n", wantErr: []string{"unknown keys agent.transprot"}},
		{name: "bad enum", doc: "[agent]\ntransport = \"tcp\"\n", wantErr: []string{`agent.transport: "tcp" is not one of auto, vsock, serial`}},
		{name: "bad duration", doc: "[agent]\ndial_timeout = \"soon\"\n", wantErr: []string{"line 2"}},
		{name: "wrong type", doc: "[hypervisor]\nvcpus = \"two\"\n", wantErr: []string{"line 2"}},
		{name: "malformed toml", doc: "[hypervisor\n", wantErr: []string{"line 1"}},
		{name: "tcg cache too small", doc: "[hypervisor.qemu]\ntcg_cache_mib = 4\n", wantErr: []string{"hypervisor.qemu.tcg_cache_mib: 4: want 0 (the default) or 8..1024"}},
		{name: "tcg cache too big", doc: "[hypervisor.qemu]\ntcg_cache_mib = 2048\n", wantErr: []string{"hypervisor.qemu.tcg_cache_mib: 2048"}},
		{name: "factory cache too big", doc: "[factory]\nvm_cache = 65\n", wantErr: []string{"factory.vm_cache: 65 is above 64"}},
		{name: "factory socket relative", doc: "[factory]\nsocket = \"f.sock\"\n", wantErr: []string{"factory.socket"}},
		{name: "factory socket in state dir", doc: "[factory]\nsocket = \"/run/hull/f/f.sock\"\n", wantErr: []string{"must not be below runtime.state_dir"}},
		{name: "factory claim timeout", doc: "[factory]\nclaim_timeout = \"0s\"\n", wantErr: []string{"factory.claim_timeout"}},
		{name: "tracing protocol", doc: "[tracing]\nprotocol = \"zipkin\"\n", wantErr: []string{`tracing.protocol: "zipkin" is not one of grpc, http`}},
		{name: "tracing endpoint without scheme", doc: "[tracing]\nendpoint = \"collector:4317\"\n", wantErr: []string{"tracing.endpoint"}},
		{name: "tracing sampling ratio", doc: "[tracing]\nsampling_ratio = 1.5\n", wantErr: []string{"tracing.sampling_ratio: 1.5 is outside 0..1"}},
		{name: "factory template memory", doc: "[factory]\ntemplate_memory = \"ksm\"\n", wantErr: []string{`factory.template_memory: "ksm" is not one of private, shared`}},
		{name: "shared template with virtio-fs", doc: "[hypervisor]\nfree_page_reporting = false\n[factory]\ntemplate = true\ntemplate_memory = \"shared\"\n", wantErr: []string{`factory.template_memory: "shared" maps guest RAM copy-on-write, which virtio-fs cannot use`}},
		{name: "shared template with free page reporting", doc: "[runtime]\nshared_fs = \"none\"\n[factory]\ntemplate = true\ntemplate_memory = \"shared\"\n", wantErr: []string{`needs hypervisor.free_page_reporting = false`}},
		{name: "shared fs", doc: "[runtime]\nshared_fs = \"9p\"\n", wantErr: []string{`runtime.shared_fs: "9p" is not one of virtio-fs, none`}},
		{name: "copy max bytes", doc: "[runtime]\ncopy_max_bytes = 4194304\n", wantErr: []string{"runtime.copy_max_bytes: 4194304 is outside 1..3145728"}},
		{name: "copy max file bytes", doc: "[runtime]\ncopy_max_bytes = 1000\n", wantErr: []string{"runtime.copy_max_file_bytes: 1048576 is outside 1..copy_max_bytes (1000)"}},
		{name: "kubelet root relative", doc: "[runtime]\nkubelet_root_dir = \"var/lib/kubelet\"\n", wantErr: []string{`runtime.kubelet_root_dir: "var/lib/kubelet" must be a clean absolute path`}},
		{name: "kubelet root unclean", doc: "[runtime]\nkubelet_root_dir = \"/var/lib/k0s/../kubelet/\"\n", wantErr: []string{"runtime.kubelet_root_dir"}},
		{name: "kubelet root trailing slash", doc: "[runtime]\nkubelet_root_dir = \"/var/lib/kubelet/\"\n", wantErr: []string{"runtime.kubelet_root_dir"}},
		{name: "kubelet root empty", doc: "[runtime]\nkubelet_root_dir = \"\"\n", wantErr: []string{"runtime.kubelet_root_dir"}},
		{name: "kubelet root slash", doc: "[runtime]\nkubelet_root_dir = \"/\"\n", wantErr: []string{"runtime.kubelet_root_dir"}},
		{
			name: "kubelet root of k0s",
			doc:  "[runtime]\nkubelet_root_dir = \"/var/lib/k0s/kubelet\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Runtime.KubeletRootDir != "/var/lib/k0s/kubelet" || Defaults().Runtime.KubeletRootDir != "/var/lib/kubelet" {
					t.Fatalf("kubelet root %q, default %q", c.Runtime.KubeletRootDir, Defaults().Runtime.KubeletRootDir)
				}
			},
		},
		{name: "factory template dir", doc: "[factory]\ntemplate_dir = \"templates\"\n", wantErr: []string{"factory.template_dir"}},
		{name: "factory template over vsock", doc: "[agent]\ntransport = \"vsock\"\n[factory]\ntemplate = true\n", wantErr: []string{"factory.template: VM templates need the serial agent transport"}},
		{name: "factory vm cache on microvm", doc: "[hypervisor.qemu]\nmachine = \"microvm\"\n[factory]\nvm_cache = 1\n", wantErr: []string{"factory.vm_cache: warm VMs need the q35 machine"}},
		{name: "factory template on microvm", doc: "[hypervisor.qemu]\nmachine = \"microvm\"\n[factory]\ntemplate = true\n", wantErr: []string{"factory.template: VM templates need the q35 machine"}},
		{
			name: "factory templates on",
			doc:  "[hypervisor]\nfree_page_reporting = false\n[runtime]\nshared_fs = \"none\"\n[factory]\ntemplate = true\ntemplate_memory = \"shared\"\ntemplate_dir = \"/run/hull/templates\"\n",
			check: func(t *testing.T, c *Config) {
				want := Defaults().Factory
				want.Template, want.TemplateMemory, want.TemplateDir = true, "shared", "/run/hull/templates"
				if c.Factory != want {
					t.Fatalf("factory = %+v, want %+v", c.Factory, want)
				}
			},
		},
		{
			name: "tracing on",
			doc:  "[tracing]\nenabled = true\nendpoint = \"https://otel.example:4318\"\nprotocol = \"http\"\nsampling_ratio = 0.25\n",
			check: func(t *testing.T, c *Config) {
				want := Tracing{Enabled: true, Endpoint: "https://otel.example:4318", Protocol: "http", SamplingRatio: 0.25}
				if c.Tracing != want {
					t.Fatalf("tracing = %+v, want %+v", c.Tracing, want)
				}
			},
		},
		{
			name: "factory warm-up off",
			doc:  "[factory]\nwarm_up = false\n",
			check: func(t *testing.T, c *Config) {
				if c.Factory.WarmUp || !Defaults().Factory.WarmUp {
					t.Fatalf("factory = %+v, defaults %+v", c.Factory, Defaults().Factory)
				}
			},
		},
		{
			name:    "several problems at once",
			doc:     "[hypervisor]\nvcpus = 0\nmemory_mib = 16\nkernel = \"vmlinux\"\n[runtime]\ncgroup_parent = \"../x\"\n[image]\nfeatures = [\"gpu\"]\n",
			wantErr: []string{"hypervisor.vcpus", "hypervisor.memory_mib", "hypervisor.kernel", "runtime.cgroup_parent", `unknown feature "gpu"`},
		},
		{name: "sizing caps below the base", doc: "[hypervisor]\nvcpus = 2\nmax_vcpus = 1\nmax_memory_mib = 256\n", wantErr: []string{"hypervisor.max_vcpus", "hypervisor.max_memory_mib"}},
		{name: "state dir too long", doc: "[runtime]\nstate_dir = \"/" + strings.Repeat("d", MaxStateDirLen) + "\"\n", wantErr: []string{"runtime.state_dir", "at most 60"}},
		{name: "guest log bound below the minimum", doc: "[runtime]\nguest_log_max_bytes = 100\n", wantErr: []string{"runtime.guest_log_max_bytes"}},
		{name: "run-as range without ids", doc: "[hypervisor.qemu]\nrun_as_uid_base = 100000\nrun_as_uid_count = 0\n", wantErr: []string{"hypervisor.qemu.run_as_uid_count"}},
		{name: "run-as range past 2^31", doc: "[hypervisor.qemu]\nrun_as_uid_base = 2147483000\n", wantErr: []string{"hypervisor.qemu.run_as_uid_count"}},
		{name: "unknown firmware", doc: "[hypervisor.qemu]\nfirmware = \"ovmf\"\n", wantErr: []string{"hypervisor.qemu.firmware"}},
		{
			name: "seabios firmware",
			doc:  "[hypervisor.qemu]\nfirmware = \"seabios\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Hypervisor.QEMU.Firmware != "seabios" || Defaults().Hypervisor.QEMU.Firmware != "qboot" {
					t.Fatalf("firmware %q, default %q", c.Hypervisor.QEMU.Firmware, Defaults().Hypervisor.QEMU.Firmware)
				}
			},
		},
		{name: "kernel param with space", doc: "[hypervisor]\nkernel_params = [\"a b\"]\n", wantErr: []string{"hypervisor.kernel_params[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.doc))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want %q", tc.wantErr)
				}
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("error %v is not ErrInvalidArgument", err)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadSearchOrder(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "etc.toml"), filepath.Join(dir, "share.toml")
	old := SearchPaths
	SearchPaths = []string{first, second}
	t.Cleanup(func() { SearchPaths = old })

	c, err := Load("")
	if err != nil || c.Source != "" {
		t.Fatalf("no files: got source %q, err %v", c.Source, err)
	}
	if err := os.WriteFile(second, []byte("[hypervisor]\nvcpus = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(""); err != nil || c.Source != second || c.Hypervisor.VCPUs != 3 {
		t.Fatalf("second file: %+v %v", c, err)
	}
	if err := os.WriteFile(first, []byte("[hypervisor]\nvcpus = 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(""); err != nil || c.Source != first || c.Hypervisor.VCPUs != 4 {
		t.Fatalf("first file: %+v %v", c, err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil {
		t.Fatal("explicit missing path loaded")
	}
	if err := os.WriteFile(first, []byte("[agent]\ncall_timeout = \"0s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), first) || !strings.Contains(err.Error(), "agent.call_timeout") {
		t.Fatalf("invalid file: error %v should name the file and the key", err)
	}
}
