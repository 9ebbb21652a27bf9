/* test_options.c - the daemon's option words (fs/options.c) as a user or a
 * container runtime gives them: every word parses, a bad value is one line
 * naming it, a mount flag word means on the command line what it means in
 * a config.json, paths are resolved once when parsed, and the defaults.
 *
 * Runs without libfuse: options.c, hints_apply.c, idmap.c, memory_budget.c
 * and libhints. Works in a fresh temporary directory:
 *   l1/  l2/  m/  link -> l2  file
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "hints.h"
#include "tap.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static char dir[64];            /* the temporary directory */
static char err[4096];          /* what the last parse printed on stderr */
static char lo1[128];           /* "lowerdir=DIR/l1" */

static char *at(const char *name)
{
	static char buf[4][256];
	static int k;
	char *p = buf[k++ % 4];
	snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
	return p;
}

/* config_parse on argv (NULL-terminated, after argv[0]); stderr goes to err. */
static int parse_argv(struct config *c, char *const *args)
{
	char *argv[32] = { "memoverlay" };
	int argc = 1;
	while (*args && argc < 31)
		argv[argc++] = *args++;
	argv[argc] = NULL;

	FILE *tmp = tmpfile();
	int saved = dup(2);
	fflush(stderr);
	dup2(fileno(tmp), 2);
	int r = config_parse(c, argc, argv);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	rewind(tmp);
	size_t n = fread(err, 1, sizeof(err) - 1, tmp);
	err[n] = '\0';
	fclose(tmp);
	return r;
}

/* memoverlay DIR/m -o lowerdir=DIR/l1:DIR/l2,OPTS */
static int parse(struct config *c, const char *opts)
{
	char o[1024];
	snprintf(o, sizeof(o), "lowerdir=%s:%s%s%s", at("l1"), at("l2"), *opts ? "," : "", opts);
	return parse_argv(c, (char *[]){ at("m"), "-o", o, NULL });
}

static int lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* Fails: exactly one line on stderr, and it names `named`. */
static void refused(int r, const char *what, const char *named)
{
	ok(r == -1 && lines(err) == 1 && strstr(err, named), "%s: refused, one line naming '%s'",
	   what, named);
	if (r != -1 || lines(err) != 1 || !strstr(err, named))
		diag("r=%d, stderr: %s", r, err);
}

/* ---- every word parses ---- */

/* The daemon's own words, each with a good value. */
static const char *const own_words[] = {
	"size=64m", "size=50%", "size=unlimited", "size=0", "size=1t", "nr_inodes=1k", "nr_inodes=0",
	"medium=memory", "medium=dir=/tmp", "entry_timeout=0", "entry_timeout=2.5",
	"attr_timeout=3", "max_threads=1", "max_threads=1024", "uidmapping=0:1000:1",
	"gidmapping=0:0:10:20:20:5", "squash_to_root", "squash_to_uid=5", "squash_to_gid=0",
	"allow_other", "debug", "writeback", "nowriteback", "seccomp=on", "seccomp=off",
	"passthrough=auto", "passthrough=off",
	"io_uring=auto", "io_uring=on", "io_uring=off",
	"hints=/x.json", "hint_mount=/data", "fsname=a\\,b", "source=src",
	"subtype=memoverlay", "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
	"fscontext=x", "defcontext=x", "rootcontext=x",
	"auto", "noauto", "user", "nouser", "users", "owner", "nofail", "_netdev", "loop",
	"default_permissions", "x-systemd.automount", "x-mount.mkdir=0755",
	"", "lowerdir=/usr:/etc",
	/* kernel overlayfs feature words container engines send (no effect) */
	"index=on", "index=off", "metacopy=on", "metacopy=off", "redirect_dir=on",
	"redirect_dir=off", "redirect_dir=follow", "redirect_dir=nofollow", "xino=on",
	"xino=off", "xino=auto", "nfs_export=on", "nfs_export=off",
	/* containers/storage's id mappings start with a colon */
	"uidmapping=:0:1000:1", "gidmapping=:0:100000:65536:1:1:1",
};

