# hull: build, test and install. `make help` lists the targets.
SHELL := /bin/bash

GO            ?= go
PREFIX        ?= /usr/local
DESTDIR       ?=
# Where `make install` puts the guest image: image.assets_dir of the shipped
# configuration.
ASSETS_DIR    ?= /usr/share/hull
# The guest kernel of the image `make install` installs: "hull" (the hull
# kernel, built by `make kernel`; the default) or "debian" (the kernel and
# modules of the Debian package image.kernel_package).
GUEST_KERNEL  ?= hull
OUT           := $(CURDIR)/_output
TOOLS         := $(OUT)/tools
TEST_ASSETS   := $(OUT)/assets
# The hull kernel (docs/guest-kernel.md): its build output and its guest image.
KERNEL_OUT        := $(OUT)/kernel
HULLKERNEL_ASSETS := $(OUT)/assets-hullkernel
# The hull kernel's image with a read-only erofs root image (kind rootfs).
ROOTFS_ASSETS     := $(OUT)/assets-rootfs
# A static shell to pack into the guest images for `hull exec` (opt-in; the
# default images have none), e.g. make image DEBUG_SHELL=/bin/busybox.
DEBUG_SHELL ?=
# Pinned code generators (protoc itself comes from Debian's protobuf-compiler).
PROTOC_GEN_GO_VERSION       := v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION := v1.2.10
GOLANGCI_LINT_VERSION       := v2.15.0

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/hull-runtime/hull/internal/version.Version=$(VERSION) \
           -X github.com/hull-runtime/hull/internal/version.Commit=$(COMMIT)
# The agent is PID 1 of the guest: static, with cgo (libcontainer needs it).
AGENT_TAGS    := netgo,osusergo,seccomp
AGENT_LDFLAGS := $(LDFLAGS) -s -w -linkmode external -extldflags -static

# The waiting stage of a pod sandbox process (cmd/hull-pause): a small C
# program, static, with no Go runtime; `hull image build` packs it.
ifeq ($(origin CC),default)
CC            := gcc
endif
PAUSE_CFLAGS  := -Os -static -s -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror

# Go from go.dev's tarball lives in /usr/local/go/bin, which sudo's
# secure_path drops: look there after PATH, so `sudo make ...` finds it.
export PATH := $(TOOLS):$(PATH):/usr/local/go/bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install build and test dependencies (apt-get, pinned Go tools); needs root.
	bash hack/install-deps.sh

.PHONY: tools
tools: ## Install the pinned code generators into _output/tools.
	@mkdir -p $(TOOLS)
	@test -x $(TOOLS)/protoc-gen-go || GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(TOOLS)/protoc-gen-go-ttrpc || GOBIN=$(TOOLS) $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_GO_TTRPC_VERSION)

.PHONY: build
build: bin/hull bin/hull-agent bin/hull-pause bin/containerd-shim-hull-v2 bin/hull-runtime ## Build all binaries into bin/.

.PHONY: bin/hull
bin/hull:
	$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/hull

.PHONY: bin/containerd-shim-hull-v2
bin/containerd-shim-hull-v2:
	$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/containerd-shim-hull-v2

.PHONY: bin/hull-runtime
bin/hull-runtime:
	$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/hull-runtime

.PHONY: bin/hull-agent
bin/hull-agent:
	CGO_ENABLED=1 $(GO) build -tags '$(AGENT_TAGS)' -ldflags '$(AGENT_LDFLAGS)' -o $@ ./cmd/hull-agent

# Phony as the Go binaries are, so that another CC or PAUSE_CFLAGS rebuilds
# it (one file: a fraction of a second).
.PHONY: bin/hull-pause
bin/hull-pause:
	@mkdir -p bin
	$(CC) $(PAUSE_CFLAGS) -o $@ cmd/hull-pause/pause.c || \
		{ echo "bin/hull-pause: not built; it needs a C compiler and a static C library (Debian: apt-get install gcc libc6-dev, which make deps does)" >&2; exit 1; }

.PHONY: image
image: build ## Build the guest kernel + initrd into _output/assets (cached kernel download).
	bin/hull image build --agent bin/hull-agent --pause bin/hull-pause --output $(TEST_ASSETS) $(if $(DEBUG_SHELL),--debug-shell $(DEBUG_SHELL))

