#!/usr/bin/env bash
# The offline base disk (path (b) of docs/deployment.md): a bootable Debian 12 disk from the image rootfs
# (tools/mkrootfs.sh), for Packer's qemu builder (disk_image = true).
#   tools/mkdisk.sh ROOTFS_DIR BUILD_KEY.pub OUT.qcow2 [SIZE_GIB]
# GPT: 1 MiB bios_grub (GRUB's core for BIOS) · 127 MiB EFI system partition (GRUB standalone at the removable
# path, so no NVRAM entry is needed) · root ext4 on the rest. The filesystems are made from directories
# (mkfs.ext4 -d, mtools) at offsets into the file: no mounts, and no partition loop devices (they never appear
# on these build machines). Packer logs in as the build account `build` with BUILD_KEY; the image's seal step
# (packer/scripts/seal.sh) deletes that account.
set -euo pipefail

rootfs=${1:?usage: mkdisk.sh ROOTFS_DIR BUILD_KEY.pub OUT.qcow2 [SIZE_GIB]}
build_key=${2:?usage: mkdisk.sh ROOTFS_DIR BUILD_KEY.pub OUT.qcow2 [SIZE_GIB]}
out=${3:?usage: mkdisk.sh ROOTFS_DIR BUILD_KEY.pub OUT.qcow2 [SIZE_GIB]}
size_gib=${4:-8}

