/* metrics.c: the process-wide Prometheus registry.
 *
 * A metric family (one name, one type) owns its series (one per label set),
 * kept in creation order for rendering. Every update looks its series up by
 * (name, labels) in a chained hash table, so the per-request cost stays flat
 * however many routes and statuses a service has seen; the lists are only
 * walked to render /metrics. Series live as long as the process.
 *
 * One mutex guards everything: updates are a hash lookup and an addition,
 * too short for a finer scheme to pay off. Collectors run before rendering
 * and outside the lock, because they update gauges themselves.
 *
 * A name used with two different types is a programming error: the second
 * use is logged once and ignored, so /metrics stays valid. */
#include "metrics.h"
#include "log.h"
#include "mem.h"

#include <event2/buffer.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM } metric_kind;

/* Upper bounds (seconds) of the latency buckets; +Inf is implicit. */
static const double bucket_bounds[] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
#define BUCKETS (sizeof bucket_bounds / sizeof bucket_bounds[0])

typedef struct series series;
typedef struct family family;

struct series {
    family *family;
    char *labels;
    uint64_t hash;
    series *next_in_family;
    series *next_in_slot;
    double value;                        /* counter, gauge */
    unsigned long long buckets[BUCKETS + 1];  /* histogram: per bucket, last = +Inf */
    double sum;
    unsigned long long count;
};

struct family {
    char *name;
    metric_kind kind;
    bool type_conflict_logged;
    series *first, *last;
    family *next;
};

typedef struct {
    metrics_collector fn;
    void *arg;
} collector;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static family *families_first, *families_last;
static series **slots;
static size_t slot_count, series_count;
static collector *collectors;
static size_t collector_count, collector_cap;

/* FNV-1a over name, a separator that cannot occur in either, and labels. */
static uint64_t series_hash(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)labels; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static family *family_find_or_add(const char *name, metric_kind kind)
{
    for (family *f = families_first; f; f = f->next)
        if (!strcmp(f->name, name))
            return f;
    family *f = mem_must(calloc(1, sizeof *f));
    f->name = mem_must(strdup(name));
    f->kind = kind;
    if (families_last) families_last->next = f;
    else families_first = f;
    families_last = f;
    return f;
}

static void table_grow(void)
{
    size_t new_count = slot_count ? slot_count * 2 : 64;
    series **new_slots = mem_must(calloc(new_count, sizeof *new_slots));
    for (size_t i = 0; i < slot_count; i++) {
        series *s = slots[i];
        while (s) {
            series *next = s->next_in_slot;
            size_t j = s->hash & (new_count - 1);
            s->next_in_slot = new_slots[j];
            new_slots[j] = s;
            s = next;
        }
    }
    free(slots);
    slots = new_slots;
    slot_count = new_count;
}

/* The series (name, labels) of the given kind, created on first use; NULL
 * when the name already exists with another type. Called locked. */
static series *series_get(const char *name, const char *labels, metric_kind kind)
{
    if (!labels) labels = "";
    uint64_t h = series_hash(name, labels);
    family *f = NULL;
    if (slot_count) {
        for (series *s = slots[h & (slot_count - 1)]; s; s = s->next_in_slot)
            if (s->hash == h && !strcmp(s->labels, labels) && !strcmp(s->family->name, name)) {
                if (s->family->kind == kind)
                    return s;
                f = s->family;
                break;
            }
    }
    if (!f)
        f = family_find_or_add(name, kind);
    if (f->kind != kind) {
        if (!f->type_conflict_logged) {
            f->type_conflict_logged = true;
            log_error("msg=\"metric used with two types, update ignored\" metric=%s", name);
        }
        return NULL;
    }
    if (series_count + 1 > slot_count)
        table_grow();
    series *s = mem_must(calloc(1, sizeof *s));
    s->family = f;
    s->labels = mem_must(strdup(labels));
    s->hash = h;
    size_t j = h & (slot_count - 1);
    s->next_in_slot = slots[j];
    slots[j] = s;
    if (f->last) f->last->next_in_family = s;
    else f->first = s;
    f->last = s;
    series_count++;
    return s;
}

void metrics_counter_add(const char *name, const char *labels, double delta)
{
    pthread_mutex_lock(&registry_lock);
    series *s = series_get(name, labels, KIND_COUNTER);
    if (s && delta > 0)   /* a counter never goes down */
        s->value += delta;
    pthread_mutex_unlock(&registry_lock);
}

/* ---- kept series (metrics.h) ---- */

static metrics_series *series_kept(const char *name, const char *labels, metric_kind kind)
{
    pthread_mutex_lock(&registry_lock);
    series *s = series_get(name, labels, kind);
    pthread_mutex_unlock(&registry_lock);
    return (metrics_series *)s;
}

metrics_series *metrics_counter_series(const char *name, const char *labels)
{
    return series_kept(name, labels, KIND_COUNTER);
}

