#!/usr/bin/env bash
# memoverlay's main job on a built-in example: a read-only "image" of two
# layers gets a writable view; every change lands in memory, the layers
# stay byte-for-byte unchanged, and the changes vanish with the mount.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
bin=$PWD/build/fs/memoverlay

work=$(mktemp -d /tmp/memoverlay-demo.XXXXXX)
mnt=$work/merged
cleanup() {
	mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u "$mnt"
	rm -rf "$work"
}
trap cleanup EXIT

# The example image: a base layer and an app layer that deletes and changes things.
mkdir -p "$work/base/etc" "$work/base/usr/share/doc" "$work/app/etc" "$mnt"
echo "base motd" > "$work/base/etc/motd"
echo "PRETTY_NAME=example" > "$work/base/etc/os-release"
echo "old notes" > "$work/base/usr/share/doc/README"
echo "app config v1" > "$work/app/etc/app.conf"
mknod "$work/app/etc/os-release" c 0 0 2>/dev/null || touch "$work/app/etc/.wh.os-release"
chmod -R a-w "$work/base" "$work/app"
sum() { (cd "$work" && find base app -printf '%p %M %s\n' | sort && find base app -type f -exec sha256sum {} + | sort) | sha256sum | cut -c1-16; }
before=$(sum)

"$bin" overlay "$mnt" -o lowerdir="$work/app:$work/base"
echo "== merged view (app layer over base layer; os-release deleted by the app layer)"
(cd "$mnt" && find . | sort)
echo "== writing through the mount"
echo "edited in memory" >> "$mnt/etc/motd"
echo "app config v2" > "$mnt/etc/app.conf"
rm "$mnt/usr/share/doc/README"
mkdir "$mnt/var" && echo hello > "$mnt/var/new-file"
cat "$mnt/etc/motd"
df -h "$mnt" | tail -1
fusermount3 -u "$mnt"
echo "== lower layers after unmount"
cat "$work/base/etc/motd"
after=$(sum)
if [ "$before" = "$after" ]; then
	echo "lower layers unchanged (checksum $after): the writes lived only in memory"
else
	echo "lower layers CHANGED ($before -> $after)" >&2
	exit 1
fi
