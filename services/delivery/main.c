/* main.c: the delivery process (port 8082): wiring only.
 *
 * Environment (besides what every process reads, see the lib headers):
 *   HOST (127.0.0.1), PORT (8082), DATA_DIR (./data; the database is
 *   <DATA_DIR>/delivery.db unless DB_PATH is set; DELIVERY_DATABASE_URL or
 *   DATABASE_URL put it on PostgreSQL, see db.h), NATS_URL
 *   (nats://127.0.0.1:4222), BUS_POLL_MS, BUS_MAX_DELIVER (bus.h),
 *   HTTP_* limits (http.h). Delivery has no variables of its own.
 *
 * Start order: the store (migrations), the bus with its handlers, the
 * routes, the readiness checks (store_ready, bus_connected), then the
 * loop. The bus connects in the background: delivery starts, and answers
 * its API, without nats-server; /health/ready says so until it connects.
 * On SIGTERM the HTTP server drains, then the bus threads stop (events in
 * flight are not acked and will be redelivered), then the store closes. */
#include "delivery.h"

#include "log.h"

int main(void)
{
    service *svc = service_new("delivery", 8082);
    if (!svc) return 1;
    db *d = db_open(svc->base, "delivery", &delivery_schema);
    if (!d) {
        log_error("msg=\"cannot open the delivery database\"");
        return 1;
    }
    bus *b = bus_new_db(svc->base, d, "delivery");
    if (!b) {
        log_error("msg=\"cannot create the event bus\"");
        db_close(d);
        return 1;
    }
    delivery_policy_register(b);
    delivery_api_register(svc, d);
    if (service_start_db(svc, d, b) != 0) return 1;
    return service_run(svc);
}
