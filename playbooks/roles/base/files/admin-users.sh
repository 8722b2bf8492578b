#!/bin/sh
# Managed by metalchain (role base): converge admin accounts from a data file.
#
#   metalchain-admin-users check FILE   exit 0 when every account and key matches FILE
#   metalchain-admin-users apply FILE   make them match
#
# FILE has one line per key, "NAME KEY..." (or "NAME" alone for an admin without keys).
# Every admin gets an account (shell /bin/bash) and ~/.ssh/authorized_keys with exactly those
# keys (0600). Users managed earlier but no longer listed lose their authorized_keys; their
# account stays. The names managed so far are kept in $STATE.
set -eu
case ${1:-} in check | apply) ;; *) echo "usage: $0 check|apply FILE" >&2; exit 2 ;; esac
STATE=/var/lib/metalchain/admin-users.managed
mode=$1
list=$2
drift=0

names() {
    [ -f "$list" ] || return 0
    grep -v '^[[:space:]]*\(#\|$\)' "$list" | awk '{print $1}' | sort -u
}

keys_of() {  # the wanted authorized_keys content of user $1
    grep -v '^[[:space:]]*#' "$list" | awk -v u="$1" '$1 == u && NF > 1 {sub(/^[^ ]+ +/, ""); print}'
}

valid_name() {
    case $1 in
        *[!a-z0-9_-]* | [!a-z_]*) return 1 ;;
    esac
    [ ${#1} -le 32 ]
}

note() { drift=1; [ "$mode" = check ] && exit 1; echo "$*"; }

for name in $(names); do
    if ! valid_name "$name"; then
        echo "refusing admin name '$name' (lowercase letters, digits, _ and -)" >&2
        exit 2
    fi
    if ! getent passwd "$name" >/dev/null; then
        note "create user $name"
        useradd --create-home --shell /bin/bash "$name"
    fi
    home=$(getent passwd "$name" | cut -d: -f6)
    group=$(id -gn "$name")
    wanted=$(keys_of "$name")
    have=$(cat "$home/.ssh/authorized_keys" 2>/dev/null || true)
    perms=$(stat -c '%a %U' "$home/.ssh/authorized_keys" 2>/dev/null || true)
    dperms=$(stat -c '%a %U' "$home/.ssh" 2>/dev/null || true)
    if [ "$have" != "$wanted" ] || [ "$perms" != "600 $name" ] || [ "$dperms" != "700 $name" ]; then
        note "authorized_keys of $name"
        install -d -m 0700 -o "$name" -g "$group" "$home/.ssh"
        tmp=$(mktemp "$home/.ssh/.authorized_keys.XXXXXX")
        if [ -n "$wanted" ]; then printf '%s\n' "$wanted" > "$tmp"; fi
        chown "$name:$group" "$tmp"
        chmod 0600 "$tmp"
        mv -f "$tmp" "$home/.ssh/authorized_keys"
    fi
done

# Revoke the keys of admins who are no longer listed.
if [ -f "$STATE" ]; then
    for old in $(sort -u "$STATE"); do
        names | grep -qx "$old" && continue
        home=$(getent passwd "$old" | cut -d: -f6) || continue
        if [ -e "$home/.ssh/authorized_keys" ]; then
            note "revoke the keys of $old (no longer an admin)"
            rm -f "$home/.ssh/authorized_keys"
        fi
    done
fi
if [ "$(names)" != "$(cat "$STATE" 2>/dev/null || true)" ]; then
    note "record managed admins"
    mkdir -p "$(dirname "$STATE")"
    names > "$STATE"
fi
[ "$mode" = check ] && exit 0
[ "$drift" = 0 ] && echo "admin users already converged"
exit 0
