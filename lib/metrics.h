/* metrics.h: a process-wide registry of Prometheus metrics.
 *
 * Series are identified by (name, labels), labels being the already
 * formatted text between the braces, e.g. `route="/orders/{id}",status="201"`.
 * A series is created on first use; the registry is small (tens of series)
 * so a linear list is fine. All functions are thread-safe (bus worker threads
 * update gauges). Histograms use fixed latency buckets in seconds
 * (0.0005 .. 10). HELP/TYPE lines are emitted once per metric name. */
#ifndef CARSHARE_METRICS_H
#define CARSHARE_METRICS_H

#include <stdbool.h>

struct evbuffer;

void metrics_counter_add(const char *name, const char *labels, double delta);
/* metrics_counter_add(name, "outcome=\"<outcome>\"", 1): the count of what
 * became of something (a rental, a settled intake). outcome: a plain word. */
void metrics_count_outcome(const char *name, const char *outcome);
void metrics_gauge_set(const char *name, const char *labels, double value);
void metrics_histogram_observe(const char *name, const char *labels, double seconds);

/* A series looked up once and kept (series live as long as the process):
 * for a place that updates the same series on every request, where the
 * lookup (a hash of name and labels, two string compares) was the larger
 * part of the cost. NULL when the name exists with another type (the
 * update functions then do nothing). Thread-safe as the rest. */
typedef struct metrics_series metrics_series;
metrics_series *metrics_counter_series(const char *name, const char *labels);
metrics_series *metrics_gauge_series(const char *name, const char *labels);
metrics_series *metrics_histogram_series(const char *name, const char *labels);
void metrics_series_add(metrics_series *s, double delta);        /* a counter */
void metrics_series_set(metrics_series *s, double value);        /* a gauge */
void metrics_series_observe(metrics_series *s, double seconds);  /* a histogram */

/* The labels of a served request, `route="R",method="M",status="S"` (the
 * status part only when with_status), written into out as snprintf would,
 * cut to size-1 bytes; returns out. Measured: snprintf cost ~1,200
 * instructions per call, twice per request; this ~150. */
const char *metrics_route_labels(char *out, unsigned long size, const char *route,
                                 const char *method, bool with_status, int status);

/* Collectors run just before rendering, to refresh gauges that are cheaper
 * to compute on demand (outbox backlog, consumer lag). */
typedef void (*metrics_collector)(void *arg);
void metrics_add_collector(metrics_collector fn, void *arg);
/* Forgets a collector (its arg is going away). Call it where renders run
 * (the loop), so that none is running it meanwhile. */
void metrics_remove_collector(metrics_collector fn, void *arg);

/* Appends the Prometheus text exposition of every series to out. */
void metrics_render(struct evbuffer *out);

#endif
