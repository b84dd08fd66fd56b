/* config.h: configuration from the environment.
 *
 * Every tunable of a carshare process is an environment variable with an
 * embedded default, so a process runs with no configuration at all and the
 * same binary runs unchanged under make run, in tests and in Kubernetes.
 * A variable that is set but malformed (PORT=abc) is a fatal error at start:
 * a typo must not silently fall back to the default. */
#ifndef CARSHARE_CONFIG_H
#define CARSHARE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

/* The value of `name`, or `fallback` when unset or empty. */
const char *config_str(const char *name, const char *fallback);

/* The integer value of `name`, or `fallback` when unset or empty.
 * Exits(2) with a clear message when set to something that is not an
 * integer in [min, max]. */
long config_int(const char *name, long fallback, long min, long max);

/* The rule config_int applies, apart from the environment: true with *out
 * when value is exactly a decimal integer (optional sign, no blanks) in
 * [min, max]; else false with the reason in why. */
bool config_parse_int(const char *value, long min, long max, long *out, char *why,
                      size_t whylen);

/* Path of a file inside the data directory (DATA_DIR, default "./data"),
 * which is created if missing. Returns a malloc'ed string. */
char *config_data_path(const char *file_name);

/* The database URL configured for a service: <SERVICE>_DATABASE_URL (the
 * name upper-cased), else DATABASE_URL; NULL when neither is set (SQLite).
 * `setting` receives the name of the variable it came from (db.h). */
const char *config_database_url(const char *service, char *setting, size_t len);

#endif