.PHONY: kernel
kernel: ## Build the hull kernel from the distribution's linux-source (tested: Debian 12's 6.1) into _output/kernel (cached by its inputs; the first build takes about 12 minutes on 2 cores, with progress).
	@nice -n 10 bash hack/build-kernel.sh $(KERNEL_OUT) >/dev/null

.PHONY: image-hullkernel
image-hullkernel: build kernel ## Build the guest image with the hull kernel (no modules) into _output/assets-hullkernel.
	bin/hull image build --agent bin/hull-agent --pause bin/hull-pause --kernel-vmlinux $(KERNEL_OUT)/vmlinux --kernel-config $(KERNEL_OUT)/config --output $(HULLKERNEL_ASSETS) $(if $(DEBUG_SHELL),--debug-shell $(DEBUG_SHELL))

.PHONY: image-rootfs
image-rootfs: build kernel ## Build the hull kernel's guest image with a read-only erofs root image booted through virtio-pmem with DAX (kind rootfs) into _output/assets-rootfs.
	bin/hull image build --format erofs --agent bin/hull-agent --pause bin/hull-pause --kernel-vmlinux $(KERNEL_OUT)/vmlinux --kernel-config $(KERNEL_OUT)/config --output $(ROOTFS_ASSETS) $(if $(DEBUG_SHELL),--debug-shell $(DEBUG_SHELL))

.PHONY: unit
unit: ## Run the unit tests with the race detector (the QEMU driver's boot the kernel of _output/assets, from make image).
	HULL_TEST_KERNEL=$${HULL_TEST_KERNEL:-$$(ls $(TEST_ASSETS)/vmlinux-* 2>/dev/null | head -n1)} \
		$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

# How long `make fuzz` runs each fuzz target.
FUZZTIME ?= 10m

.PHONY: fuzz
fuzz: ## Run every fuzz target in turn, FUZZTIME each (default 10m); crashers land in the package's testdata/fuzz.
	@set -e; $(GO) test -list '^Fuzz' $$($(GO) list ./... | grep -v /integration) \
		| awk '/^Fuzz/ { t[n++] = $$1 } /^ok / { for (i = 0; i < n; i++) print $$2, t[i]; n = 0 }' \
		| while read -r pkg target; do \
			echo "== $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg </dev/null; \
		done

.PHONY: integration
integration: image image-hullkernel image-rootfs ## Boot real VMs: integration tests (root, QEMU).
	$(MAKE) integration-only

.PHONY: test
test: deps image image-hullkernel image-rootfs ## Set up, then run unit and integration tests (what CI runs).
	$(MAKE) unit
	$(MAKE) integration-only

.PHONY: integration-only
integration-only:
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_TEST_ASSETS_HULLKERNEL=$(HULLKERNEL_ASSETS) HULL_TEST_ASSETS_ROOTFS=$(ROOTFS_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -p 1 -timeout 50m -v ./integration/... 2>&1 | tee $(OUT)/integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}
	$(MAKE) e2e-factory-ci

