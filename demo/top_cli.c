/* top_cli.c: command-line and console helpers of the demo programs. */
#include "top_cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int top_parse_uint(const char *s, unsigned long min, unsigned long max,
                   unsigned long *out)
{
  if (*s < '0' || *s > '9') /* strtoul would take "-1" and " 1" */
    return -EINVAL;
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || v < min || v > max)
    return -EINVAL;
  *out = v;
  return 0;
}

int top_parse_addr(const char *s, struct sockaddr_storage *out)
{
  char host[64];
  const char *colon = strrchr(s, ':');
  if (!colon || (size_t)(colon - s) >= sizeof host)
    return -EINVAL;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = 0;
  unsigned long port;
  if (top_parse_uint(colon + 1, 0, 65535, &port) != 0)
    return -EINVAL;
  memset(out, 0, sizeof *out);
  size_t hl = strlen(host);
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    host[hl - 1] = 0;
    if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
      return -EINVAL;
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    return 0;
  }
  struct sockaddr_in *a4 = (struct sockaddr_in *)out;
  if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
    return -EINVAL;
  a4->sin_family = AF_INET;
  a4->sin_port = htons((uint16_t)port);
  return 0;
}

void top_format_addr(const struct sockaddr *sa, char *out, size_t cap)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &a4->sin_addr, host, sizeof host);
    port = ntohs(a4->sin_port);
    snprintf(out, cap, "%s:%u", host, port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
    port = ntohs(a6->sin6_port);
    snprintf(out, cap, "[%s]:%u", host, port);
  } else {
    snprintf(out, cap, "?");
  }
}

void top_print(const char *fmt, ...)
{
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  localtime_r(&ts.tv_sec, &tm);
  printf("%02d:%02d:%02d.%03ld ", tm.tm_hour, tm.tm_min, tm.tm_sec,
         ts.tv_nsec / 1000000);
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

void top_signals_start(uv_loop_t *loop, uv_signal_t sigs[2], uv_signal_cb cb,
                       void *data)
{
  static const int signums[2] = {SIGINT, SIGTERM};
  for (int i = 0; i < 2; i++) {
    uv_signal_init(loop, &sigs[i]);
    sigs[i].data = data;
    uv_signal_start(&sigs[i], cb, signums[i]);
  }
}

void top_signals_close(uv_signal_t sigs[2])
{
  for (int i = 0; i < 2; i++)
    uv_close((uv_handle_t *)&sigs[i], NULL);
}
