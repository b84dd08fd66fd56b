/* domain.c: account's rules, without I/O (unit tested in
 * tests/unit/account/test_domain.c).
 *
 * Passwords follow NIST SP 800-63B rather than composition rules: a
 * minimum length (10), no maximum a person would meet (256 bytes bounds
 * what we hash), and a refusal of passwords known to be common -- which is
 * what actually stops guessing -- and of the account's own id. */
#include "account.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

const char *account_id_refusal(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < ACCOUNT_ID_MIN || n > ACCOUNT_ID_MAX || !token_subject_valid(id))
        return "customerId must be 3 to 64 characters of a-z, 0-9, '.', '_' and '-'";
    return NULL;
}

bool account_password_common(const char *password)
{
    for (size_t i = 0; i < account_common_password_count; i++)
        if (strcasecmp(password, account_common_passwords[i]) == 0)
            return true;
    return false;
}

const char *account_password_refusal(const char *password, const char *id)
{
    size_t n = password ? strlen(password) : 0;
    if (n < ACCOUNT_PASSWORD_MIN)
        return "password must be at least 10 characters long";
    if (n > ACCOUNT_PASSWORD_MAX)
        return "password must be at most 256 bytes long";
    if (account_password_common(password))
        return "this password is one of the most commonly used passwords: choose another";
    if (id && strcasecmp(password, id) == 0)
        return "password must not be the customerId";
    return NULL;
}

long long throttle_retry_after(const long long *failures, int count, long long now)
{
    /* failures are oldest first. Only those within the window count; the
     * next attempt may go ahead once fewer than THROTTLE_MAX_FAILURES are
     * left in it, i.e. when the failure that is MAX-th from the newest
     * leaves the window. */
    int first = 0;
    while (first < count && failures[first] <= now - THROTTLE_WINDOW_S)
        first++;
    int recent = count - first;
    if (recent < THROTTLE_MAX_FAILURES)
        return 0;
    long long leaves = failures[count - THROTTLE_MAX_FAILURES] + THROTTLE_WINDOW_S;
    return leaves - now < 1 ? 1 : leaves - now;
}
