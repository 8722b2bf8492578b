#!/bin/sh
# Managed by metalchain (role hypervisor): the host's NIC as the uplink port of the guests'
# bridge, so guests sit on the host's own network.
#   metalchain-bridge-uplink check|apply BRIDGE UPLINK ADDRESS [BRIDGE_ADDRESS]
# UPLINK: "auto" (the NIC that holds ADDRESS, the host's inventory address), a NIC's name, or
# "" (no uplink: an uplink set up earlier is released and the NIC gets its own address back).
# `check` exits 0 when nothing needs doing; `apply` converges.
#
# The bridge takes over the NIC's MAC address (ARP caches elsewhere stay valid), its IPv4
# addresses and its default route. systemd-networkd uses the first .network file (by name)
# that matches a link, and the installer's 10-metalchain.network matches the NIC by MAC, which
# the bridge now shares, so ours sort before it:
#   05-metalchain-uplink.network        the NIC (Name= and MACAddress=): Bridge=BRIDGE only
#   06-metalchain-bridge.network        the bridge: the NIC's addresses, gateway, DHCP
#   60-BRIDGE.netdev.d/05-metalchain-mac.conf   the bridge's MACAddress= (set at creation)
# `apply` switches live (networkctl reload + reconfigure) and waits for the address on the
# bridge; if it is not there within 60 s, the files are removed again and the NIC gets its
# address back, so the host stays reachable, and the run fails.
set -u
mode=$1 bridge=$2 uplink=$3 address=$4 bridge_address=${5:-}
dir=/etc/systemd/network
nic_file=$dir/05-metalchain-uplink.network
br_file=$dir/06-metalchain-bridge.network
mac_dir=$dir/60-$bridge.netdev.d
mac_file=$mac_dir/05-metalchain-mac.conf
die() { echo "metalchain-bridge-uplink: $*" >&2; exit 1; }

holder_of() {   # the link holding IPv4 address $1
    ip -o -4 addr show 2>/dev/null | awk -v a="$1" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}'
}
master_of() { basename "$(readlink "/sys/class/net/$1/master" 2>/dev/null)" 2>/dev/null; }
mac_of() { cat "/sys/class/net/$1/address" 2>/dev/null; }
recorded_nic() { [ -f "$nic_file" ] && sed -n 's/^Name=//p' "$nic_file" | head -n 1; }

# --- which NIC ----------------------------------------------------------------------------
nic=""
if [ "$uplink" = auto ]; then
    holder=$(holder_of "$address")
    if [ "$holder" = "$bridge" ]; then
        nic=$(recorded_nic)
        [ -n "$nic" ] || die "$address is on $bridge but $nic_file names no uplink"
    elif [ -n "$holder" ]; then
        nic=$holder
    else
        die "no link holds $address: set hypervisor_bridge_uplink to the NIC's name"
    fi
elif [ -n "$uplink" ]; then
    nic=$uplink
fi
if [ -n "$nic" ]; then
    [ -e "/sys/class/net/$nic" ] || die "no such link: $nic"
    [ "$nic" != "$bridge" ] || die "the uplink cannot be the bridge itself"
fi

# --- what the files must say ----------------------------------------------------------------
want_nic() {
    printf '%s\n' "# Managed by metalchain (role hypervisor): $1 is the uplink port of $bridge." \
        "[Match]" "Name=$1" "MACAddress=$2" "" "[Network]" "Bridge=$bridge" \
        "LinkLocalAddressing=no" "IPv6AcceptRA=no"
}
want_mac() {
    printf '%s\n' "# Managed by metalchain (role hypervisor): the MAC of the uplink $nic." \
        "[NetDev]" "MACAddress=$1"
}
# The bridge's file, from the NIC's live configuration (first apply) or, once the bridge has
# taken it over, from the file written then.
want_bridge() {
    if [ "$(master_of "$nic")" = "$bridge" ] && [ -f "$br_file" ]; then
        cat "$br_file"
        return
    fi
    printf '%s\n' "# Managed by metalchain (role hypervisor): $bridge carries the addresses of $nic." \
        "[Match]" "Name=$bridge" "" "[Network]" "ConfigureWithoutCarrier=yes" \
        "IPv6AcceptRA=no" "LinkLocalAddressing=no"
    if ip -o -4 addr show dev "$nic" scope global | grep -qw dynamic; then
        echo "DHCP=ipv4"
    else
        ip -o -4 addr show dev "$nic" scope global | awk '{print "Address=" $4}'
        ip -4 route show default dev "$nic" | awk '$2 == "via" {print "Gateway=" $3; exit}'
    fi
    [ -z "$bridge_address" ] || echo "Address=$bridge_address"
}
same() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
put() {
    tmp=$(mktemp "$1.mc-XXXXXX") && printf '%s\n' "$2" > "$tmp" && chmod 644 "$tmp" &&
        mv -f "$tmp" "$1"
}
live_ok() {
    [ "$(master_of "$nic")" = "$bridge" ] && [ "$(mac_of "$bridge")" = "$mac" ] &&
        { [ "$moving" = no ] || [ "$(holder_of "$address")" = "$bridge" ]; }
}

if [ -z "$nic" ]; then
    # No uplink wanted: ok when none of ours is there.
    if [ ! -e "$nic_file" ] && [ ! -e "$br_file" ] && [ ! -e "$mac_file" ]; then exit 0; fi
    [ "$mode" = check ] && exit 1
    old=$(recorded_nic)
    rm -f "$nic_file" "$br_file" "$mac_file"
    rmdir "$mac_dir" 2>/dev/null
    [ -z "$old" ] || ip link set dev "$old" nomaster 2>/dev/null
    # The bridge still has the NIC's MAC, which the installer's file matches: make it anew.
    ip link del dev "$bridge" 2>/dev/null
    networkctl reload
    [ -z "$old" ] || networkctl reconfigure "$old"
    echo "released the uplink ${old:-(none recorded)} of $bridge"
    exit 0
fi

mac=$(mac_of "$nic")
# Does the host's own address move with it (the NIC the controller reaches it by)?
case "$(holder_of "$address")" in "$nic"|"$bridge") moving=yes;; *) moving=no;; esac
nic_text=$(want_nic "$nic" "$mac")
mac_text=$(want_mac "$mac")
br_text=$(want_bridge)
if same "$nic_file" "$nic_text" && same "$mac_file" "$mac_text" && same "$br_file" "$br_text" &&
        live_ok; then
    exit 0
fi
[ "$mode" = check ] && exit 1

mkdir -p "$mac_dir"
put "$mac_file" "$mac_text" && put "$br_file" "$br_text" && put "$nic_file" "$nic_text" ||
    die "cannot write the networkd files"
ip link set dev "$bridge" address "$mac" || die "cannot set the MAC of $bridge"
networkctl reload
networkctl reconfigure "$nic" "$bridge"
i=0
until live_ok; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then
        echo "$bridge did not take over $address from $nic in 60 s: undoing" >&2
        networkctl status "$nic" "$bridge" --no-pager >&2 2>&1
        rm -f "$nic_file" "$br_file" "$mac_file"
        ip link set dev "$nic" nomaster 2>/dev/null
        ip link del dev "$bridge" 2>/dev/null
        networkctl reload
        networkctl reconfigure "$nic"
        exit 1
    fi
    sleep 0.1
done
echo "$nic ($mac) is the uplink of $bridge$([ $moving = no ] || echo "; $address is on $bridge")"
