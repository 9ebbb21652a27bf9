#!/usr/bin/env bash
# Builds libfuse from Debian's fuse3 source package into a private,
# git-ignored prefix (.deps/libfuse), as a static library, when the system's
# libfuse is older than 3.17 (Debian 12 has 3.14). meson.build links it by
# itself (-Dlibfuse=auto prefers it; -Dlibfuse=system picks the system's).
#
# Why: only libfuse 3.17+ can ask the kernel for passthrough, FUSE over
# io_uring and HANDLE_KILLPRIV_V2 (memoverlay -V says which a build can use).
#
# Where from: the source package of Debian's unstable suite, from the Debian
# archive this machine is already configured with (the URI of its
# "deb ... CODENAME" entry; no host name is written here), through a private
# apt configuration in a temporary directory: the system's sources, lists
# and cache stay as they are. apt checks the files against the signed index.
#
# How: static (nothing is installed outside the prefix, nothing to find at
# run time), with io_uring support when liburing-dev and libnuma-dev are
# installed (tools/install-deps.sh installs them). -Dutils=false, and no
# fusermount3 may ever be in the prefix: libfuse runs <prefix>/bin/fusermount3
# before the one on PATH, and a copy that is not setuid root would break
# every plain user's mount. Debian's setuid /usr/bin/fusermount3 (3.14)
# serves the 3.18 library well.
#
# Idempotent: nothing happens when the prefix holds this version already.
# LIBFUSE_VERSION=X.Y.Z picks another upstream version of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${LIBFUSE_VERSION:-3.18.3}
prefix=$PWD/.deps/libfuse
stamp=$prefix/.memoverlay-build
want="fuse3 $version in $prefix"

say() { echo "build-libfuse: $*" >&2; }

if pkg-config --atleast-version=3.17 fuse3 2>/dev/null; then
	exit 0 # the system's libfuse is new enough: meson.build uses it
fi
if [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$want" ] &&
   [ -f "$prefix/lib/pkgconfig/fuse3.pc" ]; then
	exit 0
fi

start=$(date +%s)
tmp=$(mktemp -d /tmp/memoverlay-libfuse.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# apt downloads as the user _apt where it can: let it reach the directories
chmod 0755 "$tmp"
mkdir -p "$tmp/apt/parts" "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/src"
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
	chown _apt "$tmp/src"
fi

# The archive this machine takes its release from (deb822 or one-line
# sources alike: apt itself lists them).
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
uri=$(apt-get indextargets --format '$(TARGET_OF) $(RELEASE) $(REPO_URI)' 'Created-By: Packages' |
	awk -v c="$codename" '$1 == "deb" && $2 == c { print $3; exit }')
if [ -z "$codename" ] || [ -z "$uri" ]; then
	say "no Debian archive for '${codename:-?}' among the configured apt sources"
	exit 1
fi
echo "deb-src $uri unstable main" >"$tmp/apt/sources.list"
apt=(-q -o Dir::Etc::SourceList="$tmp/apt/sources.list" -o Dir::Etc::SourceParts="$tmp/apt/parts"
     -o Dir::State::Lists="$tmp/apt/lists" -o Dir::Cache="$tmp/apt/cache")
apt-get "${apt[@]}" update >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; exit 1; }

# This upstream version, newest Debian revision; if unstable has moved on,
# the newest 3.17+ it has (said, and recorded, so a second run keeps it).
versions=$(apt-cache "${apt[@]}" showsrc fuse3 | awk '$1 == "Version:" { print $2 }' | sort -uV)
debver=$(grep -E "^([0-9]+:)?${version//./\\.}-" <<<"$versions" | tail -n1 || true)
if [ -z "$debver" ]; then
	debver=$(tail -n1 <<<"$versions")
	if [ -z "$debver" ] || ! dpkg --compare-versions "$debver" ge 3.17; then
		say "Debian unstable has no fuse3 $version nor any 3.17 or newer (has: ${versions:-none})"
		exit 1
	fi
	say "Debian unstable has no fuse3 $version; building $debver instead"
fi
(cd "$tmp/src" && apt-get "${apt[@]}" source "fuse3=$debver" >"$tmp/apt.log" 2>&1) ||
	{ cat "$tmp/apt.log" >&2; exit 1; }
src=$(find "$tmp/src" -mindepth 1 -maxdepth 1 -type d -name 'fuse3-*' | head -n1)
[ -n "$src" ] || { say "apt-get source left no fuse3 directory"; exit 1; }

say "building libfuse $debver (static) into $prefix"
meson setup "$tmp/build" "$src" --prefix="$prefix" --libdir=lib --buildtype=debugoptimized \
	-Ddefault_library=static -Dexamples=false -Dutils=false -Dtests=false \
	>"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
ninja -C "$tmp/build" >>"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
# Installed beside, then moved into place: never half a prefix.
DESTDIR="$tmp/dest" meson install -C "$tmp/build" --quiet >>"$tmp/build.log" 2>&1 ||
	{ cat "$tmp/build.log" >&2; exit 1; }
if [ -e "$tmp/dest$prefix/bin/fusermount3" ]; then
	say "refusing a prefix with bin/fusermount3 (plain users' mounts would run it)"
	exit 1
fi
rm -rf "$prefix"
mkdir -p "$(dirname "$prefix")"
mv "$tmp/dest$prefix" "$prefix"
uring=no
grep -q liburing "$prefix/lib/pkgconfig/fuse3.pc" && uring=yes
printf '%s\nDebian source fuse3 %s from %s (unstable), io_uring %s, built %s\n' \
	"$want" "$debver" "$uri" "$uring" "$(date -u +%FT%TZ)" >"$stamp"
say "libfuse $(pkg-config --modversion "$prefix/lib/pkgconfig/fuse3.pc") ready" \
	"(io_uring: $uring) in $(($(date +%s) - start)) s"
