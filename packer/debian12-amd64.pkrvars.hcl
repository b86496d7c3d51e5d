# Debian 12 (bookworm), amd64: the appliance's only target today. `make image` passes base_disk, version,
# the build key, the site variables and the wheelhouse; these are the machine's shape.
cpus          = 2
memory        = 2048
disk_size_gib = 8
