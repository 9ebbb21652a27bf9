/* acl.c: POSIX ACLs kept as xattrs in the upper layer.
 *
 * With FUSE_CAP_POSIX_ACL the kernel enforces ACLs, but the filesystem must
 * keep the mode in step with the access ACL, the ACL in step with chmod, and
 * give new objects the default ACL of their directory (see fuse_common.h).
 * (Clearing S_ISGID when an access ACL is written by a caller outside the
 * file's group is inode.c's: it needs the caller, see caller.c.)
 * The xattr form is the kernel's: a version-2 header, then entries of
 * (tag u16, perm u16, id u32), little endian.
 */
#include "memoverlay.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
