# Developer entry points. `make run` and `make test` are the two commands in the README.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CONFIG ?= examples/router.yaml

.PHONY: appliance-prereqs setup deps run test test-prereqs test-fast lint typecheck bench clean wheelhouse ansible-setup ansible-lint molecule image-deps image-rootfs image e2e-image

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests talk to (real DICOM peers). Needs root or sudo.
deps:
	@command -v /usr/bin/storescu >/dev/null && command -v /usr/sbin/Orthanc >/dev/null && [ -x /usr/sbin/sshd ] && [ -x /usr/bin/tmux ] && command -v mmdebstrap >/dev/null && command -v systemd-nspawn >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q dcmtk orthanc openssh-server tmux mmdebstrap systemd-container; }
	@$(MAKE) --no-print-directory image-deps

# The router on the example config, state and logs under ./run/ (no root paths).
run: setup
	$(PY) -m appliance.router config check $(CONFIG)
	$(PY) -m appliance.router serve --config $(CONFIG)

# The suite includes the appliance: lint, playbook syntax and the molecule scenarios (root: systemd-nspawn).
# In parallel (pytest-xdist), one worker per core: -n 3 on 2 cores was no faster in wall time under load
# and pushed the router/peer tests past their start and delivery deadlines (5 timeouts in one run).
# --dist loadgroup: the boot test's tests (one booted appliance, xdist_group) stay in one worker.
# The molecule scenarios and the image build run beside the rest of the suite.
# The set-up's steps run side by side (-j): the venvs and the wheelhouse.
TEST_WORKERS ?= 2
test:
	@$(MAKE) --no-print-directory -j4 -O test-prereqs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25

test-prereqs: setup deps appliance-prereqs

test-fast: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check appliance tests
	$(VENV)/bin/ruff format --check appliance tests

typecheck: setup
	$(VENV)/bin/mypy

bench: setup deps
	$(PY) -m tests.bench.bench_relay

# --- The appliance (Ansible roles, molecule) -------------------------------------------------------
ANSIBLE_VENV ?= .venv-ansible
RELEASE := $(shell $(PYTHON) -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')-$(shell git rev-parse --short=10 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- appliance pyproject.toml 2>/dev/null || echo .dirty$$(git diff HEAD -- appliance pyproject.toml | sha256sum | cut -c1-8))

$(ANSIBLE_VENV)/.installed: requirements-ansible.txt
	$(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install --quiet --upgrade pip
	$(ANSIBLE_VENV)/bin/pip install --quiet -r requirements-ansible.txt
	touch $@

ansible-setup: $(ANSIBLE_VENV)/.installed

# Release name: version-commit (plus .dirtyHASH of uncommitted changes, so each differs).
# The router and every dependency as wheels, for appliances without internet access (dicom_router role).
wheelhouse: setup
	rm -rf build/wheelhouse
	$(PY) -m pip wheel --quiet -c requirements-appliance.lock . -w build/wheelhouse
	echo "$(RELEASE)" > build/wheelhouse/RELEASE

ansible-lint: ansible-setup
	$(ANSIBLE_VENV)/bin/yamllint -s .
	$(ANSIBLE_VENV)/bin/ansible-lint

# What the appliance tests need before the suite starts. Not the image's root filesystem (root, mmdebstrap): the
# molecule scenarios and the image build make it when they start, beside the rest of the suite, which does not
# need it (its mmdebstrap is mostly downloads and one dpkg at a time: the suite's tests fill the idle core).
appliance-prereqs: ansible-setup wheelhouse
	@[ "$$(id -u)" = 0 ] || echo "not root: the molecule scenarios and the image boot test will be skipped (they need root)"

# Every scenario, including the per-role development ones (hardening, network, ops).
molecule: ansible-setup wheelhouse image-rootfs
	PATH=$(CURDIR)/$(ANSIBLE_VENV)/bin:$$PATH $(ANSIBLE_VENV)/bin/molecule test --all

# --- The appliance image (packer/, docs/deployment.md) ------------------------------------------------------
# Debian packages the image build and the boot test need (root or sudo).
IMAGE_DEBS = mmdebstrap packer qemu-system-x86 qemu-utils ovmf fdisk dosfstools mtools
image-deps:
	@command -v packer >/dev/null && command -v qemu-system-x86_64 >/dev/null && command -v sfdisk >/dev/null && command -v mcopy >/dev/null && command -v mkfs.vfat >/dev/null && [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] && command -v mmdebstrap >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(IMAGE_DEBS); }

# The appliance's Debian root filesystem: the image is made from it and molecule's containers boot it (root,
# mmdebstrap; kept in build/image-rootfs while tools/mkrootfs.sh is unchanged). After `deps`, which installs
# mmdebstrap and the image's packages: two apt-get runs at once would collide.
image-rootfs: | deps
	tools/build-image.sh --rootfs-only

# build/dicom-router-appliance-<version>.qcow2 and its manifest, for the site in IMAGE_VARS (root).
IMAGE_VARS ?= packer/site.example.yml
image: image-deps ansible-setup
	@# The wheelhouse of this exact source (RELEASE has the commit and a hash of uncommitted changes); never
	@# rebuilt when current: the molecule scenarios may be installing from it while the suite builds the image.
	@[ "$$(cat build/wheelhouse/RELEASE 2>/dev/null)" = "$(RELEASE)" ] || $(MAKE) --no-print-directory wheelhouse
	tools/build-image.sh $(IMAGE_VARS)

# The image the boot test (tests/e2e) boots: the test's own admin key, qemu's user network as admin network.
build/e2e/id_ed25519:
	mkdir -p build/e2e
	ssh-keygen -q -t ed25519 -N '' -C dicom-router-e2e -f $@
e2e-image: build/e2e/id_ed25519
	$(MAKE) --no-print-directory image IMAGE_VARS=tests/e2e/site-vars.yml
	$(PY) -c 'from tests.e2e import image_build as b; b.DIGEST_FILE.write_text(b.inputs_digest() + "\n")'

clean:
	rm -rf run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
