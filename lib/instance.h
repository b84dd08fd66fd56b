/* instance.h: which process of its service this is, and the rule that an
 * SQLite database has one.
 *
 * INSTANCE_ID names the process among the replicas of its service: every
 * log line carries it (inst=...), /metrics shows it in
 * carshare_instance_info, and order marks the intakes it owns with it. Set
 * it to something stable per replica (Kubernetes: the pod name, which is
 * also the hostname; compose: the container's name). Default:
 * "<hostname>-<pid>", unique on a machine and across machines. A value
 * that is not 1-63 characters of [A-Za-z0-9._:-] is refused (warned,
 * the default used): it goes into logfmt and Prometheus labels unquoted.
 *
 * SQLite stays one process per service (only PostgreSQL is shared by
 * replicas): instance_claim_sqlite takes an exclusive flock on
 * "<database>.lock" for the process's lifetime, so a second process on the
 * same file stops at start with a message instead of both writing one
 * file (each would also take half of the service's durable consumer, and
 * the relays' published marks would skip each other's rows). The kernel
 * drops the lock when the process dies, however it dies. */
#ifndef CARSHARE_INSTANCE_H
#define CARSHARE_INSTANCE_H

#include <stdbool.h>

/* The process's instance id (see above); the same string for the process's
 * lifetime. Thread-safe after its first call (log_init makes it). */
const char *instance_id(void);

/* Claims the SQLite database at db_path for this process (see above). False
 * (logged, naming the file and the way out) when another process holds it
 * or the lock file cannot be made. */
bool instance_claim_sqlite(const char *service, const char *db_path);

#endif
