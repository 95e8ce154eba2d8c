/* topd.c: a small Tales of Pirates game server for the demo.
 *
 * Speaks the game's framing and enough of its commands for gangway's
 * example scripts to have something to act on: the chap string on connect,
 * login, local chat broadcast to one room, movement with a speed check, and
 * the game's keep-alive; with -e, the demo cipher on the frames after login
 * (top_cipher.h). One line per event goes to stdout, so a person
 * watching the console sees what the proxy in front of it lets through.
 * See docs/demo.md for the output lines and the message layouts. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "top_cli.h"
#include "top_conn.h"
#include "top_wire.h"

#define TOPD_LISTEN "127.0.0.1:1974"
#define TOPD_FIRST_ID 1001
/* The longest body topd builds: MC_SAY carrying the longest text a client
 * frame can hold. */
#define TOPD_BODY_MAX (16 * 1024 + 64)
#define TOPD_TEXT_LOG 200 /* bytes of chat text per log line */

/* MC_LOGIN error codes (the demo's own). */
enum { TOPD_ERR_VERSION = 1, TOPD_ERR_NAME = 2, TOPD_ERR_IN_USE = 3 };

typedef struct topd topd;

typedef struct peer {
  top_conn conn;
  topd *srv;
  struct peer *prev, *next; /* srv->peers */
  unsigned num;             /* for logs: peer=N */
  uint32_t id;              /* player id; 0 until logged in */
  char name[TOP_NAME_MAX + 1];
  int32_t x, y;
  uint64_t window_start;    /* loop time the current one-second window began */
  unsigned window_actions;
} peer;

struct topd {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_signal_t signals[2];
  peer *peers;              /* every peer whose handles are open */
  unsigned npeers, max_peers, next_num;
  uint32_t next_id;
  unsigned idle_ms, speed_limit;
  bool verbose, stopping;
  bool encrypt;             /* -e: the demo cipher after login */
};

static peer *peer_of(top_conn *c) { return TOP_CONTAINER_OF(c, peer, conn); }

static void send_login_reply(peer *p, uint16_t err)
{
  uint8_t body[16];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_login_reply(&w, err, p->id);
  top_conn_send_cmd(&p->conn, TOP_MC_LOGIN, &w);
}

static void reject_login(peer *p, uint16_t err, const char *why)
{
  top_print("reject peer=%u error=%u reason=%s", p->num, err, why);
  send_login_reply(p, err);
  top_conn_close(&p->conn, "login rejected");
}

/* Account names are shown in every log line: printable ASCII, no spaces. */
static bool name_ok(const char *s, size_t n)
{
  if (n == 0 || n > TOP_NAME_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] > '~')
      return false;
  return true;
}

static bool name_in_use(topd *srv, const char *s, size_t n)
{
  for (peer *q = srv->peers; q; q = q->next)
    if (q->id && !q->conn.ended && strlen(q->name) == n && memcmp(q->name, s, n) == 0)
      return true;
  return false;
}

/* CM_LOGIN; any password will do. */
static void on_login(peer *p, top_reader *r)
{
  top_login l;
  if (top_get_login(r, &l) != 0) {
    reject_login(p, TOPD_ERR_VERSION, "malformed login");
    return;
  }
  if (l.marker != TOP_LOGIN_MARKER) {
    reject_login(p, TOPD_ERR_VERSION, "no login marker");
    return;
  }
  if (!name_ok(l.account, l.account_len)) {
    reject_login(p, TOPD_ERR_NAME, "bad account name");
    return;
  }
  if (name_in_use(p->srv, l.account, l.account_len)) {
    reject_login(p, TOPD_ERR_IN_USE, "name in use");
    return;
  }
  memcpy(p->name, l.account, l.account_len);
  p->name[l.account_len] = 0;
  p->id = p->srv->next_id++;
  send_login_reply(p, 0);
  top_print("login peer=%u id=%u name=%s version=%u", p->num, p->id, p->name,
            l.version);
  if (p->srv->encrypt) {
    /* MC_LOGIN went out clear; everything after it is encrypted. (After
     * an error reply only the close follows, so nothing to encrypt.) */
    top_conn_encrypt_sends(&p->conn);
    top_print("cipher peer=%u on", p->num);
  }
}

