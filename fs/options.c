/* options.c: the command line, parsed once into struct config (config.h).
 *
 * Every option word is in one of two tables and is applied by one switch
 * (apply_word), as in the kernel's overlayfs params.c. The mount flags (ro,
 * nosuid, noatime, sync, ...) are libhints' table, the one a config.json's
 * mount options are read with, so that a word means the same in both; the
 * daemon's own words (lowerdir=, size=, ...) are opt_table below. A word in
 * neither is an error, never silently ignored. Every default is set here
 * (config_init, config_finish).
 *
 * libfuse's fuse_opt would split -o groups itself, but it consumes
 * backslashes (so lowerdir's "\:" escape would be lost) and knows nothing of
 * quoted values such as context="a,b" that container runtimes pass. So -o
 * groups are split here (apply_group).
 */
#include "config.h"
#include "hints.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

/* The one line a bad option gets: what is wrong, and the value as given. */
static void report_bad_value(const char *what, const char *value)
{
	fprintf(stderr, "memoverlay: %s: '%s'\n", what, value);
}

/* ---- defaults: every one is set here ---- */

/* Before the first word: what holds unless a word says otherwise. */
static void config_init(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->flags = 0;         /* rw,exec,suid,dev,async,relatime: fstab's defaults */
	/* 1s when only one timeout is given, or access is shared; see
	 * config_finish for the exclusive default. */
	cfg->entry_timeout = 1.0;
	cfg->attr_timeout = 1.0;
	cfg->max_threads = 1;   /* main.c, serve(): why one */
	cfg->writeback_delay_ms = 100; /* writeback_idle.c: why not at unmount only */
	cfg->writeback = true;
	cfg->seccomp = true;
	cfg->passthrough = true; /* auto: passthrough.c decides at INIT */
	cfg->io_uring = IO_URING_AUTO;
	cfg->squash_uid = cfg->squash_gid = -1;
}

void config_finish(struct config *cfg)
{
	if (!cfg->size_set)
		cfg->size = upper_default_size();
	/* With the write cache, ENOSPC comes at writeback (fsync/close); a
	 * limit small next to the cache is better served exactly at write(2).
	 * With shared access others change files behind the kernel's cache. */
	if (!write_cache_suits_limit(cfg->size) || cfg->shared_access)
		cfg->writeback = false;
	/* Exclusive access (the default, as with kernel overlayfs: lower layers do
	 * not change under a mount) lets the kernel cache entries and attributes
	 * for long; every change made through the mount updates those caches. */
	if (!cfg->timeouts_set && !cfg->shared_access)
		cfg->entry_timeout = cfg->attr_timeout = 86400.0;
	/* fusermount3 gives plain users allow_other only when asked (and
	 * /etc/fuse.conf allows it); root serves everyone. */
	if (!cfg->allow_other_set)
		cfg->allow_other = geteuid() == 0;
	/* Only root may have suid and dev (fusermount3 forces nosuid,nodev). */
	if (geteuid() != 0)
		cfg->flags |= HINTS_OPT_NOSUID | HINTS_OPT_NODEV;
	/* noatime wins over strictatime: on the command line only one of them
	 * is set, but a spec's noatime is added to the command line's mode. */
	cfg->atime = cfg->flags & HINTS_OPT_NOATIME     ? ATIME_NOATIME :
		     cfg->flags & HINTS_OPT_STRICTATIME ? ATIME_STRICT : ATIME_RELATIME;
}

