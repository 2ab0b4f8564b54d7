package modlist

import (
	"reflect"
	"strings"
	"testing"
)

func TestEncodeParseRoundTrip(t *testing.T) {
	for _, l := range []*List{
		{KernelRelease: "6.1.0-56-cloud-amd64", Modules: []Module{
			{Name: "virtio_ring", Path: "/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko", Features: []string{FeatureBusPCI, FeatureSerial}},
			{Name: "orphan", Path: "/lib/modules/x/orphan.ko", Features: []string{}},
		}},
		{Modules: []Module{}},
		{KernelRelease: "6.1.192-hull", Builtin: []string{FeatureBusPCI, FeatureSerial, FeatureVirtioFS}, Modules: []Module{}},
	} {
		b, err := Encode(l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("parse %q: %v", b, err)
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("round trip of\n%s\ngave %+v, want %+v", b, got, l)
		}
	}
}

func TestEncodeFormat(t *testing.T) {
	b, err := Encode(&List{KernelRelease: "r", Builtin: []string{"serial"}, Modules: []Module{{Name: "a", Path: "/a.ko", Features: []string{"net", "block"}}, {Name: "b", Path: "/b.ko"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "hull-modules 1\nrelease r\nbuiltin serial\nmodule a /a.ko net,block\nmodule b /b.ko -\n"
	if string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
}

func TestEncodeRefusesWhiteSpace(t *testing.T) {
	for name, l := range map[string]*List{
		"release": {KernelRelease: "6.1 x"},
		"dash":    {KernelRelease: "-"},
		"path":    {KernelRelease: "r", Modules: []Module{{Name: "a", Path: "/a b.ko"}}},
		"feature": {KernelRelease: "r", Modules: []Module{{Name: "a", Path: "/a.ko", Features: []string{"x,y"}}}},
		"builtin": {KernelRelease: "r", Builtin: []string{""}},
	} {
		if _, err := Encode(l); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for name, in := range map[string]string{
		"json":          `{"kernel_release":"r","modules":[]}`,
		"no release":    "hull-modules 1\nbuiltin\n",
		"bad version":   "hull-modules 2\nrelease r\nbuiltin\n",
		"short module":  "hull-modules 1\nrelease r\nbuiltin\nmodule a /a.ko\n",
		"empty feature": "hull-modules 1\nrelease r\nbuiltin\nmodule a /a.ko net,\n",
		"double space":  "hull-modules 1\nrelease r\nbuiltin  serial\n",
		"unknown line":  "hull-modules 1\nrelease r\nbuiltin\nfirmware x\n",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		} else if !strings.Contains(err.Error(), "line") && !strings.Contains(err.Error(), "module list") {
			t.Errorf("%s: error without a position: %v", name, err)
		}
	}
}
