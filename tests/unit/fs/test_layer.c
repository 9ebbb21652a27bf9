/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/layer.c (TAP): markers, whiteouts in both formats,
 * opaque directories, and paths that must never leave a layer. Builds a
 * layer in a temporary directory; links no libfuse. */
#include "memoverlay.h"

#include "tap.h"
#include "tmptree.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static char root[] = "/tmp/memoverlay-test-layer-XXXXXX";

static void make(const char *rel, mode_t mode, dev_t dev)
{
	tmptree_make(root, rel, mode, dev);
}

static void make_symlink(const char *rel, const char *target)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", root, rel);
	if (symlink(target, p) < 0)
		diag("symlink %s: %s", rel, strerror(errno));
}

static void names(void)
{
	ok(layer_name_is_marker(".wh.a") && layer_name_is_marker(".wh..wh..opq"),
	   "whiteouts and overlay metadata are markers");
	ok(!layer_name_is_marker("a.wh.") && !layer_name_is_marker(".w"), "other names are not");
	is_str(layer_whiteout_target(".wh.name"), "name", ".wh.NAME hides NAME");
	ok(layer_whiteout_target(".wh..wh..opq") == NULL, "the opaque marker hides no name");
	ok(layer_whiteout_target("plain") == NULL, "a plain name hides nothing");
	char *p = path_join("", "c");
	is_str(p, "c", "join at the root");
	free(p);
	p = path_join("a/b", "c");
	is_str(p, "a/b/c", "join below it");
	free(p);
	ok(xattr_is_private("trusted.overlay.opaque") && xattr_is_private("user.overlay.redirect"),
	   "overlay bookkeeping xattrs are private");
	ok(!xattr_is_private("user.mine") && !xattr_is_private("trusted.overlayx"),
	   "others are not");
}

static void probes(int dirfd)
{
	struct stat st;
	is_int(layer_probe(dirfd, "file", &st), LOWER_FOUND, "a file is found");
	ok(S_ISREG(st.st_mode), "... with its stat");
	is_int(layer_probe(dirfd, "gone", &st), LOWER_WHITEOUT, "a char 0/0 is a whiteout");
	is_int(layer_probe(dirfd, "deleted", &st), LOWER_WHITEOUT, "a .wh.NAME beside it too");
	is_int(layer_probe(dirfd, "absent", &st), LOWER_ABSENT, "nothing at all: absent");
	is_int(layer_probe(dirfd, "dev", &st), LOWER_FOUND, "a char device 1/3 is a device");
	is_int(layer_probe(dirfd, "link", &st), LOWER_FOUND, "a symlink is found, not followed");
	ok(S_ISLNK(st.st_mode), "... as a symlink");
	ok(layer_dir_is_opaque(dirfd, "opq_marker"), "a dir with .wh..wh..opq is opaque");
	ok(!layer_dir_is_opaque(dirfd, "plain"), "a plain dir is not");
	ok(!layer_dir_is_opaque(dirfd, "file"), "a file is not an opaque dir");
}

static void opaque_xattr(int dirfd)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/opq_xattr", root);
	if (setxattr(p, "trusted.overlay.opaque", "y", 1, 0) < 0) {
		ok(1, "# SKIP trusted xattrs not settable here (%s)", strerror(errno));
		return;
	}
	ok(layer_dir_is_opaque(dirfd, "opq_xattr"), "trusted.overlay.opaque=y is opaque");
}

static void confinement(const struct layer *l)
{
	int fd = layer_open(l, "file", O_RDONLY);
	ok(fd >= 0, "a file in the layer opens");
	if (fd >= 0)
		close(fd);
	is_int(layer_open(l, "link", O_RDONLY), -ELOOP, "a final symlink is not followed");
	ok(layer_open(l, "escape/passwd", O_RDONLY) < 0, "a symlinked directory is not walked");
	ok(layer_open(l, "../etc/passwd", O_RDONLY) < 0, "\"..\" cannot leave the layer");
	fd = layer_open(l, "", O_PATH | O_DIRECTORY);
	ok(fd >= 0, "\"\" is the layer root");
	if (fd >= 0)
		close(fd);
	/* deeper than PATH_MAX: walked in pieces, still beneath the root */
	static const char seg[] = "dddddddddddddddddddddddddddddddddddddddddddddddddd";
	char rel[PATH_MAX + 600] = "";
	size_t len = 0;
	int cur = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	bool made = cur >= 0;
	while (made && len < PATH_MAX + 200) {
		made = mkdirat(cur, seg, 0755) == 0;
		int next = made ? openat(cur, seg, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
		close(cur);
		cur = next;
		made = made && cur >= 0;
		len += (size_t)snprintf(rel + len, sizeof(rel) - len, "%s%s", len ? "/" : "", seg);
	}
	if (cur >= 0)
		close(cur);
	ok(made, "a directory chain longer than PATH_MAX was made");
	fd = layer_open(l, rel, O_PATH | O_DIRECTORY);
	ok(fd >= 0, "a path longer than PATH_MAX opens beneath the root (%d)", fd);
	if (fd >= 0)
		close(fd);
}

int main(void)
{
	if (!mkdtemp(root)) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	make("file", S_IFREG | 0644, 0);
	make("gone", S_IFCHR | 0600, makedev(0, 0));
	make(".wh.deleted", S_IFREG | 0600, 0);
	make("dev", S_IFCHR | 0600, makedev(1, 3));
	make("plain", S_IFDIR | 0755, 0);
	make("opq_marker", S_IFDIR | 0755, 0);
	make("opq_marker/.wh..wh..opq", S_IFREG | 0600, 0);
	make("opq_xattr", S_IFDIR | 0755, 0);
	make_symlink("link", "file");
	make_symlink("escape", "/etc");

	struct layer l = { .path = root };
	l.root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	int dirfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	names();
	probes(dirfd);
	opaque_xattr(dirfd);
	confinement(&l);
	close(dirfd);
	close(l.root_fd);
	tmptree_remove(root);
	return tap_done();
}
