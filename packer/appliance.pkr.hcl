# The DICOM router appliance image: a Debian 12 base disk, provisioned by ansible/image.yml, sealed.
# Works with Debian 12's packer 1.6.6 (its built-in qemu builder and ansible provisioner; no `packer init`,
# no required_plugins block). Newer Packer (≥ 1.10) needs the plugins: see docs/deployment.md.
#   packer build -var-file=packer/debian12-amd64.pkrvars.hcl -var base_disk=… -var version=… packer/
# `make image` runs this with the offline base disk (tools/mkdisk.sh) and the right variables.

variable "base_disk" {
  type        = string
  description = "The base disk Packer starts from: a local qcow2 (tools/mkdisk.sh) or a Debian cloud image URL."
  validation {
    condition     = length(var.base_disk) > 0
    error_message = "The base_disk variable must name a qcow2 file or URL (make image builds one offline)."
  }
}

variable "base_disk_checksum" {
  type        = string
  description = "sha256:… of the base disk; \"none\" only for a disk built on this machine (make image)."
  default     = "none"
  validation {
    condition     = var.base_disk_checksum == "none" || contains(["sha256:", "sha512:"], substr(var.base_disk_checksum, 0, 7)) || substr(var.base_disk_checksum, 0, 5) == "file:"
    error_message = "The base_disk_checksum must be \"none\" or \"sha256:<hex>\" (or sha512:, file:<url>)."
  }
}

variable "version" {
  type        = string
  description = "The release this image carries (the router wheelhouse's RELEASE: version-commit)."
  validation {
    # Packer 1.6.6 has no regex(): a digit first and no blanks or slashes (the version is part of file names).
    condition     = contains(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], substr(var.version, 0, 1)) && length(split(" ", var.version)) == 1 && length(split("/", var.version)) == 1
    error_message = "The version must look like 0.1.0-abcdef1234 (a digit first, no blanks or slashes)."
  }
}

variable "output_dir" {
  type        = string
  description = "Where Packer writes the provisioned (uncompressed) disk; must not exist yet."
  default     = "build/packer-output"
}

variable "accelerator" {
  type        = string
  description = "qemu accelerator: kvm only where it really works (make image tests it), else tcg."
  default     = "tcg"
  validation {
    condition     = contains(["kvm", "tcg"], var.accelerator)
    error_message = "The accelerator must be kvm or tcg."
  }
}

variable "cpus" {
  type        = number
  description = "Virtual CPUs of the build VM."
  default     = 2
  validation {
    condition     = var.cpus >= 1 && var.cpus <= 64
    error_message = "The cpus must be between 1 and 64."
  }
}

variable "memory" {
  type        = number
  description = "Memory of the build VM in MiB."
  default     = 2048
  validation {
    condition     = var.memory >= 1024
    error_message = "The build VM needs at least 1024 MiB."
  }
}

variable "disk_size_gib" {
  type        = number
  description = "Virtual size of the image's disk in GiB (the root partition grows to fill a larger disk at first boot)."
  default     = 8
  validation {
    condition     = var.disk_size_gib >= 6 && var.disk_size_gib <= 2048
    error_message = "The disk_size_gib must be between 6 and 2048."
  }
}

variable "ssh_username" {
  type        = string
  description = "The build account on the base disk (removed when the image is sealed)."
  default     = "build"
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key of the build account (make image makes a fresh one per build)."
}

variable "site_vars" {
  type        = string
  description = "Ansible variables for the image (admin keys and networks, NTP servers): see packer/site.example.yml."
  validation {
    condition     = length(var.site_vars) > 0
    error_message = "The site_vars variable must name a YAML file of Ansible variables (packer/site.example.yml)."
  }
}

variable "wheelhouse" {
  type        = string
  description = "The router and its dependencies as wheels (make wheelhouse), installed offline in the image."
}

variable "cloud_init_seed_dir" {
  type        = string
  description = "Production path (a): a directory with cloud-init user-data/meta-data that creates the build account on a Debian cloud image (make image IMAGE_BASE=cloud writes it); empty for the offline base disk."
  default     = ""
}

variable "ansible_tags" {
  type        = string
  description = "Run only these tags of ansible/image.yml in the build VM: image_vm when the offline build has converged the rest in a container of the root filesystem (make image); empty = the whole play (a Debian cloud image)."
  default     = ""
  validation {
    condition     = var.ansible_tags == "" || var.ansible_tags == "image_vm"
    error_message = "The ansible_tags variable must be empty (the whole play) or image_vm (the build VM's part, after the container part)."
  }
}