fail() { echo "mkdisk: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || fail "needs root (losetup, chroot for GRUB's BIOS setup)"
for tool in sfdisk mkfs.ext4 mkfs.vfat mcopy mmd losetup qemu-img python3 chroot; do
  command -v "$tool" >/dev/null || fail "$tool is missing: apt-get install fdisk e2fsprogs dosfstools mtools qemu-utils"
done
[ -x "$rootfs/usr/bin/grub-mkimage" ] && [ -d "$rootfs/usr/lib/grub/i386-pc" ] && [ -d "$rootfs/usr/lib/grub/x86_64-efi" ] \
  || fail "$rootfs has no GRUB for BIOS and UEFI: build it with tools/mkrootfs.sh"
ls "$rootfs"/boot/vmlinuz-* >/dev/null 2>&1 || fail "$rootfs has no kernel: build it with tools/mkrootfs.sh"
[ -s "$build_key" ] || fail "build key $build_key is missing or empty"

work="$out.work"
rm -rf "$work"
mkdir -p "$work"
loop=""
cleanup() {
  if [ -n "$loop" ]; then
    umount "$work/mnt/proc" "$work/mnt/dev" "$work/mnt" 2>/dev/null || true
    [ -n "${root_loop:-}" ] && losetup -d "$root_loop" 2>/dev/null
    losetup -d "$loop" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

root_uuid=$(python3 -c "import uuid; print(uuid.uuid4())")
esp_id=$(python3 -c "import secrets; print(secrets.token_hex(4).upper())")
esp_uuid="${esp_id:0:4}-${esp_id:4:4}"

# --- Files the base disk needs to boot and be reached ------------------------------------------------------
# The root filesystem's own lines (the image play's /dev/shm options) are kept; the disk's two are ours.
kept=$(awk '!/^[[:space:]]*(#|$)/ && $2 != "/" && $2 != "/boot/efi"' "$rootfs/etc/fstab" 2>/dev/null || true)
cat > "$rootfs/etc/fstab" <<EOF
# <filesystem> <mount point> <type> <options> <dump> <pass>
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$esp_uuid /boot/efi vfat umask=0077,noauto,x-systemd.automount 0 2
EOF
[ -z "$kept" ] || printf '%s\n' "$kept" >> "$rootfs/etc/fstab"
mkdir -p "$rootfs/boot/efi"

# DHCP on whichever interface the hypervisor gives (the console's setup can switch to a static address).
mkdir -p "$rootfs/etc/systemd/network"
cat > "$rootfs/etc/systemd/network/80-appliance-dhcp.network" <<'EOF'
# The appliance's default network: DHCP on every wired interface (a static address from the console's setup or
# Ansible goes in a lower-numbered file, which wins).
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
for unit in systemd-networkd.service systemd-resolved.service; do
  ln -sf "/lib/systemd/system/$unit" "$rootfs/etc/systemd/system/multi-user.target.wants/$unit"
done
ln -sf /run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
# Names come from the site's DNS servers only: no LLMNR or mDNS answers from whoever is on the segment
# (name poisoning), and no multicast chatter for the firewall to drop and log.
mkdir -p "$rootfs/etc/systemd/resolved.conf.d"
cat > "$rootfs/etc/systemd/resolved.conf.d/appliance.conf" <<'EOF'
[Resolve]
LLMNR=no
MulticastDNS=no
EOF

# The build account Packer uses; sealed away before the image is written.
if ! chroot "$rootfs" getent passwd build >/dev/null; then
  chroot "$rootfs" useradd --create-home --shell /bin/bash --comment "image build (removed at seal)" build
fi
install -d -m 0700 -o "$(chroot "$rootfs" id -u build)" -g "$(chroot "$rootfs" id -g build)" "$rootfs/home/build/.ssh"
install -m 0600 -o "$(chroot "$rootfs" id -u build)" -g "$(chroot "$rootfs" id -g build)" "$build_key" \
  "$rootfs/home/build/.ssh/authorized_keys"
echo 'build ALL=(ALL) NOPASSWD: ALL' > "$rootfs/etc/sudoers.d/zz-image-build"
chmod 0440 "$rootfs/etc/sudoers.d/zz-image-build"

# --- GRUB: one grub.cfg for both firmwares (kernel by Debian's /vmlinuz symlinks, so upgrades keep booting) ---
mkdir -p "$rootfs/boot/grub"
cat > "$rootfs/boot/grub/grub.cfg" <<EOF
# Written by tools/mkdisk.sh. /vmlinuz and /initrd.img are Debian's links to the newest kernel.
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=2
search --no-floppy --fs-uuid --set=root $root_uuid
menuentry "DICOM router appliance" {
  linux /vmlinuz root=UUID=$root_uuid ro console=ttyS0,115200n8 console=tty0
  initrd /initrd.img
}
menuentry "DICOM router appliance (previous kernel)" {
  linux /vmlinuz.old root=UUID=$root_uuid ro console=ttyS0,115200n8 console=tty0
  initrd /initrd.img.old
}
EOF
chmod 0600 "$rootfs/boot/grub/grub.cfg"  # boot entries are root's business (Lynis FILE-7524)
# A kernel upgrade runs update-grub inside the appliance: keep the serial console in what it generates.
mkdir -p "$rootfs/etc/default/grub.d"
cat > "$rootfs/etc/default/grub.d/appliance.cfg" <<'EOF'
GRUB_TIMEOUT=2
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 console=tty0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF
# BIOS: core.img starts with this: find the root filesystem, take modules and grub.cfg from its /boot/grub.
cat > "$work/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
rm -rf "$rootfs/boot/grub/i386-pc"
cp -a "$rootfs/usr/lib/grub/i386-pc" "$rootfs/boot/grub/i386-pc"
cp "$work/early.cfg" "$rootfs/tmp/early.cfg"
chroot "$rootfs" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -c /tmp/early.cfg -p /boot/grub \
  biosdisk part_gpt ext2 search search_fs_uuid configfile normal linux serial terminal
# UEFI: every module is inside the standalone image (its memdisk), so the prefix stays there.
cat > "$rootfs/tmp/early-efi.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $root_uuid
configfile (\$root)/boot/grub/grub.cfg
EOF
chroot "$rootfs" grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI --modules="part_gpt ext2 search_fs_uuid" \
  "boot/grub/grub.cfg=/tmp/early-efi.cfg"
mv "$rootfs/tmp/BOOTX64.EFI" "$work/BOOTX64.EFI"
rm -f "$rootfs/tmp/early.cfg" "$rootfs/tmp/early-efi.cfg"

# --- Partition and fill the disk -----------------------------------------------------------------------------
raw="$work/disk.raw"
truncate -s "${size_gib}G" "$raw"
total=$(( size_gib * 1024 * 1024 * 2 ))
root_start=264192
root_sectors=$(( total - root_start - 2048 ))  # 1 MiB left at the end for the backup GPT (aligned)
sfdisk --quiet --label gpt "$raw" <<EOF
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios_grub
start=4096, size=260096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$root_start, size=$root_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
EOF
mkfs.ext4 -q -F -L appliance-root -U "$root_uuid" -E offset=$(( root_start * 512 )) -d "$rootfs" \
  "$raw" "$(( root_sectors / 2 ))k"

esp="$work/esp.img"
truncate -s $(( 260096 * 512 )) "$esp"
mkfs.vfat -F 32 -n ESP -i "$esp_id" "$esp" >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$esp" of="$raw" bs=512 seek=4096 conv=notrunc status=none

# BIOS: boot.img in the MBR, core.img in the bios_grub partition. grub-bios-setup must see its directory on a
# real block device, so it runs chrooted in the root filesystem mounted from an offset loop device.
loop=$(losetup --find --show "$raw")
root_loop=$(losetup --find --show --offset $(( root_start * 512 )) --sizelimit $(( root_sectors * 512 )) "$raw")
mnt="$work/mnt"
mkdir -p "$mnt"
mount "$root_loop" "$mnt"
mount --bind /dev "$mnt/dev"
mount -t proc proc "$mnt/proc"
chroot "$mnt" /usr/lib/grub/i386-pc/grub-bios-setup --directory=/boot/grub/i386-pc "$loop"
umount "$mnt/proc" "$mnt/dev" "$mnt"
losetup -d "$root_loop"
losetup -d "$loop"
loop=""

qemu-img convert -O qcow2 "$raw" "$out.tmp"
mv "$out.tmp" "$out"
echo "mkdisk: base disk $out (${size_gib} GiB virtual, root UUID $root_uuid)"
