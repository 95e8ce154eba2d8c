/* dissector.h: a Wireshark Lua dissector generated from listeners' packet
 * definitions (`gangway dissector`, docs/admin.md).
 *
 * Pure: text out of a loaded gw_proto and its gw_framing, no libuv, no
 * Lua. The text is Lua 5.2 (Wireshark's) and 5.4 alike; every name and
 * path in it is an escaped string literal, so a definition cannot inject
 * code into it. */
#ifndef GW_DISSECTOR_H
#define GW_DISSECTOR_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

/* Declared, not included: callers (main.c) need nothing of proto.h. */
struct gw_proto;
struct gw_config;

/* One listener's dissector: a Proto named "gangway_<name>" (lower case,
 * characters a filter name cannot hold as "_"). */
typedef struct gw_dissector_listener {
  const char *name;          /* the listener's name */
  const gw_framing *framing; /* how its frames are cut */
  const struct gw_proto *proto; /* its packet definitions */
  const uint16_t *ports;     /* its listen port and its upstream servers' */
  size_t nports;             /* (zeros and repeats are skipped) */
} gw_dissector_listener;

/* Writes the Lua text of one dissector per listener into *out (malloc'd,
 * NUL-terminated, *outlen bytes). Returns 0, or -EINVAL with one message
 * in err (an unframed listener, two listeners with one Proto name), or
 * -ENOMEM. */
int gw_dissector_generate(const gw_dissector_listener *l, size_t n, char **out,
                          size_t *outlen, char *err, size_t errlen);

/* The same for a config's listeners with `protocol = ...`: all of them, or
 * the one called listener. Loads each one's packets.lua for its framing.
 * Returns 0, or -EINVAL with one message in err (a packets.lua that does
 * not load, no such listener, no listener with definitions), or -ENOMEM. */
int gw_dissector_from_config(const struct gw_config *cfg, const char *listener,
                             char **out, size_t *outlen, char *err, size_t errlen);

#endif