variable "ansible_strategy_plugins" {
  type        = string
  description = "Directory of Mitogen's strategy plugins (make image passes .venv-ansible's); empty = Ansible's own linear strategy."
  default     = ""
}

variable "serial_log" {
  type        = string
  description = "File that receives the build VM's serial console (boot and kernel messages)."
  default     = "build/packer-serial.log"
}

locals {
  repo = abspath("${path.root}/..")
}

source "qemu" "appliance" {
  disk_image       = true
  iso_url          = var.base_disk
  iso_checksum     = var.base_disk_checksum
  output_directory = var.output_dir
  vm_name          = "appliance.qcow2"
  format           = "qcow2"
  disk_size        = "${var.disk_size_gib}G"
  disk_interface   = "virtio"
  disk_discard     = "unmap"
  # Packer's last step rewrites the disk without the trimmed blocks (compaction); compressed in the same pass.
  disk_compression = true
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  # A Debian cloud image (path (a)) fetches its build account from Packer's HTTP server (cloud-init NoCloud).
  http_directory = var.cloud_init_seed_dir == "" ? null : var.cloud_init_seed_dir
  qemuargs = concat([
    ["-cpu", var.accelerator == "kvm" ? "host" : "max"],
    # Packer's default user-network forward listens on every interface; the build VM's sshd only on loopback.
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-device", "virtio-net,netdev=user.0"],
    ["-serial", "file:${var.serial_log}"],
    ], var.cloud_init_seed_dir == "" ? [] : [
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
  ])
  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "15m"
  # The seal script removes the build account, host keys and logs, trims free space, then powers off.
  shutdown_command = "sudo /bin/sh /var/tmp/appliance-seal.sh"
  shutdown_timeout = "10m"
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "ansible" {
    playbook_file = "${local.repo}/ansible/image.yml"
    user          = var.ssh_username
    # Packer 1.6.6's SSH proxy offers only ssh-rsa, which OpenSSH 9 refuses: Ansible connects directly.
    use_proxy = false
    extra_arguments = concat([
      "--extra-vars", "@${var.site_vars}",
      "--extra-vars", "dicom_router_wheelhouse=${var.wheelhouse}",
      "--extra-vars", "appliance_image_version=${var.version}",
    ], var.ansible_tags == "" ? [] : ["--tags", var.ansible_tags])
    # Under software emulation each ordinary task spends ~12 s starting Python modules in the VM; Mitogen's
    # strategy keeps one interpreter there, which makes the whole play several times faster.
    ansible_env_vars = concat([
      "ANSIBLE_CONFIG=${local.repo}/ansible.cfg",
      "ANSIBLE_ROLES_PATH=${local.repo}/roles",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_FORCE_COLOR=0",
      "ANSIBLE_DEPRECATION_WARNINGS=False",
      # Logging in and starting Python in an emulated VM on a busy host can take minutes, not seconds.
      "ANSIBLE_TIMEOUT=300",
      # Each task's duration and the slowest tasks at the end of the build log: where the build's time goes.
      "ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks",
      ], var.ansible_strategy_plugins == "" ? [] : [
      "ANSIBLE_STRATEGY_PLUGINS=${var.ansible_strategy_plugins}",
      "ANSIBLE_STRATEGY=mitogen_linear",
    ])
  }

  # The image's package list for the manifest; and no router CA or key may be in the image (the first-boot unit
  # makes them on each appliance: one made in the build VM would be every appliance's).
  # /var/tmp: the hardening role's noexec /tmp is mounted by now (a service with PrivateTmp= pulls tmp.mount in)
  # and Packer runs its uploaded script from there.
  provisioner "shell" {
    remote_folder = "/var/tmp"
    inline = [
      "dpkg-query -W -f '$${Package}\\t$${Version}\\t$${Architecture}\\n' | sort > /var/tmp/appliance-packages.tsv",
      "if sudo find /etc/dicom-router/tls -type f 2>/dev/null | grep -q .; then echo 'the build VM has router TLS material (did appliance-firstboot run?): an image must not carry it' >&2; exit 1; fi",
    ]
  }
  provisioner "file" {
    direction   = "download"
    source      = "/var/tmp/appliance-packages.tsv"
    destination = "${var.output_dir}.packages.tsv"
  }
  provisioner "file" {
    source      = "${path.root}/scripts/seal.sh"
    destination = "/var/tmp/appliance-seal.sh"
  }
}