metrics_series *metrics_gauge_series(const char *name, const char *labels)
{
    return series_kept(name, labels, KIND_GAUGE);
}

metrics_series *metrics_histogram_series(const char *name, const char *labels)
{
    return series_kept(name, labels, KIND_HISTOGRAM);
}

void metrics_series_add(metrics_series *ms, double delta)
{
    series *s = (series *)ms;
    if (!s || delta <= 0)
        return;
    pthread_mutex_lock(&registry_lock);
    s->value += delta;
    pthread_mutex_unlock(&registry_lock);
}

void metrics_series_set(metrics_series *ms, double value)
{
    series *s = (series *)ms;
    if (!s)
        return;
    pthread_mutex_lock(&registry_lock);
    s->value = value;
    pthread_mutex_unlock(&registry_lock);
}

void metrics_series_observe(metrics_series *ms, double seconds)
{
    series *s = (series *)ms;
    if (!s)
        return;
    size_t b = 0;
    while (b < BUCKETS && seconds > bucket_bounds[b])
        b++;
    pthread_mutex_lock(&registry_lock);
    s->buckets[b]++;
    s->sum += seconds;
    s->count++;
    pthread_mutex_unlock(&registry_lock);
}

void metrics_count_outcome(const char *name, const char *outcome)
{
    char labels[64];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    metrics_counter_add(name, labels, 1);
}

void metrics_gauge_set(const char *name, const char *labels, double value)
{
    pthread_mutex_lock(&registry_lock);
    series *s = series_get(name, labels, KIND_GAUGE);
    if (s)
        s->value = value;
    pthread_mutex_unlock(&registry_lock);
}