/* Every word of libhints' flag table, and whether the daemon takes it. */
static const struct {
	const char *word;
	bool taken;
} flag_words[] = {
	{ "async", true }, { "atime", true }, { "defaults", true }, { "dev", true },
	{ "diratime", true }, { "dirsync", true }, { "exec", true }, { "noatime", true },
	{ "nodev", true }, { "nodiratime", true }, { "noexec", true }, { "nomand", true },
	{ "norelatime", true }, { "nostrictatime", true }, { "nosuid", true },
	{ "relatime", true }, { "ro", true }, { "rw", true }, { "strictatime", true },
	{ "suid", true }, { "sync", true },
	/* what memoverlay does not do */
	{ "mand", false }, { "bind", false }, { "rbind", false }, { "remount", false },
};

static void test_every_word(void)
{
	struct config c;
	for (size_t i = 0; i < N(own_words); i++) {
		int r = parse(&c, own_words[i]);
		ok(r == 0 && err[0] == '\0', "'%s' parses", own_words[i]);
		if (r != 0)
			diag("stderr: %s", err);
		config_free(&c);
	}
	for (size_t i = 0; i < N(flag_words); i++) {
		ok(hints_option_lookup(flag_words[i].word) != NULL, "'%s' is in libhints' table",
		   flag_words[i].word);
		int r = parse(&c, flag_words[i].word);
		if (flag_words[i].taken)
			ok(r == 0 && err[0] == '\0', "'%s' parses", flag_words[i].word);
		else
			refused(r, flag_words[i].word, "unknown option");
		config_free(&c);
	}
}

/* What the words mean, one by one. */
static void test_meanings(void)
{
	struct config c, d;
	ok(parse(&d, "") == 0, "no options: parses");

	ok(parse(&c, "size=64m,nr_inodes=1k") == 0 && c.size == 64u << 20 && c.size_set &&
	   c.nr_inodes == 1024, "size=64m, nr_inodes=1k");
	config_free(&c);
	ok(parse(&c, "size=1g,size=unlimited") == 0 && c.size == 0 && c.size_set,
	   "size=unlimited: no limit, and the later word wins");
	config_free(&c);
	ok(parse(&c, "medium=dir=/tmp") == 0 && c.medium_dir && strcmp(c.medium_dir, "/tmp") == 0,
	   "medium=dir=/tmp");
	config_free(&c);
	ok(parse(&c, "medium=dir=/tmp,medium=memory") == 0 && !c.medium_dir, "medium=memory: a memfd");
	config_free(&c);
	ok(parse(&c, "entry_timeout=2.5") == 0 && c.entry_timeout == 2.5 && c.attr_timeout == 1.0 &&
	   c.timeouts_set, "entry_timeout=2.5; attr_timeout stays 1");
	config_free(&c);
	ok(parse(&c, "max_threads=4") == 0 && c.max_threads == 4 && d.max_threads == 1,
	   "max_threads=4 (default 1)");
	config_free(&c);
	ok(parse_argv(&c, (char *[]){ at("m"), "-o", lo1, "-o", "max_threads=4", "-s", NULL }) == 0 &&
	   c.max_threads == 1, "-s: one thread");
	config_free(&c);
	ok(parse(&c, "uidmapping=0:1000:1,gidmapping=0:0:10:20:20:5") == 0 && c.uidmap.n == 1 &&
	   c.uidmap.r[0].host == 1000 && c.gidmap.n == 2, "uidmapping, gidmapping");
	config_free(&c);
	ok(parse(&c, "squash_to_root") == 0 && c.squash_uid == 0 && c.squash_gid == 0 &&
	   d.squash_uid == -1 && d.squash_gid == -1, "squash_to_root (default: real owners)");
	config_free(&c);
	ok(parse(&c, "squash_to_uid=5,squash_to_gid=7") == 0 && c.squash_uid == 5 &&
	   c.squash_gid == 7, "squash_to_uid, squash_to_gid");
	config_free(&c);
	ok(parse(&c, "seccomp=off,nowriteback,debug,allow_other") == 0 && !c.seccomp &&
	   !c.writeback && c.debug && c.foreground && c.allow_other && c.allow_other_set &&
	   d.seccomp && d.writeback && !d.debug && !d.allow_other_set,
	   "seccomp=off, nowriteback, debug (implies -f), allow_other");
	config_free(&c);
	ok(parse(&c, "passthrough=off") == 0 && !c.passthrough && d.passthrough,
	   "passthrough=off (default auto)");
	config_free(&c);
	ok(parse(&c, "io_uring=on") == 0 && c.io_uring == IO_URING_ON && d.io_uring == IO_URING_AUTO,
	   "io_uring=on (default auto)");
	config_free(&c);
	ok(parse(&c, "io_uring=on,io_uring=off") == 0 && c.io_uring == IO_URING_OFF,
	   "io_uring: the later word wins");
	config_free(&c);
	ok(parse(&c, "hints=/x.json,hint_mount=/data,fsname=a\\,b") == 0 && c.hints_path &&
	   strcmp(c.hints_path, "/x.json") == 0 && strcmp(c.hint_mount, "/data") == 0 &&
	   strcmp(c.source, "a,b") == 0, "hints=, hint_mount=, fsname= (\\, is a comma)");
	config_free(&c);
	ok(parse_argv(&c, (char *[]){ "overlay", at("m"), "-o", lo1, NULL }) == 0 &&
	   strcmp(c.source, "overlay") == 0 && strcmp(d.source, "memoverlay") == 0,
	   "SOURCE MOUNTPOINT: the source is the fsname (default memoverlay)");
	config_free(&c);
	ok(parse(&c, "context=\"a,b\",nofail,x-foo=bar,defaults,nomand,nodiratime,diratime") == 0 &&
	   c.flags == d.flags && c.flags == 0, "ignored words and no-op flag words change nothing");
	config_free(&c);
	ok(parse(&c, "ro,noexec,nosuid,nodev,sync,dirsync") == 0 &&
	   c.flags == (HINTS_OPT_RDONLY | HINTS_OPT_NOEXEC | HINTS_OPT_NOSUID | HINTS_OPT_NODEV |
		       HINTS_OPT_SYNC | HINTS_OPT_DIRSYNC), "the kernel's flags");
	config_free(&c);
	ok(parse(&c, "ro,noexec,nosuid,nodev,sync,rw,exec,suid,dev,async") == 0 && c.flags == 0,
	   "each undone by its opposite");
	config_free(&c);

	is_int(parse_argv(&c, (char *[]){ "-h", NULL }), CONFIG_HELP, "-h");
	config_free(&c);
	is_int(parse_argv(&c, (char *[]){ at("m"), "--version", NULL }), CONFIG_VERSION, "--version");
	config_free(&c);
	config_free(&d);
}