void config_usage(const char *prog)
{
	printf("usage: %s [SOURCE] MOUNTPOINT -o lowerdir=TOP:...:BOTTOM[,OPTIONS]\n"
	       "\n"
	       "An overlay of read-only lower directories under a writable upper layer\n"
	       "kept in memory. Nothing is ever written to a lower directory.\n"
	       "\n"
	       "  -o lowerdir=A:B:C    lower layers, A on top (\\: is a literal colon)\n"
	       "  -o ro|rw             read-only mount (EROFS on every write) or not\n"
	       "  -o noexec|exec, nosuid|suid, nodev|dev, sync|async, dirsync\n"
	       "  -o relatime|noatime|strictatime   atime updates (default relatime)\n"
	       "  -o size=N[k|m|g|%%]   upper layer size limit (default: half of RAM, at\n"
	       "                       most half the memory cgroup's limit; 0 or\n"
	       "                       unlimited: none)\n"
	       "  -o nr_inodes=N       upper layer inode limit (default: unlimited)\n"
	       "  -o medium=memory     upper data in a memfd (default)\n"
	       "  -o medium=dir=PATH   upper data in an unlinked file in PATH\n"
	       "  -o allow_other       let other users in (default when run as root)\n"
	       "  -o uidmapping=C:H:N[:...], gidmapping=...  show layer owner C+k as H+k\n"
	       "  -o squash_to_root, squash_to_uid=N, squash_to_gid=N  one owner for all\n"
	       "  -o entry_timeout=S, attr_timeout=S   kernel cache timeouts (default 1)\n"
	       "  -o max_threads=N     worker threads (default 1; more help only when\n"
	       "                       requests block on slow lower layers)\n"
	       "  -o nowriteback       no kernel write cache: every write reaches the\n"
	       "                       daemon at once (default: cached, unless the\n"
	       "                       size limit is small, see README)\n"
	       "  -o hints=CONFIG.json[,hint_mount=DEST]  take options and caching\n"
	       "                       from the gVisor mount hints of an OCI spec\n"
	       "  -o upperdir=DIR,workdir=DIR  start from, and write changes back to, an\n"
	       "                       overlay-format upper DIR (see README)\n"
	       "  -o volatile          with upperdir=: fsync writes nothing back, and\n"
	       "                       write-backs skip syncfs\n"
	       "  -o writeback_delay=MS|off  with upperdir=: write back once the mount\n"
	       "                       has been quiet MS ms with no file open for\n"
	       "                       writing (default 100); off: only at unmount,\n"
	       "                       fsync and memoverlay-ctl sync\n"
	       "  -o userxattr         with upperdir=: opaque markers as user.overlay.*\n"
	       "  -o seccomp=on|off    system call allowlist once started (default on;\n"
	       "                       off only for debugging)\n"
	       "  -o passthrough=auto|upper|off  let the kernel read lower files itself\n"
	       "                       (auto, the default: when run as root on a kernel\n"
	       "                       and libfuse that can); upper: also read and write\n"
	       "                       upper files itself, without the write cache (root\n"
	       "                       only; see README)\n"
	       "  -o io_uring=auto|on|off  FUSE over io_uring: auto (default) when\n"
	       "                       libfuse and the kernel have it, on: or refuse\n"
	       "                       to mount, off: read requests from /dev/fuse\n"
	       "  -f                   stay in the foreground\n"
	       "  -d                   debug log (implies -f)\n"
	       "  -h, --help           this text\n"
	       "  -V, --version        version\n", prog);
}

int lowerdir_split(const char *value, char ***out, int *count)
{
	size_t len = strlen(value);
	char **dirs = NULL;
	int n = 0;
	char *cur = malloc(len + 1);
	size_t k = 0;

	if (!cur)
		return -ENOMEM;
	for (size_t i = 0;; i++) {
		char c = value[i];
		if (c == '\\' && value[i + 1] != '\0') {
			cur[k++] = value[++i];
			continue;
		}
		if (c != ':' && c != '\0') {
			cur[k++] = c;
			continue;
		}
		cur[k] = '\0';
		if (k == 0) {
			/* "a::b", ":a", "a:" — an empty layer is a typo, not a layer */
			free(cur);
			for (int j = 0; j < n; j++)
				free(dirs[j]);
			free(dirs);
			return -EINVAL;
		}
		char **grown = realloc(dirs, sizeof(*dirs) * (n + 1));
		char *dup = strdup(cur);
		if (!grown || !dup) {
			free(dup);
			free(grown ? grown : dirs);
			free(cur);
			return -ENOMEM;
		}
		dirs = grown;
		dirs[n++] = dup;
		k = 0;
		if (c == '\0')
			break;
	}
	free(cur);
	*out = dirs;
	*count = n;
	return 0;
}

