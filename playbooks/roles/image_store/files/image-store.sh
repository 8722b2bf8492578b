#!/bin/sh
# Managed by metalchain (role image_store): the image catalogue on disk.
#
#   metalchain-image-store check LIST ROOT BASE_URL   exit 0 when ROOT matches LIST
#   metalchain-image-store sync  LIST ROOT BASE_URL   download, verify, prune, index
#
# LIST: "NAME SHA256 URL" lines. Images live in ROOT/public/images/NAME; ROOT/state/NAME holds
# "SHA256 SIZE MTIME" written once the download's sha256 matched, so `check` does not hash
# gigabytes on every run (a changed size or mtime is drift; verify tests hash for real).
# ROOT/public/index.json (sorted by name, no timestamps: regenerated identically) and
# ROOT/public/SHA256SUMS (for sha256sum -c) describe what is served.
set -eu
case ${1:-} in check | sync) ;; *) echo "usage: $0 check|sync LIST ROOT BASE_URL" >&2; exit 2 ;; esac
mode=$1
list=$2
root=$3
base=$4
images=$root/public/images
state=$root/state
failed=0

entries() { grep -v '^[[:space:]]*\(#\|$\)' "$list" || true; }

# Everything that ends up in the JSON index is checked here, so it needs no escaping.
validate() {  # NAME SHA256 URL
    case $1 in .* | *[!A-Za-z0-9._-]* | "") echo "bad image name '$1'" >&2; return 1 ;; esac
    case $2 in *[!0-9a-f]*) echo "$1: bad sha256 '$2'" >&2; return 1 ;; esac
    [ ${#2} = 64 ] || { echo "$1: sha256 must be 64 hex digits" >&2; return 1; }
    case $3 in http://* | https://*) ;; *) echo "$1: url must be http(s)://" >&2; return 1 ;; esac
    case $3 in *[\"\\\ ]*) echo "$1: url contains a quote, backslash or space" >&2; return 1 ;; esac
}

stored() {  # NAME SHA256: is the verified image in place?
    [ -f "$images/$1" ] && [ -f "$state/$1" ] &&
        [ "$(cat "$state/$1")" = "$2 $(stat -c '%s %Y' "$images/$1")" ]
}

disk_format() {
    if [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 514649fb ]; then echo qcow2
    else echo raw; fi
}

index() {  # the index.json that describes the wanted images that are stored
    first=1
    printf '['
    entries | sort | while read -r name sha url; do
        stored "$name" "$sha" || continue
        [ $first = 1 ] || printf ','
        first=0
        printf '\n  {"name": "%s", "size": %s, "sha256": "%s", "disk_format": "%s", "url": "%s/images/%s"}' \
            "$name" "$(stat -c %s "$images/$name")" "$sha" "$(disk_format "$images/$name")" \
            "${base%/}" "$name"
    done
    printf '\n]\n'
}

sums() { entries | sort | while read -r name sha url; do
    stored "$name" "$sha" && printf '%s  %s\n' "$sha" "$name"; done; true; }

replace_if_different() {  # FILE, new content on stdin
    if [ "$mode" = check ]; then cmp -s - "$1"; return; fi
    tmp=$(mktemp "$(dirname "$1")/.new.XXXXXX")
    cat > "$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$1"
    echo "wrote $1"
}

case $base in http://* | https://*) ;; *) echo "bad base url '$base'" >&2; exit 2 ;; esac
case $base in *[\"\\\ ]*) echo "base url contains a quote, backslash or space" >&2; exit 2 ;; esac
while read -r name sha url; do
    [ -n "$name" ] || continue
    validate "$name" "$sha" "$url" || exit 2
done <<EOF_LIST
$(entries)
EOF_LIST
if [ "$mode" = check ]; then
    [ -d "$images" ] && [ -d "$state" ] || exit 1
else
    mkdir -p "$images" "$state"
fi

# A here-document, not a pipe: the loop must run in this shell (exit, failed=1).
while read -r name sha url; do
    [ -n "$name" ] || continue
    stored "$name" "$sha" && continue
    [ "$mode" = check ] && exit 1
    part=$images/.$name.part
    echo "fetching $name from $url"
    if ! wget -q --tries=3 --timeout=30 -O "$part" -- "$url" </dev/null; then
        echo "$name: download from $url failed" >&2; rm -f "$part"; failed=1; continue
    fi
    got=$(sha256sum < "$part"); got=${got%% *}
    if [ "$got" != "$sha" ]; then
        echo "$name: sha256 $got does not match the registered $sha: refused" >&2
        rm -f "$part"; failed=1; continue
    fi
    chmod 0644 "$part"
    mv -f "$part" "$images/$name"
    echo "$sha $(stat -c '%s %Y' "$images/$name")" > "$state/$name"
done <<EOF_LIST
$(entries)
EOF_LIST

# Images (and leftovers) that are no longer registered.
for f in "$images"/* "$images"/.*.part "$state"/*; do
    [ -e "$f" ] || continue
    entries | awk '{print $1}' | grep -qxF "$(basename "$f")" && continue
    [ "$mode" = check ] && exit 1
    echo "removing $f (not registered)"
    rm -f "$f"
done

index | replace_if_different "$root/public/index.json"
sums | replace_if_different "$root/public/SHA256SUMS"
exit $failed