/* ---- bad values: one line naming the value ---- */

static void test_bad_values(void)
{
	static const struct {
		const char *opts;
		const char *named;
	} bad[] = {
		{ "size=abc", "abc" }, { "size=101%", "101%" }, { "size=1x", "1x" },
		{ "size=99999999999t", "99999999999t" }, { "size=", "size" },
		{ "nr_inodes=5%", "5%" }, { "nr_inodes=-1", "-1" },
		{ "medium=disk", "disk" }, { "medium=dir=rel", "dir=rel" },
		{ "entry_timeout=-1", "-1" }, { "attr_timeout=x", "x" }, { "attr_timeout=1e10", "1e10" },
		{ "max_threads=0", "0" }, { "max_threads=1025", "1025" }, { "max_threads=+4", "+4" },
		{ "uidmapping=1:2", "1:2" }, { "gidmapping=0:0:0", "0:0:0" },
		{ "squash_to_uid=-1", "-1" }, { "squash_to_gid=4294967295", "4294967295" },
		{ "seccomp=maybe", "maybe" },
		{ "passthrough=on", "on" }, { "passthrough=", "passthrough" },
		{ "passthrough", "passthrough" },
		{ "io_uring=yes", "yes" }, { "io_uring=", "io_uring" }, { "io_uring", "io_uring" },
		{ "io_uring=ON", "ON" },
		{ "lowerdir=a::b", "a::b" }, { "lowerdir=", "lowerdir" },
		{ "frobnicate", "frobnicate" }, { "bogus_opt=17", "bogus_opt" }, { "ro=1", "ro=1" },
		{ "lowerdir", "lowerdir" }, { "squash_to_root=1", "squash_to_root" },
		{ "allow_other=1", "allow_other" }, { "RO", "RO" }, { "shared", "shared" },
		{ "upperdir=/x", "upperdir" }, { "workdir", "workdir" },
		{ "workdir=/x", "workdir" }, { "upperdir", "upperdir" },
		{ "volatile", "volatile" }, { "volatile=1", "volatile" },
		{ "userxattr", "userxattr" }, { "userxattr=y", "userxattr" },
		{ "writeback_delay=100", "writeback_delay" }, { "writeback_delay", "writeback_delay" },
		{ "index=maybe", "index=maybe" }, { "index", "index" }, { "metacopy=", "metacopy" },
		{ "redirect_dir=yes", "redirect_dir=yes" }, { "xino=1", "xino=1" },
		{ "nfs_export=auto", "nfs_export=auto" },
		{ "uidmapping=:", ":" }, { "uidmapping=::0:1:1", "::0:1:1" },
	};
	struct config c;
	for (size_t i = 0; i < N(bad); i++) {
		refused(parse(&c, bad[i].opts), bad[i].opts, bad[i].named);
		config_free(&c);
	}
	refused(parse_argv(&c, (char *[]){ at("m"), NULL }), "no lowerdir", "lowerdir");
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ "-o", "lowerdir=/", NULL }), "no mountpoint", "mountpoint");
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ at("m"), "-o", NULL }), "-o without a value", "-o");
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ at("m"), "-x", NULL }), "-x", "-x");
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ "a", "b", "c", "-o", "lowerdir=/", NULL }),
		"three positional arguments", "c");
	config_free(&c);
}