/* "64m", "1g", "50%" → bytes; tmpfs rules: k/m/g/t suffixes, % of RAM. */
static int parse_size(const char *s, bool percent_ok, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)s[0]))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	unsigned shift = 0;
	switch (tolower((unsigned char)*end)) {
	case '\0': break;
	case 'k': shift = 10; end++; break;
	case 'm': shift = 20; end++; break;
	case 'g': shift = 30; end++; break;
	case 't': shift = 40; end++; break;
	case '%':
		if (!percent_ok || v > 100)
			return -1;
		end++;
		if (*end)
			return -1;
		struct sysinfo si;
		if (sysinfo(&si) < 0)
			return -1;
		*out = (uint64_t)si.totalram * si.mem_unit / 100 * v;
		return 0;
	default:
		return -1;
	}
	if (*end)
		return -1;
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < 0 || v > 1e9)
		return -1;
	*out = v;
	return 0;
}

static int set_str(char **dst, const char *v)
{
	char *dup = strdup(v);
	if (!dup)
		return -1;
	free(*dst);
	*dst = dup;
	return 0;
}

static int set_timeout(struct config *cfg, double *t, const char *what, const char *val)
{
	if (parse_double(val, t) < 0) {
		report_bad_value(what, val);
		return -1;
	}
	cfg->timeouts_set = true;
	return 0;
}

static int set_idmap(struct idmap *map, const char *val)
{
	if (idmap_parse(val, map) < 0) {
		report_bad_value("bad id mapping (want CONTAINER:HOST:COUNT[:...])", val);
		return -1;
	}
	return 0;
}

static int set_id(long *id, const char *val)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(val, &end, 10);
	if (!isdigit((unsigned char)val[0]) || *end || errno || v >= UINT32_MAX) {
		report_bad_value("bad id", val);
		return -1;
	}
	*id = (long)v;
	return 0;
}

static void free_lower(struct config *cfg)
{
	for (int i = 0; i < cfg->nlower; i++) {
		free(cfg->lower[i].given);
		free(cfg->lower[i].path);
		if (cfg->lower[i].fd >= 0)
			close(cfg->lower[i].fd);
	}
	free(cfg->lower);
	cfg->lower = NULL;
	cfg->nlower = 0;
}

/* The layers of the last lowerdir= word; resolve_paths() resolves them. */
static int set_lowerdir(struct config *cfg, const char *val)
{
	char **dirs;
	int n;
	if (lowerdir_split(val, &dirs, &n) < 0) {
		report_bad_value("lowerdir has an empty layer", val);
		return -1;
	}
	struct config_lower *lower = calloc((size_t)n, sizeof(*lower));
	for (int i = 0; i < n; i++) {
		if (lower)
			lower[i] = (struct config_lower){ .given = dirs[i], .fd = -1 };
		else
			free(dirs[i]);
	}
	free(dirs);
	if (!lower)
		return -1;
	free_lower(cfg);
	cfg->lower = lower;
	cfg->nlower = n;
	return 0;
}

/* ---- the words: two tables, one switch ---- */

/* What the daemon does with the mount flags of libhints' table: the kernel
 * enforces ro, noexec, nosuid, nodev, sync, dirsync and noatime (main.c
 * passes them on), the daemon applies the atime mode itself, and nodiratime
 * changes nothing for FUSE. A word that sets any other flag of the table
 * (mand, bind, rbind, remount) asks for what memoverlay does not do: it is
 * refused like an unknown word. One that clears such a flag (nomand) is
 * harmless. */
#define DAEMON_FLAGS (HINTS_OPT_RDONLY | HINTS_OPT_NOEXEC | HINTS_OPT_NOSUID | \
		      HINTS_OPT_NODEV | HINTS_OPT_SYNC | HINTS_OPT_DIRSYNC | \
		      HINTS_OPT_NOATIME | HINTS_OPT_RELATIME | HINTS_OPT_STRICTATIME | \
		      HINTS_OPT_NODIRATIME)
/* The atime modes are one choice on the command line: of noatime, atime,
 * relatime and strictatime the later word wins ("noatime,relatime" is
 * relatime). norelatime and nostrictatime only clear their own flag. */
