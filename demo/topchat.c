/* topchat.c: a Tales of Pirates chat client for a person (or a script).
 *
 * Logs in, sends every line read from stdin as local chat (CM_SAY), prints
 * the room's chat (MC_SAY) as "[local] name: text", and answers the game's
 * keep-alives. stdin may be a terminal, a pipe or a file; reading it never
 * blocks the loop. EOF, Ctrl-D or "/quit" ends the session politely: our
 * FIN, then the server's. With -e, the demo cipher on the frames after
 * login (top_cipher.h). See docs/demo.md. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "top_cli.h"
#include "top_conn.h"
#include "top_wire.h"

#define CHAT_CONNECT "127.0.0.1:1973"
#define CHAT_LINE_MAX 512          /* longest chat line sent; longer ones are cut */
#define CHAT_QUEUE_HIGH (64 * 1024) /* stop reading stdin above this */

typedef struct chat {
  uv_loop_t loop;
  top_conn conn;
  uv_signal_t signals[2];
  /* stdin: a stream (terminal, pipe, socket), or a file read with uv_fs */
  union {
    uv_tty_t tty;
    uv_pipe_t pipe;
  } in;
  bool in_stream, in_open, in_paused, in_eof;
  uv_fs_t fs_req;
  bool fs_busy;
  char fs_buf[4096];
  char line[CHAT_LINE_MAX];
  size_t line_len;
  bool line_cut;               /* the rest of this line is being dropped */
  const char *name, *addr_text;
  struct sockaddr_storage addr;
  bool verbose, connected, logged_in, quitting;
  bool encrypt;                /* -e: the demo cipher after login */
  int status;                  /* exit status */
} chat;

