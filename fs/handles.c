/* handles.c: the list of open file and directory handles. The kernel
 * releases each handle it was given, except when the filesystem goes away
 * with files still open; this list lets shutdown free those too. */
#include "memoverlay.h"

void handles_add(struct ovl *fs, struct handle_link *l,
		 void (*destroy)(struct ovl *fs, struct handle_link *l))
{
	l->destroy = destroy;
	pthread_mutex_lock(&fs->handles_lock);
	if (!fs->handles.next)
		fs->handles.next = fs->handles.prev = &fs->handles;
	l->next = fs->handles.next;
	l->prev = &fs->handles;
	fs->handles.next->prev = l;
	fs->handles.next = l;
	pthread_mutex_unlock(&fs->handles_lock);
}

/* Idempotent: a handle's links are only ever looked at under the lock,
 * since removing a neighbour rewrites them. */
void handles_remove(struct ovl *fs, struct handle_link *l)
{
	pthread_mutex_lock(&fs->handles_lock);
	if (l->next) {
		l->prev->next = l->next;
		l->next->prev = l->prev;
		l->next = l->prev = NULL;
	}
	pthread_mutex_unlock(&fs->handles_lock);
}

/* Only after the session loop has ended: no request can race with this. */
void handles_destroy_all(struct ovl *fs)
{
	for (;;) {
		pthread_mutex_lock(&fs->handles_lock);
		struct handle_link *l = fs->handles.next;
		bool empty = !l || l == &fs->handles;
		pthread_mutex_unlock(&fs->handles_lock);
		if (empty)
			break;
		handles_remove(fs, l);
		l->destroy(fs, l);
	}
}
