/* main.c: the customerpage process (port 8083): wiring only.
 *
 * Environment (besides what every process reads, see the lib headers):
 *   HOST (127.0.0.1), PORT (8083), DATA_DIR (./data; the database is
 *   <DATA_DIR>/customerpage.db unless DB_PATH is set), NATS_URL
 *   (nats://127.0.0.1:4222), BUS_POLL_MS, BUS_MAX_DELIVER (bus.h),
 *   HTTP_* limits (http.h). The customer page has no variables of its own.
 *
 * The view is written only by the bus handlers (policy.c); the HTTP side
 * reads it, and POST /admin/rebuild replays the stream into it. The bus
 * connects in the background, so the process starts, and serves the view
 * it has, without nats-server; /health/ready reports bus_connected. */
#include "customerpage.h"

#include "log.h"

static void stop_bus(void *arg)
{
    bus_stop(arg);
}

int main(void)
{
    service *svc = service_new("customerpage", 8083);
    if (!svc) return 1;
    customerpage_app app = { 0 };
    app.st = store_open("customerpage", customerpage_migrations);
    if (!app.st) {
        log_error("msg=\"cannot open the customerpage database\"");
        return 1;
    }
    app.bus = bus_new(svc->base, app.st, "customerpage");
    if (!app.bus) {
        log_error("msg=\"cannot create the event bus\"");
        store_close(app.st);
        return 1;
    }
    customerpage_policy_register(&app);
    customerpage_api_register(svc, &app);
    bus_register_routes(app.bus, svc->http);
    service_ready_check(svc, "store_ready", store_ready, app.st);
    service_ready_check(svc, "bus_connected", bus_connected, app.bus);
    service_on_stop(svc, stop_bus, app.bus);
    if (bus_start(app.bus) != 0) {
        log_error("msg=\"cannot start the event bus\"");
        bus_free(app.bus);
        store_close(app.st);
        return 1;
    }
    int code = service_run(svc);
    bus_free(app.bus);
    store_close(app.st);
    return code;
}