static chat *chat_of(top_conn *c) { return TOP_CONTAINER_OF(c, chat, conn); }

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A status line: "* " first, so that chat lines stand apart. */
static void note(const char *fmt, ...)
{
  va_list ap;
  fputs("* ", stdout);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static void stdin_close(chat *ch)
{
  if (!ch->in_open)
    return;
  ch->in_open = false;
  if (ch->in_stream)
    uv_close((uv_handle_t *)&ch->in, NULL);
}

/* Ends the session: no more input, our FIN, then the server's. */
static void chat_quit(chat *ch)
{
  ch->quitting = true;
  stdin_close(ch);
  top_conn_finish(&ch->conn);
}

static void send_line(chat *ch, const char *text, size_t n)
{
  while (n && (text[n - 1] == '\r' || text[n - 1] == ' '))
    n--;
  if (n == 0)
    return;
  if (n == 5 && memcmp(text, "/quit", 5) == 0) {
    chat_quit(ch);
    return;
  }
  uint8_t body[CHAT_LINE_MAX + 8];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_strn(&w, text, n);
  top_conn_send_cmd(&ch->conn, TOP_CM_SAY, &w);
}

/* Splits input into lines; a line longer than CHAT_LINE_MAX is cut. */
static void take_input(chat *ch, const char *p, size_t n)
{
  for (size_t i = 0; i < n && !ch->quitting; i++) {
    if (p[i] == '\n') {
      if (!ch->line_cut)
        send_line(ch, ch->line, ch->line_len);
      ch->line_len = 0;
      ch->line_cut = false;
    } else if (ch->line_cut) {
      continue;
    } else if (ch->line_len == sizeof ch->line) {
      fprintf(stderr, "topchat: line cut to %d bytes\n", CHAT_LINE_MAX);
      send_line(ch, ch->line, ch->line_len);
      ch->line_cut = true;
    } else {
      ch->line[ch->line_len++] = p[i];
    }
  }
}

static void on_input_end(chat *ch)
{
  ch->in_eof = true;
  if (ch->line_len && !ch->line_cut) /* a last line without a newline */
    send_line(ch, ch->line, ch->line_len);
  ch->line_len = 0;
  if (!ch->quitting)
    chat_quit(ch);
}

/* Whether stdin should wait for the connection to drain. */
static bool queue_full(chat *ch)
{
  return top_conn_queued(&ch->conn) > CHAT_QUEUE_HIGH;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  (void)hint;
  chat *ch = h->data;
  *buf = uv_buf_init(ch->fs_buf, sizeof ch->fs_buf);
}

static void on_stdin(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  chat *ch = s->data;
  if (nread > 0) {
    take_input(ch, buf->base, (size_t)nread);
    if (ch->in_open && queue_full(ch)) {
      uv_read_stop(s);
      ch->in_paused = true;
    }
  } else if (nread < 0) {
    if (nread != UV_EOF)
      fprintf(stderr, "topchat: stdin: %s\n", uv_strerror((int)nread));
    on_input_end(ch);
  }
}

static void fs_read_next(chat *ch);

static void on_fs_read(uv_fs_t *req)
{
  chat *ch = req->data;
  ssize_t nread = req->result;
  uv_fs_req_cleanup(req);
  ch->fs_busy = false;
  if (!ch->in_open)
    return;
  if (nread > 0) {
    take_input(ch, ch->fs_buf, (size_t)nread);
    fs_read_next(ch);
  } else {
    if (nread < 0)
      fprintf(stderr, "topchat: stdin: %s\n", uv_strerror((int)nread));
    on_input_end(ch);
  }
}

static void fs_read_next(chat *ch)
{
  if (!ch->in_open || ch->quitting)
    return;
  if (queue_full(ch)) {
    ch->in_paused = true;
    return;
  }
  uv_buf_t b = uv_buf_init(ch->fs_buf, sizeof ch->fs_buf);
  ch->fs_req.data = ch;
  if (uv_fs_read(&ch->loop, &ch->fs_req, 0, &b, 1, -1, on_fs_read) == 0)
    ch->fs_busy = true;
  else
    on_input_end(ch);
}

/* Starts reading stdin, whatever it is. */
static void stdin_open(chat *ch)
{
  uv_handle_type t = uv_guess_handle(0);
  int rc = UV_EINVAL;
  ch->in_open = true;
  if (t == UV_TTY) {
    rc = uv_tty_init(&ch->loop, &ch->in.tty, 0, 1);
    ch->in_stream = rc == 0;
  } else if (t == UV_NAMED_PIPE || t == UV_TCP) {
    rc = uv_pipe_init(&ch->loop, &ch->in.pipe, 0);
    ch->in_stream = rc == 0;
    if (rc == 0)
      rc = uv_pipe_open(&ch->in.pipe, 0);
  } else if (t == UV_FILE) {
    fs_read_next(ch);
    return;
  }
  if (rc == 0) {
    ((uv_handle_t *)&ch->in)->data = ch;
    rc = uv_read_start((uv_stream_t *)&ch->in, on_alloc, on_stdin);
  }
  if (rc) {
    fprintf(stderr, "topchat: stdin: %s\n", uv_strerror(rc));
    on_input_end(ch);
  }
}

static void chat_drained(top_conn *c)
{
  chat *ch = chat_of(c);
  if (!ch->in_paused || !ch->in_open)
    return;
  ch->in_paused = false;
  if (ch->in_stream)
    uv_read_start((uv_stream_t *)&ch->in, on_alloc, on_stdin);
  else if (!ch->fs_busy)
    fs_read_next(ch);
}

static void on_login_reply(chat *ch, top_reader *r)
{
  uint16_t err;
  uint32_t id;
  if (top_get_login_reply(r, &err, &id) != 0 || err != 0) {
    note("login failed error=%u", err);
    ch->status = 1;
    return; /* the server closes */
  }
  ch->logged_in = true;
  note("logged in as %s id=%u", ch->name, id);
  if (ch->encrypt) {
    /* MC_LOGIN came clear; the server encrypts everything after it. */
    top_conn_decrypt_reads(&ch->conn);
    note("cipher on");
  }
  stdin_open(ch);
}

/* With -e, the chap string is the cipher's key. */
static void on_chapstr(chat *ch, const char *s, size_t n)
{
  int rc = ch->encrypt ? top_conn_set_key(&ch->conn, (const uint8_t *)s, n) : 0;
  /* A second chap string changes nothing: the key is the first. */
  if (rc != 0 && rc != -EEXIST)
    note("cannot key the cipher: %s", strerror(-rc));
}

static void chat_frame(top_conn *c, const uint8_t *frame, const gw_frame_info *info)
{
  chat *ch = chat_of(c);
  if (!info->has_opcode) {
    if (ch->verbose)
      note("keep-alive from server");
    return;
  }
  top_reader r;
  top_reader_init(&r, frame, info->len);
  char shown[CHAT_LINE_MAX + 64];
  const char *s;
  size_t n;
  top_say say;
  switch (info->opcode) {
  case TOP_MC_LOGIN:
    on_login_reply(ch, &r);
    return;
  case TOP_MC_SAY:
    if (top_get_say(&r, &say) != 0)
      break;
    puts(top_format_say(shown, sizeof shown, &say));
    fflush(stdout);
    return;
  case TOP_MC_CHAPSTR:
    top_get_str(&r, &s, &n);
    if (r.err)
      break;
    if (ch->verbose)
      note("chapstr %s", top_readable(shown, sizeof shown, s, n));
    on_chapstr(ch, s, n);
    return;
  }
  if (ch->verbose)
    note("cmd=%u len=%zu body=%s", info->opcode, info->len,
         top_hex(shown, sizeof shown, r.p, r.len));
}

static void chat_pinged(top_conn *c)
{
  chat *ch = chat_of(c);
  if (ch->verbose)
    note("keep-alive to server");
}

static void chat_connected(top_conn *c, int status)
{
  chat *ch = chat_of(c);
  if (status) {
    note("cannot connect to %s: %s", ch->addr_text, uv_strerror(status));
    return;
  }
  ch->connected = true;
  note("connected to %s", ch->addr_text);
  uint8_t body[128];
  top_writer w;
  top_writer_init(&w, body, sizeof body);
  top_put_login(&w, ch->name);
  top_conn_send_cmd(&ch->conn, TOP_CM_LOGIN, &w);
  /* CM_LOGIN goes clear, what follows encrypted. The key comes with the
   * chap string, before the login reply that opens stdin. */
  if (ch->encrypt)
    top_conn_encrypt_sends(&ch->conn);
}

static void chat_end(top_conn *c, const char *reason)
{
  chat *ch = chat_of(c);
  if (ch->connected) /* else the failed connect was reported */
    note("disconnected reason=%s", reason);
  if (!ch->quitting || !ch->logged_in)
    ch->status = 1;
}

static void chat_closed(top_conn *c)
{
  chat *ch = chat_of(c);
  stdin_close(ch);
  top_signals_close(ch->signals);
}

static const top_conn_cbs chat_cbs = {
  .connected = chat_connected,
  .frame = chat_frame,
  .pinged = chat_pinged,
  .drained = chat_drained,
  .end = chat_end,
  .closed = chat_closed,
};

static void on_signal(uv_signal_t *s, int signum)
{
  (void)signum;
  chat_quit(s->data);
}

static void usage(FILE *out)
{
  fprintf(out,
          "usage: topchat [-c addr:port] [-n name] [-e] [-v]\n"
          "  -c  server or proxy to connect to (default " CHAT_CONNECT ")\n"
          "  -n  account name to log in with (default player)\n"
          "  -e  encrypt frames after login with the demo cipher (topd -e too)\n"
          "  -v  also show keep-alives, the chap string and other commands\n"
          "Lines typed are said in the room; /quit or Ctrl-D leaves.\n");
}

int main(int argc, char **argv)
{
  chat ch = {.name = "player", .addr_text = CHAT_CONNECT};
  int opt;
  while ((opt = getopt(argc, argv, "c:n:evh")) != -1) {
    switch (opt) {
    case 'c': ch.addr_text = optarg; break;
    case 'n': ch.name = optarg; break;
    case 'e': ch.encrypt = true; break;
    case 'v': ch.verbose = true; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  size_t nl = strlen(ch.name);
  if (nl == 0 || nl > TOP_NAME_MAX) {
    fprintf(stderr, "topchat: the name wants 1 to %d bytes\n", TOP_NAME_MAX);
    return 2;
  }
  if (top_parse_addr(ch.addr_text, &ch.addr) != 0) {
    fprintf(stderr, "topchat: bad address: %s\n", ch.addr_text);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int rc = uv_loop_init(&ch.loop);
  if (rc == 0) {
    rc = top_conn_init(&ch.loop, &ch.conn, &chat_cbs, GW_SERVER);
    if (rc)
      uv_loop_close(&ch.loop);
  }
  if (rc) {
    fprintf(stderr, "topchat: %s\n", uv_strerror(rc));
    return 1;
  }
  ch.conn.echo_pings = true;
  top_signals_start(&ch.loop, ch.signals, on_signal, &ch);
  top_conn_connect(&ch.conn, (const struct sockaddr *)&ch.addr);
  uv_run(&ch.loop, UV_RUN_DEFAULT);
  uv_tty_reset_mode();
  if (uv_loop_close(&ch.loop) != 0) {
    fprintf(stderr, "topchat: handles left open at exit\n");
    ch.status = 1;
  }
  return ch.status;
}
