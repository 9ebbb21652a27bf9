/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cow: which bytes of a lazily copied-up file are already in the filestore.
 *
 * Opening a lower file for writing does not copy its data. The file gets an
 * (empty, sparse) filestore copy of the right size and a cow_map: below
 * `lower_end`, every byte not inside one of the `up` ranges is still read
 * from the lower file, which never changes (exclusive access). Writes,
 * punched holes and zeroed ranges add `up` ranges; a truncate lowers
 * `lower_end`. Once `up` covers [0, lower_end) the map is empty again and
 * the filestore alone holds the file.
 *
 * Ranges are bytes, not blocks, so a 1-byte write costs no read of the
 * lower block around it. Not locked: the owner (the node's lock) serialises.
 */
#ifndef MEMOVERLAY_COW_H
#define MEMOVERLAY_COW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cow_range {
	uint64_t a, b;               /* [a, b) */
};

struct cow_map {
	uint64_t lower_end;          /* 0: nothing comes from the lower file */
	struct cow_range *up;        /* sorted, disjoint, never adjacent */
	size_t n, cap;
	size_t max_ranges;           /* see cow_fragmented; 0: COW_MAX_RANGES */
};

/* Scattered writes past this many ranges make each new one cost a memmove
 * here and in the filestore; finishing the copy-up then is cheaper. */
#define COW_MAX_RANGES 256

void cow_init(struct cow_map *m);
/* Forgets everything (frees `up`); lower_end becomes 0. */
void cow_reset(struct cow_map *m);
/* Room for one cow_mark: call before changing the data, so that a failed
 * allocation (-ENOMEM) changes nothing. */
int cow_reserve(struct cow_map *m);
/* [a, b) is now in the filestore. Needs a cow_reserve() first. */
void cow_mark(struct cow_map *m, uint64_t a, uint64_t b);
/* The file is now `size` bytes long. */
void cow_truncate(struct cow_map *m, uint64_t size);
/* The run that starts at pos: *lower tells whether it comes from the lower
 * file; returns where it ends (UINT64_MAX past lower_end). */
uint64_t cow_span(const struct cow_map *m, uint64_t pos, bool *lower);
/* Bytes still read from the lower file. */
uint64_t cow_lower_bytes(const struct cow_map *m);
/* Whether the map has grown past its range limit. */
bool cow_fragmented(const struct cow_map *m);
/* Finishing the copy-up failed (e.g. ENOSPC): ask again only at twice as
 * many ranges. */
void cow_backoff(struct cow_map *m);

#endif
