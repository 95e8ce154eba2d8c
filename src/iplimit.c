/* iplimit.c: per-address session counts and token buckets (see iplimit.h).
 *
 * Chained hash table of addresses. Each entry counts the sessions open from
 * its address and holds a token bucket of new sessions: per_ip_per_s
 * tokens, refilled continuously (in thousandths, so any rate is exact to
 * the millisecond), one spent per session let in. */
#include "iplimit.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct ip_entry {
  struct ip_entry *next;
  uint8_t addr[16];             /* IPv4 as ::ffff:a.b.c.d */
  uint32_t sessions;
  uint64_t tokens_milli;        /* bucket, in 1/1000 of a session */
  uint64_t refilled_ms;
} ip_entry;

struct gw_iplimit {
  ip_entry **slots;
  size_t nslots, nentries;
  uint32_t per_ip, per_ip_per_s;
  uint64_t seed;
};

gw_iplimit *gw_iplimit_new(void) {
  gw_iplimit *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->nslots = 64;
  t->slots = calloc(t->nslots, sizeof *t->slots);
  if (!t->slots) {
    free(t);
    return NULL;
  }
  /* A per-process seed, so clients cannot aim at one chain. */
  t->seed = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15ULL;
  return t;
}

void gw_iplimit_free(gw_iplimit *t) {
  if (!t) return;
  for (size_t i = 0; i < t->nslots; i++)
    for (ip_entry *e = t->slots[i], *n; e; e = n) {
      n = e->next;
      free(e);
    }
  free(t->slots);
  free(t);
}

void gw_iplimit_set(gw_iplimit *t, uint32_t per_ip, uint32_t per_ip_per_s) {
  t->per_ip = per_ip;
  t->per_ip_per_s = per_ip_per_s;
}

size_t gw_iplimit_entries(const gw_iplimit *t) { return t->nentries; }

static bool key_of(const struct sockaddr *sa, uint8_t key[16]) {
  if (sa->sa_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    return true;
  }
  if (sa->sa_family == AF_INET) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(key, mapped, 12);
    memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return true;
  }
  return false;
}

static size_t hash(const gw_iplimit *t, const uint8_t key[16]) {
  uint64_t h = t->seed;
  for (int i = 0; i < 16; i++) {
    h ^= key[i];
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 29;
  return (size_t)h & (t->nslots - 1);
}

static void refill(const gw_iplimit *t, ip_entry *e, uint64_t now_ms) {
  uint64_t full = (uint64_t)t->per_ip_per_s * 1000;
  uint64_t dt = now_ms > e->refilled_ms ? now_ms - e->refilled_ms : 0;
  /* dt * rate tokens/1000 per ms, in thousandths: dt * rate */
  uint64_t add = dt >= 1000 ? full : dt * t->per_ip_per_s;
  e->tokens_milli = e->tokens_milli + add > full ? full : e->tokens_milli + add;
  e->refilled_ms = now_ms;
}

/* An entry is needed while it has sessions or a bucket that is not full. */
static bool stale(const gw_iplimit *t, ip_entry *e, uint64_t now_ms) {
  if (e->sessions) return false;
  if (!t->per_ip_per_s) return true;
  refill(t, e, now_ms);
  return e->tokens_milli >= (uint64_t)t->per_ip_per_s * 1000;
}

static void sweep(gw_iplimit *t, uint64_t now_ms) {
  for (size_t i = 0; i < t->nslots; i++)
    for (ip_entry **pp = &t->slots[i]; *pp;) {
      ip_entry *e = *pp;
      if (stale(t, e, now_ms)) {
        *pp = e->next;
        free(e);
        t->nentries--;
      } else {
        pp = &e->next;
      }
    }
}

static void grow(gw_iplimit *t) {
  size_t n = t->nslots * 2;
  ip_entry **slots = calloc(n, sizeof *slots);
  if (!slots) return; /* longer chains, still correct */
  ip_entry **old = t->slots;
  size_t nold = t->nslots;
  t->slots = slots;
  t->nslots = n;
  for (size_t i = 0; i < nold; i++)
    for (ip_entry *e = old[i], *next; e; e = next) {
      next = e->next;
      size_t h = hash(t, e->addr);
      e->next = slots[h];
      slots[h] = e;
    }
  free(old);
}

static ip_entry *find(gw_iplimit *t, const uint8_t key[16]) {
  for (ip_entry *e = t->slots[hash(t, key)]; e; e = e->next)
    if (memcmp(e->addr, key, 16) == 0) return e;
  return NULL;
}

gw_ip_verdict gw_iplimit_open(gw_iplimit *t, const struct sockaddr *addr,
                              uint64_t now_ms) {
  uint8_t key[16];
  if (!key_of(addr, key)) return GW_IP_OK; /* not an IP address: no limit */
  ip_entry *e = find(t, key);
  if (!e) {
    if (!t->per_ip && !t->per_ip_per_s) return GW_IP_OK;
    if (t->nentries >= t->nslots) {
      sweep(t, now_ms);
      if (t->nentries >= t->nslots / 2) grow(t);
    }
    e = calloc(1, sizeof *e);
    if (!e) return GW_IP_NOMEM;
    memcpy(e->addr, key, 16);
    e->tokens_milli = (uint64_t)t->per_ip_per_s * 1000;
    e->refilled_ms = now_ms;
    size_t h = hash(t, key);
    e->next = t->slots[h];
    t->slots[h] = e;
    t->nentries++;
  }
  if (t->per_ip && e->sessions >= t->per_ip) return GW_IP_TOO_MANY;
  if (t->per_ip_per_s) {
    refill(t, e, now_ms);
    if (e->tokens_milli < 1000) return GW_IP_TOO_FAST;
    e->tokens_milli -= 1000;
  }
  e->sessions++;
  return GW_IP_OK;
}

void gw_iplimit_close(gw_iplimit *t, const struct sockaddr *addr,
                      uint64_t now_ms) {
  uint8_t key[16];
  if (!key_of(addr, key)) return;
  ip_entry *e = find(t, key);
  if (!e || !e->sessions) return; /* let in while limits were off */
  e->sessions--;
  if (stale(t, e, now_ms)) {
    ip_entry **pp = &t->slots[hash(t, key)];
    while (*pp != e) pp = &(*pp)->next;
    *pp = e->next;
    free(e);
    t->nentries--;
  }
}
