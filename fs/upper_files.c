/* SPDX-License-Identifier: Apache-2.0 */
/* upper_files.c: the private tmpfs of -o passthrough=upper (see
 * upper_files.h). */
#include "upper_files.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <unistd.h>

struct upper_files {
	int mnt;                /* the detached tmpfs mount: its root */
	uint64_t next_id;       /* atomic */
};

/* One fsconfig key=value, as a string. */
static int set_option(int fsfd, const char *key, uint64_t value)
{
	char v[32];
	snprintf(v, sizeof(v), "%" PRIu64, value);
	return fsconfig(fsfd, FSCONFIG_SET_STRING, key, v, 0) < 0 ? -errno : 0;
}

int upper_files_create(struct upper_files **out, uint64_t size, char *err, size_t errlen)
{
	struct upper_files *uf = calloc(1, sizeof(*uf));
	if (!uf) {
		snprintf(err, errlen, "passthrough=upper: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	int res = 0;
	const char *step = "fsopen(tmpfs)";
	int fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
	if (fsfd < 0)
		res = -errno;
	if (res == 0 && size) {
		step = "fsconfig(size)";
		res = set_option(fsfd, "size", size);
	}
	if (res == 0) {
		/* no limit of its own: the daemon counts nr_inodes= (upper.c),
		 * and an unlinked file still open must not stop a new one */
		step = "fsconfig(nr_inodes)";
		res = set_option(fsfd, "nr_inodes", 0);
	}
	if (res == 0) {
		step = "fsconfig(mode)";
		res = fsconfig(fsfd, FSCONFIG_SET_STRING, "mode", "0700", 0) < 0 ? -errno : 0;
	}
	if (res == 0) {
		step = "fsconfig(create)";
		res = fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0 ? -errno : 0;
	}
	if (res == 0) {
		step = "fsmount";
		/* nodev, nosuid: nothing there is ever run or opened as a device
		 * through this mount; the FUSE inode's mode is what counts */
		uf->mnt = fsmount(fsfd, FSMOUNT_CLOEXEC, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID);
		if (uf->mnt < 0)
			res = -errno;
	}
	if (fsfd >= 0)
		close(fsfd);
	if (res < 0) {
		snprintf(err, errlen, "passthrough=upper: cannot make the private tmpfs: %s: %s",
			 step, strerror(-res));
		free(uf);
		return res;
	}
	*out = uf;
	return 0;
}

void upper_files_destroy(struct upper_files *uf)
{
	if (!uf)
		return;
	close(uf->mnt); /* the last reference: the tmpfs and its files go */
	free(uf);
}

static void name_of(uint64_t id, char name[24])
{
	snprintf(name, 24, "%" PRIx64, id);
}

int upper_files_new(struct upper_files *uf, uint64_t *id)
{
	uint64_t n = __atomic_add_fetch(&uf->next_id, 1, __ATOMIC_RELAXED);
	char name[24];
	name_of(n, name);
	int fd = openat(uf->mnt, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	close(fd);
	*id = n;
	return 0;
}

int upper_files_open(struct upper_files *uf, uint64_t id, int flags)
{
	char name[24];
	name_of(id, name);
	int fd = openat(uf->mnt, name, flags | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}

void upper_files_remove(struct upper_files *uf, uint64_t id)
{
	char name[24];
	name_of(id, name);
	(void)unlinkat(uf->mnt, name, 0);
}

int upper_files_stat(struct upper_files *uf, uint64_t id, struct stat *st)
{
	char name[24];
	name_of(id, name);
	return fstatat(uf->mnt, name, st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

uint64_t upper_files_used(struct upper_files *uf)
{
	struct statfs sf;
	if (fstatfs(uf->mnt, &sf) < 0)
		return 0;
	return (uint64_t)(sf.f_blocks - sf.f_bfree) * (uint64_t)sf.f_bsize;
}

int upper_files_fit(struct upper_files *uf, uint64_t room)
{
	/* tmpfs refuses a size below what it holds (EINVAL): then it keeps
	 * the old one, and the filestore's own check (which counts what the
	 * tmpfs holds) still stops the sum */
	int fd = fspick(uf->mnt, "", FSPICK_EMPTY_PATH | FSPICK_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* tmpfs reads size=0 as "no limit": keep one page instead */
	int res = set_option(fd, "size", room ? room : 4096);
	if (res == 0 && fsconfig(fd, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0) < 0)
		res = -errno;
	close(fd);
	return res;
}
