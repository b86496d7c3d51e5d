#!/usr/bin/env bash
# `make image`: the appliance disk image, offline (path (b) in docs/deployment.md).
#   tools/build-image.sh SITE_VARS.yml
# 1. the image root filesystem from Debian's mirror (mmdebstrap; kept in build/image-rootfs between builds),
# 2. on a copy of it, at native speed: the router's release, then ansible/image.yml but its build-VM part (tag
#    image_vm) in a systemd-nspawn container; a bootable base disk from the copy (tools/mkdisk.sh: GPT, GRUB for
#    BIOS and UEFI, a one-off build key) — or, with IMAGE_BASE=cloud (production path (a), needs internet),
#    Debian's generic cloud image, checksum-verified, whose build account cloud-init makes from a seed Packer serves,
# 3. Packer boots it and runs ansible/image.yml over SSH (only the image_vm part after step 2; all of it on the
#    cloud image), then seals it (packer/scripts/seal.sh),
# 4. the compressed qcow2 and its manifest in build/:
#      dicom-router-appliance-<version>.qcow2, .manifest.json, .packages.tsv, .sha256
# Needs root, about 12 GB free under build/, and the Debian packages named below (checked first).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${IMAGE_BUILD_DIR:-build}
work="$build/image"
rootfs="$build/image-rootfs"
ansible_bin=${ANSIBLE_BIN:-$PWD/.venv-ansible/bin}

fail() { echo "make image: $*" >&2; exit 2; }
step() { echo "== $(date +%T) $*"; }

# The image's root filesystem from Debian's mirror (molecule's too), kept between builds and rebuilt when its
# recipe changes. One build at a time: the test suite's molecule scenarios and its image build all ask for it
# as they start; the first builds it, the others wait on the lock and reuse it.
image_rootfs() {
  local recipe
  recipe=$(sha256sum tools/mkrootfs.sh | cut -c1-16)
  mkdir -p "$build"
  exec 9>"$build/image-rootfs.lock"
  if ! flock -n 9; then
    step "root filesystem: waiting for the build of $rootfs that is running"
    flock 9
  fi
  if [ "$(cat "$rootfs/.recipe" 2>/dev/null)" != "$recipe" ]; then
    step "root filesystem from Debian's mirror (mmdebstrap)"
    rm -f "$rootfs/.recipe"
    tools/mkrootfs.sh "$rootfs"
    echo "$recipe" > "$rootfs/.recipe"
  else
    step "root filesystem: reusing $rootfs"
  fi
  exec 9>&-
}

# `make image-rootfs`: only that (each molecule scenario of the suite runs this first: its containers boot it).
if [ "${1:-}" = --rootfs-only ]; then
  [ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap): run it with sudo"
  image_rootfs
  exit 0
fi
site_vars=${1:?usage: build-image.sh SITE_VARS.yml | --rootfs-only}

# --- Fail early, with what to do ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap, loop devices for GRUB): run it with sudo"
missing=()
for pair in mmdebstrap:mmdebstrap packer:packer qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
            sfdisk:fdisk mkfs.vfat:dosfstools mcopy:mtools mkfs.ext4:e2fsprogs losetup:mount; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
