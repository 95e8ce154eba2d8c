/* redis.h: gangway's one Redis client, on the worker's libuv loop.
 *
 * Two connections through hiredis' asynchronous API and its libuv adapter:
 * one for commands, one for pub/sub (a subscribed connection takes no other
 * commands). Each counts as up only once AUTH (user + password, or the
 * password alone) and SELECT db have succeeded. A lost connection is dialled
 * again after a backoff that doubles from 100 ms to 5 s, with jitter; the
 * pub/sub one subscribes again to every channel and pattern it had.
 *
 * Commands never wait for the connection: while it is down a command fails
 * at once with a message that says why and when the next attempt is
 * ("redis: not connected (connection refused), retrying in 400 ms"), so
 * nothing queues up behind a Redis that is gone. Commands sent one after
 * the other go out in order, without waiting for each other's replies
 * (pipelining). Each gets its reply, or an error after redis.timeout_ms
 * (the connection is then made anew: what was behind it fails at once),
 * or an error when the connection is lost.
 *
 * The reply handed to callbacks is hiredis' redisReply, valid during the
 * callback only. */
#ifndef GW_REDIS_H
#define GW_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

typedef struct gw_redis gw_redis;
typedef struct gw_redis_req gw_redis_req;
struct redisReply;

/* Where the client counts (slots of the app's registry; any may be NULL). */
typedef struct gw_redis_counters {
  uint64_t *commands;           /* sent */
  uint64_t *errors;             /* failed: error replies, refused, lost */
  uint64_t *timeouts;           /* no reply within timeout_ms */
  uint64_t *reconnects;         /* connection attempts after a loss */
  int64_t *up;                  /* 1 while the command connection is up */
} gw_redis_counters;

/* A command's outcome: reply (an error reply is a reply too), or NULL and
 * err. Called once, from the loop, never from inside gw_redis_command. */
typedef void (*gw_redis_cb)(void *ud, const struct redisReply *reply, const char *err);
/* A published message: pattern is NULL for a plain subscription. */
typedef void (*gw_redis_message_cb)(void *ud, const char *pattern, const char *channel,
                                    size_t channel_len, const char *msg, size_t len);

/* Starts a client for cfg's redis section (cfg->redis_addr must be set) and
 * its first connection attempts. 0 or a negative errno. */
int gw_redis_new(uv_loop_t *loop, const gw_config *cfg, const gw_redis_counters *counters,
                 gw_redis **out);
/* A reload: with other redis settings, drops both connections (commands
 * under way fail) and connects anew; with the same, changes nothing.
 * Returns true when it reconnects. */
bool gw_redis_configure(gw_redis *r, const gw_config *cfg);
/* Fails what is under way, closes the connections and frees r once libuv
 * has closed its handles (the loop must run). */
void gw_redis_close(gw_redis *r);

/* Is the command connection up? */
bool gw_redis_up(const gw_redis *r);
/* Why commands fail now, for messages: "not connected (connection
 * refused), retrying in 400 ms". */
void gw_redis_status(const gw_redis *r, char *out, size_t outlen);

/* Sends one command (argv[0] is its name). Returns the request, or NULL
 * with err ("redis: not connected (...)", "redis: too many commands under
 * way", "... too many bytes under way" past 64 MiB of commands awaiting
 * replies, "redis: SUBSCRIBE is not allowed on the shared connection
 * (...)"). cb runs once unless gw_redis_cancel is called first. */
gw_redis_req *gw_redis_command(gw_redis *r, int argc, const char *const *argv,
                               const size_t *lens, gw_redis_cb cb, void *ud, char *err,
                               size_t errlen);
/* The caller is gone: cb will not run. */
void gw_redis_cancel(gw_redis_req *q);

/* Where messages go (one receiver: the script layer). */
void gw_redis_on_message(gw_redis *r, gw_redis_message_cb cb, void *ud);
/* The channels and patterns to be subscribed to: the pub/sub connection
 * subscribes to what is new and unsubscribes from what is gone, now and
 * after every reconnect. 0 or -ENOMEM. */
int gw_redis_set_subscriptions(gw_redis *r, const char *const *channels, size_t nchannels,
                               const char *const *patterns, size_t npatterns);

/* ---- a stand-in for the server (the busted harness's fake Redis) ----
 * A gw_redis made by gw_redis_new_stand_in connects nowhere: each command
 * goes to ops->command, which answers it later (never from inside) with
 * gw_redis_answer, in order. The script layer uses it as any client;
 * gw_redis_cancel works as usual. Only these calls, gw_redis_on_message,
 * gw_redis_set_subscriptions and gw_redis_close apply to it. */
typedef struct gw_redis_stand_in {
  /* 0 (q is answered later), or a negative errno with err: the command
   * fails at once, as with a Redis that is down. */
  int (*command)(void *ud, gw_redis_req *q, int argc, const char *const *argv,
                 const size_t *lens, char *err, size_t errlen);
} gw_redis_stand_in;
gw_redis *gw_redis_new_stand_in(const gw_redis_stand_in *ops, void *ud);
/* Runs q's callback (unless cancelled) with reply or err, and frees q. */
void gw_redis_answer(gw_redis_req *q, const struct redisReply *reply, const char *err);
/* A message published on channel: with deliver, handed to the on_message
 * receiver once per subscription that matches (the channel, each glob
 * pattern). Returns how many match. */
size_t gw_redis_stand_in_publish(gw_redis *r, const char *channel, size_t channel_len,
                                 const char *msg, size_t len, bool deliver);

#endif