/* CM_SAY: to everyone in the room as MC_SAY. */
static void on_say(peer *p, top_reader *r)
{
  top_say say = {.id = p->id, .name = p->name, .name_len = strlen(p->name)};
  top_get_str(r, &say.text, &say.text_len);
  if (r->err) {
    top_conn_close(&p->conn, "malformed CM_SAY");
    return;
  }
  uint8_t body[TOPD_BODY_MAX];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_say(&w, &say);
  top_msg *m = top_msg_new(GW_SERVER, TOP_MC_SAY, &w);
  if (!m) {
    top_print("error peer=%u reason=cannot build MC_SAY", p->num);
    return;
  }
  unsigned to = 0;
  for (peer *q = p->srv->peers; q; q = q->next)
    if (q->id && top_conn_send(&q->conn, m) == 0)
      to++;
  top_msg_unref(m);
  char shown[TOPD_TEXT_LOG];
  top_print("say peer=%u id=%u name=%s to=%u text=%s", p->num, p->id, p->name,
            to, top_readable(shown, sizeof shown, say.text, say.text_len));
}

/* CM_BEGINACTION: moves move the player. Counts actions per second: more
 * than speed_limit is faster than anyone clicks. */
static void on_action(peer *p, top_reader *r)
{
  top_action a;
  if (top_get_action(r, &a) != 0) {
    top_conn_close(&p->conn, "malformed CM_BEGINACTION");
    return;
  }
  if (a.type == TOP_ACTION_MOVE) {
    p->x = a.x;
    p->y = a.y;
  }
  uint64_t now = uv_now(&p->srv->loop);
  if (now - p->window_start >= 1000) {
    p->window_start = now;
    p->window_actions = 0;
  }
  /* Warn once per window, when the count first passes the limit. */
  if (++p->window_actions == p->srv->speed_limit + 1)
    top_print("speed peer=%u id=%u name=%s actions=%u/s limit=%u x=%d y=%d",
              p->num, p->id, p->name, p->window_actions, p->srv->speed_limit,
              p->x, p->y);
  if (p->srv->verbose)
    top_print("action peer=%u name=%s world=%u type=%u x=%d y=%d", p->num,
              p->name, a.world, a.type, p->x, p->y);
}

static void peer_frame(top_conn *c, const uint8_t *frame, const gw_frame_info *info)
{
  peer *p = peer_of(c);
  if (!info->has_opcode) {
    if (p->srv->verbose)
      top_print("keep-alive peer=%u dir=in", p->num);
    return;
  }
  top_reader r;
  top_reader_init(&r, frame, info->len);
  if (!p->id) {
    if (info->opcode != TOP_CM_LOGIN) {
      top_conn_close(&p->conn, "command before login");
      return;
    }
    /* Whatever becomes of the login, the client encrypts what follows. */
    if (p->srv->encrypt)
      top_conn_decrypt_reads(&p->conn);
    on_login(p, &r);
    return;
  }
  switch (info->opcode) {
  case TOP_CM_SAY: on_say(p, &r); break;
  case TOP_CM_BEGINACTION: on_action(p, &r); break;
  default:
    if (p->srv->verbose)
      top_print("ignore peer=%u name=%s cmd=%u len=%zu", p->num, p->name,
                info->opcode, info->len);
  }
}

static void peer_pinged(top_conn *c)
{
  peer *p = peer_of(c);
  if (p->srv->verbose)
    top_print("keep-alive peer=%u dir=out", p->num);
}

static void peer_end(top_conn *c, const char *reason)
{
  peer *p = peer_of(c);
  const char *name = p->id ? p->name : "-";
  if (!c->ended_by_peer && !p->srv->stopping) {
    top_print("kick peer=%u name=%s reason=%s", p->num, name, reason);
  }
  top_print("disconnect peer=%u name=%s reason=%s", p->num, name, reason);
}

static void peer_closed(top_conn *c)
{
  peer *p = peer_of(c);
  topd *srv = p->srv;
  if (p->prev)
    p->prev->next = p->next;
  else
    srv->peers = p->next;
  if (p->next)
    p->next->prev = p->prev;
  srv->npeers--;
  free(p);
}

static const top_conn_cbs peer_cbs = {
  .frame = peer_frame,
  .pinged = peer_pinged,
  .end = peer_end,
  .closed = peer_closed,
};

