/* topbot.c: Tales of Pirates bot clients for the demo and for load.
 *
 * N bots on one libuv loop, each its own connection: log in as botK, greet
 * the room, then chat from a small list, walk at a human pace and answer
 * keep-alives, until -d seconds have passed. With -x, bot1 also bursts
 * moves like a speed hack; with -s, every bot follows a scenario file
 * instead of chance; with -e, the demo cipher on the frames after login
 * (top_cipher.h). Prints what each bot sends and receives, or with -q
 * only a summary of frames per command. See docs/demo.md. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "top_cli.h"
#include "top_conn.h"
#include "top_wire.h"

#define BOT_CONNECT "127.0.0.1:1973"
#define BOT_TICK_MS 50
/* Bots between their connect and their login reply, at most: a storm of
 * connects overflows the server's accept queue, and the kernel then delays
 * the rest by seconds of SYN retries. */
#define BOT_ARRIVING_MAX 50
#define BOT_BURST 20           /* moves in one speed-hack burst */
#define BOT_TEXT_MAX 512       /* longest chat line, also in scenarios */
#define BOT_STEPS_MAX 10000
#define BOT_KEEPALIVE TOP_CMDS /* counter index of keep-alives */

static const char *const chat_lines[] = {
  "hello everyone",
  "anyone selling a fishing rod?",
  "lf party for the abandoned mine",
  "this damn crab keeps killing me", /* words a chat filter may rewrite */
  "sorry noob, my bad",
  "buy gold at gold4you dot com",     /* spam a chat filter may drop */
  "/online",
  "where is the blacksmith in argent?",
  "brb",
  "gg",
};
#define CHAT_LINES (sizeof chat_lines / sizeof chat_lines[0])

typedef enum { STEP_SAY, STEP_MOVE, STEP_BURST, STEP_WAIT } step_kind;

typedef struct step {
  step_kind kind;
  int32_t a, b;  /* move: x, y; burst: moves; wait: ms */
  char *text;    /* say; owned */
} step;

typedef struct fleet fleet;

typedef struct bot {
  top_conn conn;
  fleet *fl;
  unsigned idx;        /* 1-based */
  char name[24];
  uint32_t id;         /* player id from the login reply */
  bool started, connected, logged_in;
  uint64_t next_act;   /* loop time of the next action */
  uint64_t next_burst; /* -x: loop time of the next speed-hack burst */
  uint32_t rng;
  int32_t x, y;
  size_t step;         /* scenario: next step */
} bot;

struct fleet {
  uv_loop_t loop;
  uv_timer_t tick, deadline;
  uv_signal_t signals[2];
  struct sockaddr_storage addr;
  const char *addr_text;
  bot *bots;
  unsigned n, started, open, logged_in, dropped;
  unsigned arriving;   /* started, not yet logged in nor ended */
  step *steps;         /* -s scenario, or NULL */
  size_t nsteps;
  bool quiet, speeder, stopping;
  bool encrypt;        /* -e: the demo cipher after login */
  const char *prefix;             /* bot names: prefix1..prefixN */
  uint64_t start_time;
  uint64_t *sent, *recv; /* frames per command; [BOT_KEEPALIVE] keep-alives */
};

static bot *bot_of(top_conn *c) { return TOP_CONTAINER_OF(c, bot, conn); }

/* xorshift32: reproducible per bot, so runs differ only by timing. */
static uint32_t bot_rand(bot *b)
{
  uint32_t x = b->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return b->rng = x;
}

static void bot_send(bot *b, uint32_t cmd, const top_writer *w)
{
  if (top_conn_send_cmd(&b->conn, cmd, w) == 0)
    b->fl->sent[cmd]++;
}

static void bot_say(bot *b, const char *text)
{
  uint8_t body[BOT_TEXT_MAX + 8];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_str(&w, text);
  bot_send(b, TOP_CM_SAY, &w);
  if (!b->fl->quiet)
    top_print("%s > say %s", b->name, text);
}

static void bot_move(bot *b, int32_t x, int32_t y, bool print)
{
  /* The world id of a player's character is its player id. */
  top_action a = {.world = b->id, .type = TOP_ACTION_MOVE, .x = x, .y = y};
  uint8_t body[16];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_action(&w, &a);
  bot_send(b, TOP_CM_BEGINACTION, &w);
  b->x = x;
  b->y = y;
  if (print && !b->fl->quiet)
    top_print("%s > move %d %d", b->name, x, y);
}