#define ATIME_FLAGS (HINTS_OPT_NOATIME | HINTS_OPT_RELATIME | HINTS_OPT_STRICTATIME)

/* The daemon's own words. */
enum opt {
	Opt_unknown,
	Opt_mount_flag,         /* a word of libhints' table (hints/mount_options.c) */
	Opt_ignored,
	Opt_lowerdir,
	Opt_upperdir,           /* upperdir= and workdir= (writeback.c) */
	Opt_workdir,
	Opt_volatile,
	Opt_writeback_delay,
	Opt_userxattr,
	Opt_overlay_onoff,      /* kernel overlayfs words without effect here */
	Opt_size,
	Opt_nr_inodes,
	Opt_medium,
	Opt_entry_timeout,
	Opt_attr_timeout,
	Opt_max_threads,
	Opt_uidmapping,
	Opt_gidmapping,
	Opt_squash_to_root,
	Opt_squash_to_uid,
	Opt_squash_to_gid,
	Opt_allow_other,
	Opt_debug,
	Opt_writeback,
	Opt_nowriteback,
	Opt_seccomp,
	Opt_passthrough,
	Opt_io_uring,
	Opt_hints,
	Opt_hint_mount,
	Opt_source,
};

/* Whether a word takes "=VALUE"; given the other way it is unknown. */
enum opt_value { NO_VALUE, VALUE, EITHER };

static const struct opt_spec {
	const char *name;
	enum opt id;
	enum opt_value value;
} opt_table[] = {
	{ "lowerdir",            Opt_lowerdir,       VALUE },
	{ "upperdir",            Opt_upperdir,       VALUE },
	{ "workdir",             Opt_workdir,        VALUE },
	{ "volatile",            Opt_volatile,       NO_VALUE },
	{ "writeback_delay",     Opt_writeback_delay, VALUE },
	{ "userxattr",           Opt_userxattr,      NO_VALUE },
	/* Kernel overlayfs features container engines ask for or turn off
	 * (containerd: index=off; podman: metacopy=, redirect_dir=). The upper
	 * in memory has its own answers: hard links stay one inode (index),
	 * copy-up is lazy anyway (metacopy), renamed directories are written
	 * back as opaque copies (redirect_dir, see writeback.c), st_ino is
	 * unique across layers (xino); no NFS export. Accepted, checked,
	 * without effect. */
	{ "index",               Opt_overlay_onoff,  VALUE },
	{ "metacopy",            Opt_overlay_onoff,  VALUE },
	{ "redirect_dir",        Opt_overlay_onoff,  VALUE },
	{ "xino",                Opt_overlay_onoff,  VALUE },
	{ "nfs_export",          Opt_overlay_onoff,  VALUE },
	{ "size",                Opt_size,           VALUE },
	{ "nr_inodes",           Opt_nr_inodes,      VALUE },
	{ "medium",              Opt_medium,         VALUE },
	{ "entry_timeout",       Opt_entry_timeout,  VALUE },
	{ "attr_timeout",        Opt_attr_timeout,   VALUE },
	{ "max_threads",         Opt_max_threads,    VALUE },
	{ "uidmapping",          Opt_uidmapping,     VALUE },
	{ "gidmapping",          Opt_gidmapping,     VALUE },
	{ "squash_to_root",      Opt_squash_to_root, NO_VALUE },
	{ "squash_to_uid",       Opt_squash_to_uid,  VALUE },
	{ "squash_to_gid",       Opt_squash_to_gid,  VALUE },
	{ "allow_other",         Opt_allow_other,    NO_VALUE },
	{ "debug",               Opt_debug,          NO_VALUE },
	{ "writeback",           Opt_writeback,      NO_VALUE },
	{ "nowriteback",         Opt_nowriteback,    NO_VALUE },
	{ "seccomp",             Opt_seccomp,        VALUE },
	{ "passthrough",         Opt_passthrough,    VALUE },
	{ "io_uring",            Opt_io_uring,       VALUE },
	{ "hints",               Opt_hints,          VALUE },
	{ "hint_mount",          Opt_hint_mount,     VALUE },
	{ "fsname",              Opt_source,         VALUE },
	{ "source",              Opt_source,         VALUE },
	/* mount.fuse3 may pass our own name back */
	{ "subtype",             Opt_ignored,        VALUE },
	/* SELinux labels container runtimes pass for every mount; FUSE has no
	 * per-mount labelling, files keep the labels their xattrs carry. */
	{ "context",             Opt_ignored,        VALUE },
	{ "fscontext",           Opt_ignored,        VALUE },
	{ "defcontext",          Opt_ignored,        VALUE },
	{ "rootcontext",         Opt_ignored,        VALUE },
	/* Words of mount(8) and fstab that mean nothing to a filesystem (and
	 * x-*, below); default_permissions is always on here. */
	{ "auto",                Opt_ignored,        NO_VALUE },
	{ "noauto",              Opt_ignored,        NO_VALUE },
	{ "user",                Opt_ignored,        NO_VALUE },
	{ "nouser",              Opt_ignored,        NO_VALUE },
	{ "users",               Opt_ignored,        NO_VALUE },
	{ "owner",               Opt_ignored,        NO_VALUE },
	{ "nofail",              Opt_ignored,        NO_VALUE },
	{ "_netdev",             Opt_ignored,        NO_VALUE },
	{ "loop",                Opt_ignored,        NO_VALUE },
	{ "default_permissions", Opt_ignored,        NO_VALUE },
};

