/* main.c: the payment process (결제관리): charges and refunds.
 *
 * Environment (every variable is optional):
 *   HOST                    address to listen on (127.0.0.1)
 *   PORT                    port (8084)
 *   PAYMENT_DATABASE_URL,   PostgreSQL (postgres://...), see lib/db.h; else SQLite:
 *   DATABASE_URL
 *   DATA_DIR, DB_PATH       the database: DB_PATH, else $DATA_DIR/payment.db (./data)
 *   NATS_URL                the event bus (nats://127.0.0.1:4222)
 *   PAYMENT_TEST_DELAY_MS   TEST ONLY, default 0 (off): every POST /payments answer is held
 *                           back this long after the charge is committed, to make payment
 *                           slow or make its answer arrive after the caller's timeout.
 *   HTTP_* limits           see lib/http.h
 *
 * Wiring: the store (payments, cancellations, outbox), the bus (publishes
 * Paid and PayCancelled from the outbox, consumes OrderCancelled), the HTTP
 * routes, and readiness = store answers and bus connected. */
#include <stdlib.h>

#include "bus.h"
#include "config.h"
#include "log.h"
#include "payment.h"
#include "service.h"

int main(void)
{
    service *svc = service_new("payment", 8084);
    if (!svc)
        return 1;

    payment_api_config cfg = {
        .test_delay_ms = (int)config_int("PAYMENT_TEST_DELAY_MS", 0, 0, 600000),
    };
    if (cfg.test_delay_ms > 0)
        log_warn("msg=\"PAYMENT_TEST_DELAY_MS is set: answers to POST /payments are delayed "
                 "(test setting, never for production)\" delay_ms=%d", cfg.test_delay_ms);

    db *d = db_open(svc->base, "payment", &payment_schema);
    if (!d) {
        log_error("msg=\"cannot open the payment database\"");
        return 1;
    }
    bus *b = bus_new_db(svc->base, d, "payment");
    if (!b) {
        log_error("msg=\"cannot create the event bus\"");
        db_close(d);
        return 1;
    }

    payment_policy_register(b);
    payment_api_register(svc, d, &cfg);
    if (service_start_db(svc, d, b) != 0)
        return 1;
    return service_run(svc);
}