static void bot_burst(bot *b, int32_t moves)
{
  for (int32_t i = 0; i < moves; i++)
    bot_move(b, b->x + 1, b->y, false);
  if (!b->fl->quiet)
    top_print("%s > burst %d moves to %d %d", b->name, moves, b->x, b->y);
}

/* The next scenario steps, up to a wait. */
static void bot_run_steps(bot *b, uint64_t now)
{
  fleet *fl = b->fl;
  while (b->step < fl->nsteps) {
    const step *s = &fl->steps[b->step++];
    switch (s->kind) {
    case STEP_SAY: bot_say(b, s->text); break;
    case STEP_MOVE: bot_move(b, s->a, s->b, true); break;
    case STEP_BURST: bot_burst(b, s->a); break;
    case STEP_WAIT:
      b->next_act = now + (uint64_t)s->a;
      return;
    }
  }
  b->next_act = UINT64_MAX;
}

/* One action of a bot left to chance: a human's pace, an action every
 * 0.5 to 1.5 s, and the first one a greeting. */
static void bot_act(bot *b, uint64_t now)
{
  uint32_t r = bot_rand(b) % 100;
  if (b->next_act == 0)
    bot_say(b, chat_lines[0]);
  else if (r < 20)
    bot_say(b, chat_lines[bot_rand(b) % CHAT_LINES]);
  else if (r < 75)
    bot_move(b, b->x + (int32_t)(bot_rand(b) % 3) - 1,
             b->y + (int32_t)(bot_rand(b) % 3) - 1, true);
  /* else it stands still this time */
  b->next_act = now + 500 + bot_rand(b) % 1000;
}

static void count_recv(fleet *fl, const gw_frame_info *info)
{
  fl->recv[info->has_opcode ? info->opcode : BOT_KEEPALIVE]++;
}

static void on_login_reply(bot *b, top_reader *r)
{
  uint16_t err;
  uint32_t id;
  if (top_get_login_reply(r, &err, &id) != 0 || err != 0) {
    top_print("%s < login error=%u", b->name, err);
    return; /* the server closes */
  }
  b->logged_in = true;
  b->id = id;
  b->fl->logged_in++;
  b->fl->arriving--;
  uint64_t now = uv_now(&b->fl->loop);
  /* The first action at once: a scenario's first step, or a greeting
   * (next_act 0 tells bot_act). */
  b->next_act = 0;
  b->next_burst = now + 1000;
  if (!b->fl->quiet)
    top_print("%s < login ok id=%u", b->name, id);
  if (b->fl->encrypt) {
    /* MC_LOGIN came clear; the server encrypts everything after it. */
    top_conn_decrypt_reads(&b->conn);
    if (!b->fl->quiet)
      top_print("%s cipher on", b->name);
  }
}

/* Unknown, or a known command that did not parse: the body in hex. */
static void show_frame(bot *b, const top_reader *r, const gw_frame_info *info)
{
  char shown[BOT_TEXT_MAX + 64];
  if (!b->fl->quiet)
    top_print("%s < cmd=%u len=%zu body=%s", b->name, info->opcode, info->len,
              top_hex(shown, sizeof shown, r->p, r->len));
}

/* MC_CHAPSTR: with -e, the cipher's key. */
static void on_chapstr(bot *b, top_reader *r, const gw_frame_info *info)
{
  const char *s;
  size_t n;
  top_get_str(r, &s, &n);
  if (r->err) {
    show_frame(b, r, info);
    return;
  }
  char shown[BOT_TEXT_MAX + 64];
  if (!b->fl->quiet)
    top_print("%s < chapstr %s", b->name, top_readable(shown, sizeof shown, s, n));
  int rc = b->fl->encrypt ? top_conn_set_key(&b->conn, (const uint8_t *)s, n) : 0;
  /* A second chap string changes nothing: the key is the first. */
  if (rc != 0 && rc != -EEXIST)
    top_print("%s cannot key the cipher: %s", b->name, strerror(-rc));
}