/* The values kernel overlayfs takes for its feature words. */
static bool overlay_value_ok(const char *name, const char *val)
{
	static const char *const onoff[] = { "on", "off", NULL };
	static const char *const redirect[] = { "on", "off", "follow", "nofollow", NULL };
	static const char *const xino[] = { "on", "off", "auto", NULL };
	const char *const *ok = strcmp(name, "redirect_dir") == 0 ? redirect
			      : strcmp(name, "xino") == 0 ? xino : onoff;
	for (; *ok; ok++)
		if (strcmp(*ok, val) == 0)
			return true;
	return false;
}

/* The word name (with a value or not) in either table. */
static enum opt opt_lookup(const char *name, bool has_value, const struct hints_opt_word **flag)
{
	*flag = has_value ? NULL : hints_option_lookup(name);
	if (*flag)
		return Opt_mount_flag;
	for (size_t i = 0; i < sizeof(opt_table) / sizeof(opt_table[0]); i++) {
		const struct opt_spec *o = &opt_table[i];
		if (strcmp(o->name, name) == 0 &&
		    (o->value == EITHER || (o->value == VALUE) == has_value))
			return o->id;
	}
	if (strncmp(name, "x-", 2) == 0 && name[2])
		return Opt_ignored;     /* fstab's userspace-only options */
	return Opt_unknown;
}

/* Applies one word of an -o group: "name" or "name=value". word is the
 * caller's copy and is cut at the '='. */
