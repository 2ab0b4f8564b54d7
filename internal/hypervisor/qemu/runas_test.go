package qemu

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

// TestArgsRunAs checks that a leased ID adds -runas and allows set*uid in
// -sandbox, and changes nothing else.
func TestArgsRunAs(t *testing.T) {
	v, err := New(baseConfig(), Options{Accel: AccelTCG, TSCKHz: 2445432})
	if err != nil {
		t.Fatal(err)
	}
	root := buildArgs(&v.cfg, v.layout)
	l := v.layout
	l.runAs = 100042
	got := buildArgs(&v.cfg, l)
	want := slices.Clone(root)
	i := slices.Index(want, "-sandbox")
	if i < 0 {
		t.Fatalf("no -sandbox in %q", root)
	}
	if want[i+1] != "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
		t.Errorf("root QEMU: -sandbox %s", want[i+1])
	}
	want[i+1] = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
	want = slices.Insert(want, i+2, "-runas", "100042:100042")
	if !slices.Equal(got, want) {
		t.Errorf("run-as argv:\n got %q\nwant %q", got, want)
	}
}

// TestArgsTCGCache checks that Options.TCGCacheMiB sets tb-size under TCG,
// that 0 takes the default, and that KVM gets no tb-size.
func TestArgsTCGCache(t *testing.T) {
	for _, tc := range []struct {
		accel string
		size  uint32
		want  string
	}{
		{AccelTCG, 0, "tcg,tb-size=44,thread=single"},
		{AccelTCG, 96, "tcg,tb-size=96,thread=single"},
		{AccelKVM, 96, "kvm"},
	} {
		v, err := New(baseConfig(), Options{Accel: tc.accel, TSCKHz: 2445432, TCGCacheMiB: tc.size})
		if err != nil {
			t.Fatal(err)
		}
		args := buildArgs(&v.cfg, v.layout)
		i := slices.Index(args, "-accel")
		if i < 0 || args[i+1] != tc.want {
			t.Errorf("%s with %d MiB: %q, want -accel %s", tc.accel, tc.size, args, tc.want)
		}
	}
}

func TestLeaseUID(t *testing.T) {
	// A range no other test or runtime on the machine uses.
	const base = 1<<31 - 100
	a, err := leaseUID(base, 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := leaseUID(base, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.uid != base || b.uid != base+1 {
		t.Errorf("leased %d and %d, want %d and %d", a.uid, b.uid, base, base+1)
	}
	if _, err := leaseUID(base, 2); !errdefs.IsUnavailable(err) {
		t.Errorf("third lease of two IDs: %v, want an unavailable error", err)
	}
	a.release()
	c, err := leaseUID(base, 2)
	if err != nil {
		t.Fatalf("lease after a release: %v", err)
	}
	if c.uid != base {
		t.Errorf("leased %d after releasing %d", c.uid, base)
	}
	b.release()
	c.release()
	(*uidLease)(nil).release()
}

func TestValidateRunAs(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"off", Options{}, true},
		{"range", Options{RunAsUIDBase: 100000, RunAsUIDCount: 10}, true},
		{"no count", Options{RunAsUIDBase: 100000}, false},
		{"past 2^31", Options{RunAsUIDBase: 1<<31 - 5, RunAsUIDCount: 10}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Accel = AccelTCG
			_, err := New(baseConfig(), tc.o)
			if tc.ok && err != nil {
				t.Errorf("got %v", err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Errorf("got %v, want an invalid-argument error", err)
			}
		})
	}
}
