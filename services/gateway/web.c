/* web.c: the customer's web page, served from memory.
 *
 * The page is a handful of small files (HTML, CSS, JavaScript), so they are
 * all read into memory at start and answered without touching the disk: one
 * bsearch by path per request. Each file gets its Content-Type, its
 * Cache-Control and an ETag (a hash of its content, so it survives reloads
 * of unchanged files and lets browsers revalidate with a 304).
 *
 * Editing the page must not need a restart: every reload_ms the tree is
 * walked again (readdir + fstatat, no reads) and summarised into a
 * fingerprint of (path, size, mtime) per file; only when the fingerprint
 * changed is the tree read again and the table swapped. SIGHUP forces a
 * reload (api.c wires it). Everything runs on the loop thread, and answers
 * copy the data out while building the reply, so a swap never pulls a file
 * from under a request.
 *
 * Dotfiles and dot-directories (.git, .env) and symbolic links are never
 * loaded, so nothing outside the tree or meant to be hidden can be served
 * whatever the request path. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "gateway.h"
#include "log.h"

#define GW_WEB_MAX_FILES 4096
#define GW_WEB_MAX_FILE_BYTES (16u << 20)
#define GW_WEB_MAX_DEPTH 16

struct gw_web {
    char *dir;
    gw_web_file *files;         /* sorted by key, for bsearch */
    size_t count;
    uint64_t fingerprint;       /* of the tree the table was loaded from */
    bool loaded_once;
    bool warned_missing;
    struct event *timer;
};

/* One file found by a walk, before it is read. */
typedef struct gw_web_entry {
    char *key;
    off_t size;
    struct timespec mtime;
} gw_web_entry;

typedef struct gw_web_walk {
    gw_web_entry *entries;
    size_t count, cap;
    bool truncated;
} gw_web_walk;

/* ---- hashing ---- */

static uint64_t gw_fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

#define GW_FNV_OFFSET 14695981039346656037ull

/* Order-independent (readdir order is arbitrary): the sum of one hash per
 * file, mixed with the count. */
static uint64_t gw_walk_fingerprint(const gw_web_walk *walk)
{
    uint64_t sum = walk->count * 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < walk->count; i++) {
        const gw_web_entry *e = &walk->entries[i];
        uint64_t h = gw_fnv1a(GW_FNV_OFFSET, e->key, strlen(e->key));
        h = gw_fnv1a(h, &e->size, sizeof e->size);
        h = gw_fnv1a(h, &e->mtime.tv_sec, sizeof e->mtime.tv_sec);
        h = gw_fnv1a(h, &e->mtime.tv_nsec, sizeof e->mtime.tv_nsec);
        sum += h;
    }
    return sum;
}

/* ---- walking the tree ---- */

static void gw_walk_free(gw_web_walk *walk)
{
    for (size_t i = 0; i < walk->count; i++)
        free(walk->entries[i].key);
    free(walk->entries);
    memset(walk, 0, sizeof *walk);
}

static bool gw_walk_add(gw_web_walk *walk, const char *key, const struct stat *st)
{
    if (walk->count == GW_WEB_MAX_FILES) {
        walk->truncated = true;
        return false;
    }
    if (walk->count == walk->cap) {
        size_t cap = walk->cap ? walk->cap * 2 : 32;
        gw_web_entry *grown = realloc(walk->entries, cap * sizeof *grown);
        if (grown == NULL)
            return false;
        walk->entries = grown;
        walk->cap = cap;
    }
    char *copy = strdup(key);
    if (copy == NULL)
        return false;
    walk->entries[walk->count++] = (gw_web_entry){copy, st->st_size, st->st_mtim};
    return true;
}

/* Walks dir_fd (the directory whose key prefix is `prefix`, "" for the
 * root), adding every regular file. Takes ownership of dir_fd. */
static void gw_walk_dir(gw_web_walk *walk, int dir_fd, const char *prefix, int depth)
{
    DIR *d = fdopendir(dir_fd);
    if (d == NULL) {
        close(dir_fd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;   /* ".", "..", and hidden files */
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        char key[1024];
        int n = snprintf(key, sizeof key, "%s/%s", prefix, de->d_name);
        if (n < 0 || (size_t)n >= sizeof key)
            continue;
        if (S_ISREG(st.st_mode)) {
            if (!gw_walk_add(walk, key, &st))
                break;
        } else if (S_ISDIR(st.st_mode) && depth < GW_WEB_MAX_DEPTH) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                gw_walk_dir(walk, sub, key, depth + 1);
        }
    }
    closedir(d);
}

