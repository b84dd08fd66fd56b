/* httpc_conn.c: a client slot's connection (httpc_private.h), on a plain
 * bufferevent: connect, write the request, read and check the answer.
 *
 * Why not evhttp_connection. On the gateway's hot path evhttp's client
 * cost about 20k instructions per proxied request: a malloc'ed request
 * with two header lists (every header string duplicated, on the way out
 * and on the way back), lines read with evbuffer_readln. Here the request
 * is written into the output in one go (httpc.c), and the answer's head,
 * once whole, is copied into the slot's own buffer and split in place;
 * its header list is an array of evkeyval kept by the slot (no allocation
 * once warm), so that httpc_response.headers keeps its type.
 *
 * The answer is checked as strictly as a request is (http_frame.c): the
 * status line is "HTTP/1.<digit> <3 digits> reason"; field lines are a
 * token, ':', a value of visible bytes, space or tab, CRLF; no obs-fold,
 * no bare CR or LF; Content-Length is digits, repeated only with the same
 * value; Transfer-Encoding is exactly "chunked" and never with
 * Content-Length. A malformed answer ends the attempt HTTPC_BROKEN and is
 * not retried (it would only come back the same); the connection is
 * dropped. Its body: none for HEAD, 1xx (skipped: the final answer
 * follows), 204 and 304; else chunked, Content-Length, or up to the close.
 *
 * Reading. Once connected, the socket is read by the slot's own event
 * (on_readable): one recv into the input's free space, where the
 * bufferevent's reading would ask the socket's size (ioctl FIONREAD)
 * before every readv and re-add its read event at every change of the
 * input (its high-water mark); see http_conn.c for the figures. The
 * bufferevent connects and writes.
 *
 * A connection is kept for the next call unless the answer or the slot
 * says close. While idle it keeps reading: a server closing it (EOF), or
 * sending bytes nobody asked for, gets it dropped at once. */
#include "httpc_private.h"
#include "http.h"          /* http_recv_into */

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "mem.h"

enum { READ_HEAD, READ_LENGTH, READ_CHUNKS, READ_UNTIL_CLOSE, READ_IDLE };

/* ---- the answer's head, pure ---- */

static bool is_tchar(unsigned char c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr(extra, c));
}

static bool is_field_byte(unsigned char c)
{
    return (c >= 0x20 && c != 0x7f) || c == '\t';
}

/* One field line at p (NUL-terminated head), split in place. Returns the
 * next line, or NULL when malformed. */
static char *field_line(char *p, char **name, char **value)
{
    *name = p;
    while (is_tchar((unsigned char)*p)) p++;
    if (p == *name || *p != ':')
        return NULL;    /* no name, whitespace before the colon, a bad byte */
    *p++ = '\0';
    while (*p == ' ' || *p == '\t') p++;
    *value = p;
    while (is_field_byte((unsigned char)*p)) p++;
    if (p[0] != '\r' || p[1] != '\n')
        return NULL;    /* a control byte, a bare CR or LF */
    char *end = p;
    while (end > *value && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *end = '\0';
    return p + 2;
}

/* Reads the framing fields: false when they contradict each other. */
static bool framing_field(httpc_head *h, const char *name, const char *value)
{
    if (strcasecmp(name, "Content-Length") == 0) {
        size_t n = strspn(value, "0123456789");
        if (n == 0 || value[n] != '\0' || n > 18)
            return false;
        long long len = atoll(value);
        if (h->length >= 0 && h->length != len)
            return false;
        h->length = len;
    } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
        if (h->chunked || strcasecmp(value, "chunked") != 0)
            return false;
        h->chunked = true;
    } else if (strcasecmp(name, "Connection") == 0) {
        for (const char *p = value; *p;) {
            while (*p == ' ' || *p == '\t' || *p == ',') p++;
            const char *start = p;
            while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
            if (p - start == 5 && strncasecmp(start, "close", 5) == 0) h->close = true;
            if (p - start == 10 && strncasecmp(start, "keep-alive", 10) == 0) h->keep_alive = true;
        }
    }
    return true;
}

