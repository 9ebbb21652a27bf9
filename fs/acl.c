/* acl.c: POSIX ACLs kept as xattrs in the upper layer.
 *
 * With FUSE_CAP_POSIX_ACL the kernel enforces ACLs, but the filesystem must
 * keep the mode in step with the access ACL, the ACL in step with chmod, and
 * give new objects the default ACL of their directory (see fuse_common.h),
 * and clear S_ISGID when an access ACL is written by a caller outside the
 * file's group (acl_write_clears_sgid), as chmod does in the kernel.
 * The xattr form is the kernel's: a version-2 header, then entries of
 * (tag u16, perm u16, id u32), little endian.
 */
#include "memoverlay.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ACL_VERSION 2
enum { TAG_USER_OBJ = 0x01, TAG_USER = 0x02, TAG_GROUP_OBJ = 0x04, TAG_GROUP = 0x08,
       TAG_MASK = 0x10, TAG_OTHER = 0x20 };

struct acl_entry {
	uint16_t tag, perm;
	uint32_t id;
};

static size_t acl_count(const void *v, size_t size)
{
	uint32_t version;
	if (size < 4 || (size - 4) % sizeof(struct acl_entry) != 0)
		return 0;
	memcpy(&version, v, 4);
	if (le32toh(version) != ACL_VERSION)
		return 0;
	return (size - 4) / sizeof(struct acl_entry);
}

static struct acl_entry entry_at(const void *v, size_t i)
{
	struct acl_entry e;
	memcpy(&e, (const char *)v + 4 + i * sizeof(e), sizeof(e));
	e.tag = le16toh(e.tag);
	e.perm = le16toh(e.perm);
	e.id = le32toh(e.id);
	return e;
}

static void set_perm(void *v, size_t i, uint16_t perm)
{
	uint16_t le = htole16(perm);
	memcpy((char *)v + 4 + i * sizeof(struct acl_entry) + 2, &le, 2);
}

int acl_to_mode(const void *v, size_t size, mode_t *mode, bool *equivalent)
{
	size_t n = acl_count(v, size);
	int have = 0;
	unsigned u = 0, g = 0, o = 0, mask = 0;
	bool named = false;
	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		struct acl_entry e = entry_at(v, i);
		if (e.perm & ~7u)
			return -EINVAL;
		switch (e.tag) {
		case TAG_USER_OBJ: u = e.perm; have |= TAG_USER_OBJ; break;
		case TAG_GROUP_OBJ: g = e.perm; have |= TAG_GROUP_OBJ; break;
		case TAG_OTHER: o = e.perm; have |= TAG_OTHER; break;
		case TAG_MASK: mask = e.perm; have |= TAG_MASK; break;
		case TAG_USER: case TAG_GROUP: named = true; break;
		default: return -EINVAL;
		}
	}
	if ((have & (TAG_USER_OBJ | TAG_GROUP_OBJ | TAG_OTHER)) != (TAG_USER_OBJ | TAG_GROUP_OBJ | TAG_OTHER))
		return -EINVAL;
	if (named && !(have & TAG_MASK))
		return -EINVAL;
	*mode = (*mode & ~(mode_t)0777) | (mode_t)(u << 6 | ((have & TAG_MASK) ? mask : g) << 3 | o);
	*equivalent = !named && !(have & TAG_MASK);
	return 0;
}

void acl_chmod(void *v, size_t size, mode_t mode)
{
	size_t n = acl_count(v, size);
	bool has_mask = false;
	for (size_t i = 0; i < n; i++)
		has_mask |= entry_at(v, i).tag == TAG_MASK;
	for (size_t i = 0; i < n; i++) {
		uint16_t tag = entry_at(v, i).tag;
		if (tag == TAG_USER_OBJ)
			set_perm(v, i, (mode >> 6) & 7);
		else if (tag == TAG_OTHER)
			set_perm(v, i, mode & 7);
		else if (tag == (has_mask ? TAG_MASK : TAG_GROUP_OBJ))
			set_perm(v, i, (mode >> 3) & 7);
	}
}