static int apply_word(struct config *cfg, char *word)
{
	char *eq = strchr(word, '=');
	const char *val = eq ? eq + 1 : NULL;
	const struct hints_opt_word *flag;

	if (word[0] == '\0' || word[0] == '=')
		return 0;       /* "a,,b": an empty word is harmless */
	if (eq)
		*eq = '\0';
	const char *name = word;

	switch (opt_lookup(name, val != NULL, &flag)) {
	case Opt_mount_flag:
		if (!flag->clear && (flag->flag & ~DAEMON_FLAGS))
			break;
		if ((flag->flag & ATIME_FLAGS) && (!flag->clear || flag->flag == HINTS_OPT_NOATIME))
			cfg->flags &= ~ATIME_FLAGS;
		cfg->flags = hints_option_apply(cfg->flags, flag);
		return 0;
	case Opt_ignored:
		return 0;
	case Opt_lowerdir:
		return set_lowerdir(cfg, val);
	case Opt_upperdir:
		return set_str(&cfg->upperdir, val);
	case Opt_workdir:
		return set_str(&cfg->workdir, val);
	case Opt_volatile:
		cfg->volatile_wb = true;
		return 0;
	case Opt_writeback_delay: {
		char *end;
		unsigned long v = strtoul(val, &end, 10);
		cfg->writeback_delay_set = true;
		if (strcmp(val, "off") == 0) {
			cfg->writeback_delay_ms = 0;
			return 0;
		}
		if (!isdigit((unsigned char)val[0]) || *end || v > 3600000) {
			report_bad_value("bad writeback_delay (want off or 0..3600000 ms)", val);
			return -1;
		}
		cfg->writeback_delay_ms = (unsigned)v;
		return 0;
	}
	case Opt_userxattr:
		cfg->userxattr = true;
		return 0;
	case Opt_overlay_onoff:
		if (!overlay_value_ok(name, val)) {
			if (eq)
				*eq = '=';
			report_bad_value("bad value", word);
			return -1;
		}
		return 0;
	case Opt_size:
		cfg->size_set = true;
		if (strcmp(val, "unlimited") == 0) {
			cfg->size = 0;
			return 0;
		}
		if (parse_size(val, true, &cfg->size) < 0) {
			report_bad_value("bad size (want N[k|m|g|t] or N%)", val);
			return -1;
		}
		return 0;
	case Opt_nr_inodes:
		if (parse_size(val, false, &cfg->nr_inodes) < 0) {
			report_bad_value("bad nr_inodes (want N[k|m|g])", val);
			return -1;
		}
		return 0;
	case Opt_medium:
		if (strcmp(val, "memory") == 0) {
			free(cfg->medium_dir);
			cfg->medium_dir = NULL;
			return 0;
		}
		if (strncmp(val, "dir=", 4) == 0 && val[4] == '/')
			return set_str(&cfg->medium_dir, val + 4);
		report_bad_value("bad medium (want memory or dir=/PATH)", val);
		return -1;
	case Opt_entry_timeout:
		return set_timeout(cfg, &cfg->entry_timeout, "bad entry_timeout", val);
	case Opt_attr_timeout:
		return set_timeout(cfg, &cfg->attr_timeout, "bad attr_timeout", val);
	case Opt_max_threads: {
		char *end;
		unsigned long v = strtoul(val, &end, 10);
		if (!isdigit((unsigned char)val[0]) || *end || v < 1 || v > 1024) {
			report_bad_value("bad max_threads (want 1..1024)", val);
			return -1;
		}
		cfg->max_threads = (unsigned)v;
		return 0;
	}
	case Opt_uidmapping:
		return set_idmap(&cfg->uidmap, val);
	case Opt_gidmapping:
		return set_idmap(&cfg->gidmap, val);
	case Opt_squash_to_root:
		cfg->squash_uid = cfg->squash_gid = 0;
		return 0;
	case Opt_squash_to_uid:
		return set_id(&cfg->squash_uid, val);
	case Opt_squash_to_gid:
		return set_id(&cfg->squash_gid, val);
	case Opt_allow_other:
		cfg->allow_other = cfg->allow_other_set = true;
		return 0;
	case Opt_debug:
		cfg->debug = true;
		return 0;
	case Opt_writeback:
		cfg->writeback = true;
		return 0;
	case Opt_nowriteback:
		cfg->writeback = false;
		return 0;
	case Opt_seccomp:
		if (strcmp(val, "on") != 0 && strcmp(val, "off") != 0) {
			report_bad_value("bad seccomp (want on or off)", val);
			return -1;
		}
		cfg->seccomp = strcmp(val, "on") == 0;
		return 0;
	case Opt_passthrough:
		if (strcmp(val, "auto") != 0 && strcmp(val, "off") != 0 &&
		    strcmp(val, "upper") != 0) {
			report_bad_value("bad passthrough (want auto, upper or off)", val);
			return -1;
		}
		cfg->passthrough = strcmp(val, "off") != 0;
		cfg->passthrough_upper = strcmp(val, "upper") == 0;
		return 0;
	case Opt_io_uring:
		if (strcmp(val, "auto") == 0)
			cfg->io_uring = IO_URING_AUTO;
		else if (strcmp(val, "on") == 0)
			cfg->io_uring = IO_URING_ON;
		else if (strcmp(val, "off") == 0)
			cfg->io_uring = IO_URING_OFF;
		else {
			report_bad_value("bad io_uring (want auto, on or off)", val);
			return -1;
		}
		return 0;
	case Opt_hints:
		return set_str(&cfg->hints_path, val);
	case Opt_hint_mount:
		return set_str(&cfg->hint_mount, val);
	case Opt_source:
		return set_str(&cfg->source, val);
	case Opt_unknown:
		break;
	}
	if (eq)
		*eq = '=';
	report_bad_value("unknown option", word);
	return -1;
}

