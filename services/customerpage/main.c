/* main.c: the customerpage process (port 8083): wiring only.
 *
 * Environment (besides what every process reads, see the lib headers):
 *   HOST (127.0.0.1), PORT (8083), DATA_DIR (./data; the database is
 *   <DATA_DIR>/customerpage.db unless DB_PATH is set; CUSTOMERPAGE_DATABASE_URL
 *   or DATABASE_URL put it on PostgreSQL, see db.h), NATS_URL
 *   (nats://127.0.0.1:4222), BUS_POLL_MS, BUS_MAX_DELIVER (bus.h),
 *   HTTP_* limits (http.h). The customer page has no variables of its own.
 *
 * The view is written only by the bus handlers (policy.c); the HTTP side
 * reads it, and POST /admin/rebuild replays the stream into it. The bus
 * connects in the background, so the process starts, and serves the view
 * it has, without nats-server; /health/ready reports bus_connected. */
#include "customerpage.h"

#include "log.h"

int main(void)
{
    service *svc = service_new("customerpage", 8083);
    if (!svc) return 1;
    customerpage_app app = { 0 };
    app.db = db_open(svc->base, "customerpage", &customerpage_schema);
    if (!app.db) {
        log_error("msg=\"cannot open the customerpage database\"");
        return 1;
    }
    app.st = db_store(app.db);
    app.bus = bus_new_db(svc->base, app.db, "customerpage");
    if (!app.bus) {
        log_error("msg=\"cannot create the event bus\"");
        db_close(app.db);
        return 1;
    }
    customerpage_policy_register(&app);
    customerpage_api_register(svc, &app);
    if (service_start_db(svc, app.db, app.bus) != 0) return 1;
    return service_run(svc);
}