/* ---- upperdir= and workdir= ---- */

static void test_upperdir(void)
{
	struct config c;
	char o[1024], real_u[4096], real_w[4096];
	if (mkdir(at("u"), 0755) < 0 || mkdir(at("w"), 0755) < 0 || mkdir(at("u/in"), 0755) < 0 ||
	    !realpath(at("u"), real_u) || !realpath(at("w"), real_w))
		diag("cannot make u and w");

	snprintf(o, sizeof(o), "upperdir=%s,workdir=%s", at("u"), at("w"));
	int r = parse(&c, o);
	ok(r == 0 && err[0] == '\0', "upperdir= with workdir= parses");
	if (r == 0) {
		is_str(c.upperdir, real_u, "upperdir resolved");
		is_str(c.workdir, real_w, "workdir resolved");
		ok(!c.volatile_wb && !c.userxattr, "not volatile, trusted.* markers by default");
		ok(c.writeback_delay_ms == 100, "idle write-back after 100 ms by default");
	}
	config_free(&c);
	static const struct {
		const char *value;
		unsigned ms;
	} delays[] = { { "off", 0 }, { "0", 0 }, { "1", 1 }, { "2500", 2500 }, { "3600000", 3600000 } };
	for (size_t i = 0; i < N(delays); i++) {
		snprintf(o, sizeof(o), "upperdir=%s,workdir=%s,writeback_delay=%s", at("u"), at("w"),
			 delays[i].value);
		r = parse(&c, o);
		ok(r == 0 && c.writeback_delay_ms == delays[i].ms, "writeback_delay=%s", delays[i].value);
		config_free(&c);
	}
	static const char *const bad_delays[] = { "soon", "-1", "3600001", "", "1.5", "10ms", "0x10" };
	for (size_t i = 0; i < N(bad_delays); i++) {
		snprintf(o, sizeof(o), "upperdir=%s,workdir=%s,writeback_delay=%s", at("u"), at("w"),
			 bad_delays[i]);
		refused(parse(&c, o), o, bad_delays[i][0] ? bad_delays[i] : "writeback_delay");
		config_free(&c);
	}
	snprintf(o, sizeof(o), "workdir=%s,volatile,userxattr,upperdir=%s", at("w"), at("u"));
	r = parse(&c, o);
	ok(r == 0 && c.volatile_wb && c.userxattr, "volatile and userxattr with upperdir=");
	config_free(&c);
	/* containerd: one -o group per word */
	char wo[512], uo[512], lo[512];
	snprintf(wo, sizeof(wo), "workdir=%s", at("w"));
	snprintf(uo, sizeof(uo), "upperdir=%s", at("u"));
	snprintf(lo, sizeof(lo), "lowerdir=%s:%s", at("l1"), at("l2"));
	r = parse_argv(&c, (char *[]){ "overlay", at("m"), "-o", wo, "-o", uo, "-o", lo, NULL });
	ok(r == 0 && c.upperdir && c.workdir && c.nlower == 2, "containerd's -o groups parse");
	config_free(&c);

	static const struct {
		const char *fmt;
		const char *named;
	} bad[] = {
		{ "upperdir=%s", "workdir" },                          /* one without the other */
		{ "workdir=%s", "upperdir" },
		{ "upperdir=%1$s,workdir=%1$s", "overlap" },          /* the same */
		{ "upperdir=%1$s,workdir=%1$s/in", "overlap" },       /* one inside the other */
		{ "upperdir=%2$s/l1,workdir=%1$s", "lowerdir" },      /* a layer */
		{ "upperdir=%2$s/m,workdir=%1$s", "mountpoint" },
		{ "upperdir=%2$s,workdir=%1$s", "overlaps" },         /* above them all */
		{ "upperdir=%2$s/nothere,workdir=%1$s", "nothere" },
		{ "upperdir=%2$s/file,workdir=%1$s", "file" },
	};
	for (size_t i = 0; i < N(bad); i++) {
		snprintf(o, sizeof(o), bad[i].fmt, i < 2 ? (i == 0 ? at("u") : at("w")) : at("w"),
			 dir);
		if (i == 2 || i == 3)
			snprintf(o, sizeof(o), bad[i].fmt, at("u"));
		refused(parse(&c, o), o, bad[i].named);
		config_free(&c);
	}
	/* another filesystem: rename(2) from workdir into upperdir fails */
	struct stat a, b;
	if (stat("/dev/shm", &b) == 0 && stat(dir, &a) == 0 && a.st_dev != b.st_dev) {
		snprintf(o, sizeof(o), "upperdir=%s,workdir=/dev/shm", at("u"));
		refused(parse(&c, o), "workdir on another filesystem", "not on the filesystem");
		config_free(&c);
	} else {
		ok(1, "# SKIP /dev/shm is on the filesystem of %s", dir);
	}
	rmdir(at("u/in"));
	rmdir(at("u"));
	rmdir(at("w"));
}

