/* test_decide.c - overlay/share/access decisions, compatibility, Kata classes. */
#include "fixture.h"

static struct hints_hint mkhint(enum hints_type t, enum hints_share s, enum hints_lifecycle l,
				const char *opts)
{
	struct hints_hint h = { .name = "vol", .source = "/host/vol", .type = t, .share = s,
				.lifecycle = l };
	if (hints_options_parse_csv(opts, &h.opts) < 0)
		exit(1);
	return h;
}

static void test_overlay_share_access(void)
{
	/* Every combination, against the rules written out independently. */
	for (int t = HINTS_TYPE_TMPFS; t <= HINTS_TYPE_BIND; t++)
	for (int s = HINTS_SHARE_CONTAINER; s <= HINTS_SHARE_SHARED; s++)
	for (int l = HINTS_LIFECYCLE_SHARED; l <= HINTS_LIFECYCLE_CONTAINER; l++) {
		struct hints_hint h = mkhint(t, s, l, "");
		bool overlay = t == HINTS_TYPE_BIND && s == HINTS_SHARE_CONTAINER &&
			       l != HINTS_LIFECYCLE_SHARED;
		bool share = t == HINTS_TYPE_TMPFS && s == HINTS_SHARE_POD;
		bool exclusive = s == HINTS_SHARE_CONTAINER || share;
		const char *tn = hints_type_name(t), *sn = hints_share_name(s),
			   *ln = hints_lifecycle_name(l);
		is_int(hints_should_overlay(&h), overlay, "should_overlay %s/%s/%s", tn, sn, ln);
		is_int(hints_should_share(&h), share, "should_share %s/%s/%s", tn, sn, ln);
		is_int(hints_access_type(&h), exclusive ? HINTS_ACCESS_EXCLUSIVE : HINTS_ACCESS_SHARED,
		       "access %s/%s/%s", tn, sn, ln);
	}
}