bool httpc_parse_head(char *head, httpc_head *h, struct evkeyval *kv, int kv_max)
{
    memset(h, 0, sizeof *h);
    h->length = -1;
    char *p = head;
    if (strncmp(p, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)p[7]) || p[8] != ' ')
        return false;
    h->minor = p[7] - '0';
    p += 9;
    for (int i = 0; i < 3; i++)
        if (!isdigit((unsigned char)p[i])) return false;
    h->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (h->status < 100)
        return false;
    p += 3;
    if (*p == ' ')
        while (is_field_byte((unsigned char)*p)) p++;
    if (p[0] != '\r' || p[1] != '\n')
        return false;
    p += 2;
    while (!(p[0] == '\r' && p[1] == '\n')) {
        if (h->count == kv_max)
            return false;
        char *name, *value;
        p = field_line(p, &name, &value);
        if (!p || !framing_field(h, name, value))
            return false;
        kv[h->count].key = name;
        kv[h->count].value = value;
        h->count++;
    }
    if (h->chunked && h->length >= 0)
        return false;
    return true;
}

/* ---- reading the answer ---- */

static bool body_room(httpc_slot *slot, size_t more)
{
    size_t need = slot->body_len + more + 1;
    if (need > HTTPC_MAX_BODY + 1)
        return false;
    if (need > slot->body_cap) {
        size_t cap = slot->body_cap ? slot->body_cap : 4096;
        while (cap < need) cap *= 2;
        slot->body = mem_must(realloc(slot->body, cap));
        slot->body_cap = cap;
    }
    return true;
}