/* ---- one vocabulary with config.json ---- */

static unsigned hints_flags(const char *csv)
{
	struct hints_options o;
	if (hints_options_parse_csv(csv, &o) < 0)
		return ~0u;
	unsigned f = o.flags;
	hints_options_free(&o);
	return f;
}

static void same_as_hints(const char *csv)
{
	struct config c;
	int r = parse(&c, csv);
	unsigned h = hints_flags(csv);
	ok(r == 0 && c.flags == h, "'%s' means the same on the command line and in a config.json",
	   csv);
	if (r != 0 || c.flags != h)
		diag("r=%d daemon %#x, hints %#x; %s", r, c.flags, h, err);
	config_free(&c);
}

static void test_one_vocabulary(void)
{
	/* Each word the daemon takes, alone and after its opposite. */
	for (size_t i = 0; i < N(flag_words); i++)
		if (flag_words[i].taken)
			same_as_hints(flag_words[i].word);
	static const char *const seqs[] = {
		"sync,async", "async,sync", "async", "ro,sync,dirsync,async", "ro,rw", "rw,ro",
		"noexec,exec", "exec,noexec", "nosuid,suid", "nodev,dev", "dev,nodev",
		"strictatime,nostrictatime", "relatime,norelatime", "nodiratime,diratime",
		"noatime,atime", "atime,noatime", "nomand,defaults,sync",
	};
	for (size_t i = 0; i < N(seqs); i++)
		same_as_hints(seqs[i]);

	/* The atime modes are one choice on the command line: the later word
	 * wins, where containerd's table keeps each flag on its own. */
	static const struct {
		const char *csv;
		enum atime_mode mode;
	} atime[] = {
		{ "", ATIME_RELATIME }, { "noatime", ATIME_NOATIME }, { "strictatime", ATIME_STRICT },
		{ "noatime,relatime", ATIME_RELATIME }, { "relatime,noatime", ATIME_NOATIME },
		{ "strictatime,atime", ATIME_RELATIME }, { "noatime,strictatime", ATIME_STRICT },
		{ "strictatime,noatime", ATIME_NOATIME }, { "strictatime,nostrictatime", ATIME_RELATIME },
		{ "strictatime,norelatime", ATIME_STRICT }, { "noatime,nostrictatime", ATIME_NOATIME },
	};
	for (size_t i = 0; i < N(atime); i++) {
		struct config c;
		int r = parse(&c, atime[i].csv);
		config_finish(&c);
		ok(r == 0 && c.atime == atime[i].mode, "atime mode after '%s'", atime[i].csv);
		config_free(&c);
	}
}

