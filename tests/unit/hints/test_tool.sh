#!/bin/sh
# test_tool.sh TOOL FIXTURES - memoverlay-hints as a user runs it (TAP).
# Exit codes, the problem lines, and the plan's commands as the shell sees
# them (a stand-in mount.fuse3 prints the argv it receives).
TOOL=$1
FIX=$2
n=0
failed=0
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

ok() {  # ok DESCRIPTION COMMAND...
	desc=$1; shift
	n=$((n + 1))
	if "$@"; then
		echo "ok $n - $desc"
	else
		echo "not ok $n - $desc"
		failed=$((failed + 1))
		sed 's/^/# stdout: /' "$tmp/out"; sed 's/^/# stderr: /' "$tmp/err"
	fi
}
run() {  # run ARGS... : stdout, stderr and status into $tmp
	"$TOOL" "$@" >"$tmp/out" 2>"$tmp/err"
	echo $? >"$tmp/rc"
}
rc_is() { [ "$(cat "$tmp/rc")" = "$1" ]; }
out_has() { grep -qF -- "$1" "$tmp/out"; }
err_has() { grep -qF -- "$1" "$tmp/err"; }
err_lines() { [ "$(grep -c "^$1" "$tmp/err")" = "$2" ]; }
out_empty() { [ ! -s "$tmp/out" ]; }

# --- usage: exit 2 -------------------------------------------------------
for args in "" "frobnicate $FIX/pod.json" "check" "check a.json b.json" \
	    "check $FIX/pod.json --root" "plan $FIX/pod.json --json" "plan"; do
	# shellcheck disable=SC2086
	run $args
	ok "usage error exits 2: '$args'" rc_is 2
done
run --help
ok "--help exits 0 and prints usage" eval 'rc_is 0 && out_has "usage: memoverlay-hints check"'

# --- check ---------------------------------------------------------------
run check "$FIX/pod.json"
ok "check pod.json is valid" rc_is 0
ok "check: data is overlaid with memoverlay" eval 'grep -E "^data .*/data .*overlay with memoverlay +exclusive +yes" "$tmp/out" >/dev/null'
ok "check: scratch is a shared tmpfs" eval 'grep -E "^scratch .*shared tmpfs" "$tmp/out" >/dev/null'
ok "check: cache is a plain bind with shared access" eval 'grep -E "^cache .*plain bind +shared" "$tmp/out" >/dev/null'
ok "check: /proc is a system mount" eval 'grep -E "/proc +system +not overlaid" "$tmp/out" >/dev/null'
ok "check: configmap is watchable" eval 'grep -E "/etc/config +watchable" "$tmp/out" >/dev/null'
ok "check: no problems on stderr" eval '[ ! -s "$tmp/err" ]'

run check "$FIX/pod.json" --json
ok "check --json is valid" eval 'rc_is 0 && out_has "\"valid\": true"'
ok "check --json: hint options are a word array" eval 'tr -d " \n" <"$tmp/out" | grep -qF "\"options\":[\"noexec\"]"'
ok "check --json: decision and access per mount" eval 'out_has "\"decision\": \"overlay with memoverlay\"" && out_has "\"access\": \"exclusive\""'

run check "$FIX/incompatible.json"
ok "incompatible replica: exit 1" rc_is 1
ok "incompatible replica: one error line per broken rule" err_lines "error:" 4
for rule in ro noexec noatime nosuid; do
	ok "incompatible replica: names mount, hint and rule $rule" \
		err_has "mount \"/vol\" is incompatible with its mount hint \"vol\": the hint (master) is $rule, so the mount must be $rule too"
done
ok "incompatible replica: the compatible one passes" eval 'grep -E "/vol-ok .* yes$" "$tmp/out" >/dev/null'

run check "$FIX/incompatible.json" --json
ok "check --json invalid: valid false, rules listed" eval 'rc_is 1 && out_has "\"valid\": false" && out_has "\"violated_rules\": ["'

run check "$FIX/malformed.json"
ok "malformed JSON: exit 1, one error naming the file" eval 'rc_is 1 && err_lines "error:" 1 && err_has "malformed.json: invalid JSON at line 1"'
run check "$FIX/no-such.json"
ok "missing file: exit 1 with the reason" eval 'rc_is 1 && err_has "no-such.json: cannot read: No such file or directory"'
run check "$FIX/mount_bad_types.json"
ok "every problem listed, one per line" eval 'rc_is 1 && err_lines "error:" 6'
run check "$FIX/hint_bad_values.json"
ok "warnings alone do not fail check" eval 'rc_is 0 && err_has "warning:" && err_lines "error:" 0'
run check "$FIX/hint_duplicate_source.json"
ok "duplicate hint sources fail check" eval 'rc_is 1 && err_has "mount hints \"first\" and \"second\" have the same source \"/same\""'

# --- plan ----------------------------------------------------------------
mkdir "$tmp/bin"
cat >"$tmp/bin/mount.fuse3" <<'SH'
#!/bin/sh
for a in "$@"; do printf '[%s]' "$a"; done
echo
SH
chmod +x "$tmp/bin/mount.fuse3"
runplan() { PATH="$tmp/bin:$PATH" sh "$tmp/out" >"$tmp/argv" 2>&1; }
argv_is() { [ "$(cat "$tmp/argv")" = "$1" ] || { sed 's/^/# argv: /' "$tmp/argv"; false; }; }

run plan "$FIX/pod.json"
ok "plan pod.json: exit 0" rc_is 0
ok "plan: one command, for /data only" eval '[ "$(grep -c "^mount.fuse3" "$tmp/out")" = 1 ]'
ok "plan: exact command" out_has "mount.fuse3 overlay /data -o lowerdir=/host/data,noexec -t memoverlay"
ok "plan: system mounts are explained, not mounted" out_has "# /proc: system mount, never overlaid"
ok "plan: empty-dir on tmpfs is explained" out_has "# /tmpdir: kubernetes empty-dir on tmpfs"
ok "plan: writable root is offered" out_has "# root: writable, may be overlaid as a whole with --root"
runplan
ok "plan runs in sh with the right argv" argv_is "[overlay][/data][-o][lowerdir=/host/data,noexec][-t][memoverlay]"

run plan "$FIX/pod.json" --root
ok "plan --root overlays the root, relative to the bundle" \
	out_has "mount.fuse3 overlay $(cd "$FIX" && pwd -P)/rootfs -o lowerdir=$(cd "$FIX" && pwd -P)/rootfs -t memoverlay"

run plan "$FIX/pod.json" --with-hints
ok "plan --with-hints passes hints= and hint_mount=" \
	out_has "lowerdir=/host/data,noexec,hints=$(cd "$FIX" && pwd -P)/pod.json,hint_mount=/data -t memoverlay"

run plan "$FIX/plan_paths.json"
ok "plan: spaces, quotes and colons" eval 'rc_is 0'
ok "plan: unknown data words are reported, not passed" out_has "# /with space: not passed to memoverlay: mode=0700"
runplan
ok "plan: quoting gives the daemon the exact words" \
	argv_is "[overlay][/with space][-o][lowerdir=/host/a\\:b it's,nodev,relatime,size=10m][-t][memoverlay]"

run plan "$FIX/plan_comma.json"
ok "plan: a comma in a path is an error, and nothing is planned" \
	eval 'rc_is 1 && out_empty && err_has "source \"/host/a,b\" contains a comma"'
run plan "$FIX/incompatible.json"
ok "plan: an incompatible replica fails the plan" eval 'rc_is 1 && out_empty && err_lines "error:" 4'

echo "1..$n"
[ "$failed" = 0 ]