/* The head is whole in input (head_len bytes): checked, copied, split. */
static bool take_head(httpc_slot *slot, struct evbuffer *input, size_t head_len)
{
    if (head_len + 1 > slot->head_cap) {
        size_t cap = slot->head_cap ? slot->head_cap : 1024;
        while (cap < head_len + 1) cap *= 2;
        slot->head = mem_must(realloc(slot->head, cap));
        slot->head_cap = cap;
    }
    evbuffer_remove(input, slot->head, head_len);
    slot->head[head_len] = '\0';
    if (memchr(slot->head, '\0', head_len))
        return false;
    /* At most one header per line: lines counted with memchr (a byte
     * loop was ~400 instructions of a proxied request's answer). */
    int max = 0;
    for (const char *p = slot->head, *end = slot->head + head_len;
         (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        max++;
    if (max > slot->kv_cap) {
        slot->kv = mem_must(realloc(slot->kv, (size_t)max * sizeof *slot->kv));
        slot->kv_cap = max;
    }
    if (!httpc_parse_head(slot->head, &slot->answer, slot->kv, slot->kv_cap))
        return false;
    TAILQ_INIT(&slot->headers);
    for (int i = 0; i < slot->answer.count; i++)
        TAILQ_INSERT_TAIL(&slot->headers, &slot->kv[i], next);
    return true;
}

/* Where the head ends (after its empty line) in input, or 0. */
static size_t head_end(httpc_slot *slot, struct evbuffer *input)
{
    size_t len = evbuffer_get_length(input);
    struct evbuffer_ptr start;
    size_t from = slot->scanned > 3 ? slot->scanned - 3 : 0;
    evbuffer_ptr_set(input, &start, from, EVBUFFER_PTR_SET);
    struct evbuffer_ptr at = evbuffer_search(input, "\r\n\r\n", 4, &start);
    if (at.pos < 0) {
        slot->scanned = len;
        return 0;
    }
    return (size_t)at.pos + 4;
}

/* Chunks as far as they are in input. 1: the body is whole; 0: more is
 * needed; -1: malformed or too large. */
static int read_chunks(httpc_slot *slot, struct evbuffer *input)
{
    for (;;) {
        struct evbuffer_ptr eol = evbuffer_search_eol(input, NULL, NULL, EVBUFFER_EOL_CRLF_STRICT);
        if (eol.pos < 0)
            return evbuffer_get_length(input) > 4096 ? -1 : 0;
        char line[64];
        if (eol.pos >= (ev_ssize_t)sizeof line)
            return -1;
        evbuffer_copyout(input, line, (size_t)eol.pos);
        line[eol.pos] = '\0';
        if (slot->in_trailers) {
            evbuffer_drain(input, (size_t)eol.pos + 2);
            if (eol.pos == 0)
                return 1;
            continue;
        }
        char *end;
        if (!isxdigit((unsigned char)line[0]))
            return -1;
        unsigned long long size = strtoull(line, &end, 16);
        if (*end != '\0' && *end != ';' && *end != ' ' && *end != '\t')
            return -1;
        if (size == 0) {
            evbuffer_drain(input, (size_t)eol.pos + 2);
            slot->in_trailers = true;
            continue;
        }
        if (size > HTTPC_MAX_BODY || !body_room(slot, (size_t)size))
            return -1;
        size_t need = (size_t)eol.pos + 2 + (size_t)size + 2;
        if (evbuffer_get_length(input) < need)
            return 0;
        evbuffer_drain(input, (size_t)eol.pos + 2);
        evbuffer_remove(input, slot->body + slot->body_len, (size_t)size);
        slot->body_len += (size_t)size;
        char crlf[2];
        evbuffer_remove(input, crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n')
            return -1;
    }
}

static void conn_drop(httpc_slot *slot)
{
    if (slot->readable) {
        event_free(slot->readable);
        slot->readable = NULL;
    }
    if (slot->bev) {
        bufferevent_free(slot->bev);
        slot->bev = NULL;
    }
    slot->rstate = READ_IDLE;
}

/* The attempt's answer is whole: hand it over. The connection goes first
 * if it is not to be kept (the next call on this slot then makes its
 * own). */
static void answer_done(httpc_slot *slot)
{
    slot->body[slot->body_len] = '\0';
    const httpc_head *h = &slot->answer;
    bool keep = slot->keep_alive && !h->close && (h->minor >= 1 || h->keep_alive) &&
                slot->rstate != READ_UNTIL_CLOSE;
    struct evbuffer *input = slot->bev ? bufferevent_get_input(slot->bev) : NULL;
    if (keep && input && evbuffer_get_length(input) > 0)
        keep = false;   /* bytes after the answer: nobody asked for them */
    if (!keep)
        conn_drop(slot);
    slot->rstate = READ_IDLE;
    httpc_attempt_end(slot, h->status, false);
}

static void answer_failed(httpc_slot *slot, bool malformed)
{
    conn_drop(slot);
    httpc_attempt_end(slot, 0, malformed);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    httpc_slot *slot = arg;
    struct evbuffer *input = bufferevent_get_input(bev);
    for (;;) {
        switch (slot->rstate) {
        case READ_IDLE:
            conn_drop(slot);     /* bytes while idle: the connection is not sane */
            return;
        case READ_HEAD: {
            size_t end = head_end(slot, input);
            if (end == 0) {
                if (evbuffer_get_length(input) > HTTPC_MAX_HEADERS) answer_failed(slot, true);
                return;
            }
            if (end > HTTPC_MAX_HEADERS || !take_head(slot, input, end)) {
                answer_failed(slot, true);
                return;
            }
            slot->scanned = 0;
            int status = slot->answer.status;
            if (status < 200)
                continue;       /* 1xx: the final answer follows */
            slot->body_len = 0;
            body_room(slot, 0);
            if (slot->head_request || status == 204 || status == 304) {
                answer_done(slot);
                return;
            }
            if (slot->answer.chunked) {
                slot->in_trailers = false;
                slot->rstate = READ_CHUNKS;
            } else if (slot->answer.length >= 0) {
                if (slot->answer.length > HTTPC_MAX_BODY) {
                    answer_failed(slot, true);
                    return;
                }
                slot->rstate = READ_LENGTH;
            } else {
                slot->rstate = READ_UNTIL_CLOSE;
            }
            continue;
        }
        case READ_LENGTH: {
            size_t want = (size_t)slot->answer.length;
            if (evbuffer_get_length(input) < want)
                return;
            body_room(slot, want);
            evbuffer_remove(input, slot->body, want);
            slot->body_len = want;
            answer_done(slot);
            return;
        }
        case READ_CHUNKS: {
            int r = read_chunks(slot, input);
            if (r < 0) answer_failed(slot, true);
            else if (r > 0) answer_done(slot);
            return;
        }
        case READ_UNTIL_CLOSE: {
            size_t n = evbuffer_get_length(input);
            if (!body_room(slot, n)) {
                answer_failed(slot, true);
                return;
            }
            evbuffer_remove(input, slot->body + slot->body_len, n);
            slot->body_len += n;
            return;
        }
        }
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg);

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    httpc_slot *slot = arg;
    if (what & BEV_EVENT_CONNECTED) {
        slot->reached = true;
        httpc_slot_set_nodelay(slot);
        /* From now on the socket is read by on_readable. */
        bufferevent_disable(bev, EV_READ);
        slot->readable = mem_must(event_new(bufferevent_get_base(bev), bufferevent_getfd(bev),
                                            EV_READ | EV_PERSIST, on_readable, slot));
        event_add(slot->readable, NULL);
        httpc_attempt_connected(slot);
        return;
    }
    if ((what & BEV_EVENT_WRITING) && !(what & BEV_EVENT_EOF) && slot->call && slot->reached) {
        /* The server stopped reading the request: its early answer (413...)
         * may still come, so reading goes on (the call's timer bounds it). */
        bufferevent_disable(slot->bev, EV_WRITE);
        return;
    }
    if (slot->rstate == READ_UNTIL_CLOSE && (what & BEV_EVENT_EOF)) {
        answer_done(slot);
        return;
    }
    if (slot->connecting_now) {
        slot->connect_failed = true;    /* inside httpc_slot_connect: it reports */
        return;
    }
    if (!slot->call) {
        conn_drop(slot);    /* an idle connection the server closed */
        return;
    }
    answer_failed(slot, false);
}

/* The most one recv takes (the rest is read on the next turn). */
#define SLOT_READ_MAX 16384

/* The connected socket is readable: what it holds goes to the input, and
 * on_read takes the answer from there. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    httpc_slot *slot = arg;
    struct bufferevent *bev = slot->bev;
    struct evbuffer *input = bufferevent_get_input(bev);
    size_t have = evbuffer_get_length(input), max = HTTPC_MAX_HEADERS + HTTPC_MAX_BODY;
    if (have >= max) {      /* on_read takes an answer as soon as it is whole: not one */
        event_del(slot->readable);
        on_event(bev, BEV_EVENT_READING | BEV_EVENT_ERROR, slot);
        return;
    }
    size_t want = max - have < SLOT_READ_MAX ? max - have : SLOT_READ_MAX;
    int err;
    ssize_t n = http_recv_into(fd, input, want, &err);
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR))
        return;
    if (n <= 0) {           /* the server closed, or an error */
        event_del(slot->readable);
        on_event(bev, (short)(BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR)),
                 slot);
        return;
    }
    on_read(bev, slot);
}

