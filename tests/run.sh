#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds memoverlay twice (plain,
# and with AddressSanitizer + UndefinedBehaviorSanitizer), runs the C unit
# tests of both builds, then the integration tests against both builds.
# Must run as root (the tests mount, create users, and compare with kernel overlayfs).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh

setup() { # dir, meson options... (CC from the environment, on first setup)
	local dir=$1; shift
	if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
	else meson setup "$dir" "$@" >/dev/null; fi
	if [ "$dir" = build-tsan ]; then ninja -C "$dir" fs/memoverlay >/dev/null
	else ninja -C "$dir" >/dev/null; fi
}
# gcc for the plain build, clang for the sanitized ones: every run compiles
# with both (warnings are errors), and clang brings libFuzzer for the fuzzers.
setup build
CC=clang setup build-san -Db_sanitize=address,undefined -Db_lundef=false
# ThreadSanitizer: only the daemon, for the stress test below
CC=clang setup build-tsan -Db_sanitize=thread -Db_lundef=false

# Installed, so that mount.fuse3 and mount -t fuse.memoverlay find it (tested).
meson install -C build --quiet >/dev/null

meson test -C build --print-errorlogs
meson test -C build-san --print-errorlogs

MEMOVERLAY_BUILDS=build-tsan /usr/bin/python3 -m pytest tests/integration/test_harness_stress.py \
	-q -p no:cacheprovider

MEMOVERLAY_BUILDS=build:build-san exec /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider "$@"
