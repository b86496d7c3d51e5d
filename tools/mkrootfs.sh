#!/usr/bin/env bash
# Build a Debian 12 root filesystem from Debian's mirror with mmdebstrap.
#   tools/mkrootfs.sh container OUT_DIR   # for molecule: systemd-nspawn boots it (no kernel)
#   tools/mkrootfs.sh image OUT_TAR       # for the appliance image: adds kernel and boot loaders
# Packages the roles install are baked in, because the test containers have no network
# (systemd-nspawn --private-network): the roles then find them present and change nothing.
set -euo pipefail

kind=${1:?usage: mkrootfs.sh container|image OUT}
out=${2:?usage: mkrootfs.sh container|image OUT}

command -v mmdebstrap >/dev/null || {
  echo "mkrootfs: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 2; }

# What every appliance has: systemd, sshd for Ansible, Python for its modules,
# and what the roles install (hardening, chrony, nftables, logrotate, router, console).
# The hardening role's also: libpam-tmpdir, needrestart, debsums, acct, AIDE, USBGuard.
base=(systemd-sysv dbus openssh-server python3 python3-apt python3-venv sudo iproute2 procps
      ca-certificates chrony nftables auditd apparmor apparmor-utils unattended-upgrades
      apt-listchanges logrotate rsyslog libpam-pwquality cracklib-runtime dcmtk locales less
      libpam-tmpdir needrestart debsums acct aide aide-common usbguard)
case "$kind" in
  container) extra=() ;;
  # The image boots on its own: kernel, initramfs, GRUB for BIOS and UEFI, systemd-networkd (in systemd)
  # with resolved, growpart for a disk made larger than the image, Lynis for the hardening report.
  image) extra=(linux-image-amd64 initramfs-tools udev grub2-common grub-pc-bin grub-efi-amd64-bin
                systemd-resolved cloud-guest-utils lynis) ;;
  *) echo "mkrootfs: unknown kind '$kind' (container or image)" >&2; exit 2 ;;
esac

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
pkgs=$(IFS=,; echo "${base[*]}${extra[*]:+,${extra[*]}}")

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$out")"
# Keep the package lists: roles then see a fresh apt cache and never need the network.
mmdebstrap --variant=minbase --include="$pkgs" --skip=cleanup/apt/lists \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='echo appliance > "$1/etc/hostname"' \
  --customize-hook='rm -f "$1/etc/machine-id"; touch "$1/etc/machine-id"' \
  bookworm "$tmp" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
rm -rf "$out"
mv "$tmp" "$out"
echo "mkrootfs: $kind rootfs in $out"
