/* top_wire.h: Tales of Pirates message bodies for the demo programs.
 *
 * Frames come from the framer (frame.h, preset "top"); this file only reads
 * and writes what is inside them: big-endian integers and the ToP string
 * (u16 BE length counting the trailing NUL, the bytes, the NUL). Errors
 * stick, so a caller writes or reads a whole body and checks once. Pure: no
 * libuv, no allocation. */
#ifndef TOP_WIRE_H
#define TOP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

/* Command ids (stock NetCommand.h). */
enum {
  TOP_CM_SAY = 1,
  TOP_CM_BEGINACTION = 6,
  TOP_CM_LOGIN = 431,
  TOP_MC_SAY = 501,
  TOP_MC_LOGIN = 931,
  TOP_MC_CHAPSTR = 940,
};
#define TOP_LOGIN_MARKER 911   /* last u16 of CM_LOGIN */
#define TOP_CLIENT_VERSION 136 /* what the demo clients claim to be */
#define TOP_ACTION_MOVE 1      /* CM_BEGINACTION action type */
#define TOP_CMDS 65536         /* commands are u16 */
#define TOP_NAME_MAX 31        /* longest account name topd takes */

/* The "top" framing preset, loaded once. */
const gw_framing *top_framing(void);
/* "CM_SAY" for 1, and so on for the commands above; NULL for others. */
const char *top_cmd_name(uint32_t cmd);

typedef struct top_writer {
  uint8_t *p;   /* caller's buffer */
  size_t cap;
  size_t len;
  int err;      /* 0, or -ENOBUFS / -ERANGE once something did not fit */
} top_writer;

void top_writer_init(top_writer *w, uint8_t *buf, size_t cap);
void top_put_u8(top_writer *w, uint8_t v);
void top_put_u16(top_writer *w, uint16_t v);
void top_put_u32(top_writer *w, uint32_t v);
void top_put_i32(top_writer *w, int32_t v);
/* A ToP string of n bytes (s need not be NUL-terminated). */
void top_put_strn(top_writer *w, const char *s, size_t n);
void top_put_str(top_writer *w, const char *s);
/* Builds the frame of cmd with w's body into out, as sent from side.
 * Returns the frame length, or a negative errno (w->err, or the framer's). */
long top_frame(const top_writer *w, gw_side side, uint32_t cmd, uint8_t *out,
               size_t cap);

typedef struct top_reader {
  const uint8_t *p;  /* the frame's body */
  size_t len;
  size_t pos;
  int err;           /* 0, or -EPROTO once a read ran past the body */
} top_reader;

/* Reads the body of the whole frame at frame[0..frame_len). */
void top_reader_init(top_reader *r, const uint8_t *frame, size_t frame_len);
uint8_t top_get_u8(top_reader *r);
uint16_t top_get_u16(top_reader *r);
uint32_t top_get_u32(top_reader *r);
int32_t top_get_i32(top_reader *r);
/* A ToP string: *s points into the frame, *n excludes the NUL. On error
 * *s is "" and *n is 0. */
void top_get_str(top_reader *r, const char **s, size_t *n);
size_t top_remaining(const top_reader *r);

/* The demo's messages; docs/demo.md shows their layouts. The readers
 * return 0 or -EPROTO, and their strings point into the frame. */

/* CM_LOGIN: str(account), str(password), str(mac), u16 version, u16 911.
 * A reader takes the two strings, then the last four bytes, whatever
 * comes between. */
typedef struct top_login {
  const char *account, *password;
  size_t account_len, password_len;
  uint16_t version, marker;
} top_login;
void top_put_login(top_writer *w, const char *account);
int top_get_login(top_reader *r, top_login *out);

/* MC_LOGIN: u16 error code, then (when 0) u32 player id. */
void top_put_login_reply(top_writer *w, uint16_t err, uint32_t id);
int top_get_login_reply(top_reader *r, uint16_t *err, uint32_t *id);

/* MC_SAY: u32 speaker id, str(speaker name), str(text). (CM_SAY is
 * str(text) alone.) */
typedef struct top_say {
  uint32_t id;
  const char *name, *text;
  size_t name_len, text_len;
} top_say;
void top_put_say(top_writer *w, const top_say *say);
int top_get_say(top_reader *r, top_say *out);

/* CM_BEGINACTION: u32 world id, u8 action type, then for a move (type 1)
 * i32 x, i32 y. */
typedef struct top_action {
  uint32_t world;
  uint8_t type;
  int32_t x, y; /* moves only */
} top_action;
void top_put_action(top_writer *w, const top_action *a);
int top_get_action(top_reader *r, top_action *out);

/* Text from the wire made safe for a terminal, NUL-terminated: control
 * bytes (C0, DEL, C1), backslashes and malformed UTF-8 become \xNN escapes.
 * Cut with "..." when out is too small. Returns out. */
char *top_readable(char *out, size_t cap, const char *s, size_t n);
/* A chat line for people: "[local] name: text", made readable. */
char *top_format_say(char *out, size_t cap, const top_say *say);
/* Bytes as "00 0d 80 ...", cut with "..." when out is too small. */
char *top_hex(char *out, size_t cap, const uint8_t *p, size_t n);

#endif