.PHONY: bench
bench: deps image image-hullkernel image-rootfs ## Run all benchmarks in one go (results and method: docs/benchmarks.md).
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_TEST_ASSETS_HULLKERNEL=$(HULLKERNEL_ASSETS) HULL_TEST_ASSETS_ROOTFS=$(ROOTFS_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -p 1 -run '^$$' -bench . -benchtime 5x -count 1 -timeout 150m ./integration/... 2>&1 | tee $(OUT)/bench.log | grep -vE 'level=(info|debug)'; exit $${PIPESTATUS[0]}

.PHONY: demo
demo: deps image ## Set up, then run `ctr run --rm --runtime io.containerd.hull.v2 <busybox> echo hello`.
	@printf '[image]\nassets_dir = "%s"\n' "$(TEST_ASSETS)" > $(OUT)/demo.toml
	HULL_BIN_DIR=$(CURDIR)/bin HULL_CONFIG=$(OUT)/demo.toml bash hack/demo.sh

.PHONY: e2e
e2e: image ## Only the containerd end-to-end suite (containerd 1.6 and 2.x, driven by ctr).
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 40m -v ./integration/containerd/

.PHONY: e2e-cri
e2e-cri: image ## Only the CRI end-to-end suite (pods through containerd's CRI, 1.6 and 2.x, handlers hull and runc).
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 40m -v ./integration/cri/

# The e2e suites in the VM factory's modes (HULL_TEST_FACTORY, docs/factory.md#testing).
FACTORY_ENV = HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin
# What CI runs of them (e2e-factory-ci): core cases on containerd 2, and on
# containerd 1.6 a warm VM's hand-over and a pod of its own configuration
# that must claim none.
FACTORY_CI_CTR = ^TestContainerd$$/^containerd-2$$/^(run_--rm_output|detached_task_lifecycle|run_with_piped_stdin|two_concurrent_containers|shim_killed)$$
FACTORY_CI_CRI = ^TestCRI$$/^containerd-2$$/^hull$$/^(pod_lifecycle|pod_VM_sizing|pod_shim_killed)$$
FACTORY_CI_CTR16 = ^TestContainerd$$/^containerd-1.6$$/^(run_--rm_output|debug_console_through_the_shim)$$

.PHONY: e2e-factory
e2e-factory: image ## The containerd and CRI suites with every pod from the VM factory: warm VMs (cache), then templates (run under flock /tmp/hull-e2e.lock).
	$(FACTORY_ENV) HULL_TEST_FACTORY=cache $(GO) test -count=1 -timeout 40m -v -run '^TestContainerd$$' ./integration/containerd/
	$(FACTORY_ENV) HULL_TEST_FACTORY=cache $(GO) test -count=1 -timeout 40m -v -run '^TestCRI$$' ./integration/cri/
	$(FACTORY_ENV) HULL_TEST_FACTORY=template $(GO) test -count=1 -timeout 40m -v -run '^TestContainerd$$' ./integration/containerd/
	$(FACTORY_ENV) HULL_TEST_FACTORY=template $(GO) test -count=1 -timeout 40m -v -run '^TestCRI$$' ./integration/cri/

.PHONY: e2e-factory-ci
e2e-factory-ci: ## The bounded form of e2e-factory that make test runs: core cases on containerd 2, ctr pods from templates and CRI pods from warm VMs; two ctr cases from warm VMs on containerd 1.6.
	$(FACTORY_ENV) HULL_TEST_FACTORY=template $(GO) test -count=1 -timeout 15m -v -run '$(FACTORY_CI_CTR)' ./integration/containerd/ 2>&1 | tee $(OUT)/factory-ci.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}
	$(FACTORY_ENV) HULL_TEST_FACTORY=cache $(GO) test -count=1 -timeout 15m -v -run '$(FACTORY_CI_CRI)' ./integration/cri/ 2>&1 | tee -a $(OUT)/factory-ci.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}
	$(FACTORY_ENV) HULL_TEST_FACTORY=cache $(GO) test -count=1 -timeout 15m -v -run '$(FACTORY_CI_CTR16)' ./integration/containerd/ 2>&1 | tee -a $(OUT)/factory-ci.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}