/* ---- paths: resolved once, here ---- */

static int path_error(const char *what, const char *path, int err)
{
	fprintf(stderr, "memoverlay: %s '%s': %s\n", what, path, strerror(err));
	return -1;
}

/* Is `inner` the same as or below `outer`? Both are canonical paths. */
static bool path_within(const char *inner, const char *outer)
{
	size_t ol = strlen(outer);
	if (strcmp(outer, "/") == 0)
		return true;
	return strncmp(inner, outer, ol) == 0 && (inner[ol] == '\0' || inner[ol] == '/');
}

/* One of upperdir=/workdir= made absolute; it must be a directory that
 * overlaps neither the mount point nor a lower layer. */
static int resolve_overlay_dir(struct config *cfg, const char *what, char **p, struct stat *st)
{
	char *abs = realpath(*p, NULL);
	if (!abs)
		return path_error(what, *p, errno);
	int err = stat(abs, st) < 0 ? errno : !S_ISDIR(st->st_mode) ? ENOTDIR : 0;
	if (err) {
		free(abs);
		return path_error(what, *p, err);
	}
	const char *clash = NULL;
	if (path_within(abs, cfg->mountpoint) || path_within(cfg->mountpoint, abs))
		clash = "the mountpoint";
	for (int i = 0; !clash && i < cfg->nlower; i++)
		if (path_within(abs, cfg->lower[i].path) || path_within(cfg->lower[i].path, abs))
			clash = "a lowerdir";
	if (clash) {
		fprintf(stderr, "memoverlay: %s '%s' overlaps %s\n", what, *p, clash);
		free(abs);
		return -1;
	}
	free(*p);
	*p = abs;
	return 0;
}

/* upperdir= and workdir= come together, as for kernel overlayfs: both
 * directories, on one filesystem (the write-back renames from one into
 * the other), neither inside the other. */
static int resolve_upperdir(struct config *cfg)
{
	if (!cfg->upperdir && !cfg->workdir) {
		if (cfg->volatile_wb || cfg->userxattr || cfg->writeback_delay_set) {
			fprintf(stderr, "memoverlay: option '%s' needs upperdir= and workdir=\n",
				cfg->volatile_wb ? "volatile" :
				cfg->userxattr ? "userxattr" : "writeback_delay");
			return -1;
		}
		return 0;
	}
	if (!cfg->upperdir || !cfg->workdir) {
		fprintf(stderr, "memoverlay: option '%s' needs '%s' too\n",
			cfg->upperdir ? "upperdir" : "workdir", cfg->upperdir ? "workdir" : "upperdir");
		return -1;
	}
	struct stat us, ws;
	if (resolve_overlay_dir(cfg, "upperdir", &cfg->upperdir, &us) < 0 ||
	    resolve_overlay_dir(cfg, "workdir", &cfg->workdir, &ws) < 0)
		return -1;
	if (us.st_dev != ws.st_dev) {
		fprintf(stderr, "memoverlay: workdir '%s' is not on the filesystem of upperdir '%s'\n",
			cfg->workdir, cfg->upperdir);
		return -1;
	}
	if (path_within(cfg->upperdir, cfg->workdir) || path_within(cfg->workdir, cfg->upperdir)) {
		fprintf(stderr, "memoverlay: upperdir '%s' and workdir '%s' overlap\n",
			cfg->upperdir, cfg->workdir);
		return -1;
	}
	return 0;
}

/* The mount point made absolute (the daemon leaves the caller's directory,
 * and unmounting needs it), every lower layer resolved and opened: what the
 * hints are matched against (hints_apply.c) and what open_layers() serves
 * is what was checked here, as the kernel's overlayfs resolves its paths
 * when it parses them. */