/* ---- paths resolved once ---- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		diag("cannot write %s", path);
}

/* A config.json whose mount /data has SOURCE, with options OPTS (JSON). */
static const char *spec(const char *name, const char *source, const char *opts)
{
	char text[8192];
	snprintf(text, sizeof(text),
		 "{\"mounts\": [{\"destination\": \"/data\", \"type\": \"bind\", "
		 "\"source\": \"%s\", \"options\": [%s]}]}", source, opts);
	write_file(at(name), text);
	return at(name);
}

static bool same_inode(int fd, const char *path)
{
	struct stat a, b;
	return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
	       a.st_ino == b.st_ino;
}

static void test_paths(void)
{
	struct config c;
	char real_l1[4096], real_l2[4096], real_m[4096];
	if (!realpath(at("l1"), real_l1) || !realpath(at("l2"), real_l2) ||
	    !realpath(at("m"), real_m))
		diag("realpath failed");

	/* Relative, through a symlink, with a trailing slash. */
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)) || chdir(dir) < 0)
		diag("chdir failed");
	int r = parse_argv(&c, (char *[]){ "m", "-o", "lowerdir=l1:link/", NULL });
	if (chdir(cwd) < 0)
		diag("chdir back failed");
	ok(r == 0 && c.nlower == 2, "relative lowerdir and mountpoint parse");
	if (r == 0 && c.nlower == 2) {
		is_str(c.mountpoint, real_m, "mountpoint made absolute");
		is_str(c.lower[0].given, "l1", "layer 0 keeps the name given, for messages");
		is_str(c.lower[0].path, real_l1, "layer 0 resolved");
		is_str(c.lower[1].path, real_l2, "layer 1 resolved through the symlink");
		ok(same_inode(c.lower[0].fd, real_l1) && same_inode(c.lower[1].fd, real_l2),
		   "each layer opened once, when parsed");

		/* Resolved once: pointing the symlink elsewhere afterwards changes
		 * neither the layer nor what the hints are matched against. */
		if (unlink(at("link")) < 0 || symlink("l1", at("link")) < 0)
			diag("cannot re-point the link");
		c.hints_path = strdup(spec("l2.json", real_l2, "\"ro\""));
		FILE *tmp = tmpfile();
		int saved = dup(2);
		dup2(fileno(tmp), 2);
		int h = config_apply_hints(&c);
		dup2(saved, 2);
		close(saved);
		fclose(tmp);
		ok(h == 0 && (c.flags & HINTS_OPT_RDONLY), "the hints matched the layer as parsed (l2)");
		ok(same_inode(c.lower[1].fd, real_l2), "layer 1 still the directory parsed");
		if (unlink(at("link")) < 0 || symlink("l2", at("link")) < 0)
			diag("cannot re-point the link back");
	}
	config_free(&c);

	/* Only the last lowerdir= is resolved. */
	ok(parse_argv(&c, (char *[]){ at("m"), "-o", "lowerdir=/nonexistent", "-o", lo1, NULL }) == 0 &&
	   c.nlower == 1 && strcmp(c.lower[0].path, real_l1) == 0,
	   "lowerdir given twice: the later one");
	config_free(&c);

	char o[512];
	snprintf(o, sizeof(o), "lowerdir=%s:%s", at("l1"), at("nonexistent"));
	refused(parse_argv(&c, (char *[]){ at("m"), "-o", o, NULL }), "a missing layer",
		at("nonexistent"));
	config_free(&c);
	snprintf(o, sizeof(o), "lowerdir=%s", at("file"));
	refused(parse_argv(&c, (char *[]){ at("m"), "-o", o, NULL }), "a file as a layer",
		at("file"));
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ at("nomnt"), "-o", "lowerdir=/", NULL }),
		"a missing mountpoint", at("nomnt"));
	config_free(&c);
	refused(parse_argv(&c, (char *[]){ at("file"), "-o", "lowerdir=/", NULL }),
		"a file as the mountpoint", at("file"));
	config_free(&c);
	snprintf(o, sizeof(o), "lowerdir=%s:%s", at("l2"), dir);
	refused(parse_argv(&c, (char *[]){ at("l1"), "-o", o, NULL }),
		"the mountpoint inside a layer", "inside lowerdir");
	config_free(&c);
}

