/* pool.h: reference-counted byte buffers, recycled through a free list.
 *
 * The relay reads into pool buffers and writes frames straight out of them:
 * a buffer is referenced by its reader while it holds unconsumed bytes and
 * by each write request that points into it, and goes back to the pool when
 * the last reference is dropped. So there is no malloc per read, and an idle
 * session holds no buffer at all. Buffers larger than the pool's size (a
 * framing with a large max_frame) are allocated exactly and freed on release.
 * Single-threaded: one pool per event loop. */
#ifndef GW_POOL_H
#define GW_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_buf {
  struct gw_buf *next_free;
  uint32_t refs;
  uint32_t cap;                 /* bytes in data */
  uint32_t used;                /* free for the owner's bookkeeping */
  uint8_t data[];
} gw_buf;

typedef struct gw_pool {
  gw_buf *free;
  size_t nfree;
  size_t max_free;              /* idle buffers kept; beyond that, freed */
  uint32_t buf_size;
  /* counters */
  size_t live;                  /* buffers handed out and not released */
  uint64_t allocs;              /* mallocs, pooled or not */
  uint64_t gets;
} gw_pool;

void gw_pool_init(gw_pool *p, uint32_t buf_size, size_t max_free);
/* Frees the idle buffers. Buffers still referenced must be released first. */
void gw_pool_destroy(gw_pool *p);
/* A buffer with at least min_cap bytes and one reference, or NULL. */
gw_buf *gw_buf_get(gw_pool *p, size_t min_cap);
static inline void gw_buf_ref(gw_buf *b) { b->refs++; }
void gw_buf_unref(gw_pool *p, gw_buf *b);

#endif
