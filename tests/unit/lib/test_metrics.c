/* test_metrics.c: the Prometheus registry (lib/metrics.c): series by
 * labels, the three types, the text format, collectors, and updates from
 * several threads at once. */
#include "testing.h"

#include "metrics.h"

#include <event2/buffer.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The whole exposition as a string (caller frees). */
static char *render(void)
{
    struct evbuffer *out = evbuffer_new();
    metrics_render(out);
    size_t len = evbuffer_get_length(out);
    char *text = malloc(len + 1);
    evbuffer_remove(out, text, len);
    text[len] = '\0';
    evbuffer_free(out);
    return text;
}

static int count_lines_starting(const char *text, const char *prefix)
{
    int n = 0;
    size_t plen = strlen(prefix);
    for (const char *line = text; line && *line; ) {
        if (!strncmp(line, prefix, plen)) n++;
        line = strchr(line, '\n');
        if (line) line++;
    }
    return n;
}

/* The value on the line that starts with `series ` (name and labels). */
static const char *value_of(const char *text, const char *series, char *out, size_t outlen)
{
    size_t slen = strlen(series);
    for (const char *line = text; line && *line; ) {
        if (!strncmp(line, series, slen) && line[slen] == ' ') {
            const char *v = line + slen + 1;
            size_t vlen = strcspn(v, "\n");
            if (vlen >= outlen) vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return out;
        }
        line = strchr(line, '\n');
        if (line) line++;
    }
    return NULL;
}

static void test_counters(void)
{
    metrics_counter_add("t_orders_total", "status=\"201\"", 1);
    metrics_counter_add("t_orders_total", "status=\"201\"", 2);
    metrics_counter_add("t_orders_total", "status=\"409\"", 1);
    metrics_counter_add("t_orders_total", "status=\"409\"", -5);   /* ignored: counters only grow */
    metrics_counter_add("t_plain_total", "", 0.5);
    metrics_counter_add("t_plain_total", NULL, 0.25);
    char *text = render();
    char v[64];
    CHECK_STR(value_of(text, "t_orders_total{status=\"201\"}", v, sizeof v), "3");
    CHECK_STR(value_of(text, "t_orders_total{status=\"409\"}", v, sizeof v), "1");
    CHECK_STR(value_of(text, "t_plain_total", v, sizeof v), "0.75");
    CHECK_INT(count_lines_starting(text, "# TYPE t_orders_total counter"), 1);
    CHECK_INT(count_lines_starting(text, "# HELP t_orders_total "), 1);
    free(text);
}

static void test_gauges(void)
{
    metrics_gauge_set("t_backlog", "queue=\"outbox\"", 7);
    metrics_gauge_set("t_backlog", "queue=\"outbox\"", 3);
    metrics_gauge_set("t_backlog", "queue=\"dead\"", -2);
    char *text = render();
    char v[64];
    CHECK_STR(value_of(text, "t_backlog{queue=\"outbox\"}", v, sizeof v), "3");
    CHECK_STR(value_of(text, "t_backlog{queue=\"dead\"}", v, sizeof v), "-2");
    CHECK_INT(count_lines_starting(text, "# TYPE t_backlog gauge"), 1);
    free(text);
}

static void test_histogram(void)
{
    const char *labels = "route=\"/orders\"";
    metrics_histogram_observe("t_latency_seconds", labels, 0.0004);   /* first bucket */
    metrics_histogram_observe("t_latency_seconds", labels, 0.0005);   /* le is inclusive */
    metrics_histogram_observe("t_latency_seconds", labels, 0.2);
    metrics_histogram_observe("t_latency_seconds", labels, 60);       /* only +Inf */
    metrics_histogram_observe("t_latency_seconds", "", 0.01);
    char *text = render();
    char v[64];
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{route=\"/orders\",le=\"0.0005\"}", v, sizeof v), "2");
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{route=\"/orders\",le=\"0.1\"}", v, sizeof v), "2");
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{route=\"/orders\",le=\"0.25\"}", v, sizeof v), "3");
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{route=\"/orders\",le=\"10\"}", v, sizeof v), "3");
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{route=\"/orders\",le=\"+Inf\"}", v, sizeof v), "4");
    CHECK_STR(value_of(text, "t_latency_seconds_count{route=\"/orders\"}", v, sizeof v), "4");
    CHECK(value_of(text, "t_latency_seconds_sum{route=\"/orders\"}", v, sizeof v) &&
          atof(v) > 60.2 && atof(v) < 60.21);
    /* Without labels the bucket label stands alone. */
    CHECK_STR(value_of(text, "t_latency_seconds_bucket{le=\"0.01\"}", v, sizeof v), "1");
    CHECK_STR(value_of(text, "t_latency_seconds_count", v, sizeof v), "1");
    CHECK_INT(count_lines_starting(text, "# TYPE t_latency_seconds histogram"), 1);
    CHECK_INT(count_lines_starting(text, "t_latency_seconds_bucket{route=\"/orders\""), 15);
    free(text);
}

static void test_type_conflict(void)
{
    metrics_counter_add("t_conflict", "", 1);
    metrics_gauge_set("t_conflict", "", 42);         /* refused: it is a counter */
    metrics_gauge_set("t_conflict", "x=\"1\"", 42);  /* refused as well */
    char *text = render();
    char v[64];
    CHECK_STR(value_of(text, "t_conflict", v, sizeof v), "1");
    CHECK(value_of(text, "t_conflict{x=\"1\"}", v, sizeof v) == NULL);
    CHECK_INT(count_lines_starting(text, "# TYPE t_conflict "), 1);
    free(text);
}

static int collector_runs;
static void collect(void *arg)
{
    collector_runs++;
    metrics_gauge_set("t_collected", "", *(double *)arg);
}

static void test_collector(void)
{
    static double value = 12;
    metrics_add_collector(collect, &value);
    char *text = render();
    char v[64];
    CHECK_INT(collector_runs, 1);
    CHECK_STR(value_of(text, "t_collected", v, sizeof v), "12");
    free(text);
    value = 13;
    text = render();
    CHECK_INT(collector_runs, 2);
    CHECK_STR(value_of(text, "t_collected", v, sizeof v), "13");
    free(text);
}

#define THREADS 4
#define ROUNDS 20000

static void *hammer(void *arg)
{
    int id = (int)(long)arg;
    char labels[64];
    for (int i = 0; i < ROUNDS; i++) {
        metrics_counter_add("t_shared_total", "", 1);
        /* New series appear while others update: the table grows under load. */
        snprintf(labels, sizeof labels, "thread=\"%d\",n=\"%d\"", id, i % 200);
        metrics_counter_add("t_spread_total", labels, 1);
        metrics_histogram_observe("t_shared_seconds", "", 0.001);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, hammer, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    char *text = render();
    char v[64], expected[32];
    snprintf(expected, sizeof expected, "%d", THREADS * ROUNDS);
    CHECK_STR(value_of(text, "t_shared_total", v, sizeof v), expected);
    CHECK_STR(value_of(text, "t_shared_seconds_count", v, sizeof v), expected);
    snprintf(expected, sizeof expected, "%d", ROUNDS / 200);
    CHECK_STR(value_of(text, "t_spread_total{thread=\"3\",n=\"199\"}", v, sizeof v), expected);
    CHECK_INT(count_lines_starting(text, "t_spread_total{"), THREADS * 200);
    free(text);
}

int main(void)
{
    test_counters();
    test_gauges();
    test_histogram();
    test_type_conflict();
    test_collector();
    test_threads();
    return test_done("test_metrics");
}
