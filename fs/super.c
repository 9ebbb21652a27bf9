/* super.c: the mount as a whole, as in the kernel's overlayfs: setting it
 * up at start-up (the lower layers options.c resolved and opened made into
 * layers, the root node made), closing the layers at the end, and statfs.
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

int report_path_error(const char *what, const char *path, int err)
{
	fprintf(stderr, "memoverlay: %s '%s': %s\n", what, path, strerror(err));
	return -1;
}

/* Takes the lower layers config_parse() resolved and opened. With
 * upperdir= its directory is the top layer (UPPERDIR_LAYER, writeback.h):
 * the upper state a mount starts from, read lazily like the others. */
int open_layers(struct ovl *fs)
{
	struct config *cfg = &fs->cfg;
	int top = cfg->upperdir ? 1 : 0;

	fs->layers = calloc((size_t)(cfg->nlower + top), sizeof(*fs->layers));
	if (!fs->layers)
		return report_path_error("lowerdir", cfg->lower[0].given, ENOMEM);
	for (int i = 0; i < cfg->nlower + top; i++)
		fs->layers[i].root_fd = -1;
	fs->nlayers = cfg->nlower + top;
	if (top) {
		struct layer *l = &fs->layers[UPPERDIR_LAYER];
		struct stat st;
		l->root_fd = open(cfg->upperdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (l->root_fd < 0 || fstat(l->root_fd, &st) < 0)
			return report_path_error("upperdir", cfg->upperdir, errno);
		l->dev = st.st_dev;
		l->path = strdup(cfg->upperdir);
		if (!l->path)
			return report_path_error("upperdir", cfg->upperdir, ENOMEM);
	}

	for (int i = 0; i < cfg->nlower; i++) {
		struct layer *l = &fs->layers[i + top];
		struct config_lower *cl = &cfg->lower[i];
		struct stat st;

		l->root_fd = cl->fd;
		cl->fd = -1;
		if (fstat(l->root_fd, &st) < 0)
			return report_path_error("lowerdir", cl->given, errno);
		l->dev = st.st_dev;
		l->path = strdup(cl->path);
		if (!l->path)
			return report_path_error("lowerdir", cl->given, ENOMEM);
	}
	/* The top layer must be reachable the way every lookup will reach it. */
	int probe = layer_open(&fs->layers[0], "", O_PATH | O_DIRECTORY);
	if (probe < 0)
		return report_path_error("lowerdir", cfg->lower[0].given, -probe);
	close(probe);
	return 0;
}

void close_layers(struct ovl *fs)
{
	for (int i = 0; i < fs->nlayers; i++) {
		if (fs->layers[i].root_fd >= 0)
			close(fs->layers[i].root_fd);
		free(fs->layers[i].path);
	}
	free(fs->layers);
	fs->layers = NULL;
}

static unsigned read_overflow_id(const char *path)
{
	unsigned id = 65534;
	FILE *f = fopen(path, "re");
	if (f) {
		if (fscanf(f, "%u", &id) != 1)
			id = 65534;
		fclose(f);
	}
	return id;
}

/* The root merges every layer; it shows the top lower root's owner and mode. */
int make_root(struct ovl *fs)
{
	uint16_t all[fs->nlayers];
	uint16_t n = 0;
	for (int i = 0; i < fs->nlayers; i++)
		all[n++] = (uint16_t)i;
	struct node *root = node_new(S_IFDIR, "", all, n);
	if (!root)
		return -ENOMEM;
	struct stat st;
	if (fstat(fs->layers[0].root_fd, &st) < 0) {
		node_free(fs, root);
		return -errno;
	}
	root->st_ino = ino_from_lower(fs, st.st_dev, st.st_ino);
	root->ino = FUSE_ROOT_ID;
	root->parent_ino = root->st_ino;
	root->pins = 1; /* never freed while mounted */
	fs->root = root;

	/* The upper root copies the top lower root's owner, mode and times, so
	 * the mount point looks like the directory it covers. */
	/* An owner not mapped into our user namespace (a rootless sandbox over
	 * a root-owned tree) shows as the overflow id, and the kernel lets
	 * nobody write to an inode with an unmapped owner: the mount point
	 * would be read-only for everyone. Such a root is the daemon's own. */
	idmap_map_lower(&fs->cfg, &st);
	if (st.st_uid == read_overflow_id("/proc/sys/fs/overflowuid"))
		st.st_uid = geteuid();
	if (st.st_gid == read_overflow_id("/proc/sys/fs/overflowgid"))
		st.st_gid = getegid();
	st.st_ino = root->st_ino;
	root->upper = upper_new(&st);
	if (!root->upper)
		return -ENOMEM;
	root->upper->counted = true;
	return upper_inode_reserve(fs);
}

void ovl_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct ovl *fs = ovl_of(req);
	(void)ino;
	struct statvfs sv = { 0 };
	const unsigned long bsize = 4096;
	uint64_t limit = fs->cfg.size;
	if (limit == 0) {
		/* Unlimited: like tmpfs, show what the machine could hold. */
		struct sysinfo si;
		if (sysinfo(&si) == 0)
			limit = (uint64_t)si.totalram * si.mem_unit / 2;
	}
	uint64_t used = filestore_used(fs->store) + (fs->files ? upper_files_used(fs->files) : 0);
	uint64_t used_inodes = __atomic_load_n(&fs->upper_inodes, __ATOMIC_RELAXED);
	sv.f_bsize = bsize;
	sv.f_frsize = bsize;
	sv.f_blocks = limit / bsize;
	sv.f_bfree = sv.f_blocks > used / bsize ? sv.f_blocks - used / bsize : 0;
	sv.f_bavail = sv.f_bfree;
	uint64_t files = fs->cfg.nr_inodes ? fs->cfg.nr_inodes : limit / 1024;
	sv.f_files = files;
	sv.f_ffree = files > used_inodes ? files - used_inodes : 0;
	sv.f_favail = sv.f_ffree;
	sv.f_namemax = NAME_MAX;
	fuse_reply_statfs(req, &sv);
}
