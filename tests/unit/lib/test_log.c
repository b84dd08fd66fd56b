/* test_log: a log file is capped (LOG_MAX_BYTES): past the cap it becomes
 * <name>.1 and writing goes on in a new file; each stays near the cap and
 * the newest line is in the current file (lib/log.c). */
#include "testing.h"
#include "log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    if (f) fclose(f);
    return found;
}

int main(void)
{
    char dir[128], path[160], old[170];
    if (!temp_dir_make(dir, sizeof dir, "log")) return 1;
    snprintf(path, sizeof path, "%s/svc.log", dir);
    snprintf(old, sizeof old, "%s.1", path);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    dup2(fd, STDERR_FILENO);
    close(fd);

    setenv("LOG_MAX_BYTES", "4000", 1);
    log_init("test");
    for (int i = 0; i < 300; i++)
        log_info("msg=\"a line long enough to fill the file in a few dozen writes\" n=%d", i);
    log_info("msg=last");

    dup2(saved, STDERR_FILENO);     /* CHECK failures are reported on the real stderr */
    close(saved);
    CHECK(file_size(old) > 3000 && file_size(old) <= 4000);
    CHECK(file_size(path) > 0 && file_size(path) <= 4000);
    CHECK(file_contains(path, "msg=last"));
    CHECK(!file_contains(old, "msg=last"));
    temp_dir_remove(dir);
    return test_done("test_log");
}
