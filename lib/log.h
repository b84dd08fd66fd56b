/* log.h: one structured line per fact, in logfmt (key=value), on stderr.
 *
 * Every line carries ts, level, svc and inst (the process's INSTANCE_ID,
 * instance.h: which replica wrote it); request-scoped lines also carry
 * req=<X-Request-Id> so that one rental can be followed across services with
 * a single grep. Values given through log_line's format are written as-is:
 * quote values that may contain spaces (use %s with log_quote()).
 * Thread-safe: each line is one write(2). */
#ifndef CARSHARE_LOG_H
#define CARSHARE_LOG_H

#include <stdbool.h>

void log_init(const char *service_name);

/* log_line("info", "req=%s msg=%s status=%d", id, log_quote(buf, sizeof buf, text), 201) */
void log_line(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same with the text after the prefix already made (no format): for
 * a line written often, built by its caller without printf (the access
 * log, lib/http_answer.c). */
void log_text(const char *level, const char *text, unsigned long len);
/* Whether a line of this level would be written. */
bool log_enabled(const char *level);

#define log_info(...)  log_line("info", __VA_ARGS__)
#define log_warn(...)  log_line("warn", __VA_ARGS__)
#define log_error(...) log_line("error", __VA_ARGS__)

/* Writes `s` as a double-quoted logfmt value into buf (escaping quotes,
 * backslashes and control characters, truncating to fit). Returns buf. */
const char *log_quote(char *buf, unsigned long size, const char *s);

/* The current UTC time as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ','now')
 * writes it ("2026-01-31T12:00:00.123Z"), or with millis false as
 * strftime('%Y-%m-%dT%H:%M:%SZ','now') does ("2026-01-31T12:00:00Z"), from
 * the clock log lines use (per-thread, per-second cache). out: at least 25
 * bytes; returns out. Measured: SQLite's strftime() costs ~4,000
 * instructions per call, this ~100. */
const char *log_utc_now(char *out, bool millis);

#endif
