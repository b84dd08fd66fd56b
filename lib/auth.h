/* auth.h: who is calling -- the token check every carshare process runs.
 *
 * Each process checks tokens itself (the contract: calling a service's own
 * port skips nothing), with the public keys it is configured with:
 *   TOKEN_PUBLIC_KEYS   PEM public keys trusted for customer and staff
 *                       tokens (account's; two during a rotation), comma
 *                       separated. Default <DATA_DIR>/keys/account.pub.
 *   TOKEN_SERVICE_KEYS  PEM public keys trusted for `service` tokens only
 *                       (order's own key: it calls payment). Default
 *                       <DATA_DIR>/keys/order.pub when that file exists.
 * A key file that is configured but unreadable stops the process (exit 2):
 * a process that could verify nothing would refuse every call.
 *
 * service_new() installs auth_guard on the process's HTTP server, so that
 * every route registered with roles (http_server_route_for) is checked
 * before its handler runs:
 *   no or bad token        401, WWW-Authenticate: Bearer, and the reason
 *                          (token.h's refusals) in the contract's error;
 *   a token in the query   401 (?access_token= would end up in logs);
 *   a role not allowed     403 naming the role and who may call.
 * The caller (role, subject) comes from the token only and is then on the
 * request (http_req_caller). Ownership -- a customer sees only their own
 * rentals -- is the handlers' business, with the helpers below. */
#ifndef CARSHARE_AUTH_H
#define CARSHARE_AUTH_H

#include <stdbool.h>
#include "http.h"
#include "token.h"

typedef struct auth auth;

/* From the environment (above). Exits(2) on bad configuration. */
auth *auth_from_env(void);
/* Around a verifier the caller filled (tests); takes it. NULL on OOM. */
auth *auth_new(token_verifier *v);
void auth_free(auth *a);
token_verifier *auth_verifier(auth *a);

/* An http_guard (arg: the auth). */
bool auth_guard(http_req *r, unsigned roles, void *arg);

/* The same check, for a handler deciding by itself (the gateway's one
 * handler): true with the caller set on r, or false having answered. */
bool auth_check(auth *a, http_req *r, unsigned roles);

/* For handlers, after the guard let the request in. */
bool auth_is_staff(const http_req *r);
bool auth_is_customer(const http_req *r);
/* Whose data the caller may see: NULL for staff (everyone's), the
 * caller's own id for a customer. */
const char *auth_owner_filter(const http_req *r);
/* Whether the caller may see a record belonging to `customer_id`. */
bool auth_may_see(const http_req *r, const char *customer_id);

#endif