/* ---- the slot's side ---- */

bool httpc_slot_connect(httpc_slot *slot)
{
    httpc *c = slot->client;
    struct bufferevent *bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return false;
    bufferevent_setcb(bev, on_read, NULL, on_event, slot);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    slot->bev = bev;
    slot->reached = false;
    slot->connecting_now = true;
    slot->connect_failed = false;
    /* A name resolved without an asynchronous resolver fails (or connects)
     * inside this call: on_event then only notes it. */
    int rc = bufferevent_socket_connect_hostname(bev, c->dns, c->family, c->host, c->port);
    slot->connecting_now = false;
    if (rc != 0 || slot->connect_failed) {
        conn_drop(slot);     /* the attempt ends from the loop (httpc.c) */
        return false;
    }
    return true;
}

/* The attempt's request (already written into the output) starts: the
 * answer is read from now on. The previous answer's head and body stay
 * as they are until this one's head arrives: a slot freed by an answer is
 * handed to the next queued call before that answer is delivered
 * (httpc.c, attempt_done). */
void httpc_slot_expect_answer(httpc_slot *slot, bool head_request)
{
    slot->rstate = READ_HEAD;
    slot->scanned = 0;
    slot->head_request = head_request;
}

void httpc_slot_kill(httpc_slot *slot)
{
    conn_drop(slot);
}

void httpc_slot_drop_idle(httpc_slot *slot)
{
    conn_drop(slot);
}

int httpc_slot_fd(const httpc_slot *slot)
{
    return slot->bev ? bufferevent_getfd(slot->bev) : -1;
}

void httpc_slot_free_buffers(httpc_slot *slot)
{
    free(slot->head);
    free(slot->kv);
    free(slot->body);
    slot->head = NULL;
    slot->kv = NULL;
    slot->body = NULL;
}