/* Returns false when the web root itself cannot be opened. */
static bool gw_walk(const char *dir, gw_web_walk *walk)
{
    memset(walk, 0, sizeof *walk);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return false;
    gw_walk_dir(walk, fd, "", 0);
    return true;
}

/* ---- loading ---- */

static void gw_files_free(gw_web_file *files, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(files[i].key);
        free(files[i].data);
    }
    free(files);
}

static int gw_file_cmp(const void *a, const void *b)
{
    return strcmp(((const gw_web_file *)a)->key, ((const gw_web_file *)b)->key);
}

/* Reads one file into f (data owned by f). The size comes from fstat of the
 * open file, not from the walk, in case it changed meanwhile. */
static bool gw_file_read(const char *dir, const char *key, gw_web_file *f)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s%s", dir, key);
    if (n < 0 || (size_t)n >= sizeof path)
        return false;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return false;
    }
    if ((size_t)st.st_size > GW_WEB_MAX_FILE_BYTES) {
        log_warn("msg=\"web file too large, not served\" file=%s bytes=%lld limit=%u",
                 key, (long long)st.st_size, GW_WEB_MAX_FILE_BYTES);
        close(fd);
        return false;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *data = malloc(size ? size : 1);
    if (data == NULL) {
        close(fd);
        return false;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, data + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(data);
        return false;
    }
    f->key = strdup(key);
    if (f->key == NULL) {
        free(data);
        return false;
    }
    f->data = data;
    f->len = size;
    f->content_type = gw_content_type(key);
    f->cache_control = gw_cache_control(key);
    snprintf(f->etag, sizeof f->etag, "\"%016llx\"",
             (unsigned long long)gw_fnv1a(GW_FNV_OFFSET, data, size));
    return true;
}

/* Reads every walked file into a new table and swaps it in. */
static void gw_web_load(gw_web *w, const gw_web_walk *walk, uint64_t fingerprint)
{
    gw_web_file *files = calloc(walk->count ? walk->count : 1, sizeof *files);
    if (files == NULL) {
        log_error("msg=\"web page not reloaded: out of memory\" dir=%s", w->dir);
        return;
    }
    size_t count = 0, bytes = 0;
    for (size_t i = 0; i < walk->count; i++) {
        if (gw_file_read(w->dir, walk->entries[i].key, &files[count])) {
            bytes += files[count].len;
            count++;
        }
    }
    qsort(files, count, sizeof *files, gw_file_cmp);
    gw_files_free(w->files, w->count);
    w->files = files;
    w->count = count;
    w->fingerprint = fingerprint;
    log_info("msg=\"web page %s\" dir=%s files=%zu bytes=%zu%s",
             w->loaded_once ? "reloaded" : "loaded", w->dir, count, bytes,
             walk->truncated ? " truncated=true" : "");
    w->loaded_once = true;
}

size_t gw_web_rescan(gw_web *w, bool force)
{
    gw_web_walk walk;
    if (!gw_walk(w->dir, &walk)) {
        /* No web root (yet): the page is empty; say so once, not every scan. */
        if (!w->warned_missing)
            log_warn("msg=\"web page directory not found; / answers 404 until it exists\" dir=%s",
                     w->dir);
        w->warned_missing = true;
    } else {
        w->warned_missing = false;
    }
    uint64_t fp = gw_walk_fingerprint(&walk);
    if (force || !w->loaded_once || fp != w->fingerprint)
        gw_web_load(w, &walk, fp);
    gw_walk_free(&walk);
    return w->count;
}

static void gw_web_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_web_rescan(arg, false);
}

gw_web *gw_web_new(struct event_base *base, const char *dir, int reload_ms)
{
    gw_web *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->dir = strdup(dir);
    if (w->dir == NULL) {
        free(w);
        return NULL;
    }
    gw_web_rescan(w, true);
    if (base != NULL && reload_ms > 0) {
        w->timer = event_new(base, -1, EV_PERSIST, gw_web_on_timer, w);
        struct timeval tv = {reload_ms / 1000, (reload_ms % 1000) * 1000};
        if (w->timer)
            event_add(w->timer, &tv);
    }
    return w;
}

void gw_web_free(gw_web *w)
{
    if (w == NULL)
        return;
    if (w->timer)
        event_free(w->timer);
    gw_files_free(w->files, w->count);
    free(w->dir);
    free(w);
}

const gw_web_file *gw_web_find(const gw_web *w, const char *key)
{
    if (w->count == 0)
        return NULL;
    gw_web_file probe = {.key = (char *)key};
    return bsearch(&probe, w->files, w->count, sizeof *w->files, gw_file_cmp);
}

size_t gw_web_count(const gw_web *w)
{
    return w->count;
}

const char *gw_web_dir(const gw_web *w)
{
    return w->dir;
}