static void bot_frame(top_conn *c, const uint8_t *frame, const gw_frame_info *info)
{
  bot *b = bot_of(c);
  fleet *fl = b->fl;
  count_recv(fl, info);
  top_reader r;
  top_reader_init(&r, frame, info->len);
  if (info->has_opcode && info->opcode == TOP_MC_LOGIN) {
    on_login_reply(b, &r);
    return;
  }
  if (info->has_opcode && info->opcode == TOP_MC_CHAPSTR) {
    on_chapstr(b, &r, info);
    return;
  }
  if (fl->quiet)
    return;
  char shown[BOT_TEXT_MAX + 64];
  top_say say;
  if (!info->has_opcode) {
    top_print("%s < keep-alive", b->name);
    return;
  }
  if (info->opcode == TOP_MC_SAY && top_get_say(&r, &say) == 0) {
    top_print("%s < %s", b->name, top_format_say(shown, sizeof shown, &say));
    return;
  }
  show_frame(b, &r, info);
}

static void bot_pinged(top_conn *c)
{
  bot *b = bot_of(c);
  b->fl->sent[BOT_KEEPALIVE]++;
  if (!b->fl->quiet)
    top_print("%s > keep-alive", b->name);
}

static void bot_connected(top_conn *c, int status)
{
  bot *b = bot_of(c);
  if (status) {
    top_print("%s cannot connect to %s: %s", b->name, b->fl->addr_text,
              uv_strerror(status));
    return;
  }
  b->connected = true;
  if (!b->fl->quiet)
    top_print("%s connected to %s", b->name, b->fl->addr_text);
  uint8_t body[96];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_login(&w, b->name);
  bot_send(b, TOP_CM_LOGIN, &w);
  /* CM_LOGIN goes clear, what follows encrypted. The key comes with the
   * chap string, before the login reply that lets the bot speak. */
  if (b->fl->encrypt)
    top_conn_encrypt_sends(&b->conn);
}

static void fleet_stop(fleet *fl);

static void bot_end(top_conn *c, const char *reason)
{
  bot *b = bot_of(c);
  if (!b->logged_in)
    b->fl->arriving--;
  if (b->fl->stopping || !b->connected) /* a failed connect was reported */
    return;
  b->fl->dropped++;
  top_print("%s disconnected reason=%s", b->name, reason);
}

static void bot_closed(top_conn *c)
{
  bot *b = bot_of(c);
  fleet *fl = b->fl;
  if (--fl->open == 0 && fl->started == fl->n && !fl->stopping)
    fleet_stop(fl); /* nobody left to run */
}

static const top_conn_cbs bot_cbs = {
  .connected = bot_connected,
  .frame = bot_frame,
  .pinged = bot_pinged,
  .end = bot_end,
  .closed = bot_closed,
};

static void bot_start(bot *b)
{
  fleet *fl = b->fl;
  b->started = true;
  fl->started++;
  fl->arriving++;
  if (top_conn_init(&fl->loop, &b->conn, &bot_cbs, GW_SERVER) != 0) {
    top_print("%s cannot connect: out of memory", b->name);
    fl->arriving--;
    return;
  }
  b->conn.echo_pings = true;
  fl->open++;
  top_conn_connect(&b->conn, (const struct sockaddr *)&fl->addr);
}

static void on_tick(uv_timer_t *t)
{
  fleet *fl = t->data;
  uint64_t now = uv_now(&fl->loop);
  while (fl->started < fl->n && fl->arriving < BOT_ARRIVING_MAX)
    bot_start(&fl->bots[fl->started]);
  for (unsigned i = 0; i < fl->n; i++) {
    bot *b = &fl->bots[i];
    if (!b->logged_in || b->conn.state != TOP_OPEN)
      continue;
    if (fl->speeder && b->idx == 1 && now >= b->next_burst) {
      bot_burst(b, BOT_BURST);
      b->next_burst = now + 1500 + bot_rand(b) % 1000;
    }
    if (now < b->next_act)
      continue;
    if (fl->steps)
      bot_run_steps(b, now);
    else
      bot_act(b, now);
  }
}

/* Every bot says goodbye (FIN, then waits for the server's); uv_run returns
 * once they are all closed. */
static void fleet_stop(fleet *fl)
{
  if (fl->stopping)
    return;
  fl->stopping = true;
  uv_close((uv_handle_t *)&fl->tick, NULL);
  uv_close((uv_handle_t *)&fl->deadline, NULL);
  top_signals_close(fl->signals);
  for (unsigned i = 0; i < fl->n; i++)
    if (fl->bots[i].started && fl->bots[i].conn.state == TOP_OPEN)
      top_conn_finish(&fl->bots[i].conn);
}

