/* SPDX-License-Identifier: Apache-2.0 */
/* tar_writer.h: a streaming writer of POSIX pax (ustar + extended
 * headers) archives (tar_writer.c), for `memoverlay-ctl export`.
 *
 * Written here rather than with libarchive: the daemon writes the tar
 * under its seccomp filter, from its own thread, into a socket; ~200 lines
 * cover what an OCI layer needs (regular files, directories, symlinks,
 * hard links, devices, fifos; long names, big sizes and ids, nanosecond
 * mtimes and xattrs as pax records SCHILY.xattr.NAME, which GNU tar,
 * libarchive, Go's archive/tar and so containers/storage all read).
 * Output goes through a buffer to a sink callback: nothing holds the whole
 * archive. */
#ifndef MEMOVERLAY_TAR_WRITER_H
#define MEMOVERLAY_TAR_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TAR_BLOCK 512u

/* Where the bytes go: 0, or -errno to stop the archive. */
typedef int (*tar_sink)(void *arg, const void *buf, size_t len);

struct tar_writer {
	char *buf;
	size_t len, cap;
	tar_sink sink;
	void *arg;
	int err;                /* first failure: every later call returns it */
	uint64_t written;       /* bytes handed to the sink */
};

struct tar_xattr {
	const char *name;
	const void *value;
	size_t size;
};

struct tar_entry {
	const char *path;       /* relative, no leading "/" or "./"; directories without "/" */
	char type;              /* '0' file, '1' hard link, '2' symlink, '3' chr, '4' blk,
	                         * '5' directory, '6' fifo */
	mode_t mode;            /* permission bits (07777) */
	uid_t uid;
	gid_t gid;
	uint64_t size;          /* '0' only */
	int64_t mtime;
	long mtime_nsec;
	const char *linkname;   /* '1', '2' */
	unsigned devmajor, devminor;
	const struct tar_xattr *xattrs;
	size_t nxattrs;
};

int tar_init(struct tar_writer *tw, tar_sink sink, void *arg);
void tar_free(struct tar_writer *tw);
/* The header (a pax header first when a field does not fit ustar). For a
 * '0' entry, exactly e->size bytes of tar_data must follow, then tar_pad. */
int tar_header(struct tar_writer *tw, const struct tar_entry *e);
int tar_data(struct tar_writer *tw, const void *buf, size_t len);
/* Zeros up to the next block after a file of `size` bytes. */
int tar_pad(struct tar_writer *tw, uint64_t size);
/* The two zero blocks that end an archive, and everything to the sink. */
int tar_finish(struct tar_writer *tw);

#endif