static int resolve_paths(struct config *cfg)
{
	char *mnt = realpath(cfg->mountpoint, NULL);
	struct stat st;
	if (!mnt)
		return path_error("mountpoint", cfg->mountpoint, errno);
	int err = stat(mnt, &st) < 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
	if (err) {
		free(mnt);
		return path_error("mountpoint", cfg->mountpoint, err);
	}
	free(cfg->mountpoint);
	cfg->mountpoint = mnt;
	if (cfg->nlower > UINT16_MAX) {
		fprintf(stderr, "memoverlay: too many lower layers (%d, at most %d)\n",
			cfg->nlower, UINT16_MAX);
		return -1;
	}
	for (int i = 0; i < cfg->nlower; i++) {
		struct config_lower *l = &cfg->lower[i];
		l->path = realpath(l->given, NULL);
		if (!l->path)
			return path_error("lowerdir", l->given, errno);
		l->fd = open(l->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (l->fd < 0)
			return path_error("lowerdir", l->given, errno);
		if (path_within(mnt, l->path)) {
			fprintf(stderr, "memoverlay: mountpoint '%s' is inside lowerdir '%s'\n",
				mnt, l->given);
			return -1;
		}
	}
	return resolve_upperdir(cfg);
}

/* Splits one -o group at commas that are neither escaped nor inside double
 * quotes. Quotes are removed; backslashes are kept for the value parsers. */
static int apply_group(struct config *cfg, const char *group)
{
	size_t len = strlen(group);
	char *word = malloc(len + 1);
	size_t k = 0;
	bool quoted = false;
	int res = 0;

	if (!word)
		return -1;
	for (size_t i = 0; res == 0; i++) {
		char c = group[i];
		if (c == '\\' && group[i + 1] == ',') {
			word[k++] = ',';
			i++;
			continue;
		}
		if (c == '"') {
			quoted = !quoted;
			continue;
		}
		if (c == '\0' || (c == ',' && !quoted)) {
			word[k] = '\0';
			res = apply_word(cfg, word);
			k = 0;
			if (c == '\0')
				break;
			continue;
		}
		word[k++] = c;
	}
	free(word);
	return res;
}

int config_parse(struct config *cfg, int argc, char **argv)
{
	const char *pos[2];
	int npos = 0;

	config_init(cfg);

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
			return CONFIG_HELP;
		if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0)
			return CONFIG_VERSION;
		if (strcmp(a, "-f") == 0) {
			cfg->foreground = true;
		} else if (strcmp(a, "-d") == 0) {
			cfg->debug = true;
		} else if (strcmp(a, "-s") == 0) {
			cfg->max_threads = 1;
		} else if (strncmp(a, "-o", 2) == 0) {
			const char *group = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			if (!group) {
				fprintf(stderr, "memoverlay: -o needs a value\n");
				return -1;
			}
			if (apply_group(cfg, group) < 0)
				return -1;
		} else if (a[0] == '-' && a[1] != '\0') {
			report_bad_value("unknown argument", a);
			return -1;
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			report_bad_value("too many arguments", a);
			return -1;
		}
	}
	if (cfg->debug)
		cfg->foreground = true;
	if (npos == 0) {
		fprintf(stderr, "memoverlay: no mountpoint given (try --help)\n");
		return -1;
	}
	if (cfg->nlower == 0) {
		fprintf(stderr, "memoverlay: missing -o lowerdir=DIR[:DIR...]\n");
		return -1;
	}
	/* mount.fuse3 and mount(8) pass "SOURCE MOUNTPOINT"; the source is a label. */
	if (set_str(&cfg->mountpoint, pos[npos - 1]) < 0)
		return -1;
	if (!cfg->source && set_str(&cfg->source, npos == 2 ? pos[0] : "memoverlay") < 0)
		return -1;
	return resolve_paths(cfg);
}

void config_free(struct config *cfg)
{
	free_lower(cfg);
	free(cfg->mountpoint);
	free(cfg->source);
	free(cfg->medium_dir);
	free(cfg->hints_path);
	free(cfg->hint_mount);
	free(cfg->upperdir);
	free(cfg->workdir);
	idmap_free(&cfg->uidmap);
	idmap_free(&cfg->gidmap);
	memset(cfg, 0, sizeof(*cfg));
}