static void on_deadline(uv_timer_t *t) { fleet_stop(t->data); }

static void on_signal(uv_signal_t *s, int signum)
{
  (void)signum;
  fleet_stop(s->data);
}

static void print_counts(const char *dir, const uint64_t *counts)
{
  for (uint32_t cmd = 0; cmd < TOP_CMDS; cmd++) {
    if (!counts[cmd])
      continue;
    const char *name = top_cmd_name(cmd);
    top_print("summary %s cmd=%u name=%s frames=%llu", dir, cmd, name ? name : "-",
              (unsigned long long)counts[cmd]);
  }
  top_print("summary %s keep-alive frames=%llu", dir,
            (unsigned long long)counts[BOT_KEEPALIVE]);
}

static void print_summary(fleet *fl)
{
  uint64_t ms = uv_now(&fl->loop) - fl->start_time;
  top_print("summary bots=%u logged_in=%u failed=%u dropped=%u seconds=%llu.%01llu",
            fl->n, fl->logged_in, fl->n - fl->logged_in, fl->dropped,
            (unsigned long long)(ms / 1000), (unsigned long long)(ms % 1000 / 100));
  print_counts("sent", fl->sent);
  print_counts("recv", fl->recv);
}

static void free_steps(step *steps, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(steps[i].text);
  free(steps);
}

/* One scenario line into s. Returns 0, 1 for a blank or comment line, or
 * -EINVAL. */
static int parse_step(char *line, step *s)
{
  line[strcspn(line, "\r\n")] = 0;
  while (*line == ' ' || *line == '\t')
    line++;
  if (!*line || *line == '#')
    return 1;
  memset(s, 0, sizeof *s);
  long a = 0, b = 0;
  int end = 0;
  if (strncmp(line, "say ", 4) == 0) {
    if (strlen(line + 4) >= BOT_TEXT_MAX || !(s->text = strdup(line + 4)))
      return -EINVAL;
    s->kind = STEP_SAY;
    return 0;
  }
  if (sscanf(line, "move %ld %ld %n", &a, &b, &end) == 2 && !line[end]) {
    s->kind = STEP_MOVE;
  } else if (sscanf(line, "burst %ld %n", &a, &end) == 1 && !line[end] && a > 0 &&
             a <= 1000) {
    s->kind = STEP_BURST;
  } else if (sscanf(line, "wait %ld %n", &a, &end) == 1 && !line[end] && a >= 0 &&
             a <= 3600000) {
    s->kind = STEP_WAIT;
  } else {
    return -EINVAL;
  }
  if (a < INT32_MIN || a > INT32_MAX || b < INT32_MIN || b > INT32_MAX)
    return -EINVAL;
  s->a = (int32_t)a;
  s->b = (int32_t)b;
  return 0;
}

/* Reads a scenario: one step a line (say TEXT, move X Y, burst N, wait MS;
 * # starts a comment). Returns 0 or a negative errno, with a message. */
static int load_steps(fleet *fl, const char *path)
{
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "topbot: %s: %s\n", path, strerror(errno));
    return -errno;
  }
  char line[BOT_TEXT_MAX + 16];
  unsigned lineno = 0;
  int rc = 0;
  fl->steps = calloc(BOT_STEPS_MAX, sizeof *fl->steps);
  if (!fl->steps)
    rc = -ENOMEM;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    if (fl->nsteps == BOT_STEPS_MAX) {
      fprintf(stderr, "topbot: %s: more than %d steps\n", path, BOT_STEPS_MAX);
      rc = -E2BIG;
      break;
    }
    int r = parse_step(line, &fl->steps[fl->nsteps]);
    if (r < 0) {
      fprintf(stderr, "topbot: %s:%u: want say TEXT, move X Y, burst N or wait MS\n",
              path, lineno);
      rc = r;
    } else if (r == 0) {
      fl->nsteps++;
    }
  }
  fclose(f);
  return rc;
}

static void usage(FILE *out)
{
  fprintf(out,
          "usage: topbot [-c addr:port] [-n bots] [-p name] [-d seconds] [-s scenario] [-x] [-e] [-q]\n"
          "  -c  server or proxy to connect to (default " BOT_CONNECT ")\n"
          "  -n  number of bots, named bot1..botN (default 1)\n"
          "  -p  name prefix instead of \"bot\" (two fleets on one server)\n"
          "  -d  seconds to run (default 10)\n"
          "  -s  scenario file: each bot runs its steps (say TEXT, move X Y,\n"
          "      burst N, wait MS) instead of acting by chance\n"
          "  -x  bot1 bursts moves like a speed hack\n"
          "  -e  encrypt frames after login with the demo cipher (topd -e too)\n"
          "  -q  print only problems and the summary\n");
}