static void test_compat(void)
{
	static const struct {
		const char *master, *replica;
		unsigned violated;
	} cases[] = {
		{ "ro", "rw", HINTS_COMPAT_RO },
		{ "ro", "ro", 0 },
		{ "rw", "ro", 0 },                      /* replica may be stricter */
		{ "noexec", "exec", HINTS_COMPAT_NOEXEC },
		{ "noexec", "", HINTS_COMPAT_NOEXEC },
		{ "noexec", "noexec", 0 },
		{ "noatime", "relatime", HINTS_COMPAT_NOATIME },
		{ "noatime", "atime,noatime", 0 },
		{ "nosuid", "suid", HINTS_COMPAT_NOSUID },
		{ "nosuid", "nosuid", 0 },
		{ "nodev", "dev", 0 },                  /* not a gVisor rule */
		{ "ro,noexec,noatime,nosuid", "rw",
		  HINTS_COMPAT_RO | HINTS_COMPAT_NOEXEC | HINTS_COMPAT_NOATIME | HINTS_COMPAT_NOSUID },
		{ "ro,noexec,noatime,nosuid", "nosuid,noatime,noexec,ro", 0 },
		{ "", "", 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct hints_options m, r;
		hints_options_parse_csv(cases[i].master, &m);
		hints_options_parse_csv(cases[i].replica, &r);
		is_int(hints_check_compatible(&m, &r), cases[i].violated,
		       "master \"%s\", replica \"%s\"", cases[i].master, cases[i].replica);
		hints_options_free(&m);
		hints_options_free(&r);
	}

	struct hints_hint h = mkhint(HINTS_TYPE_BIND, HINTS_SHARE_CONTAINER, HINTS_LIFECYCLE_POD, "ro");
	char *msg = hints_compat_message("/data", &h, HINTS_COMPAT_NOEXEC);
	is_str(msg, "mount \"/data\" is incompatible with its mount hint \"vol\": the hint (master) "
		    "is noexec, so the mount must be noexec too", "the message names mount, hint, rule");
	free(msg);
	msg = hints_compat_message("/d\nx", &h, HINTS_COMPAT_RO);
	ok(msg && !strchr(msg, '\n') && strstr(msg, "\"/d\\nx\"") && strstr(msg, "must be ro too"),
	   "a mount name with a newline stays on one line");
	free(msg);
	is_str(hints_compat_rule_word(HINTS_COMPAT_NOATIME), "noatime", "rule word noatime");
	is_str(hints_compat_rule_word(HINTS_COMPAT_NOSUID), "nosuid", "rule word nosuid");
	hints_options_free(&h.opts);
}

static void test_incompatible_fixture(void)
{
	struct hints_config *cfg = load_fixture("incompatible.json");
	const struct hints_mount *bad = hints_find_mount(cfg, "/vol");
	const struct hints_mount *good = hints_find_mount(cfg, "/vol-ok");
	const struct hints_hint *h = bad ? hints_find_hint(cfg, bad->source) : NULL;
	ok(h && good, "incompatible.json: hint and both mounts found");
	if (h && good) {
		is_int(hints_check_compatible(&h->opts, &bad->opts),
		       HINTS_COMPAT_RO | HINTS_COMPAT_NOEXEC | HINTS_COMPAT_NOATIME | HINTS_COMPAT_NOSUID,
		       "rw,exec,atime,suid replica breaks all four rules");
		is_int(hints_check_compatible(&h->opts, &good->opts), 0,
		       "ro,noexec,noatime,nosuid replica is compatible");
		is_int(hints_decide(h, good, HINTS_CLASS_REGULAR), HINTS_DECIDE_BIND,
		       "a read-only replica is not overlaid (nothing to write)");
	}
	hints_config_free(cfg);
}

static void test_effective_flags(void)
{
	struct hints_hint h = mkhint(HINTS_TYPE_BIND, HINTS_SHARE_CONTAINER, HINTS_LIFECYCLE_POD,
				     "noexec,nodev,sync,size=1m");
	struct hints_mount m = { .destination = "/d" };
	hints_options_parse_csv("nosuid,relatime", &m.opts);
	is_int(hints_effective_flags(&h, &m),
	       HINTS_OPT_NOEXEC | HINTS_OPT_NODEV | HINTS_OPT_NOSUID | HINTS_OPT_RELATIME,
	       "mount flags plus the hint's restrictions, not its other flags");
	is_int(hints_effective_flags(NULL, &m), HINTS_OPT_NOSUID | HINTS_OPT_RELATIME,
	       "no hint: the mount's own flags");
	is_int(hints_effective_flags(&h, NULL), HINTS_OPT_NOEXEC | HINTS_OPT_NODEV,
	       "no mount: the hint's restrictions");
	hints_options_free(&m.opts);
	hints_options_free(&h.opts);
}

static enum hints_mount_class classify(const char *dest, const char *src, const char *type,
				       bool on_tmpfs, bool regular)
{
	struct hints_mount m = { .destination = (char *)dest, .source = (char *)src,
				 .type = (char *)type };
	struct hints_host_facts f = { on_tmpfs, regular };
	return hints_classify_mount(&m, &f);
}

static void test_classify(void)
{
	static const struct {
		const char *dest, *src, *type;
		bool on_tmpfs, regular;
		enum hints_mount_class want;
	} cases[] = {
		{ "/proc", "proc", "proc", false, false, HINTS_CLASS_SYSTEM },
		{ "/proc/sys/kernel", "/x", "bind", false, false, HINTS_CLASS_SYSTEM },
		{ "/sys", "sysfs", "sysfs", false, false, HINTS_CLASS_SYSTEM },
		{ "/sys/fs/cgroup/", "cgroup", "cgroup", false, false, HINTS_CLASS_SYSTEM },
		{ "//proc//self", "x", "bind", false, false, HINTS_CLASS_SYSTEM },
		{ "/data/../proc", "x", "bind", false, false, HINTS_CLASS_SYSTEM },
		{ "/procfs", "x", "bind", false, false, HINTS_CLASS_REGULAR },
		{ "/system", "x", "bind", false, false, HINTS_CLASS_REGULAR },
		{ "/dev", "tmpfs", "tmpfs", false, false, HINTS_CLASS_HOST_DEVICE },
		{ "/dev/shm", "shm", "tmpfs", false, false, HINTS_CLASS_HOST_DEVICE },
		{ "/mnt/disk", "/dev/sdb", "bind", false, false, HINTS_CLASS_HOST_DEVICE },
		{ "/dev/termination-log", "/var/log/t", "bind", false, true, HINTS_CLASS_REGULAR },
		{ "/devices", "x", "bind", false, false, HINTS_CLASS_REGULAR },
		{ "/tmp", "/k/pods/p/volumes/kubernetes.io~empty-dir/v", "bind", true, false,
		  HINTS_CLASS_EPHEMERAL },
		{ "/tmp", "/k/pods/p/volumes/kubernetes.io~empty-dir/v", "tmpfs", false, false,
		  HINTS_CLASS_EPHEMERAL },
		{ "/tmp", "/k/pods/p/volumes/kubernetes.io~empty-dir/v/", "tmpfs", false, false,
		  HINTS_CLASS_EPHEMERAL },
		{ "/tmp", "/k/pods/p/volumes/kubernetes.io~empty-dir/v", "bind", false, false,
		  HINTS_CLASS_REGULAR },       /* an empty-dir on disk persists */
		{ "/tmp", "/k/kubernetes.io~empty-dir/v/sub", "tmpfs", false, false,
		  HINTS_CLASS_REGULAR },
		{ "/etc/cfg", "/k/pods/p/volumes/kubernetes.io~configmap/c", "bind", false, false,
		  HINTS_CLASS_WATCHABLE },
		{ "/etc/sec", "/k/pods/p/volumes/kubernetes.io~secret/s", "bind", true, false,
		  HINTS_CLASS_WATCHABLE },
		{ "/etc/sec", "kubernetes.io~secret", "bind", false, false, HINTS_CLASS_REGULAR },
		{ "/data", NULL, NULL, false, false, HINTS_CLASS_REGULAR },
		{ "relative/proc", "x", "bind", false, false, HINTS_CLASS_REGULAR },
		{ "proc", "x", "bind", false, false, HINTS_CLASS_SYSTEM },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum hints_mount_class got = classify(cases[i].dest, cases[i].src, cases[i].type,
						      cases[i].on_tmpfs, cases[i].regular);
		if (!ok(got == cases[i].want, "classify %s <- %s is %s", cases[i].dest,
			cases[i].src ? cases[i].src : "(none)", hints_class_name(cases[i].want)))
			printf("# got %s\n", hints_class_name(got));
	}
	struct hints_mount m = { .destination = "/proc" };
	is_int(hints_classify_mount(&m, NULL), HINTS_CLASS_SYSTEM, "facts may be NULL");
}

static void test_decide(void)
{
	struct hints_hint ov = mkhint(HINTS_TYPE_BIND, HINTS_SHARE_CONTAINER, HINTS_LIFECYCLE_POD, "");
	struct hints_hint sh = mkhint(HINTS_TYPE_TMPFS, HINTS_SHARE_POD, HINTS_LIFECYCLE_SHARED, "");
	struct hints_hint pb = mkhint(HINTS_TYPE_BIND, HINTS_SHARE_SHARED, HINTS_LIFECYCLE_POD, "");
	struct hints_hint ro = mkhint(HINTS_TYPE_BIND, HINTS_SHARE_CONTAINER, HINTS_LIFECYCLE_POD, "ro");
	struct hints_mount m = { .destination = "/d" };

	is_int(hints_decide(&ov, &m, HINTS_CLASS_REGULAR), HINTS_DECIDE_OVERLAY, "overlay hint");
	is_int(hints_decide(&ov, &m, HINTS_CLASS_WATCHABLE), HINTS_DECIDE_OVERLAY,
	       "watchable volumes may be overlaid");
	is_int(hints_decide(&ov, &m, HINTS_CLASS_SYSTEM), HINTS_DECIDE_NONE, "system: never");
	is_int(hints_decide(&ov, &m, HINTS_CLASS_HOST_DEVICE), HINTS_DECIDE_NONE, "device: never");
	is_int(hints_decide(&ov, &m, HINTS_CLASS_EPHEMERAL), HINTS_DECIDE_BIND,
	       "ephemeral empty-dir needs no overlay");
	is_int(hints_decide(&ro, &m, HINTS_CLASS_REGULAR), HINTS_DECIDE_BIND,
	       "a read-only master makes the mount read-only: no overlay");
	is_int(hints_decide(&sh, &m, HINTS_CLASS_REGULAR), HINTS_DECIDE_SHARED_TMPFS, "shared tmpfs");
	is_int(hints_decide(&pb, &m, HINTS_CLASS_REGULAR), HINTS_DECIDE_BIND, "plain bind");
	is_int(hints_decide(NULL, &m, HINTS_CLASS_REGULAR), HINTS_DECIDE_NONE, "no hint");

	is_int(hints_mount_access(&ov, HINTS_CLASS_REGULAR), HINTS_ACCESS_EXCLUSIVE,
	       "container volume: exclusive");
	is_int(hints_mount_access(&ov, HINTS_CLASS_WATCHABLE), HINTS_ACCESS_SHARED,
	       "configmap/secret: shared whatever the hint says");
	is_int(hints_mount_access(NULL, HINTS_CLASS_REGULAR), HINTS_ACCESS_SHARED,
	       "no hint: shared");
	is_str(hints_decision_name(HINTS_DECIDE_OVERLAY), "overlay with memoverlay", "decision name");
	is_str(hints_decision_name(HINTS_DECIDE_SHARED_TMPFS), "shared tmpfs", "decision name");
	is_str(hints_decision_name(HINTS_DECIDE_BIND), "plain bind", "decision name");
	hints_options_free(&ro.opts);
}

static void test_path_clean(void)
{
	static const char *const cases[][2] = {
		{ "/", "/" }, { "", "/" }, { "//a//b/", "/a/b" }, { "/a/./b/.", "/a/b" },
		{ "/a/b/../c", "/a/c" }, { "/../..", "/" }, { "/a/..", "/" }, { "a/b", "/a/b" },
		{ "/a/b/../../../c", "/c" }, { "/..a/b..", "/..a/b.." },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *got = hints_path_clean(cases[i][0]);
		is_str(got, cases[i][1], "clean \"%s\"", cases[i][0]);
		free(got);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1)
		fixture_dir = argv[1];
	test_overlay_share_access();
	test_compat();
	test_incompatible_fixture();
	test_effective_flags();
	test_classify();
	test_decide();
	test_path_clean();
	return tap_done();
}
