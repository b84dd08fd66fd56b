/* service.h: the skeleton shared by every carshare process.
 *
 * service_new() sets up logging, the event loop (thread-aware, so bus
 * threads can hand work to it), the HTTP server with /health/live,
 * /health/ready and /metrics, and SIGTERM/SIGINT handling. A service's
 * main() creates one, registers its routes and readiness checks, and calls
 * service_run(), which returns the process exit code:
 *
 *     service *svc = service_new("order", 8081);   // PORT overrides 8081
 *     order_api_register(svc, ...);
 *     service_ready_check(svc, "store", store_ready, st);
 *     return service_run(svc);
 *
 * On SIGTERM: /health/ready turns 503 at once (so load balancers stop
 * sending), the process keeps serving for DRAIN_MS (default twice the
 * balancers' probe interval: until their probes have seen it)
 * with "Connection: close" on every answer, then the listener and idle
 * connections close, requests in flight are answered, the on_stop hooks
 * run (bus threads stop, stores close), and service_run returns 0. A
 * second signal exits at once. */
#ifndef CARSHARE_SERVICE_H
#define CARSHARE_SERVICE_H

#include <stdbool.h>
#include "bus.h"
#include "http.h"
#include "store.h"

struct event_base;

typedef struct service {
    const char *name;
    struct event_base *base;
    http_server *http;
    const char *host;   /* HOST, default 127.0.0.1 */
    int port;           /* PORT, default given to service_new */
} service;

service *service_new(const char *name, int default_port);

/* Links and Location use the public base URL, never the client's Host:
 * PUBLIC_BASE_URL (exit 2 if malformed), else the gateway's address, the
 * one public entry: "<scheme>://HOST:<gateway port>", the gateway's own
 * PORT in the gateway, the contract's 8088 elsewhere (0.0.0.0 or :: as
 * localhost). service_new sets it with "http"; the gateway serving TLS sets
 * it again with "https". Returns the URL (owned by the service). */
const char *service_set_public_base_url(service *svc, const char *scheme);

/* The process's token check (lib/auth.h), made by service_new from the
 * environment and guarding every route registered with roles. */
struct auth;
struct auth *service_auth(service *svc);

/* A readiness condition: /health/ready is 200 only when every check returns
 * true; otherwise 503 naming the failing checks. */
typedef bool (*service_check)(void *arg);
void service_ready_check(service *svc, const char *what, service_check fn, void *arg);

/* Called in order, on the loop thread, after the HTTP server has drained. */
void service_on_stop(service *svc, void (*fn)(void *arg), void *arg);

/* The part every service with a store and a bus wires alike: the bus's
 * routes (/admin/deadLetters), the readiness checks "store_ready" and
 * "bus_connected", the bus started, and on stop the bus stopped and freed,
 * then the store closed. Call it once the bus's handlers are registered
 * (bus_on) and after the stop hooks that need the bus and the store still
 * alive (hooks run in order). Takes both: on failure (the bus cannot start;
 * logged) they are freed and -1 is returned, else 0. */
int service_start_bus(service *svc, store *st, bus *b);

/* GET /admin/deadLetters on s: the bus's dead letters (bus_dead_letters)
 * as a collection. service_start_bus registers it. */
void service_dead_letters_route(http_server *s, bus *b);

/* The same for a service's database (db.h), on either backend: group
 * commit on SQLite, readiness from db_ready, db_close after the bus. */
struct db;
int service_start_db(service *svc, struct db *d, bus *b);

/* The same for a service with a database and no bus (account): group
 * commit and HTTP's deferral on SQLite, readiness "store_ready" from
 * db_ready, db_close at stop. Takes d. */
void service_use_db(service *svc, struct db *d);

/* Listens and runs the loop until shutdown. Returns the exit code. */
int service_run(service *svc);

/* Milliseconds from a monotonic clock. */
unsigned long long service_now_ms(void);

#endif