/* Returns 0, 1 after -h, or -EINVAL (with a message). */
static int parse_args(fleet *fl, int argc, char **argv, unsigned long *seconds)
{
  const char *connect_spec = BOT_CONNECT;
  unsigned long v;
  int opt;
  while ((opt = getopt(argc, argv, "c:n:p:d:s:xeqh")) != -1) {
    switch (opt) {
    case 'c': connect_spec = optarg; break;
    case 'p':
      if (!*optarg || strlen(optarg) > 12) {
        fprintf(stderr, "topbot: bad -p: want 1 to 12 characters\n");
        return -EINVAL;
      }
      fl->prefix = optarg;
      break;
    case 'n':
    case 'd':
      if (top_parse_uint(optarg, 1, opt == 'n' ? 100000 : 86400, &v) != 0) {
        fprintf(stderr, "topbot: bad -%c: %s\n", opt, optarg);
        return -EINVAL;
      }
      if (opt == 'n')
        fl->n = (unsigned)v;
      else
        *seconds = v;
      break;
    case 's':
      if (fl->steps) {
        fprintf(stderr, "topbot: one -s only\n");
        return -EINVAL;
      }
      if (load_steps(fl, optarg) != 0)
        return -EINVAL;
      break;
    case 'x': fl->speeder = true; break;
    case 'e': fl->encrypt = true; break;
    case 'q': fl->quiet = true; break;
    case 'h': usage(stdout); return 1;
    default: usage(stderr); return -EINVAL;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return -EINVAL;
  }
  if (top_parse_addr(connect_spec, &fl->addr) != 0) {
    fprintf(stderr, "topbot: bad address: %s\n", connect_spec);
    return -EINVAL;
  }
  fl->addr_text = connect_spec;
  return 0;
}

int main(int argc, char **argv)
{
  fleet fl = {.n = 1, .prefix = "bot"};
  unsigned long seconds = 10;
  int status = parse_args(&fl, argc, argv, &seconds);
  if (status != 0) {
    status = status > 0 ? 0 : 2; /* -h, or bad arguments */
    goto out;
  }
  status = 1;
  signal(SIGPIPE, SIG_IGN);
  fl.bots = calloc(fl.n, sizeof *fl.bots);
  fl.sent = calloc(TOP_CMDS + 1, sizeof *fl.sent);
  fl.recv = calloc(TOP_CMDS + 1, sizeof *fl.recv);
  if (!fl.bots || !fl.sent || !fl.recv || uv_loop_init(&fl.loop) != 0) {
    fprintf(stderr, "topbot: out of memory\n");
    goto out;
  }
  for (unsigned i = 0; i < fl.n; i++) {
    bot *b = &fl.bots[i];
    b->fl = &fl;
    b->idx = i + 1;
    snprintf(b->name, sizeof b->name, "%s%u", fl.prefix, b->idx);
    b->rng = b->idx * 2654435761u + 1;
    b->x = 2200 + (int32_t)(b->idx % 100) * 3; /* near Argent City's gate */
    b->y = 2750;
  }
  uv_timer_init(&fl.loop, &fl.tick);
  uv_timer_init(&fl.loop, &fl.deadline);
  fl.tick.data = fl.deadline.data = &fl;
  top_signals_start(&fl.loop, fl.signals, on_signal, &fl);
  fl.start_time = uv_now(&fl.loop);
  uv_timer_start(&fl.tick, on_tick, 0, BOT_TICK_MS);
  uv_timer_start(&fl.deadline, on_deadline, seconds * 1000, 0);
  uv_run(&fl.loop, UV_RUN_DEFAULT);
  print_summary(&fl);
  status = fl.logged_in == fl.n ? 0 : 1;
  if (uv_loop_close(&fl.loop) != 0) {
    fprintf(stderr, "topbot: handles left open at exit\n");
    status = 1;
  }
out:
  free(fl.bots);
  free(fl.sent);
  free(fl.recv);
  free_steps(fl.steps, fl.nsteps);
  return status;
}