/* The chap string the real server opens with: "[MM-DD hh:mm:ss:ms]". */
static void send_chapstr(peer *p)
{
  char chap[96]; /* 20 bytes; gcc cannot tell that tm fields are small */
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  localtime_r(&ts.tv_sec, &tm);
  snprintf(chap, sizeof chap, "[%02d-%02d %02d:%02d:%02d:%03ld]", tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  uint8_t body[64];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_str(&w, chap);
  top_conn_send_cmd(&p->conn, TOP_MC_CHAPSTR, &w);
  /* The chap string is the demo cipher's key. */
  if (p->srv->encrypt && top_conn_set_key(&p->conn, (const uint8_t *)chap,
                                          strlen(chap)) != 0) {
    top_print("error peer=%u reason=out of memory", p->num);
    top_conn_close(&p->conn, "out of memory");
  }
}

static void on_connection(uv_stream_t *listener, int status)
{
  topd *srv = listener->data;
  if (status < 0) {
    top_print("error reason=accept: %s", uv_strerror(status));
    return;
  }
  peer *p = calloc(1, sizeof *p);
  if (!p || top_conn_init(&srv->loop, &p->conn, &peer_cbs, GW_CLIENT) != 0) {
    /* The connection stays in the backlog; the next one retries. */
    free(p);
    top_print("error reason=accept: out of memory");
    return;
  }
  p->srv = srv;
  p->num = ++srv->next_num;
  p->conn.idle_ms = srv->idle_ms;
  p->next = srv->peers;
  if (srv->peers)
    srv->peers->prev = p;
  srv->peers = p;
  srv->npeers++;
  if (top_conn_accept(&p->conn, listener) != 0)
    return;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char addr[64] = "?";
  if (uv_tcp_getpeername(&p->conn.tcp, (struct sockaddr *)&ss, &len) == 0)
    top_format_addr((struct sockaddr *)&ss, addr, sizeof addr);
  top_print("connect peer=%u from=%s", p->num, addr);
  if (srv->npeers > srv->max_peers) {
    top_conn_close(&p->conn, "server full");
    return;
  }
  send_chapstr(p);
}

/* Closes everything; uv_run returns once the last peer is gone. */
static void topd_stop(topd *srv)
{
  srv->stopping = true;
  uv_close((uv_handle_t *)&srv->listener, NULL);
  top_signals_close(srv->signals);
  for (peer *p = srv->peers; p; p = p->next)
    top_conn_close(&p->conn, "server stopping");
}

static void on_signal(uv_signal_t *s, int signum)
{
  topd *srv = s->data;
  if (srv->stopping)
    return;
  top_print("stop signal=%s peers=%u", signum == SIGINT ? "SIGINT" : "SIGTERM",
            srv->npeers);
  topd_stop(srv);
}

static void usage(FILE *out)
{
  fprintf(out,
          "usage: topd [-l addr:port] [-k ms] [-m actions] [-n peers] [-e] [-v]\n"
          "  -l  listen address (default " TOPD_LISTEN "; port 0 picks one)\n"
          "  -k  drop a peer silent this long, in ms (default 10000)\n"
          "  -m  actions per second a human can do (default 8)\n"
          "  -n  most peers at once (default 1000)\n"
          "  -e  encrypt frames after login with the demo cipher (clients -e too)\n"
          "  -v  also log keep-alives, actions and ignored commands\n");
}

static int listen_on(topd *srv, const char *spec)
{
  struct sockaddr_storage ss;
  if (top_parse_addr(spec, &ss) != 0) {
    fprintf(stderr, "topd: bad listen address: %s\n", spec);
    return -EINVAL;
  }
  int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, SOMAXCONN, on_connection);
  if (rc) {
    fprintf(stderr, "topd: cannot listen on %s: %s\n", spec, uv_strerror(rc));
    return rc;
  }
  int len = sizeof ss;
  char addr[64] = "?";
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len) == 0)
    top_format_addr((struct sockaddr *)&ss, addr, sizeof addr);
  top_print("listen addr=%s", addr);
  return 0;
}

int main(int argc, char **argv)
{
  topd srv = {0};
  const char *listen_spec = TOPD_LISTEN;
  unsigned long v;
  srv.idle_ms = 10000;
  srv.speed_limit = 8;
  srv.max_peers = 1000;
  srv.next_id = TOPD_FIRST_ID;
  int opt;
  while ((opt = getopt(argc, argv, "l:k:m:n:evh")) != -1) {
    switch (opt) {
    case 'l': listen_spec = optarg; break;
    case 'k':
    case 'm':
    case 'n':
      if (top_parse_uint(optarg, 1, 1000000000, &v) != 0) {
        fprintf(stderr, "topd: -%c wants a positive number\n", opt);
        return 2;
      }
      if (opt == 'k')
        srv.idle_ms = (unsigned)v;
      else if (opt == 'm')
        srv.speed_limit = (unsigned)v;
      else
        srv.max_peers = (unsigned)v;
      break;
    case 'e': srv.encrypt = true; break;
    case 'v': srv.verbose = true; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);

  int rc = uv_loop_init(&srv.loop);
  if (rc) {
    fprintf(stderr, "topd: %s\n", uv_strerror(rc));
    return 1;
  }
  uv_tcp_init(&srv.loop, &srv.listener);
  srv.listener.data = &srv;
  top_signals_start(&srv.loop, srv.signals, on_signal, &srv);
  int status = 0;
  if (listen_on(&srv, listen_spec) != 0) {
    status = 1;
    topd_stop(&srv);
  }
  uv_run(&srv.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&srv.loop) != 0) {
    fprintf(stderr, "topd: handles left open at exit\n");
    status = 1;
  }
  return status;
}