int acl_inherit(const struct upper *dir, struct upper *child, mode_t *mode)
{
	const struct xattr *def = upper_xattr_get(dir, ACL_DEFAULT_XATTR);
	if (!def || acl_count(def->value, def->size) == 0)
		return 0;
	bool is_dir = S_ISDIR(*mode);
	if (is_dir) {
		int res = upper_xattr_set(child, ACL_DEFAULT_XATTR, def->value, def->size, 0);
		if (res < 0)
			return res;
	}
	/* The new object's access ACL is the default ACL limited by the mode
	 * asked for; the umask does not apply (POSIX 1003.1e). */
	void *acl = malloc(def->size);
	if (!acl)
		return -ENOMEM;
	memcpy(acl, def->value, def->size);
	size_t n = acl_count(acl, def->size);
	bool has_mask = false;
	for (size_t i = 0; i < n; i++)
		has_mask |= entry_at(acl, i).tag == TAG_MASK;
	for (size_t i = 0; i < n; i++) {
		struct acl_entry e = entry_at(acl, i);
		if (e.tag == TAG_USER_OBJ)
			set_perm(acl, i, e.perm & ((*mode >> 6) & 7));
		else if (e.tag == TAG_OTHER)
			set_perm(acl, i, e.perm & (*mode & 7));
		else if (e.tag == (has_mask ? TAG_MASK : TAG_GROUP_OBJ))
			set_perm(acl, i, e.perm & ((*mode >> 3) & 7));
	}
	bool equivalent;
	int res = acl_to_mode(acl, def->size, mode, &equivalent);
	if (res == 0 && !equivalent)
		res = upper_xattr_set(child, ACL_ACCESS_XATTR, acl, def->size, 0);
	free(acl);
	return res;
}

/* The caller's /proc status ("Groups:", "CapEff:"), NUL-terminated, or NULL.
 * It is the calling thread's: credentials are per thread. */
static char *caller_status(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 1 == cap) {
			/* 65536 groups of up to 10 digits: a little over 700 KiB */
			char *grown = cap < (1u << 20) ? realloc(buf, cap * 2) : NULL;
			if (!grown) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0) {
				free(buf);
				buf = NULL;
			}
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	if (buf)
		buf[len] = '\0';
	return buf;
}

/* The value of "KEY:" at the start of a line of a status text, or NULL. */
static const char *status_field(const char *status, const char *key)
{
	size_t klen = strlen(key);
	for (const char *line = status; line;) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':')
			return line + klen + 1;
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return NULL;
}

/* The kernel's in_group_or_capable() for req's caller, from what FUSE gives
 * (its fsgid) and its /proc status (supplementary groups, CAP_FSETID). */
static bool caller_in_group_or_capable(fuse_req_t req, gid_t gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->gid == gid)
		return true;
	char *status = ctx->pid > 0 ? caller_status(ctx->pid) : NULL;
	if (!status)
		return false; /* nothing shows it may: as for a caller that may not */
	bool ok = false;
	const char *groups = status_field(status, "Groups");
	while (groups && !ok) {
		char *end;
		unsigned long g = strtoul(groups, &end, 10);
		if (end == groups)
			break; /* the end of the line */
		ok = g == (unsigned long)gid;
		groups = end;
	}
	const char *caps = status_field(status, "CapEff");
	if (!ok && caps)
		ok = (strtoull(caps, NULL, 16) >> CAP_FSETID) & 1;
	free(status);
	return ok;
}

bool acl_write_clears_sgid(struct ovl *fs, fuse_req_t req, struct node *n)
{
	struct stat st;
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_getattr_node(fs, n, &st); /* the group as the kernel knows it */
	pthread_rwlock_unlock(&fs->ns_lock);
	return res == 0 && (st.st_mode & S_ISGID) && !caller_in_group_or_capable(req, st.st_gid);
}