void metrics_histogram_observe(const char *name, const char *labels, double seconds)
{
    size_t b = 0;
    while (b < BUCKETS && seconds > bucket_bounds[b])
        b++;
    pthread_mutex_lock(&registry_lock);
    series *s = series_get(name, labels, KIND_HISTOGRAM);
    if (s) {
        s->buckets[b]++;
        s->sum += seconds;
        s->count++;
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Appends n bytes of s at out[*used], keeping the last byte for the NUL. */
static void labels_put(char *out, size_t size, size_t *used, const char *s, size_t n)
{
    if (n > size - 1 - *used)
        n = size - 1 - *used;
    memcpy(out + *used, s, n);
    *used += n;
}

const char *metrics_route_labels(char *out, unsigned long size, const char *route,
                                 const char *method, bool with_status, int status)
{
    if (size == 0)
        return out;
    size_t used = 0;
    route = route ? route : "(null)";   /* as glibc's printf shows it */
    method = method ? method : "(null)";
    labels_put(out, size, &used, "route=\"", 7);
    labels_put(out, size, &used, route, strlen(route));
    labels_put(out, size, &used, "\",method=\"", 10);
    labels_put(out, size, &used, method, strlen(method));
    if (with_status) {
        char digits[16];
        size_t n = sizeof digits;
        unsigned u = status < 0 ? 0u - (unsigned)status : (unsigned)status;
        do {
            digits[--n] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (status < 0)
            digits[--n] = '-';
        labels_put(out, size, &used, "\",status=\"", 10);
        labels_put(out, size, &used, digits + n, sizeof digits - n);
    }
    labels_put(out, size, &used, "\"", 1);
    out[used] = '\0';
    return out;
}

void metrics_add_collector(metrics_collector fn, void *arg)
{
    pthread_mutex_lock(&registry_lock);
    if (collector_count == collector_cap) {
        collector_cap = collector_cap ? collector_cap * 2 : 8;
        collectors = mem_must(realloc(collectors, collector_cap * sizeof *collectors));
    }
    collectors[collector_count++] = (collector){fn, arg};
    pthread_mutex_unlock(&registry_lock);
}

void metrics_remove_collector(metrics_collector fn, void *arg)
{
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < collector_count; i++) {
        if (collectors[i].fn == fn && collectors[i].arg == arg) {
            collectors[i] = collectors[--collector_count];
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Prometheus text format for a sample value. */
static const char *format_value(char *buf, size_t size, double v)
{
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, size, "%.0f", v);
    else
        snprintf(buf, size, "%.15g", v);
    return buf;
}

/* HELP text for the metrics the platform knows; others get their name in
 * words. */
static const char *help_for(const char *name)
{
    static const struct { const char *name, *help; } known[] = {
        {"carshare_http_requests_total", "HTTP requests answered, by route pattern, method and status."},
        {"carshare_http_request_duration_seconds", "Time from a request's arrival to its answer, by route pattern and method."},
        {"carshare_process_resident_bytes", "Resident memory of the process."},
        {"carshare_sqlite_memory_bytes", "Memory SQLite holds (page caches, schemas, statements), part of the heap."},
        {"carshare_heap_bytes", "The C heap: in use (mmapped blocks included), and free but held by malloc."},
        {"carshare_breaker_state", "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open."},
        {"carshare_breaker_rejected_total", "Calls refused by an open circuit breaker."},
        {"carshare_bus_connected", "1 when the event bus connection is up."},
        {"carshare_bus_outbox_backlog", "Events committed and not yet acknowledged by the bus."},
        {"carshare_bus_published_total", "Events published and acknowledged by the bus."},
        {"carshare_bus_consumed_total", "Events applied by this service, by event type."},
        {"carshare_bus_duplicates_total", "Events skipped because their eventId was already applied."},
        {"carshare_bus_redeliveries_total", "Events delivered again after a failure."},
        {"carshare_bus_dead_letters_total", "Events set aside after repeated failures."},
        {"carshare_bus_consumer_lag", "Events in the stream not yet delivered to this service."},
        {"carshare_instance_info", "Always 1: which service and instance (INSTANCE_ID) this process is."},
        {"carshare_bus_relay_leader", "1 while this process's outbox relay publishes for its service (PostgreSQL: one per database), 0 while it stands by."},
        {"carshare_bus_failed_event_rollbacks_total", "Consumer transactions rolled back because one of their events failed, then applied again without it."},
        {"carshare_bus_conflict_reruns_total", "Consumer transactions PostgreSQL refused for a serialization conflict and rerun in place."},
        {"carshare_db_queue_depth", "PostgreSQL: units of work waiting for a database thread."},
        {"carshare_db_units_in_flight", "PostgreSQL: units of work running on the database threads."},
        {"carshare_db_serialization_retries_total", "PostgreSQL: units of work run again after a serialization conflict or deadlock (40001, 40P01)."},
        {"carshare_db_unavailable_total", "PostgreSQL: units of work answered 503: the database unreachable or too slow, or serialization conflicts past DB_RETRIES."},
        {"carshare_db_refused_total", "PostgreSQL: units of work refused at once, the queue being full or the database closing (answered 503)."},
        {"carshare_db_statement_timeouts_total", "PostgreSQL: statements cancelled at DB_STATEMENT_TIMEOUT_MS (57014)."},
        {"carshare_db_reconnects_total", "PostgreSQL: attempts to re-open a lost connection, by outcome."},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(known[i].name, name))
            return known[i].help;
    return NULL;
}

static void render_histogram(struct evbuffer *out, const family *f, const series *s)
{
    const char *sep = *s->labels ? "," : "";
    unsigned long long cumulative = 0;
    char num[64];
    for (size_t b = 0; b < BUCKETS; b++) {
        cumulative += s->buckets[b];
        evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                            bucket_bounds[b], cumulative);
    }
    cumulative += s->buckets[BUCKETS];
    evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep,
                        cumulative);
    const char *sum = format_value(num, sizeof num, s->sum);
    if (*s->labels) {
        evbuffer_add_printf(out, "%s_sum{%s} %s\n", f->name, s->labels, sum);
        evbuffer_add_printf(out, "%s_count{%s} %llu\n", f->name, s->labels, s->count);
    } else {
        evbuffer_add_printf(out, "%s_sum %s\n", f->name, sum);
        evbuffer_add_printf(out, "%s_count %llu\n", f->name, s->count);
    }
}

void metrics_render(struct evbuffer *out)
{
    /* Run the collectors first, unlocked: they call metrics_gauge_set. The
     * list is copied because a collector could register another. */
    pthread_mutex_lock(&registry_lock);
    size_t n = collector_count;
    collector *todo = n ? mem_must(malloc(n * sizeof *todo)) : NULL;
    if (n) memcpy(todo, collectors, n * sizeof *todo);
    pthread_mutex_unlock(&registry_lock);
    for (size_t i = 0; i < n; i++)
        todo[i].fn(todo[i].arg);
    free(todo);

    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    char num[64];
    pthread_mutex_lock(&registry_lock);
    for (const family *f = families_first; f; f = f->next) {
        if (!f->first)
            continue;
        const char *help = help_for(f->name);
        if (help) {
            evbuffer_add_printf(out, "# HELP %s %s\n", f->name, help);
        } else {
            /* Unknown to this table: the name itself, in words. */
            const char *words = strncmp(f->name, "carshare_", 9) ? f->name : f->name + 9;
            evbuffer_add_printf(out, "# HELP %s ", f->name);
            for (const char *p = words; *p; p++)
                evbuffer_add(out, *p == '_' ? " " : p, 1);
            evbuffer_add(out, "\n", 1);
        }
        evbuffer_add_printf(out, "# TYPE %s %s\n", f->name, type_names[f->kind]);
        for (const series *s = f->first; s; s = s->next_in_family) {
            if (f->kind == KIND_HISTOGRAM) {
                render_histogram(out, f, s);
                continue;
            }
            const char *v = format_value(num, sizeof num, s->value);
            if (*s->labels)
                evbuffer_add_printf(out, "%s{%s} %s\n", f->name, s->labels, v);
            else
                evbuffer_add_printf(out, "%s %s\n", f->name, v);
        }
    }
    pthread_mutex_unlock(&registry_lock);
}
