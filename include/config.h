/* config.h: gangway's configuration, loaded from a Lua file (config.lua).
 *
 * The file is loaded as text in an empty environment with a few pure
 * libraries (string, table, math), run under an instruction limit, and must
 * return a table. Every value is checked; unknown keys are errors. Errors read
 * "FILE:LINE: message" (the file does not load or run) or
 * "FILE: key.path: message" (a value is wrong). */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "frame.h"

typedef enum { GW_ON_ERROR_PASS = 0, GW_ON_ERROR_DROP, GW_ON_ERROR_CLOSE } gw_on_error;
typedef enum { GW_LOG_DEBUG = 0, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR } gw_log_level;
typedef enum { GW_LOG_TEXT = 0, GW_LOG_JSON } gw_log_format;

#define GW_ADDR_MAX 300 /* "host:port" as written, with IPv6 brackets */

/* An address block: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d, bits + 96). */
typedef struct gw_cidr {
  uint8_t addr[16];
  uint8_t bits;
} gw_cidr;
/* Is addr (AF_INET or AF_INET6) in one of the n blocks? */
bool gw_cidr_match(const gw_cidr *blocks, size_t n, const struct sockaddr *addr);

/* One step of a side's phases: n unframed bytes, or frames cut with a
 * framing of their own (frames of them, or 0: until a script switches). */
typedef struct gw_phase {
  uint64_t raw;                     /* > 0: a raw step of this many bytes */
  gw_framing framing;
  uint32_t frames;
} gw_phase;

/* One server of a listener's upstream. A numeric address (or localhost) is
 * parsed at load; a host name is kept as a name and resolved by the pool
 * on the loop (upstream.c), never here. */
typedef struct gw_upstream_server_config {
  char name[65];                    /* as given, or the address: the canonical
                                       "ip:port" when numeric, else as written */
  char addr[GW_ADDR_MAX];           /* "host:port" as written */
  char host[GW_ADDR_MAX];           /* its host part (no brackets) */
  uint16_t port;
  struct sockaddr_storage sockaddr; /* numeric: the address; a name: family 0 */
  uint32_t weight;                  /* 1..256, default 1 */
  bool backup;                      /* used only while no primary is up */
} gw_upstream_server_config;

typedef enum {
  GW_BALANCE_ROUND_ROBIN = 0,       /* weighted, smooth (nginx's) */
  GW_BALANCE_LEAST_SESSIONS,        /* fewest open sessions per weight */
  GW_BALANCE_HASH,                  /* client address, rendezvous hashing */
} gw_balance;

#define GW_UPSTREAM_SERVERS_MAX 64  /* a session's tried set is one word */

typedef struct gw_upstream_config {
  gw_upstream_server_config *servers;
  size_t nservers;                  /* 1..GW_UPSTREAM_SERVERS_MAX */
  gw_balance balance;
  bool health;                      /* TCP connect checks; off: servers are
                                       taken as up, failed connects fail over */
  uint32_t health_interval_ms;      /* default 2000 */
  uint32_t health_timeout_ms;       /* default 1000 */
  uint32_t health_rise, health_fall; /* defaults 2 and 3 */
  uint32_t resolve_ms;              /* re-resolve host names; default 30000 */
} gw_upstream_config;

typedef struct gw_listener_config {
  char *name;                       /* unique among listeners */
  char listen[GW_ADDR_MAX];         /* as written, e.g. "[::1]:1973" */
  struct sockaddr_storage listen_addr;
  char upstream[GW_ADDR_MAX];       /* the string form as written; the
                                       first server's name for a list */
  struct sockaddr_storage upstream_addr; /* the first server's address when
                                       numeric; family 0 for a host name */
  gw_upstream_config pool;          /* every form, as a pool of servers */
  gw_framing framing;
  char **scripts;                   /* absolute or relative to the config's
                                       directory, resolved to a path */
  size_t nscripts;
  gw_on_error on_error;
  bool unsafe;                      /* scripts get io/os/debug/C modules */
  bool unfinished_frame_pass;       /* at FIN, pass bytes of a frame that
                                       never completed (default: drop) */
  bool proxy_protocol;              /* clients come with a PROXY header */
  gw_cidr *proxy_from;              /* who may connect then; none: anyone */
  size_t nproxy_from;
  uint8_t upstream_proxy_protocol;  /* 0 none, 1 or 2: header to send */
  gw_phase *phases[GW_SIDES];       /* before `framing` applies, per side */
  size_t nphases[GW_SIDES];
  char *protocol;                   /* the protocol module's name as written
                                       ("top"), or NULL for none */
  char *protocol_dir;               /* its directory, absolute: holds
                                       packets.lua and maybe init.lua */
} gw_listener_config;

