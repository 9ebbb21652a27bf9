/* hints_apply.c: mount hints from an OCI config.json (hints=) applied to
 * the daemon's configuration. See config_apply_hints() in config.h.
 *
 * The spec mount this daemon serves is named by hint_mount=DEST, or found as
 * the mount whose source is one of the lower layers. Its hint (the "master",
 * matched by source) must be satisfied by the mount's own options plus the
 * command line (the "replica"); the daemon then runs with the more
 * restrictive of both sides. Access is exclusive (long caches) or shared
 * (short, revalidating caches) as the hint says; with no hint, or a lower
 * layer on a network/FUSE filesystem, it is shared.
 *
 * Every rule lives in libhints; this file only reads the host (the spec's
 * mount sources; the filesystems of the lower layers options.c opened) and
 * maps the library's answers onto struct config.
 */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "hints.h"

/* statfs f_type of filesystems whose content others may change behind our
 * back: network filesystems and FUSE (incl. virtiofs, sshfs, fuseblk). */
static const unsigned long shared_fs_magic[] = {
	0x6969UL,       /* NFS */
	0x517BUL,       /* SMB (old smbfs) */
	0xFE534D42UL,   /* SMB2 */
	0xFF534D42UL,   /* CIFS */
	0x65735546UL,   /* FUSE */
	0x01021997UL,   /* V9FS (9p) */
	0x00C36400UL,   /* CEPH */
	0x5346414FUL,   /* AFS (OpenAFS) */
	0x6B414653UL,   /* AFS (kAFS) */
	0x73757245UL,   /* CODA */
	0x564CUL,       /* NCP */
	0x7461636FUL,   /* OCFS2 */
	0x01161970UL,   /* GFS2 */
	0x0BD00BD0UL,   /* Lustre */
	0x47504653UL,   /* GPFS */
	0x20030528UL,   /* OrangeFS / PVFS2 */
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	fputs("memoverlay: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int oom(void)
{
	say("out of memory");
	return -1;
}

/* True when the filesystem holding fd is a network or FUSE filesystem. */
static bool on_shared_fs(int fd)
{
	struct statfs sfs;
	if (fstatfs(fd, &sfs) < 0)
		return false;
	unsigned long magic = (unsigned long)(unsigned int)sfs.f_type;
	for (size_t i = 0; i < sizeof(shared_fs_magic) / sizeof(shared_fs_magic[0]); i++)
		if (magic == shared_fs_magic[i])
			return true;
	return false;
}

/* The canonical form of path: relative to base (NULL: the working
 * directory), symlinks resolved when it exists, else lexically cleaned.
 * Caller frees; NULL on OOM. */
static char *canonical(const char *base, const char *path)
{
	char *abs = NULL;
	if (path[0] == '/') {
		abs = strdup(path);
	} else {
		char cwd[PATH_MAX];
		if (!base)
			base = getcwd(cwd, sizeof(cwd)) ? cwd : "/";
		if (asprintf(&abs, "%s/%s", base, path) < 0)
			abs = NULL;
	}
	if (!abs)
		return NULL;
	char *real = realpath(abs, NULL);
	if (!real) {
		if (errno == ENOMEM) {
			free(abs);
			return NULL;
		}
		real = hints_path_clean(abs);
	}
	free(abs);
	return real;
}

/* The directory relative mount sources are resolved against, as the
 * memoverlay-hints tool does (the bundle). Caller frees; NULL on OOM. */
static char *config_dir(const char *cfg_path)
{
	char *copy = strdup(cfg_path);
	if (!copy)
		return NULL;
	char *dir = canonical(NULL, dirname(copy));
	free(copy);
	return dir;
}

/* What a spec adds to the command line's mount flags: every restriction
 * the kernel enforces, and sync/dirsync. Its atime words other than noatime
 * do not change the command line's atime mode. */
#define SPEC_FLAGS (HINTS_OPT_RDONLY | HINTS_OPT_NOEXEC | HINTS_OPT_NOSUID | HINTS_OPT_NODEV | \
		    HINTS_OPT_NOATIME | HINTS_OPT_SYNC | HINTS_OPT_DIRSYNC)

/* Whether the spec mount m's source is one of the lower layers (both
 * canonical). -1 on OOM. */
static int source_is_lower(const struct config *cfg, const char *dir, const struct hints_mount *m)
{
	if (!m->source)
		return 0;
	char *src = canonical(dir, m->source);
	if (!src)
		return -1;
	int hit = 0;
	for (int i = 0; i < cfg->nlower && !hit; i++)
		hit = strcmp(src, cfg->lower[i].path) == 0;
	free(src);
	return hit;
}

/* Finds the spec mount the daemon serves; prints the error and returns -1
 * when there is none (or it is ambiguous), -2 on OOM. */
static int find_spec_mount(const struct config *cfg, const struct hints_config *hc,
			   const char *dir, const struct hints_mount **out)
{
	*out = NULL;
	if (cfg->hint_mount) {
		/* Compare cleaned destinations: "/data/" names "/data". The last
		 * one wins, as in mount order (hints_find_mount). */
		const struct hints_mount *m = hints_find_mount(hc, cfg->hint_mount);
		if (!m) {
			char *want = hints_path_clean(cfg->hint_mount);
			if (!want)
				return -2;
			for (size_t i = 0; i < hc->n_mounts; i++) {
				char *d = hints_path_clean(hc->mounts[i].destination);
				if (!d) {
					free(want);
					return -2;
				}
				if (strcmp(d, want) == 0)
					m = &hc->mounts[i];
				free(d);
			}
			free(want);
		}
		if (!m) {
			say("%s: hint_mount=%s: no mount in $.mounts has destination \"%s\"",
			    hc->path, cfg->hint_mount, cfg->hint_mount);
			return -1;
		}
		int r = source_is_lower(cfg, dir, m);
		if (r < 0)
			return -2;
		if (!r)
			say("warning: %s: mount \"%s\" has source \"%s\", which is not a lower "
			    "layer (lowerdir=)", hc->path, m->destination,
			    m->source ? m->source : "(none)");
		*out = m;
		return 0;
	}
	const struct hints_mount *found = NULL;
	for (size_t i = 0; i < hc->n_mounts; i++) {
		const struct hints_mount *m = &hc->mounts[i];
		int r = source_is_lower(cfg, dir, m);
		if (r < 0)
			return -2;
		if (!r)
			continue;
		if (found && strcmp(found->destination, m->destination) != 0) {
			say("%s: mounts \"%s\" and \"%s\" both have a lower layer as their source; "
			    "choose one with -o hint_mount=DESTINATION",
			    hc->path, found->destination, m->destination);
			return -1;
		}
		found = m;
	}
	if (!found) {
		say("%s: no mount in $.mounts has a lower layer (%s%s) as its source; "
		    "name it with -o hint_mount=DESTINATION", hc->path, cfg->lower[0].given,
		    cfg->nlower > 1 ? ", ..." : "");
		return -1;
	}
	*out = found;
	return 0;
}

static void print_warnings(const struct hints_config *hc)
{
	for (size_t i = 0; i < hc->n_diags; i++)
		if (hc->diags[i].severity == HINTS_WARNING)
			say("warning: %s", hc->diags[i].msg);
}

/* With a config: everything but the statfs rule. *exclusive is set when a
 * hint explicitly gives this mount exclusive access. */
static int apply_config(struct config *cfg, bool *exclusive)
{
	struct hints_config *hc = hints_config_load(cfg->hints_path);
	if (!hc)
		return oom();
	int ret = -1;
	char *dir = NULL;

	if (hc->n_errors) {
		for (size_t i = 0; i < hc->n_diags; i++) {
			if (hc->diags[i].severity != HINTS_ERROR)
				continue;
			if (hc->n_errors > 1)
				say("%s (and %zu more error%s)", hc->diags[i].msg, hc->n_errors - 1,
				    hc->n_errors > 2 ? "s" : "");
			else
				say("%s", hc->diags[i].msg);
			break;
		}
		goto out;
	}
	if (!(dir = config_dir(hc->path))) {
		oom();
		goto out;
	}
	const struct hints_mount *m;
	int r = find_spec_mount(cfg, hc, dir, &m);
	if (r == -2)
		oom();
	if (r < 0)
		goto out;

	const struct hints_hint *hint = hints_find_hint(hc, m->source);
	if (hint) {
		struct hints_options replica = m->opts;
		replica.flags |= cfg->flags;
		unsigned violated = hints_check_compatible(&hint->opts, &replica);
		if (violated) {
			unsigned rule = violated & -violated;   /* the first one */
			char *msg = hints_compat_message(m->destination, hint,
							 (enum hints_compat_rule)rule);
			if (!msg) {
				oom();
				goto out;
			}
			say("%s: %s", hc->path, msg);
			free(msg);
			goto out;
		}
	}

	/* The more restrictive of the command line and the spec (mount +
	 * hint): a flag either side sets stays set. */
	cfg->flags |= hints_effective_flags(hint, m) & SPEC_FLAGS;

	/* Access: the library's answer for this mount's class and hint (no
	 * hint: shared). The host facts come from the lower layer. */
	struct hints_host_facts facts = { false, false };
	if (m->source) {
		char *src = canonical(dir, m->source);
		if (!src) {
			oom();
			goto out;
		}
		struct stat st;
		struct statfs sfs;
		if (stat(src, &st) == 0)
			facts.source_is_regular = S_ISREG(st.st_mode);
		if (statfs(src, &sfs) == 0)
			facts.source_on_tmpfs = sfs.f_type == 0x01021994; /* TMPFS_MAGIC */
		free(src);
	}
	enum hints_mount_class cls = hints_classify_mount(m, &facts);
	enum hints_access access = hints_mount_access(hint, cls);
	cfg->shared_access = access == HINTS_ACCESS_SHARED;
	*exclusive = hint && access == HINTS_ACCESS_EXCLUSIVE;

	print_warnings(hc);
	ret = 0;
out:
	free(dir);
	hints_config_free(hc);
	return ret;
}

int config_apply_hints(struct config *cfg)
{
	if (cfg->hint_mount && !cfg->hints_path) {
		say("hint_mount=%s needs hints=CONFIG.json", cfg->hint_mount);
		return -1;
	}
	bool exclusive = false;
	if (cfg->hints_path && apply_config(cfg, &exclusive) < 0)
		return -1;
	/* Others may change a network or FUSE lower behind our back: shared
	 * access, unless a hint explicitly says this mount is exclusive. */
	if (!exclusive)
		for (int i = 0; i < cfg->nlower; i++)
			if (on_shared_fs(cfg->lower[i].fd))
				cfg->shared_access = true;
	return 0;
}