/* ---- defaults ---- */

static void test_defaults(void)
{
	struct config c;
	ok(parse(&c, "") == 0, "no options");
	config_finish(&c);
	ok(c.entry_timeout == 86400.0 && c.attr_timeout == 86400.0,
	   "exclusive access: entries and attributes cached for a day");
	ok(c.size == upper_default_size() && c.writeback == write_cache_suits_limit(c.size),
	   "size: memory_budget.c's default; write cache as the limit allows");
	ok(c.allow_other == (geteuid() == 0), "allow_other: when run as root");
	if (geteuid() != 0)
		ok((c.flags & HINTS_OPT_NOSUID) && (c.flags & HINTS_OPT_NODEV),
		   "a plain user's mount is nosuid,nodev");
	else
		ok(!(c.flags & (HINTS_OPT_NOSUID | HINTS_OPT_NODEV)), "root's mount is suid,dev");
	ok(c.atime == ATIME_RELATIME && c.seccomp && c.max_threads == 1 && c.passthrough,
	   "relatime, seccomp on, one thread, passthrough auto");
	config_free(&c);

	ok(parse(&c, "size=4k") == 0, "size=4k");
	config_finish(&c);
	ok(c.size == 4096 && !c.writeback, "a small limit: no write cache (ENOSPC at write(2))");
	config_free(&c);

	ok(parse(&c, "attr_timeout=5") == 0, "attr_timeout=5");
	config_finish(&c);
	ok(c.attr_timeout == 5.0 && c.entry_timeout == 1.0, "one timeout given: the other is 1s");
	config_free(&c);

	ok(parse(&c, "size=1t") == 0, "size=1t");
	c.shared_access = true;         /* as config_apply_hints decides it */
	config_finish(&c);
	ok(c.entry_timeout == 1.0 && c.attr_timeout == 1.0 && !c.writeback,
	   "shared access: 1s caches and no write cache");
	config_free(&c);
}

static int open_fds(void)
{
	int n = 0;
	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

static void rm_tree(void)
{
	const char *names[] = { "l1", "l2", "m", "link", "file", "l2.json" };
	for (size_t i = 0; i < N(names); i++)
		if (unlink(at(names[i])) < 0 && rmdir(at(names[i])) < 0 && errno != ENOENT)
			diag("cannot remove %s", at(names[i]));
	rmdir(dir);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "%s", "/tmp/memoverlay-options-XXXXXX");
	if (!mkdtemp(dir) || mkdir(at("l1"), 0755) < 0 || mkdir(at("l2"), 0755) < 0 ||
	    mkdir(at("m"), 0755) < 0 || symlink("l2", at("link")) < 0) {
		printf("Bail out! cannot set up %s\n", dir);
		return 1;
	}
	write_file(at("file"), "x");
	snprintf(lo1, sizeof(lo1), "lowerdir=%s", at("l1"));
	int fds = open_fds();
	test_every_word();
	test_meanings();
	test_bad_values();
	test_upperdir();
	test_one_vocabulary();
	test_paths();
	test_defaults();
	is_int(open_fds(), fds, "config_free closed every layer config_parse opened");
	rm_tree();
	return tap_done();
}