typedef struct gw_config {
  char *path;                       /* the file it came from */
  gw_listener_config *listeners;
  size_t nlisteners;
  /* timeouts */
  uint32_t connect_ms;              /* default 5000 */
  uint32_t idle_ms;                 /* default 300000; 0 = none */
  uint32_t drain_ms;                /* default 10000 */
  uint32_t frame_ms;                /* a started frame must complete within
                                       it; default 10000; 0 = none */
  uint32_t first_frame_ms;          /* a new client's first whole frame
                                       (framed listeners); default 30000 */
  uint32_t wait_ms;                 /* a handler that waits (gw.redis,
                                       session:sleep), in all; default 5000 */
  /* limits */
  uint32_t max_sessions;            /* default 10000; 0 = no limit */
  uint64_t handler_instructions;    /* default 1000000 */
  uint32_t lua_memory_mb;           /* default 64 */
  uint32_t write_high_water;        /* bytes; default 256 KiB */
  uint32_t write_low_water;         /* bytes; default 64 KiB */
  uint32_t write_max;               /* bytes queued toward one side past
                                       which sends fail; default 1 MiB */
  uint32_t sessions_per_ip;         /* open at once per client address;
                                       default 0 = no limit */
  uint32_t new_sessions_per_ip_per_s; /* default 0 = no limit */
  uint32_t wait_bytes;              /* bytes a side may queue behind a
                                       waiting handler; default 256 KiB */
  /* log */
  gw_log_level log_level;           /* default info */
  gw_log_format log_format;         /* default text */
  uint8_t log_target;               /* gw_log_target: 0 stderr, 1 journald */
  uint32_t log_session_lines_per_s; /* session open/close lines; the rest
                                       are counted in a summary; default
                                       100; 0 = no limit */
  /* reload */
  bool watch;                       /* reload when a script or config changes */
  char *capture_dir;                /* where session:capture writes; NULL:
                                       scripts may not capture */
  char *control;                    /* control socket path; default
                                       "gangway.sock" next to the config; "" off */
  /* admin: the HTTP endpoint (docs/admin.md), off when the key is absent */
  char admin_listen[GW_ADDR_MAX];   /* "" = no endpoint; else "host:port" */
  struct sockaddr_storage admin_addr;
  char *admin_token;                /* NULL: none (the API is read-only) */
  bool admin_token_for_reads;       /* GET needs the token too */
  /* redis: the store scripts share (gw.redis), off when the key is absent */
  char redis_addr[GW_ADDR_MAX];     /* "" = none; else "host:port" as written */
  struct sockaddr_storage redis_sockaddr;
  char *redis_password;             /* NULL: no AUTH */
  char *redis_user;                 /* NULL: AUTH with the password alone */
  uint32_t redis_db;                /* SELECT after connecting; default 0 */
  uint32_t redis_timeout_ms;        /* a command's answer; default 1000 */
  uint32_t redis_connect_ms;        /* a connect attempt; default 1000 */
} gw_config;

/* Where `protocol = "name"` is looked for after the config's directory
 * (an installed gangway's share directory; see CMakeLists.txt). */
#ifndef GW_PROTOCOLS_DIR
#define GW_PROTOCOLS_DIR "/usr/share/gangway/protocols"
#endif

/* Loads and checks path into *cfg (zeroed first). Returns 0, or -EINVAL with
 * one message in err ("config.lua: listeners[1].upstream: expected ...").
 * Scripts are only checked for existence here; loading them is the script
 * layer's job. */
int gw_config_load(const char *path, gw_config *cfg, char *err, size_t errlen);

/* A framing given as listeners[i].framing takes it (nil for raw, a preset
 * name, or a table), read from the value at idx of L into f: 0, or
 * -EINVAL with the message in err ("WHO: framing.length_size: expected
 * ..."). Runs protected on L; for session:set_framing. */
struct lua_State;
int gw_config_framing(struct lua_State *L, int idx, gw_framing *f, const char *who, char *err,
                      size_t errlen);
void gw_config_free(gw_config *cfg);

/* Splits "host:port" / "[v6]:port" into host (without brackets) and port.
 * Returns 0 with addr filled when the host is numeric (or localhost), 1 when
 * it is a host name (addr zeroed: nothing is resolved), or -EINVAL with a
 * message. */
int gw_parse_host_port(const char *s, char *host, size_t hostlen, uint16_t *port,
                       struct sockaddr_storage *addr, char *err, size_t errlen);
/* Parses "host:port" / "[v6]:port" into addr (numeric hosts, or a name
 * resolved with getaddrinfo when resolve is set). Returns 0 or -EINVAL with
 * a message. */
int gw_parse_addr(const char *s, struct sockaddr_storage *addr, bool resolve,
                  char *err, size_t errlen);
/* Formats addr as "ip:port" / "[ip]:port". */
void gw_format_addr(const struct sockaddr *addr, char *out, size_t outlen);

#endif
