#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds memoverlay twice (plain,
# and with AddressSanitizer + UndefinedBehaviorSanitizer), runs the C unit
# tests of both builds, then the integration tests against both builds.
# Must run as root (the tests mount, create users, and compare with kernel overlayfs).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh

setup() { # dir, meson options...
	local dir=$1; shift
	if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
	else meson setup "$dir" "$@" >/dev/null; fi
	ninja -C "$dir" >/dev/null
}
setup build
setup build-san -Db_sanitize=address,undefined -Db_lundef=false

# Installed, so that mount.fuse3 and mount -t fuse.memoverlay find it (tested).
meson install -C build --quiet >/dev/null

meson test -C build --print-errorlogs
meson test -C build-san --print-errorlogs

MEMOVERLAY_BUILDS=build:build-san exec /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider "$@"