.PHONY: faults
faults: image image-hullkernel ## Only the fault matrix (docs/reliability.md): kill -9 at boot, while running and during delete, containerd restarts, host pressure; all part of make test (run under flock /tmp/hull-e2e.lock).
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_TEST_ASSETS_HULLKERNEL=$(HULLKERNEL_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 20m -v \
		-run '^(TestStateDirFull|TestGuestMemoryExhausted|TestVMMCgroupLimit|TestBootAdmission|TestHostCPUPressure)$$' ./integration/
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 30m -v -run '^(TestFaults|TestFaultsDuringDelete)$$' ./integration/containerd/
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 30m -v -run '^TestCRI$$/containerd-/hull/(pod_VM_killed|pod_shim_killed|containerd_restarted|pod_VM_killed_during_stop|pod_shim_killed_during_stop)$$' ./integration/cri/

# make soak: pods started at once per round, rounds, and the burst size of
# the one-round burst that follows (docs/reliability.md).
SOAK_PODS   ?= 20
SOAK_ROUNDS ?= 5
SOAK_BURST  ?= 40
SOAK_ENV     = HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_TEST_ASSETS_HULLKERNEL=$(HULLKERNEL_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin SOAK_REPORT=$(OUT)/soak.txt

.PHONY: soak
soak: image image-hullkernel ## Soak: SOAK_PODS pods at once x SOAK_ROUNDS rounds, then a SOAK_BURST burst, through ctr and the CRI; figures in _output/soak.txt.
	$(SOAK_ENV) SOAK_PODS=$(SOAK_PODS) SOAK_ROUNDS=$(SOAK_ROUNDS) $(GO) test -count=1 -p 1 -timeout 180m -v -run '^TestSoak$$' ./integration/containerd/ ./integration/cri/
	$(SOAK_ENV) SOAK_PODS=$(SOAK_BURST) SOAK_ROUNDS=1 $(GO) test -count=1 -p 1 -timeout 60m -v -run '^TestSoak$$' ./integration/containerd/ ./integration/cri/
	@cat $(OUT)/soak.txt

.PHONY: e2e-docker
e2e-docker: image ## Only the hull-runtime suite against Debian's Docker 20.10 (run under flock /tmp/hull-e2e.lock).
	HULL_ASSETS_DIR=$(TEST_ASSETS) HULL_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 20m -v ./integration/docker/

.PHONY: docs-check
docs-check: ## Check that docs/kubernetes.md's marked blocks are well-formed and agree (the CRI suite runs them).
	$(GO) test -count=1 -run 'TestKubernetesDoc|TestDocBlocks' ./integration/internal/e2e/

.PHONY: protos
protos: tools ## Generate Go code from api/**/*.proto.
	protoc -I api/agent/v1 -I /usr/include \
		--go_out=. --go_opt=module=github.com/hull-runtime/hull \
		--go-ttrpc_out=. --go-ttrpc_opt=module=github.com/hull-runtime/hull \
		api/agent/v1/*.proto
	protoc -I api/factory/v1 -I /usr/include \
		--go_out=. --go_opt=module=github.com/hull-runtime/hull \
		--go-ttrpc_out=. --go-ttrpc_opt=module=github.com/hull-runtime/hull \
		api/factory/v1/*.proto

.PHONY: check-protos
check-protos: protos ## Fail when the generated code differs from the committed one.
	@git diff --exit-code -- api/ || (echo "generated protobuf code is stale: run make protos" >&2; exit 1)

.PHONY: lint
lint: ## Run gofmt, go vet and golangci-lint (pinned).
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	@test -x $(TOOLS)/golangci-lint || GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	$(TOOLS)/golangci-lint run ./...

# Every file `make install` writes, as mode:source:destination (below
# DESTDIR); install and uninstall both read this list. The guest image is
# the other installed thing: kernel, initrd and manifest in $(ASSETS_DIR).
# /etc/hull is the administrator's: neither target touches it.
INSTALL_FILES := \
	0755:bin/hull:$(PREFIX)/bin/hull \
	0755:bin/containerd-shim-hull-v2:$(PREFIX)/bin/containerd-shim-hull-v2 \
	0755:bin/hull-runtime:$(PREFIX)/bin/hull-runtime \
	0755:bin/hull-agent:$(PREFIX)/libexec/hull/hull-agent \
	0755:bin/hull-pause:$(PREFIX)/libexec/hull/hull-pause \
	0644:config/configuration.toml:/usr/share/defaults/hull/configuration.toml
# Directories that hold only hull's files: uninstall removes them once empty.
INSTALL_DIRS := $(PREFIX)/libexec/hull /usr/share/defaults/hull $(ASSETS_DIR)

.PHONY: install-prereqs
install-prereqs: # Fail early, saying what to install, when make install cannot work here.
	@missing=(); \
	command -v $(GO) >/dev/null || { echo "install: Go $$(sed -n 's/^go //p' go.mod) or later is needed (https://go.dev/dl; /usr/local/go/bin is searched)" >&2; exit 1; }; \
	case "$(GUEST_KERNEL)" in \
		hull) kernel_pkgs="linux-source build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils bzip2 erofs-utils";; \
		debian) kernel_pkgs="";; \
		*) echo "install: GUEST_KERNEL=$(GUEST_KERNEL): want hull or debian" >&2; exit 1;; \
	esac; \
	for p in gcc libc6-dev libseccomp-dev qemu-system-x86 $$kernel_pkgs; do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing+=($$p); \
	done; \
	if (( $${#missing[@]} )); then echo "install: missing Debian packages; run: apt-get install $${missing[*]}" >&2; exit 1; fi

.PHONY: install
install: install-prereqs build $(if $(filter hull,$(GUEST_KERNEL)),kernel) ## Install binaries, guest image (the hull kernel's, booting its erofs root image; GUEST_KERNEL=debian for Debian's initrd) and default configuration (paths: make install-list).
	@set -e; for f in $(INSTALL_FILES); do \
		IFS=: read -r mode src dst <<<"$$f"; \
		echo "install $$src -> $(DESTDIR)$$dst"; \
		install -D -m "$$mode" "$$src" "$(DESTDIR)$$dst"; \
	done
	bin/hull image build --agent bin/hull-agent --pause bin/hull-pause --output $(DESTDIR)$(ASSETS_DIR) $(if $(DEBUG_SHELL),--debug-shell $(DEBUG_SHELL)) \
		$(if $(filter hull,$(GUEST_KERNEL)),--format erofs --kernel-vmlinux $(KERNEL_OUT)/vmlinux --kernel-config $(KERNEL_OUT)/config)

.PHONY: uninstall
uninstall: ## Remove everything make install wrote (not /etc/hull, nor the kernel cache /var/cache/hull).
	@set -e; for f in $(INSTALL_FILES); do \
		IFS=: read -r mode src dst <<<"$$f"; \
		echo "remove $(DESTDIR)$$dst"; rm -f "$(DESTDIR)$$dst"; \
	done
	rm -f $(DESTDIR)$(ASSETS_DIR)/manifest.json $(DESTDIR)$(ASSETS_DIR)/vmlinux-* $(DESTDIR)$(ASSETS_DIR)/initrd-*.img $(DESTDIR)$(ASSETS_DIR)/rootfs-*.erofs
	@for d in $(INSTALL_DIRS); do \
		if [[ -d $(DESTDIR)$$d ]]; then rmdir $(DESTDIR)$$d || { echo "uninstall: $(DESTDIR)$$d holds files hull did not install; left in place" >&2; }; fi; \
	done

.PHONY: install-list
install-list: ## List the paths make install writes.
	@for f in $(INSTALL_FILES); do IFS=: read -r mode src dst <<<"$$f"; echo "$$dst"; done
	@echo "$(ASSETS_DIR)/ (guest image: vmlinux-<release>, initrd-<release>.img, with the hull kernel rootfs-<release>.erofs, manifest.json)"

.PHONY: check-install
check-install: ## Install into a temporary DESTDIR, uninstall, and fail if anything is left.
	@set -e; dest=$$(mktemp -d /tmp/hull-destdir.XXXXXX); trap 'rm -rf "$$dest"' EXIT; \
	$(MAKE) -s -f $(firstword $(MAKEFILE_LIST)) install DESTDIR=$$dest >/dev/null; \
	for f in $(INSTALL_FILES); do IFS=: read -r mode src dst <<<"$$f"; \
		test -f "$$dest$$dst" || { echo "check-install: $$dst was not installed" >&2; exit 1; }; done; \
	test -f "$$dest$(ASSETS_DIR)/manifest.json" || { echo "check-install: no guest image in $(ASSETS_DIR)" >&2; exit 1; }; \
	$(MAKE) -s -f $(firstword $(MAKEFILE_LIST)) uninstall DESTDIR=$$dest >/dev/null; \
	left=$$(find "$$dest" -mindepth 1 \( -type f -o -type l \)); \
	if [[ -n $$left ]]; then echo "check-install: uninstall left:" >&2; echo "$$left" >&2; exit 1; fi; \
	echo "check-install: install and uninstall under $$dest: nothing left"

.PHONY: clean
clean: ## Remove build outputs (keeps the kernel download cache).
	rm -rf bin $(OUT)
