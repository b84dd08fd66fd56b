/* test_config.c: configuration from the environment (lib/config.c), and
 * log_quote (lib/log.c), whose output config's error lines rely on.
 * Fatal cases run in a forked child, whose exit status is checked. */
#include "testing.h"

#include "config.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_str(void)
{
    unsetenv("T_NAME");
    CHECK_STR(config_str("T_NAME", "fallback"), "fallback");
    setenv("T_NAME", "", 1);
    CHECK_STR(config_str("T_NAME", "fallback"), "fallback");
    setenv("T_NAME", "nats://10.0.0.1:4222", 1);
    CHECK_STR(config_str("T_NAME", "fallback"), "nats://10.0.0.1:4222");
    CHECK(config_str("T_UNSET_EVER", NULL) == NULL);
}

static void test_int(void)
{
    unsetenv("T_PORT");
    CHECK_INT(config_int("T_PORT", 8081, 0, 65535), 8081);
    setenv("T_PORT", "", 1);
    CHECK_INT(config_int("T_PORT", 8081, 0, 65535), 8081);
    setenv("T_PORT", "9000", 1);
    CHECK_INT(config_int("T_PORT", 8081, 0, 65535), 9000);
    setenv("T_PORT", "-3", 1);
    CHECK_INT(config_int("T_PORT", 8081, -10, 10), -3);
    setenv("T_PORT", "0", 1);
    CHECK_INT(config_int("T_PORT", 8081, 0, 65535), 0);
}

/* Runs config_int in a child with T_PORT=value; returns its exit status
 * (or -1 when it did not exit normally). */
static int child_exit_status(const char *value, long min, long max)
{
    pid_t pid = fork();
    if (pid == 0) {
        /* Keep the expected error line out of the test's output. */
        FILE *devnull = freopen("/dev/null", "w", stderr);
        (void)devnull;
        setenv("T_PORT", value, 1);
        long v = config_int("T_PORT", 1, min, max);
        _exit(v == 1 ? 0 : 3);   /* 0/3: it did not refuse */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_int_refusals(void)
{
    CHECK_INT(child_exit_status("abc", 0, 65535), 2);
    CHECK_INT(child_exit_status("80x", 0, 65535), 2);
    CHECK_INT(child_exit_status(" 80", 0, 65535), 2);
    CHECK_INT(child_exit_status("70000", 0, 65535), 2);
    CHECK_INT(child_exit_status("-1", 0, 65535), 2);
    CHECK_INT(child_exit_status("99999999999999999999999", 0, 65535), 2);
    CHECK_INT(child_exit_status("1.5", 0, 65535), 2);
}

static void test_data_path(void)
{
    char base[] = "/tmp/carshare-config-XXXXXX";
    CHECK(mkdtemp(base) != NULL);
    char dir[256];
    snprintf(dir, sizeof dir, "%s/deep/er/", base);
    setenv("DATA_DIR", dir, 1);
    char *path = config_data_path("order.db");
    char expected[300];
    snprintf(expected, sizeof expected, "%s/deep/er/order.db", base);
    CHECK_STR(path, expected);
    struct stat st;
    snprintf(expected, sizeof expected, "%s/deep/er", base);
    CHECK(stat(expected, &st) == 0 && S_ISDIR(st.st_mode));
    free(path);

    /* Existing directory: fine, no error. */
    path = config_data_path("other.db");
    CHECK(path != NULL);
    free(path);

    /* A file in the way is fatal. */
    char blocker[300];
    snprintf(blocker, sizeof blocker, "%s/file", base);
    FILE *f = fopen(blocker, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *devnull = freopen("/dev/null", "w", stderr);
        (void)devnull;
        setenv("DATA_DIR", blocker, 1);
        char *p = config_data_path("x.db");
        _exit(p ? 0 : 3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);

    unlink(blocker);
    snprintf(expected, sizeof expected, "%s/deep/er", base);
    rmdir(expected);
    snprintf(expected, sizeof expected, "%s/deep", base);
    rmdir(expected);
    rmdir(base);
    unsetenv("DATA_DIR");
}

static void test_log_quote(void)
{
    char buf[64];
    CHECK_STR(log_quote(buf, sizeof buf, "plain"), "\"plain\"");
    CHECK_STR(log_quote(buf, sizeof buf, "say \"hi\"\\\n"), "\"say \\\"hi\\\"\\\\\\n\"");
    CHECK_STR(log_quote(buf, sizeof buf, "\x01"), "\"\\x01\"");
    CHECK_STR(log_quote(buf, sizeof buf, NULL), "\"\"");
    char small[8];
    CHECK_STR(log_quote(small, sizeof small, "abcdefghij"), "\"abcde\"");   /* cut, still quoted */
    CHECK_STR(log_quote(small, sizeof small, "abcd\"x"), "\"abcd\"");       /* no half escape */
}

int main(void)
{
    test_str();
    test_int();
    test_int_refusals();
    test_data_path();
    test_log_quote();
    return test_done("test_config");
}
