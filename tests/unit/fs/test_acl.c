/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/acl.c (TAP): the mode an access ACL stands for, which
 * ACLs say no more than a mode, malformed ACLs, and chmod on an ACL. The
 * xattr form is the kernel's (version 2, then tag/perm/id, little endian). */
#include "memoverlay.h"

#include "tap.h"

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

enum { USER_OBJ = 0x01, USER = 0x02, GROUP_OBJ = 0x04, GROUP = 0x08, MASK = 0x10, OTHER = 0x20 };

struct acl {
	unsigned char b[4 + 8 * 8];
	size_t size;
};

static struct acl acl_of(const uint16_t (*e)[2], size_t n)
{
	struct acl a = { .size = 4 + 8 * n };
	uint32_t v = htole32(2);
	memcpy(a.b, &v, 4);
	for (size_t i = 0; i < n; i++) {
		uint16_t tag = htole16(e[i][0]), perm = htole16(e[i][1]);
		uint32_t id = htole32(e[i][0] == USER || e[i][0] == GROUP ? 1000 : UINT32_MAX);
		memcpy(a.b + 4 + 8 * i, &tag, 2);
		memcpy(a.b + 6 + 8 * i, &perm, 2);
		memcpy(a.b + 8 + 8 * i, &id, 4);
	}
	return a;
}

static uint16_t perm_of(const struct acl *a, uint16_t tag)
{
	for (size_t i = 0; i < (a->size - 4) / 8; i++) {
		uint16_t t, p;
		memcpy(&t, a->b + 4 + 8 * i, 2);
		memcpy(&p, a->b + 6 + 8 * i, 2);
		if (le16toh(t) == tag)
			return le16toh(p);
	}
	return 0xffff;
}

int main(void)
{
	mode_t mode;
	bool eq;

	const uint16_t minimal[][2] = { { USER_OBJ, 7 }, { GROUP_OBJ, 5 }, { OTHER, 1 } };
	struct acl a = acl_of(minimal, 3);
	mode = S_IFREG | 04000;
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), 0, "a minimal ACL parses");
	is_int(mode, S_IFREG | 04751, "... to rwxr-x--x, type and setuid kept");
	ok(eq, "... and says no more than the mode");

	const uint16_t named[][2] = { { USER_OBJ, 6 }, { USER, 7 }, { GROUP_OBJ, 4 },
				      { MASK, 6 }, { OTHER, 0 } };
	a = acl_of(named, 5);
	mode = S_IFDIR;
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), 0, "an ACL with a named user parses");
	is_int(mode & 0777, 0660, "... the group bits are the mask's");
	ok(!eq, "... and it says more than the mode");

	const uint16_t no_mask[][2] = { { USER_OBJ, 6 }, { GROUP, 7 }, { GROUP_OBJ, 4 }, { OTHER, 0 } };
	a = acl_of(no_mask, 4);
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), -EINVAL, "a named entry without a mask");
	const uint16_t no_other[][2] = { { USER_OBJ, 6 }, { GROUP_OBJ, 4 } };
	a = acl_of(no_other, 2);
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), -EINVAL, "no OTHER entry");
	const uint16_t bad_perm[][2] = { { USER_OBJ, 8 }, { GROUP_OBJ, 4 }, { OTHER, 0 } };
	a = acl_of(bad_perm, 3);
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), -EINVAL, "a permission past rwx");
	const uint16_t bad_tag[][2] = { { USER_OBJ, 6 }, { 0x40, 4 }, { GROUP_OBJ, 4 }, { OTHER, 0 } };
	a = acl_of(bad_tag, 4);
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), -EINVAL, "an unknown tag");
	a = acl_of(minimal, 3);
	is_int(acl_to_mode(a.b, a.size - 1, &mode, &eq), -EINVAL, "a truncated entry");
	uint32_t v1 = htole32(1);
	memcpy(a.b, &v1, 4);
	is_int(acl_to_mode(a.b, a.size, &mode, &eq), -EINVAL, "another version");
	is_int(acl_to_mode(a.b, 4, &mode, &eq), -EINVAL, "no entries");

	a = acl_of(named, 5);
	acl_chmod(a.b, a.size, 0751);
	ok(perm_of(&a, USER_OBJ) == 7 && perm_of(&a, MASK) == 5 && perm_of(&a, OTHER) == 1,
	   "chmod sets owner, mask and other");
	is_int(perm_of(&a, GROUP_OBJ), 4, "... and keeps the owning group's entry under a mask");
	is_int(perm_of(&a, USER), 7, "... and named entries");
	a = acl_of(minimal, 3);
	acl_chmod(a.b, a.size, 0640);
	ok(perm_of(&a, USER_OBJ) == 6 && perm_of(&a, GROUP_OBJ) == 4 && perm_of(&a, OTHER) == 0,
	   "without a mask chmod sets the owning group's entry");

	/* inheritance: a directory's default ACL, limited by the mode asked for */
	struct upper dir, child;
	memset(&dir, 0, sizeof(dir));
	memset(&child, 0, sizeof(child));
	mode = S_IFREG | 0644;
	is_int(acl_inherit(&dir, &child, &mode), 0, "no default ACL: nothing inherited");
	ok(mode == (S_IFREG | 0644) && child.nxattrs == 0, "... mode and xattrs untouched");
	a = acl_of(named, 5);   /* u::rw- u:1000:rwx g::r-- m::rw- o::--- */
	upper_xattr_set(&dir, ACL_DEFAULT_XATTR, a.b, a.size, 0);
	mode = S_IFREG | 0640;
	is_int(acl_inherit(&dir, &child, &mode), 0, "a file inherits");
	is_int(mode, S_IFREG | 0640, "... mode is the ACL's, limited by the mode asked for");
	const struct xattr *got = upper_xattr_get(&child, ACL_ACCESS_XATTR);
	ok(got && got->size == a.size, "... as its access ACL");
	ok(!upper_xattr_get(&child, ACL_DEFAULT_XATTR), "... and no default ACL (not a dir)");
	upper_xattrs_free(&child);
	mode = S_IFDIR | 0700;
	is_int(acl_inherit(&dir, &child, &mode), 0, "a directory inherits");
	is_int(mode & 0777, 0600, "... the mask limited to the group bits asked for (none)");
	ok(upper_xattr_get(&child, ACL_DEFAULT_XATTR) != NULL, "... and keeps the default ACL");
	upper_xattrs_free(&child);
	upper_xattrs_free(&dir);
	a = acl_of(minimal, 3);
	upper_xattr_set(&dir, ACL_DEFAULT_XATTR, a.b, a.size, 0);
	mode = S_IFREG | 0666;
	is_int(acl_inherit(&dir, &child, &mode), 0, "a minimal default ACL");
	ok(mode == (S_IFREG | 0640) && !upper_xattr_get(&child, ACL_ACCESS_XATTR),
	   "... becomes the mode alone (no access ACL stored)");
	upper_xattrs_free(&child);
	upper_xattrs_free(&dir);
	return tap_done();
}
