/* SPDX-License-Identifier: Apache-2.0 */
/*
 * upper_files: the second store of upper data, for -o passthrough=upper — a
 * tmpfs that only this daemon sees (made with fsopen/fsmount, never attached
 * to a path), with one file per upper regular file, named by a number of its
 * own. Such a file can be the backing file of the FUSE inode's opens
 * (passthrough.c): the kernel then reads and writes it without the daemon.
 *
 * No fd is kept per file: each use opens it by name on the mount's fd and
 * closes it again (a registered backing file is kept alive by the kernel),
 * so the daemon's fds stay bounded whatever the number of files.
 *
 * Space: the tmpfs is made with the mount's size= (nr_inodes= is the
 * daemon's to count), so a passthrough write past the limit fails with
 * ENOSPC at write(2) itself;
 * the filestore counts what the tmpfs holds against the same size=
 * (filestore_share_limit), and the tmpfs limit is lowered by what the
 * filestore holds whenever that grows (upper_files_fit).
 */
#ifndef MEMOVERLAY_UPPER_FILES_H
#define MEMOVERLAY_UPPER_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

struct upper_files;

/* Makes the private tmpfs (CAP_SYS_ADMIN: before privileges are dropped).
 * size 0: as the mount's default. On failure one line in err, -errno. */
int upper_files_create(struct upper_files **out, uint64_t size, char *err, size_t errlen);
void upper_files_destroy(struct upper_files *uf);

/* A new empty file: its id (> 0) in *id. */
int upper_files_new(struct upper_files *uf, uint64_t *id);
/* An fd on file id (O_RDWR, O_RDONLY, ... | O_CLOEXEC), or -errno. */
int upper_files_open(struct upper_files *uf, uint64_t id, int flags);
/* The file is gone from the store (its data too, once no backed open
 * holds it). */
void upper_files_remove(struct upper_files *uf, uint64_t id);
int upper_files_stat(struct upper_files *uf, uint64_t id, struct stat *st);
/* Bytes the tmpfs holds. */
uint64_t upper_files_used(struct upper_files *uf);
/* The tmpfs may take `room` bytes in all from now on (what size= leaves
 * beside the filestore); 0 when it could be set. */
int upper_files_fit(struct upper_files *uf, uint64_t room);

#endif
