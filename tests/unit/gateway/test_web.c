/* test_web.c: the web page cache (web.c) on a real temporary directory:
 * what is loaded (and what never is: dotfiles, symlinks), how files are
 * found, typed and tagged, and that a change on disk is picked up by a
 * rescan while an unchanged tree is left alone. Needs no event loop. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway.h"
#include "log.h"
#include "testing.h"

static char root[256];

static void write_file(const char *rel, const char *content)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fputs(content, f);
    fclose(f);
}

static void make_dir(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    mkdir(path, 0755);
}

/* Moves a file's mtime, so a same-size rewrite is still a change even on a
 * file system with coarse timestamps. */
static void touch_later(const char *rel, int seconds)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    struct stat st;
    stat(path, &st);
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    times[1].tv_sec += seconds;
    utimensat(AT_FDCWD, path, times, 0);
}

static bool has_content(const gw_web_file *f, const char *content)
{
    return f && f->len == strlen(content) && memcmp(f->data, content, f->len) == 0;
}

static void remove_tree(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", root);
}

int main(void)
{
    log_init("test_web");
    snprintf(root, sizeof root, "/tmp/carshare-webtest-XXXXXX");
    if (mkdtemp(root) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    write_file("index.html", "<!doctype html><title>carshare</title>");
    make_dir("css");
    write_file("css/site.css", "body{margin:0}");
    write_file("app.js", "console.log(1)");
    write_file(".env", "SECRET=1");
    make_dir(".git");
    write_file(".git/config", "[core]");
    write_file("outside.txt", "x");
    char target[512], link_path[512];
    snprintf(target, sizeof target, "/etc/hostname");
    snprintf(link_path, sizeof link_path, "%s/link.txt", root);
    CHECK(symlink(target, link_path) == 0);

    gw_web *w = gw_web_new(NULL, root, 0);
    CHECK(w != NULL);
    CHECK_INT(gw_web_count(w), 4);   /* index.html, css/site.css, app.js, outside.txt */

    const gw_web_file *index = gw_web_find(w, "/index.html");
    CHECK(has_content(index, "<!doctype html><title>carshare</title>"));
    CHECK_STR(index ? index->content_type : NULL, "text/html; charset=utf-8");
    CHECK_STR(index ? index->cache_control : NULL, "no-cache");
    CHECK(index && index->etag[0] == '"' && strlen(index->etag) == 18);

    const gw_web_file *css = gw_web_find(w, "/css/site.css");
    CHECK(has_content(css, "body{margin:0}"));
    CHECK_STR(css ? css->content_type : NULL, "text/css; charset=utf-8");
    CHECK_STR(css ? css->cache_control : NULL, "public, max-age=300");

    /* Never loaded, whatever the path asks for. */
    CHECK(gw_web_find(w, "/.env") == NULL);
    CHECK(gw_web_find(w, "/.git/config") == NULL);
    CHECK(gw_web_find(w, "/link.txt") == NULL);
    CHECK(gw_web_find(w, "/css") == NULL);          /* a directory is not a file */
    CHECK(gw_web_find(w, "/missing.html") == NULL);
    CHECK(gw_web_find(w, "") == NULL);

    /* Unchanged tree: nothing reloaded, same table. */
    const gw_web_file *before = gw_web_find(w, "/app.js");
    char etag_before[24];
    snprintf(etag_before, sizeof etag_before, "%s", before ? before->etag : "");
    CHECK_INT(gw_web_rescan(w, false), 4);
    CHECK(gw_web_find(w, "/app.js") == before);

    /* A changed file (same size, later mtime) is reloaded, with a new ETag. */
    write_file("app.js", "console.log(2)");
    touch_later("app.js", 5);
    gw_web_rescan(w, false);
    const gw_web_file *after = gw_web_find(w, "/app.js");
    CHECK(has_content(after, "console.log(2)"));
    CHECK(after && strcmp(after->etag, etag_before) != 0);

    /* Same content again: same ETag as the first time (a content hash). */
    write_file("app.js", "console.log(1)");
    touch_later("app.js", 10);
    gw_web_rescan(w, false);
    after = gw_web_find(w, "/app.js");
    CHECK(has_content(after, "console.log(1)"));
    CHECK_STR(after ? after->etag : NULL, etag_before);

    /* Added and removed files. */
    write_file("css/new.css", "p{}");
    char gone[512];
    snprintf(gone, sizeof gone, "%s/outside.txt", root);
    unlink(gone);
    CHECK_INT(gw_web_rescan(w, false), 4);
    CHECK(gw_web_find(w, "/css/new.css") != NULL);
    CHECK(gw_web_find(w, "/outside.txt") == NULL);

    /* A forced reload reloads even an unchanged tree. */
    CHECK_INT(gw_web_rescan(w, true), 4);
    gw_web_free(w);

    /* A missing root is an empty page until it appears. */
    char later[300];
    snprintf(later, sizeof later, "%s/later", root);
    w = gw_web_new(NULL, later, 0);
    CHECK(w != NULL);
    CHECK_INT(gw_web_count(w), 0);
    CHECK(gw_web_find(w, "/index.html") == NULL);
    mkdir(later, 0755);
    write_file("later/index.html", "hi");
    CHECK_INT(gw_web_rescan(w, false), 1);
    CHECK(has_content(gw_web_find(w, "/index.html"), "hi"));
    CHECK_STR(gw_web_dir(w), later);
    gw_web_free(w);

    remove_tree();
    return test_done("gateway/web");
}