[ ${#missing[@]} = 0 ] || fail "missing Debian packages: apt-get install ${missing[*]}"
[ -x "$ansible_bin/ansible-playbook" ] || fail "$ansible_bin/ansible-playbook is missing: make ansible-setup"
[ -s "$build/wheelhouse/RELEASE" ] || fail "$build/wheelhouse is missing: make wheelhouse"
# Mitogen's strategy plugins: the play in the container and the one in the build VM run under it.
mitogen=$("$ansible_bin/python" -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))' 2>/dev/null)/plugins/strategy \
  || fail "Mitogen is missing from $ansible_bin (requirements-ansible.txt): make ansible-setup"
[ -s "$site_vars" ] || fail "site variables $site_vars are missing (copy packer/site.example.yml)"
mkdir -p "$work"
free_kb=$(df -Pk "$work" | awk 'NR==2 {print $4}')
[ "$free_kb" -ge $(( 12 * 1024 * 1024 )) ] || fail "needs 12 GB free under $work, has $(( free_kb / 1024 / 1024 )) GB"

version=$(cat "$build/wheelhouse/RELEASE")
name="dicom-router-appliance-$version"

# KVM only where it really works: a /dev/kvm we can open on a CPU with hardware virtualisation. A nested
# "PVM" /dev/kvm without vmx/svm (these build machines) makes a guest crawl; TCG is then much faster.
accel=${IMAGE_ACCEL:-}
if [ -z "$accel" ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; else accel=tcg; fi
fi
step "building $name (accelerator $accel, site variables $site_vars)"
started=$(date +%s)

base=${IMAGE_BASE:-offline}
cloud_url=${DEBIAN_CLOUD_URL:-https://cloud.debian.org/images/cloud/bookworm/latest}
rm -f "$work/build_key" "$work/build_key.pub"
ssh-keygen -q -t ed25519 -N '' -C "image-build-$version" -f "$work/build_key"
base_args=()
if [ "$base" = cloud ]; then
  # --- 1+2 (a). Debian's generic cloud image (full kernel, BIOS+UEFI), verified against Debian's SHA512SUMS ---
  step "base disk: $cloud_url/debian-12-generic-amd64.qcow2 (cloud-init seed for the build account)"
  seed="$work/seed"
  rm -rf "$seed" && mkdir -p "$seed"
  printf 'instance-id: appliance-build\nlocal-hostname: appliance\n' > "$seed/meta-data"
  cat > "$seed/user-data" <<EOF
#cloud-config
users:
  - name: build
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD: ALL"
    ssh_authorized_keys: ["$(cat "$work/build_key.pub")"]
EOF
  base_args=(-var "base_disk=$cloud_url/debian-12-generic-amd64.qcow2"
             -var "base_disk_checksum=file:$cloud_url/SHA512SUMS" -var "cloud_init_seed_dir=$PWD/$seed")
elif [ "$base" = offline ]; then
# --- 1. Root filesystem -------------------------------------------------------------------------------------------
image_rootfs

# --- 2. Base disk with a one-off build key ---------------------------------------------------------------------
# From a copy: the rootfs stays as mmdebstrap made it, for the next build.
stage="$work/rootfs"
rm -rf "$stage"
cp -a --reflink=auto "$rootfs" "$stage"
# The router's release, installed here at native speed where the dicom_router role would install it: pip and
# the bytecode compile take ~6 minutes inside the emulated build VM and seconds here. The role finds the
# release's .installed marker and skips its install; the VM's Ansible run does the rest as on any host.
# (/opt/dicom-router is the role's dicom_router_install_root default; if they ever differ, the role installs
# the release in the VM as it does on a plain Debian host — slower, same result.)
step "router release $version into the base disk (native speed)"
release_dir="$stage/opt/dicom-router/releases/$version"
install -d -m 0755 "$stage/opt/dicom-router" "$stage/opt/dicom-router/releases" "$release_dir" "$release_dir/wheelhouse"
cp "$build"/wheelhouse/* "$release_dir/wheelhouse/"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_NO_CACHE_DIR=1 \
  chroot "$stage" /bin/sh -euc "cd /opt/dicom-router/releases/$version
  python3 -m venv venv
  venv/bin/pip install --quiet --no-index --find-links wheelhouse dicom-router-appliance
  venv/bin/dicom-router --help >/dev/null
  touch .installed"

# ansible/image.yml at native speed, all but its build-VM part (tag image_vm): the staged root filesystem booted
# with systemd-nspawn, as the molecule scenarios do, with writes kept. Its own network namespace: nothing is
# downloaded (the root filesystem has every package the roles want). Under emulation these ~170 tasks took
# 9-17 minutes in the build VM. Under Mitogen, as the build VM's part: its setns transport enters the container
# and keeps one interpreter there (measured: 22 s and ~18 CPU-seconds for the play, against 62 s and ~55 with a
# process per task through the chroot connection; the root filesystems they made were identical).
step "ansible/image.yml in a container of the root filesystem (all but the build VM's part, native speed)"
container=appliance-image-build
enter=$(molecule/shared/nspawn-up.sh "$container" "$PWD/$stage" persistent) \
  || fail "the root filesystem did not boot in a container (systemd-nspawn, see above)"
trap 'molecule/shared/nspawn-down.sh "$container" >/dev/null 2>&1 || true' EXIT
cat > "$work/container-inventory.yml" <<EOF
all:
  hosts:
    $container:
      ansible_connection: machinectl
      ansible_host: $container
      mitogen_machinectl_path: ${enter%/enter}/machinectl
EOF
ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_ROLES_PATH="$PWD/roles" ANSIBLE_FORCE_COLOR=0 \
ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks ANSIBLE_DEPRECATION_WARNINGS=False \
ANSIBLE_STRATEGY_PLUGINS="$mitogen" ANSIBLE_STRATEGY=mitogen_linear \
  "$ansible_bin/ansible-playbook" -i "$work/container-inventory.yml" ansible/image.yml --skip-tags image_vm \
  --extra-vars "@$site_vars" --extra-vars "dicom_router_wheelhouse=$PWD/$build/wheelhouse" \
  --extra-vars "appliance_image_version=$version" \
  || fail "ansible/image.yml failed in the container of the root filesystem (see above)"
molecule/shared/nspawn-down.sh "$container"
trap - EXIT
rm -f "$work/container-inventory.yml"
# The first-boot unit is enabled now and must not run in Packer's build VM: it would make SSH host keys and the
# router's CA and key there, and an image must not carry them. Its marker stops it; seal.sh removes the marker,
# so it runs on each appliance's first boot. The marker's path is the one the unit's condition names.
marker=$(sed -n 's/^ConditionPathExists=!//p' "$stage/etc/systemd/system/appliance-firstboot.service" 2>/dev/null || true)
if [ -n "$marker" ]; then
  [ -d "$stage${marker%/*}" ] || fail "the play left no ${marker%/*} (the first-boot marker's directory) in the root filesystem"
  touch "$stage$marker"
fi
# The container's boot committed a machine-id; each appliance makes its own (seal.sh empties it again).
: > "$stage/etc/machine-id"

step "base disk"
tools/mkdisk.sh "$stage" "$work/build_key.pub" "$work/base.qcow2" 8
rm -rf "$stage"
base_args=(-var "base_disk=$PWD/$work/base.qcow2" -var "ansible_tags=image_vm")
else
  fail "IMAGE_BASE must be offline (the default: built here from the Debian mirror) or cloud (Debian's cloud image)"
fi

# --- 3. Packer: provision with ansible/image.yml, seal ---------------------------------------------------------
step "packer build (ansible/image.yml over SSH; the build VM's console goes to $work/serial.log)"
rm -rf "$work/packer-output" "$work/packer-output.packages.tsv"
export PATH="$ansible_bin:$PATH" PACKER_CACHE_DIR="$PWD/$build/packer_cache" CHECKPOINT_DISABLE=1
packer build -color=false \
  -var-file=packer/debian12-amd64.pkrvars.hcl \
  "${base_args[@]}" \
  -var "version=$version" \
  -var "accelerator=$accel" \
  -var "output_dir=$PWD/$work/packer-output" \
  -var "serial_log=$PWD/$work/serial.log" \
  -var "ssh_private_key_file=$PWD/$work/build_key" \
  -var "site_vars=$(realpath "$site_vars")" \
  -var "wheelhouse=$PWD/$build/wheelhouse" \
  -var "ansible_strategy_plugins=$mitogen" \
  packer/appliance.pkr.hcl
rm -rf "$work/build_key" "$work/build_key.pub" "$work/base.qcow2" "$work/seed"

# --- 4. The image (Packer compacted and compressed it), checksum, manifest ------------------------------------------
step "checksum and manifest"
out="$build/$name.qcow2"
mv "$work/packer-output/appliance.qcow2" "$out"
rm -rf "$work/packer-output"
mv "$work/packer-output.packages.tsv" "$build/$name.packages.tsv"
(cd "$build" && sha256sum "$name.qcow2" > "$name.sha256")
python3 tools/image_manifest.py --image "$out" --packages "$build/$name.packages.tsv" --version "$version" \
  --accelerator "$accel" --base "$base" --site-vars "$site_vars" --seconds $(( $(date +%s) - started )) > "$build/$name.manifest.json"
ln -sfn "$name.qcow2" "$build/dicom-router-appliance.qcow2"
step "done in $(( $(date +%s) - started )) s: $out ($(du -h "$out" | cut -f1)), $build/$name.manifest.json"
