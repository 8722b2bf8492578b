"""The contract between the boot server (controller side) and the installer (node side).

Both sides import these names; neither hard-codes a path or a parameter of the other.

Boot flow for a node being provisioned:

1. DHCP (dnsmasq, static lease per MAC). iPXE clients (DHCP option 175) are told to fetch
   ``http://CONTROLLER:PORT/boot/<mac-with-hyphens>.ipxe``; other PXE ROMs get ``undionly.kpxe``
   over TFTP, which chains into iPXE.
2. The per-MAC iPXE script: while the node is being provisioned it loads the installer kernel
   and initramfs from ``/installer/`` with the kernel parameters below; otherwise it answers
   ``exit`` so the firmware boots from the local disk.
3. The installer (busybox, in the initramfs) fetches its configuration with the one-time
   deploy token, streams the image, verifies it, writes the node's identity, reports progress
   and then done (or failed with its log tail), and reboots.

Node-side requests carry the token in the ``X-Metalchain-Token`` header. A token is valid for
one node, for one deployment: after ``done`` or ``failed`` it is spent, and every request with
it is rejected (403) and changes nothing.
"""

from __future__ import annotations

API_VERSION = "v1"
TOKEN_HEADER = "X-Metalchain-Token"  # noqa: S105 - a header name

# Kernel command line parameters the iPXE script passes to the installer.
KARG_URL = "mc.url"        # base URL of the boot server, e.g. http://10.77.0.1:8080
KARG_NODE = "mc.node"      # the node's inventory name
KARG_TOKEN = "mc.token"  # noqa: S105 - the parameter name of the one-time deploy token

# HTTP paths (relative to the base URL).
IPXE_SCRIPT = "/boot/{mac_hyphens}.ipxe"       # mac as 52-54-00-12-34-56
INSTALLER_KERNEL = "/installer/vmlinuz"
INSTALLER_INITRD = "/installer/initrd.img"
IMAGE = "/images/{name}.raw"                    # raw disk image (MBR, one ext4 partition)
IMAGE_SHA256 = "/images/{name}.raw.sha256"      # "HEX  NAME.raw\n"
NODE_CONFIG = f"/{API_VERSION}/nodes/{{node}}/config.env"   # GET, token required
NODE_PROGRESS = f"/{API_VERSION}/nodes/{{node}}/progress"   # POST, token required
NODE_DONE = f"/{API_VERSION}/nodes/{{node}}/done"           # POST, token required
NODE_FAILED = f"/{API_VERSION}/nodes/{{node}}/failed"       # POST, token required

# config.env: one KEY='value' per line, values single-quoted for sh (so busybox sh can
# `. config.env` without parsing JSON). Keys:
CONFIG_KEYS = (
    "MC_HOSTNAME",          # the node's host name
    "MC_IMAGE_URL",         # absolute URL of the raw image
    "MC_IMAGE_SHA256",      # hex sha256 of the raw image
    "MC_IMAGE_SIZE",        # bytes
    "MC_ROOT_DEVICE",       # e.g. /dev/vda ("auto": the first virtio/SCSI disk)
    "MC_AUTHORIZED_KEYS",   # base64 of the authorized_keys file for root
    "MC_HOST_KEY",          # base64 of the OpenSSH private ed25519 host key
    "MC_HOST_KEY_PUB",      # base64 of its public key line
    "MC_MAC",               # the MAC the node booted with (for the network config)
    "MC_IPV4",              # the installed system's static address/prefix, e.g. 10.77.0.11/24
    "MC_GATEWAY",           # its default route ("" for none)
    "MC_NAMESERVERS",       # its name servers, space-separated ("" for none)
)

# Bodies of progress/done/failed: application/x-www-form-urlencoded (busybox wget
# --post-data), fields:
PROGRESS_FIELDS = ("stage", "message")   # stage: one of INSTALL_STAGES
DONE_FIELDS = ("stage", "message")       # both optional; informational
FAILED_FIELDS = ("stage", "message", "log")  # log: the tail of the installer's log
INSTALL_STAGES = ("started", "partitioning", "streaming", "verifying", "resizing",
                  "configuring", "rebooting")
