/* options.c: the command line, parsed once into struct config.
 *
 * libfuse's fuse_opt splits -o groups itself, but it consumes backslashes
 * (so lowerdir's "\:" escape would be lost) and knows nothing of quoted
 * values such as context="a,b" that container runtimes pass. So -o groups are
 * split here, and every word is checked against one table: an unknown word
 * is an error, never silently ignored.
 */
#include "memoverlay.h"
#include "version.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

static void bad(const char *what, const char *value)
{
	fprintf(stderr, "memoverlay: %s: '%s'\n", what, value);
}

/* ---- defaults: every one is set here ---- */

/* Before the first word: what holds unless a word says otherwise. */
static void config_init(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->atime = ATIME_RELATIME;
	/* 1s when only one timeout is given, or access is shared; see
	 * config_finish for the exclusive default. */
	cfg->entry_timeout = 1.0;
	cfg->attr_timeout = 1.0;
	cfg->max_threads = 1;   /* main.c, serve(): why one */
	cfg->writeback = true;
	cfg->seccomp = true;
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
	       "  -o noexec|exec, nosuid|suid, nodev|dev\n"
	       "  -o relatime|noatime|strictatime   atime updates (default relatime)\n"
	       "  -o size=N[k|m|g|%%]   upper layer size limit (default: half of RAM, at\n"
	       "                       most half the memory cgroup's limit; 0 or\n"
	       "                       unlimited: none)\n"
	       "  -o nr_inodes=N       upper layer inode limit (default: unlimited)\n"
	       "  -o medium=memory     upper data in a memfd (default)\n"
	       "  -o medium=dir=PATH   upper data in an unlinked file in PATH\n"
	       "  -o allow_other       let other users in (default when run as root)\n"
	       "  -o uidmapping=C:H:N[:...], gidmapping=...  show lower owner H+k as C+k\n"
	       "  -o squash_to_root, squash_to_uid=N, squash_to_gid=N  one owner for all\n"
	       "  -o entry_timeout=S, attr_timeout=S   kernel cache timeouts (default 1)\n"
	       "  -o max_threads=N     worker threads (default 1; more help only when\n"
	       "                       requests block on slow lower layers)\n"
	       "  -o nowriteback       no kernel write cache: every write reaches the\n"
	       "                       daemon at once (default: cached, unless the\n"
	       "                       size limit is small, see README)\n"
	       "  -o hints=CONFIG.json[,hint_mount=DEST]  take options and caching\n"
	       "                       from the gVisor mount hints of an OCI spec\n"
	       "  -o seccomp=on|off    system call allowlist once started (default on;\n"
	       "                       off only for debugging)\n"
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

/* Words the mount(8) and fstab world passes that have no meaning here. */
static const char *const ignored_words[] = {
	"defaults", "auto", "noauto", "user", "nouser", "users", "owner",
	"nofail", "_netdev", "async", "nodiratime", "diratime", "norelatime",
	"nostrictatime", "default_permissions", "nomand", "loop",
	NULL,
};

static int apply_option(struct config *cfg, const char *opt)
{
	const char *eq = strchr(opt, '=');
	size_t klen = eq ? (size_t)(eq - opt) : strlen(opt);
	const char *val = eq ? eq + 1 : NULL;
#define IS(word) (klen == strlen(word) && strncmp(opt, word, klen) == 0)
#define FLAG(word, field, v) if (IS(word) && !val) { cfg->field = v; return 0; }

	if (klen == 0)
		return 0; /* "a,,b": an empty word is harmless */
	FLAG("ro", ro, true) FLAG("rw", ro, false)
	FLAG("noexec", noexec, true) FLAG("exec", noexec, false)
	FLAG("nosuid", nosuid, true) FLAG("suid", nosuid, false)
	FLAG("nodev", nodev, true) FLAG("dev", nodev, false)
	FLAG("sync", sync, true) FLAG("dirsync", dirsync, true)
	FLAG("noatime", atime, ATIME_NOATIME)
	FLAG("relatime", atime, ATIME_RELATIME)
	FLAG("atime", atime, ATIME_RELATIME)
	FLAG("strictatime", atime, ATIME_STRICT)
	FLAG("debug", debug, true)
	FLAG("writeback", writeback, true) FLAG("nowriteback", writeback, false)
	if (IS("allow_other") && !val) {
		cfg->allow_other = cfg->allow_other_set = true;
		return 0;
	}
	for (const char *const *w = ignored_words; *w; w++)
		if (IS(*w) && !val)
			return 0;
	if (klen > 2 && strncmp(opt, "x-", 2) == 0)
		return 0; /* fstab's userspace-only options */

	if (IS("lowerdir") && val) {
		char **dirs;
		int n;
		if (lowerdir_split(val, &dirs, &n) < 0) {
			bad("lowerdir has an empty layer", val);
			return -1;
		}
		for (int i = 0; i < cfg->nlower; i++)
			free(cfg->lowerdirs[i]);
		free(cfg->lowerdirs);
		cfg->lowerdirs = dirs;
		cfg->nlower = n;
		return 0;
	}
	if (IS("upperdir") || IS("workdir")) {
		fprintf(stderr, "memoverlay: option '%.*s' is not used: the upper layer lives in "
			"the daemon's memory and vanishes with the mount; give only lowerdir=\n",
			(int)klen, opt);
		return -1;
	}
	if (IS("size") && val) {
		cfg->size_set = true;
		if (strcmp(val, "unlimited") == 0) {
			cfg->size = 0;
			return 0;
		}
		if (parse_size(val, true, &cfg->size) < 0) {
			bad("bad size (want N[k|m|g|t] or N%)", val);
			return -1;
		}
		return 0;
	}
	if (IS("nr_inodes") && val) {
		if (parse_size(val, false, &cfg->nr_inodes) < 0) {
			bad("bad nr_inodes (want N[k|m|g])", val);
			return -1;
		}
		return 0;
	}
	if (IS("medium") && val) {
		if (strcmp(val, "memory") == 0) {
			free(cfg->medium_dir);
			cfg->medium_dir = NULL;
			return 0;
		}
		if (strncmp(val, "dir=", 4) == 0 && val[4] == '/')
			return set_str(&cfg->medium_dir, val + 4);
		bad("bad medium (want memory or dir=/PATH)", val);
		return -1;
	}
	if (IS("entry_timeout") && val) {
		if (parse_double(val, &cfg->entry_timeout) < 0) {
			bad("bad entry_timeout", val);
			return -1;
		}
		cfg->timeouts_set = true;
		return 0;
	}
	if (IS("attr_timeout") && val) {
		if (parse_double(val, &cfg->attr_timeout) < 0) {
			bad("bad attr_timeout", val);
			return -1;
		}
		cfg->timeouts_set = true;
		return 0;
	}
	if (IS("max_threads") && val) {
		char *end;
		unsigned long v = strtoul(val, &end, 10);
		if (!isdigit((unsigned char)val[0]) || *end || v < 1 || v > 1024) {
			bad("bad max_threads (want 1..1024)", val);
			return -1;
		}
		cfg->max_threads = (unsigned)v;
		return 0;
	}
	if ((IS("uidmapping") || IS("gidmapping")) && val) {
		if (idmap_parse(val, IS("uidmapping") ? &cfg->uidmap : &cfg->gidmap) < 0) {
			bad("bad id mapping (want CONTAINER:HOST:COUNT[:...])", val);
			return -1;
		}
		return 0;
	}
	if (IS("squash_to_root") && !val) {
		cfg->squash_uid = cfg->squash_gid = 0;
		return 0;
	}
	if ((IS("squash_to_uid") || IS("squash_to_gid")) && val) {
		char *end;
		errno = 0;
		unsigned long v = strtoul(val, &end, 10);
		if (!isdigit((unsigned char)val[0]) || *end || errno || v >= UINT32_MAX) {
			bad("bad id", val);
			return -1;
		}
		if (IS("squash_to_uid"))
			cfg->squash_uid = (long)v;
		else
			cfg->squash_gid = (long)v;
		return 0;
	}
	if (IS("seccomp") && val) {
		if (strcmp(val, "on") != 0 && strcmp(val, "off") != 0) {
			bad("bad seccomp (want on or off)", val);
			return -1;
		}
		cfg->seccomp = strcmp(val, "on") == 0;
		return 0;
	}
	if (IS("hints") && val)
		return set_str(&cfg->hints_path, val);
	if (IS("hint_mount") && val)
		return set_str(&cfg->hint_mount, val);
	if ((IS("fsname") || IS("source")) && val)
		return set_str(&cfg->source, val);
	if (IS("subtype") && val)
		return 0; /* mount.fuse3 may pass our own name back */
	/* SELinux labels container runtimes pass for every mount; FUSE has no
	 * per-mount labelling, files keep the labels their xattrs carry. */
	if ((IS("context") || IS("fscontext") || IS("defcontext") || IS("rootcontext")) && val)
		return 0;
	bad("unknown option", opt);
	return -1;
#undef FLAG
#undef IS
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
			res = apply_option(cfg, word);
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
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			config_usage(argv[0]);
			return 1;
		}
		if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
			printf("memoverlay %s (libfuse %s)\n", MEMOVERLAY_VERSION, fuse_pkgversion());
			return 1;
		}
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
			bad("unknown argument", a);
			return -1;
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			bad("too many arguments", a);
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
	return 0;
}

void config_free(struct config *cfg)
{
	for (int i = 0; i < cfg->nlower; i++)
		free(cfg->lowerdirs[i]);
	free(cfg->lowerdirs);
	free(cfg->mountpoint);
	free(cfg->source);
	free(cfg->medium_dir);
	free(cfg->hints_path);
	free(cfg->hint_mount);
	idmap_free(&cfg->uidmap);
	idmap_free(&cfg->gidmap);
	memset(cfg, 0, sizeof(*cfg));
}
