// SPDX-License-Identifier: Apache-2.0
//
// httpd: the lbctl demo and test application.
//
// A tiny HTTP/1.1 server that answers every request with the name of the
// replica it runs in, so a client can see how the kernel spread its
// connections.  It is built statically and shipped in a FROM-scratch image
// (no registry is needed to build it).
//
// Environment:
//   PORT           TCP port (default 8080).
//   BIND           address both sockets bind (default 0.0.0.0).  An IPv6
//                  address makes them IPv6 sockets, dual-stack (taking IPv4
//                  too) unless V6ONLY=1: BIND=:: serves both families with
//                  one socket per protocol.
//   V6ONLY=1       with an IPv6 BIND: set IPV6_V6ONLY (IPv6 clients only).
//   REUSEPORT=0    do not set SO_REUSEPORT (bind then fails next to another
//                  listener: "bind: Address in use", exit 1).
//   LBCTL_REPLICA  the name to answer with (fallback: hostname).
//   DELAY_MS       wait this long before answering each request.
//   GRACE_MS       upper bound of the graceful shutdown (default 5000).
//   UDP_PORT       also answer UDP datagrams on this port: with the name and a
//                  newline, whatever the datagram held.
//   UDP_ECHO=1     answer each datagram with "<name> <payload>" instead (the
//                  payload as received, nothing added), so that a client can
//                  tell which of its datagrams which replica answered.
//   FILE           GET /file answers with this file's content (404 when it
//                  cannot be read): shows what a replica sees on a volume.
//   FETCH          HOST:PORT; GET /fetch answers with the body of a GET of
//                  http://HOST:PORT/ (502 when that fails; the name is looked
//                  up through the container's DNS, 2 s at most, and the loop
//                  waits for it): shows whom a replica reaches by name.
//                  Without FILE or FETCH, /file and /fetch answer like any
//                  other path.
//   LOG_REQUESTS=1 write one line per request to stdout ("<name> GET /path
//                  HTTP/1.1", control bytes as '?'): an access log, so that
//                  `lbctl logs` has lines whose order the client knows (the
//                  start and stop lines go to stderr).  Off by default: a
//                  write per request would cost the benchmarks.
//   IGNORE_TERM=1  ignore SIGTERM (as PID 1 with no handler, the way many images
//                  behave): `docker stop` then waits its whole grace and kills.
//   IDLE_CLOSE_MS  draining: close a keep-alive connection only once it has been idle
//                  this long (default 0: at once, as nginx and Go's net/http do), and
//                  answer every request meanwhile with `Connection: close`: a client that
//                  does not retry (wrk) then never meets a connection closed under its
//                  next request.
//   WARMUP         seconds of warm-up after start (default 0): the server listens at
//                  once but answers 503 ("warming up") on every path but /live, as a
//                  service loading its code or filling a cache does.
//
// Paths: GET /ready answers 200 once warmed up (503 while warming, or while
// marked unready by SIGHUP): a readiness check. GET /live always answers 200:
// a liveness check, free of readiness. Any other path answers the name.
//   LISTEN_FDS, LISTEN_PID  systemd's socket activation (sd_listen_fds(3)): when
//                  LISTEN_PID is this process and LISTEN_FDS >= 1, serve the
//                  inherited sockets 3, 4, ... instead of binding: every
//                  stream listener takes TCP, every datagram socket UDP (one
//                  per published address: IPv4 and IPv6, say; up to 8 more
//                  than the first of each; PORT then does not say where it
//                  serves, and a TCP listener of its own is opened on PORT only
//                  when none is inherited; UDP_PORT still binds a UDP socket of
//                  its own when none is inherited; any other inherited fd is
//                  closed, so no listener is left that nobody accepts on).
//                  lbctl's activation shim (images/activate) hands them over;
//                  they may belong to another network namespace than the
//                  container's (the host's), which `--check` (it asks the
//                  container's own loopback) then does not reach.
//   IGNORE_LISTEN_FDS=1  a server that knows nothing of that protocol: bind
//                  PORT as usual and leave the inherited fds open, unused.
//
// Signals: SIGTERM/SIGINT drain and exit.  SIGUSR1 marks the server sick
// (SIGUSR1 again: well): it keeps serving, but `--check` (a HEALTHCHECK) fails.
// SIGUSR2 closes the TCP listener and keeps running (a replica that stopped
// serving: lbctl's own probes fail); SIGUSR2 again opens it. SIGHUP marks it
// unready (SIGHUP again: ready): /ready answers 503, every other path as before
// (a replica that lost its database, say, but still runs).  An inherited
// listener is closed for good: this process cannot make it again (its
// namespace may not be ours, and a listener stopped with shutdown() loses its
// port), so a second SIGUSR2 only says so.
//
// `httpd --check` GETs / on the loopback address of BIND's family, port
// $PORT, and exits 0 on a 200 (for HEALTHCHECK, as the image has no shell or
// curl); it fails while the server is sick, whichever listener its GET
// reaches (replicas in one network namespace share the port), as it looks for
// a sick httpd among the container's processes.
//
// Design: one thread, one epoll loop, level-triggered, non-blocking sockets.
// Signals arrive through a signalfd, so shutdown is an ordinary event and no
// work happens in a signal handler.  Responses are tiny and precomputed.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define REQ_BUF 8192     // one request head must fit; larger gets 431
#define BACKLOG 1024
#define MAX_EVENTS 256
#define ACCEPT_BATCH 64  // bound the accept loop so clients are not starved
#define UDP_BATCH 64
#define FILE_MAX 65536   // GET /file serves at most this much
#define FETCH_MAX 4096   // GET /fetch relays at most this much
#define SICK_NAME "httpd-sick"
#define MAX_MORE 8       // inherited sockets served beside the first TCP and UDP one

enum kind { K_LISTEN, K_UDP, K_SIGNAL, K_CONN };

// The first member of every epoll-registered object, so epoll's data.ptr
// tells us what woke up.
struct tag {
    enum kind kind;
    int fd;
};

enum route { R_NAME, R_FILE, R_FETCH, R_READY, R_LIVE };

enum cstate {
    C_READ,     // waiting for (the rest of) a request head
    C_DELAYED,  // request complete, waiting for DELAY_MS
    C_WRITE,    // response partly sent, waiting for EPOLLOUT
};

struct conn {
    struct tag tag;
    enum cstate state;
    bool close_after;     // send "Connection: close" and close after it
    bool head;            // HEAD request: no body
    enum route route;     // what the request asked for
    char *dyn;            // a response built for this request (freed after it)
    size_t len;           // bytes in buf
    size_t body_skip;     // request body bytes still to discard
    const char *out;      // response being written
    size_t out_len, out_off;
    int64_t due_ms;       // C_DELAYED: when to answer
    int64_t idle_since;   // when it last became idle (accepted, or an answer sent)
    struct conn *next;    // FIFO of delayed connections
    struct conn *prev_all, *next_all;  // list of all connections
    char buf[REQ_BUF];
};

// Four precomputed responses: {GET, HEAD} x {keep-alive, close}.
struct response {
    char *data;
    size_t len;
};

static struct {
    int ep;
    struct tag listen, udp, sig;
    struct tag more[MAX_MORE];  // further inherited listeners (K_LISTEN) and UDP sockets
    int nmore;
    int port;        // the TCP port, to open the listener again after SIGUSR2
    bool reuseport;
    bool inherited;  // LISTEN_FDS: the sockets came from outside
    char name[256];
    size_t name_len;
    struct response resp[2][2];  // [head][close]
    int64_t delay_ms, grace_ms;
    bool udp_echo;
    bool log_requests;                      // LOG_REQUESTS=1
    bool draining;
    bool sick;                              // SIGUSR1: --check fails
    bool unready;                           // SIGHUP: /ready answers 503
    int64_t warm_at;                        // now_ms() when WARMUP ends
    int64_t idle_close_ms;                  // IDLE_CLOSE_MS
    const char *file, *fetch;               // FILE, FETCH
    int64_t drain_deadline;
    size_t nconns;
    struct conn *all;                       // every open connection
    struct conn *dq_head, *dq_tail;         // delayed, in due order
} S;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long env_long(const char *key, long dflt)
{
    const char *v = getenv(key);
    if (!v || !*v)
        return dflt;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < 0) {
        fprintf(stderr, "httpd: ignoring invalid %s=%s\n", key, v);
        return dflt;
    }
    return n;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void build_responses(void)
{
    for (int head = 0; head < 2; head++) {
        for (int cl = 0; cl < 2; cl++) {
            char *p;
            // The body is the name plus a newline; HEAD carries the same
            // Content-Length without the body.
            int n = asprintf(&p,
                             "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/plain\r\n"
                             "Content-Length: %zu\r\n"
                             "X-Replica: %s\r\n"
                             "Connection: %s\r\n"
                             "\r\n"
                             "%s%s",
                             S.name_len + 1, S.name, cl ? "close" : "keep-alive",
                             head ? "" : S.name, head ? "" : "\n");
            if (n < 0)
                die("asprintf");
            S.resp[head][cl].data = p;
            S.resp[head][cl].len = (size_t)n;
        }
    }
}

// ---------------------------------------------------------------------------
// Request parsing

// Case-insensitive search for a token in a comma-separated header value
// ("Connection: keep-alive, Upgrade").
static bool has_token(const char *v, size_t vlen, const char *tok)
{
    size_t tl = strlen(tok);
    size_t i = 0;
    while (i < vlen) {
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < vlen && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return true;
    }
    return false;
}

// Find the end of the request head: the index just past the empty line, or 0
// if it is not complete yet.  Bare "\n" line ends are accepted too.
static size_t head_end(const char *b, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (b[i] != '\n')
            continue;
        if (i + 1 < len && b[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && b[i + 1] == '\r' && b[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

enum parse_result { P_INCOMPLETE, P_OK, P_BAD };

// Parse one request head in c->buf[0..end).  Sets head/close_after/body_skip.
static enum parse_result parse_head(struct conn *c, size_t end)
{
    const char *b = c->buf;
    const char *lim = b + end;
    const char *eol = memchr(b, '\n', end);
    if (!eol)
        return P_BAD;

    // Request line: METHOD SP TARGET SP HTTP/x.y
    const char *sp1 = memchr(b, ' ', (size_t)(eol - b));
    if (!sp1 || sp1 == b)
        return P_BAD;
    const char *ver = eol;
    while (ver > sp1 && ver[-1] != ' ')
        ver--;
    if (ver <= sp1 + 1)
        return P_BAD;
    size_t vlen = (size_t)(eol - ver);
    if (vlen && ver[vlen - 1] == '\r')
        vlen--;
    bool http11;
    if (vlen == 8 && memcmp(ver, "HTTP/1.1", 8) == 0)
        http11 = true;
    else if (vlen == 8 && memcmp(ver, "HTTP/1.0", 8) == 0)
        http11 = false;
    else
        return P_BAD;

    c->head = (size_t)(sp1 - b) == 4 && memcmp(b, "HEAD", 4) == 0;
    // The target, up to a query string: only /file and /fetch are routes.
    const char *tgt = sp1 + 1;
    size_t tlen = (size_t)(ver - 1 - tgt);
    const char *q = memchr(tgt, '?', tlen);
    if (q)
        tlen = (size_t)(q - tgt);
    c->route = R_NAME;
    if (S.file && tlen == 5 && memcmp(tgt, "/file", 5) == 0)
        c->route = R_FILE;
    else if (S.fetch && tlen == 6 && memcmp(tgt, "/fetch", 6) == 0)
        c->route = R_FETCH;
    else if (tlen == 6 && memcmp(tgt, "/ready", 6) == 0)
        c->route = R_READY;
    else if (tlen == 5 && memcmp(tgt, "/live", 5) == 0)
        c->route = R_LIVE;
    // HTTP/1.1 keeps the connection unless told otherwise, 1.0 closes it
    // unless the client asked for keep-alive.
    c->close_after = !http11;
    c->body_skip = 0;

    for (const char *line = eol + 1; line < lim;) {
        const char *nl = memchr(line, '\n', (size_t)(lim - line));
        if (!nl)
            break;
        const char *colon = memchr(line, ':', (size_t)(nl - line));
        if (colon) {
            size_t klen = (size_t)(colon - line);
            const char *v = colon + 1;
            size_t vl = (size_t)(nl - v);
            if (vl && v[vl - 1] == '\r')
                vl--;
            if (klen == 10 && strncasecmp(line, "Connection", 10) == 0) {
                if (has_token(v, vl, "close"))
                    c->close_after = true;
                else if (has_token(v, vl, "keep-alive"))
                    c->close_after = false;
            } else if (klen == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
                // A body is not expected from GET/HEAD, but discard one so
                // the next request on the connection parses.
                char tmp[32];
                while (vl && (*v == ' ' || *v == '\t'))
                    v++, vl--;
                if (vl == 0 || vl >= sizeof tmp)
                    return P_BAD;
                memcpy(tmp, v, vl);
                tmp[vl] = 0;
                char *e;
                unsigned long long n = strtoull(tmp, &e, 10);
                while (*e == ' ' || *e == '\t')
                    e++;
                if (*e || tmp[0] == '-')
                    return P_BAD;
                c->body_skip = (size_t)n;
            } else if (klen == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
                // Chunked bodies are out of scope: answer, then close, so
                // the body is never misread as a request.
                c->close_after = true;
            }
        }
        line = nl + 1;
    }
    return P_OK;
}

// ---------------------------------------------------------------------------
// Connections

static void ep_ctl(int op, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(S.ep, op, fd, &ev) < 0)
        die("epoll_ctl");
}

static void dq_remove(struct conn *c)
{
    // The queue is short-lived and answers leave from the head; a linear
    // unlink only happens when a delayed connection dies early.
    struct conn **pp = &S.dq_head, *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = c->next;
    if (S.dq_tail == c)
        S.dq_tail = prev;
    c->next = NULL;
}

static void conn_close(struct conn *c)
{
    if (c->state == C_DELAYED)
        dq_remove(c);
    free(c->dyn);
    close(c->tag.fd);  // also removes it from the epoll set
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        S.all = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    S.nconns--;
    free(c);
}

static void conn_on_readable(struct conn *c);

// Send what is left of the response.  Returns false if c was closed.
static bool conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->tag.fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (c->state != C_WRITE) {
                    c->state = C_WRITE;
                    ep_ctl(EPOLL_CTL_MOD, c->tag.fd, EPOLLOUT, c);
                }
                return true;
            }
            conn_close(c);
            return false;
        }
        c->out_off += (size_t)n;
    }
    if (c->close_after) {
        conn_close(c);
        return false;
    }
    if (c->state == C_WRITE)
        ep_ctl(EPOLL_CTL_MOD, c->tag.fd, EPOLLIN, c);
    c->state = C_READ;
    c->idle_since = now_ms();
    c->out = NULL;
    free(c->dyn);
    c->dyn = NULL;
    return true;
}

// ---------------------------------------------------------------------------
// /file and /fetch: answers built per request

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = malloc(FILE_MAX);
    size_t n = 0;
    while (buf && n < FILE_MAX) {
        ssize_t k = read(fd, buf + n, FILE_MAX - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    *len = n;
    return buf;
}

// A GET of http://S.fetch/ (blocking, 2 s per step): the upstream's body on
// a 200, NULL otherwise.
static char *fetch_upstream(size_t *len)
{
    char host[256];
    const char *colon = strrchr(S.fetch, ':');
    const char *port = colon ? colon + 1 : "80";
    size_t hl = colon ? (size_t)(colon - S.fetch) : strlen(S.fetch);
    if (hl == 0 || hl >= sizeof host)
        return NULL;
    memcpy(host, S.fetch, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return NULL;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 2};
    char *resp = NULL;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        char req[512];
        int rl = snprintf(req, sizeof req,
                          "GET / HTTP/1.0\r\nHost: %s\r\nUser-Agent: httpd-fetch\r\n\r\n", host);
        resp = malloc(FETCH_MAX + 1);
        size_t n = 0;
        if (resp && send(fd, req, (size_t)rl, MSG_NOSIGNAL) == rl) {
            for (ssize_t k; n < FETCH_MAX && (k = recv(fd, resp + n, FETCH_MAX - n, 0)) > 0;)
                n += (size_t)k;
        }
        char *body = NULL;
        if (resp) {
            resp[n] = 0;
            body = strstr(resp, "\r\n\r\n");
        }
        if (body && n >= 12 && memcmp(resp + 8, " 200", 4) == 0) {
            body += 4;
            *len = n - (size_t)(body - resp);
            memmove(resp, body, *len);
        } else {
            free(resp);
            resp = NULL;
        }
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return resp;
}

static void respond_built(struct conn *c, const char *status, const char *body, size_t blen)
{
    char *p;
    int n = asprintf(&p,
                     "HTTP/1.1 %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Replica: %s\r\n"
                     "Connection: %s\r\n"
                     "\r\n",
                     status, blen, S.name, c->close_after ? "close" : "keep-alive");
    if (n < 0)
        die("asprintf");
    size_t total = (size_t)n + (c->head ? 0 : blen);
    char *out = realloc(p, total ? total : 1);
    if (!out)
        die("realloc");
    if (!c->head)
        memcpy(out + n, body, blen);
    c->dyn = out;
    c->out = out;
    c->out_len = total;
}

static void conn_respond(struct conn *c)
{
    // While draining, every answer tells the client to go elsewhere.
    if (S.draining)
        c->close_after = true;
    const struct response *r = &S.resp[c->head][c->close_after];
    c->out = r->data;
    c->out_len = r->len;
    c->out_off = 0;
    if (c->route != R_LIVE && now_ms() < S.warm_at) {
        respond_built(c, "503 Service Unavailable", "warming up\n", 11);
    } else if (c->route == R_LIVE) {
        respond_built(c, "200 OK", "alive\n", 6);
    } else if (c->route == R_READY) {
        if (S.unready)
            respond_built(c, "503 Service Unavailable", "not ready (SIGHUP)\n", 19);
        else
            respond_built(c, "200 OK", "ready\n", 6);
    } else if (c->route != R_NAME) {
        size_t len = 0;
        char *body = c->route == R_FILE ? read_file(S.file, &len) : fetch_upstream(&len);
        if (body)
            respond_built(c, "200 OK", body, len);
        else if (c->route == R_FILE)
            respond_built(c, "404 Not Found", "cannot read FILE\n", 17);
        else
            respond_built(c, "502 Bad Gateway", "cannot fetch FETCH\n", 19);
        free(body);
    }
    if (conn_flush(c) && c->len > 0)
        conn_on_readable(c);  // bytes of a further request already read
}

static void conn_send_error(struct conn *c, const char *resp)
{
    c->close_after = true;
    c->out = resp;
    c->out_len = strlen(resp);
    c->out_off = 0;
    conn_flush(c);
}

// The request line as one line of stdout, written before the answer is sent
// (so a client that got its answer knows the line was written).  write(2),
// not stdio: stdout is a pipe in a container, and stdio would hold the line
// in its buffer.
static void log_request(const char *b, size_t end)
{
    const char *eol = memchr(b, '\n', end);
    size_t n = eol ? (size_t)(eol - b) : end;
    if (n && b[n - 1] == '\r')
        n--;
    char line[sizeof S.name + 1 + REQ_BUF + 1];
    memcpy(line, S.name, S.name_len);
    line[S.name_len] = ' ';
    char *p = line + S.name_len + 1;
    for (size_t i = 0; i < n; i++)
        p[i] = ((unsigned char)b[i] < 0x20 || b[i] == 0x7f) ? '?' : b[i];
    p[n] = '\n';
    size_t len = S.name_len + 1 + n + 1;
    for (size_t off = 0; off < len;) {
        ssize_t k = write(STDOUT_FILENO, line + off, len - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;  // nobody reads stdout: the server goes on regardless
        off += (size_t)k;
    }
}

// Consume buffered bytes: discard a request body, find a complete head,
// then answer (now or after DELAY_MS).
static void conn_process(struct conn *c)
{
    if (c->body_skip) {
        size_t k = c->body_skip < c->len ? c->body_skip : c->len;
        memmove(c->buf, c->buf + k, c->len - k);
        c->len -= k;
        c->body_skip -= k;
        if (c->body_skip)
            return;
    }
    if (c->len == 0)
        return;
    size_t end = head_end(c->buf, c->len);
    if (end == 0) {
        if (c->len == sizeof c->buf)
            conn_send_error(c, "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                               "Content-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if (parse_head(c, end) != P_OK) {
        conn_send_error(c, "HTTP/1.1 400 Bad Request\r\n"
                           "Content-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    if (S.log_requests)
        log_request(c->buf, end);
    memmove(c->buf, c->buf + end, c->len - end);
    c->len -= end;
    // Drop the body bytes already buffered; the rest is skipped as it comes.
    size_t k = c->body_skip < c->len ? c->body_skip : c->len;
    memmove(c->buf, c->buf + k, c->len - k);
    c->len -= k;
    c->body_skip -= k;

    if (S.delay_ms > 0) {
        // Every request waits the same DELAY_MS, so appending keeps the
        // queue sorted by due time: a FIFO instead of a timer heap.  We stop
        // reading the connection while it waits (no pipelining).
        c->state = C_DELAYED;
        c->due_ms = now_ms() + S.delay_ms;
        c->next = NULL;
        if (S.dq_tail)
            S.dq_tail->next = c;
        else
            S.dq_head = c;
        S.dq_tail = c;
        ep_ctl(EPOLL_CTL_MOD, c->tag.fd, 0, c);
        return;
    }
    conn_respond(c);
}

static void conn_on_readable(struct conn *c)
{
    if (c->state == C_READ && c->len < sizeof c->buf) {
        ssize_t n = recv(c->tag.fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c);
            return;
        }
        if (n > 0)
            c->len += (size_t)n;
    }
    conn_process(c);
}

static void run_delayed(void)
{
    int64_t now = now_ms();
    while (S.dq_head && S.dq_head->due_ms <= now) {
        struct conn *c = S.dq_head;
        S.dq_head = c->next;
        if (!S.dq_head)
            S.dq_tail = NULL;
        c->next = NULL;
        c->state = C_READ;
        ep_ctl(EPOLL_CTL_MOD, c->tag.fd, EPOLLIN, c);
        conn_respond(c);
    }
}

static void on_accept(int lfd)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return;
            // EMFILE/ENOMEM: leave the connection queued and try again on
            // the next wake-up rather than killing the server.
            perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
        c->tag.kind = K_CONN;
        c->tag.fd = fd;
        c->state = C_READ;
        c->idle_since = now_ms();
        c->next_all = S.all;
        if (S.all)
            S.all->prev_all = c;
        S.all = c;
        S.nconns++;
        ep_ctl(EPOLL_CTL_ADD, fd, EPOLLIN, c);
    }
}

static void on_udp(int ufd)
{
    // The reply is built in place: "<name> " then the payload received after it.
    char buf[sizeof S.name + 1 + 2048];
    memcpy(buf, S.name, S.name_len);
    buf[S.name_len] = ' ';
    char *payload = buf + S.name_len + 1;
    for (int i = 0; i < UDP_BATCH; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(ufd, payload, 2048, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0)
            return;
        if (S.udp_echo) {
            sendto(ufd, buf, S.name_len + 1 + (size_t)n, 0, (struct sockaddr *)&peer, plen);
            continue;
        }
        // The GET body (name + "\n") is the tail of the precomputed response.
        const struct response *r = &S.resp[0][0];
        sendto(ufd, r->data + r->len - (S.name_len + 1), S.name_len + 1, 0,
               (struct sockaddr *)&peer, plen);
    }
}

// SIGTERM/SIGINT: stop taking connections at once so the kernel hands the
// queued ones to the other listeners of the SO_REUSEPORT group (or migrates
// them with tcp_migrate_req), finish what is in flight, and close idle
// keep-alive connections.
// Idle: no partial request buffered, nothing delayed or being sent.
static bool conn_idle(const struct conn *c)
{
    return c->state == C_READ && c->len == 0 && c->body_skip == 0;
}

static int64_t close_idle(void);

static void start_drain(void)
{
    if (S.draining)
        return;
    S.draining = true;
    S.drain_deadline = now_ms() + S.grace_ms;
    if (S.listen.fd >= 0) {
        close(S.listen.fd);
        S.listen.fd = -1;
    }
    if (S.udp.fd >= 0) {
        close(S.udp.fd);
        S.udp.fd = -1;
    }
    for (int i = 0; i < S.nmore; i++) {
        close(S.more[i].fd);
        S.more[i].fd = -1;
    }
    S.nmore = 0;
    size_t busy = 0;
    for (struct conn *c = S.all; c; c = c->next_all)
        busy += !conn_idle(c);
    fprintf(stderr, "httpd: %s: draining, %zu request(s) in flight\n", S.name, busy);
    close_idle();
}

// Draining: close the keep-alive connections that have been idle for IDLE_CLOSE_MS.  With
// a grace, not at once: a client that just got an answer may have its next request on the
// way, and a connection closed under it is an error to a client that does not retry (wrk);
// every answer while draining says `Connection: close` instead, so a busy client moves on
// by itself, and only one that went quiet is closed.
static int64_t close_idle(void)
{
    int64_t now = now_ms(), next = -1;
    for (struct conn *c = S.all, *nxt; c; c = nxt) {
        nxt = c->next_all;
        if (!conn_idle(c))
            continue;
        int64_t due = c->idle_since + S.idle_close_ms;
        if (due <= now)
            conn_close(c);
        else if (next < 0 || due < next)
            next = due;
    }
    return next;
}

static void open_listener(void);

static void on_signal(bool *stop)
{
    struct signalfd_siginfo si;
    while (read(S.sig.fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            *stop = true;
        if (si.ssi_signo == SIGUSR1) {
            // The process name is what `--check` looks at: it runs as another
            // process, and its GET may reach another replica's listener.
            S.sick = !S.sick;
            prctl(PR_SET_NAME, S.sick ? SICK_NAME : "httpd", 0, 0, 0);
            fprintf(stderr, "httpd: %s: %s\n", S.name, S.sick ? "sick (SIGUSR1)" : "well again");
        } else if (si.ssi_signo == SIGHUP) {
            S.unready = !S.unready;
            fprintf(stderr, "httpd: %s: %s\n", S.name,
                    S.unready ? "unready (SIGHUP): /ready answers 503" : "ready again");
        } else if (si.ssi_signo == SIGUSR2 && S.listen.fd >= 0 && !S.draining) {
            close(S.listen.fd);  // epoll forgets a closed fd by itself
            S.listen.fd = -1;
            fprintf(stderr, "httpd: %s: listener closed (SIGUSR2)\n", S.name);
        } else if (si.ssi_signo == SIGUSR2 && S.listen.fd < 0 && !S.draining) {
            if (S.inherited) {
                fprintf(stderr, "httpd: %s: an inherited listener cannot be opened again\n",
                        S.name);
            } else {
                open_listener();
                fprintf(stderr, "httpd: %s: listener open again (SIGUSR2)\n", S.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Setup

// Where the sockets bind (BIND, V6ONLY): parsed once in main().
static struct {
    int family;
    struct in_addr v4;
    struct in6_addr v6;
    bool v6only;
    char text[INET6_ADDRSTRLEN];
} B = {.family = AF_INET, .text = "0.0.0.0"};

static bool parse_bind(const char *v)
{
    if (!v || !*v)
        return true;  // the default: 0.0.0.0
    if (strlen(v) >= sizeof B.text)
        return false;
    if (inet_pton(AF_INET, v, &B.v4) == 1)
        B.family = AF_INET;
    else if (inet_pton(AF_INET6, v, &B.v6) == 1)
        B.family = AF_INET6;
    else
        return false;
    snprintf(B.text, sizeof B.text, "%s", v);
    return true;
}

// The sockaddr for BIND (or its family's loopback) and `port`; returns its length.
static socklen_t bind_addr(struct sockaddr_storage *ss, int port, bool loopback)
{
    memset(ss, 0, sizeof *ss);
    if (B.family == AF_INET6) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons((uint16_t)port);
        sa->sin6_addr = loopback ? in6addr_loopback : B.v6;
        return sizeof *sa;
    }
    struct sockaddr_in *sa = (struct sockaddr_in *)ss;
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (loopback)
        sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else
        sa->sin_addr = B.v4;
    return sizeof *sa;
}

static int bind_socket(int type, int port, bool reuseport)
{
    int fd = socket(B.family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    // SO_REUSEADDR only helps a restart past TIME_WAIT; on Linux it never
    // lets two listeners share a port, so REUSEPORT=0 still conflicts.
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        die("setsockopt(SO_REUSEPORT)");
    if (B.family == AF_INET6) {
        // Explicit either way: the kernel's default (bindv6only) is a sysctl.
        int v6only = B.v6only;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
            die("setsockopt(IPV6_V6ONLY)");
    }
    struct sockaddr_storage sa;
    socklen_t salen = bind_addr(&sa, port, false);
    if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
        if (errno == EADDRINUSE) {
            // A fixed text that tests and operators can grep for.
            fprintf(stderr, "bind: Address in use (%s port %d)\n",
                    type == SOCK_STREAM ? "tcp" : "udp", port);
            exit(1);
        }
        die("bind");
    }
    return fd;
}

static void open_listener(void)
{
    S.listen.fd = bind_socket(SOCK_STREAM, S.port, S.reuseport);
    if (listen(S.listen.fd, BACKLOG) < 0)
        die("listen");
    ep_ctl(EPOLL_CTL_ADD, S.listen.fd, EPOLLIN, &S.listen);
}

// How many sockets systemd's socket-activation protocol hands this process
// (0: none, bind as usual).  As sd_listen_fds(1) does, the variables are
// removed, so that nothing this process starts takes them for its own.
static int listen_fds(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    const char *ignore = getenv("IGNORE_LISTEN_FDS");
    if (!pid || !fds || (ignore && strcmp(ignore, "1") == 0))
        return 0;
    char *end;
    errno = 0;
    long p = strtol(pid, &end, 10);
    if (errno || *end || p != (long)getpid())
        return 0;  // meant for another process (a parent that did not unset it)
    long n = strtol(fds, &end, 10);
    if (errno || *end || n < 1 || n > 64)
        return 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return (int)n;
}

// Serve the inherited sockets 3 .. 3+n-1 (see LISTEN_FDS above).
static void take_inherited(int n)
{
    for (int fd = 3; fd < 3 + n; fd++) {
        int type = 0, acc = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
            fprintf(stderr, "httpd: inherited fd %d is not a socket\n", fd);
            exit(1);
        }
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
            die("fcntl (inherited fd)");
        if (type == SOCK_STREAM) {
            len = sizeof acc;
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len);
            if (!acc && listen(fd, BACKLOG) < 0)  // bound, not yet listening
                die("listen (inherited socket)");
        }
        if (type == SOCK_STREAM && S.listen.fd < 0) {
            S.listen.fd = fd;
        } else if (type == SOCK_DGRAM && S.udp.fd < 0) {
            S.udp.fd = fd;
        } else if ((type == SOCK_STREAM || type == SOCK_DGRAM) && S.nmore < MAX_MORE) {
            S.more[S.nmore].kind = type == SOCK_STREAM ? K_LISTEN : K_UDP;
            S.more[S.nmore++].fd = fd;
        } else {
            fprintf(stderr, "httpd: closing inherited fd %d (not served)\n", fd);
            close(fd);
        }
    }
}

// "0.0.0.0 port 8080" for a socket's own address.
static void sock_text(int fd, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        } else if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        }
    }
    snprintf(out, size, "%s port %d", host, port);
}

static void raise_nofile(void)
{
    // Many concurrent connections need many fds; take the hard limit.
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

// A process of this container marked sick by SIGUSR1?
static bool any_sick(void)
{
    DIR *d = opendir("/proc");
    if (!d)
        return false;
    bool sick = false;
    for (struct dirent *e; !sick && (e = readdir(d));) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[64], comm[32] = "";
        snprintf(path, sizeof path, "/proc/%.20s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, comm, sizeof comm - 1);
        close(fd);
        sick = n > 0 && strncmp(comm, SICK_NAME "\n", sizeof SICK_NAME) == 0;
    }
    closedir(d);
    return sick;
}

static int check(int port)
{
    if (any_sick()) {
        fprintf(stderr, "check: marked sick by SIGUSR1\n");
        return 1;
    }
    int fd = socket(B.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 1;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_storage sa;
    socklen_t salen = bind_addr(&sa, port, true);
    if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
        perror("check: connect");
        return 1;
    }
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n"
                              "User-Agent: httpd-check\r\nConnection: close\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        perror("check: send");
        return 1;
    }
    char buf[64];
    size_t len = 0;
    while (len < 12) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    // "HTTP/1.1 200" (any minor version)
    if (len >= 12 && memcmp(buf, "HTTP/1.", 7) == 0 && memcmp(buf + 8, " 200", 4) == 0)
        return 0;
    fprintf(stderr, "check: no 200 from %s port %d\n",
            B.family == AF_INET6 ? "::1" : "127.0.0.1", port);
    return 1;
}

int main(int argc, char **argv)
{
    long port = env_long("PORT", 8080);
    if (port < 1 || port > 65535) {
        fprintf(stderr, "httpd: PORT must be 1..65535\n");
        return 1;
    }
    if (!parse_bind(getenv("BIND"))) {
        fprintf(stderr, "httpd: BIND must be an IPv4 or IPv6 address\n");
        return 1;
    }
    const char *v6only = getenv("V6ONLY");
    B.v6only = v6only && strcmp(v6only, "1") == 0;
    if (argc > 1 && strcmp(argv[1], "--check") == 0)
        return check((int)port);
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--check]   (configured by environment)\n", argv[0]);
        return 2;
    }

    const char *name = getenv("LBCTL_REPLICA");
    if (name && *name) {
        snprintf(S.name, sizeof S.name, "%s", name);
    } else if (gethostname(S.name, sizeof S.name - 1) < 0 || !S.name[0]) {
        snprintf(S.name, sizeof S.name, "unknown");
    }
    // The name goes into a header: keep it to one printable line.
    for (char *p = S.name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '_';
    S.name_len = strlen(S.name);
    S.delay_ms = env_long("DELAY_MS", 0);
    S.file = getenv("FILE");
    if (S.file && !*S.file)
        S.file = NULL;
    S.fetch = getenv("FETCH");
    if (S.fetch && !*S.fetch)
        S.fetch = NULL;
    S.grace_ms = env_long("GRACE_MS", 5000);
    S.warm_at = now_ms() + env_long("WARMUP", 0) * 1000;
    S.idle_close_ms = env_long("IDLE_CLOSE_MS", 0);
    const char *rp = getenv("REUSEPORT");
    bool reuseport = !(rp && strcmp(rp, "0") == 0);
    long udp_port = env_long("UDP_PORT", 0);
    const char *echo = getenv("UDP_ECHO");
    S.udp_echo = echo && strcmp(echo, "1") == 0;
    const char *lr = getenv("LOG_REQUESTS");
    S.log_requests = lr && strcmp(lr, "1") == 0;
    if (udp_port > 65535) {
        fprintf(stderr, "httpd: UDP_PORT must be 1..65535\n");
        return 1;
    }

    build_responses();
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);

    // Block the shutdown signals before anything else so none is lost; as
    // PID 1 in a container, unhandled signals would be ignored anyway.
    sigset_t mask;
    sigemptyset(&mask);
    const char *it = getenv("IGNORE_TERM");
    if (it && strcmp(it, "1") == 0)
        signal(SIGTERM, SIG_IGN);
    else
        sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask");

    S.ep = epoll_create1(EPOLL_CLOEXEC);
    if (S.ep < 0)
        die("epoll_create1");

    S.sig.kind = K_SIGNAL;
    S.sig.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (S.sig.fd < 0)
        die("signalfd");
    ep_ctl(EPOLL_CTL_ADD, S.sig.fd, EPOLLIN, &S.sig);

    S.listen.kind = K_LISTEN;
    S.listen.fd = -1;
    S.port = (int)port;
    S.reuseport = reuseport;
    S.udp.kind = K_UDP;
    S.udp.fd = -1;
    int inherited = listen_fds();
    if (inherited > 0) {
        S.inherited = true;
        take_inherited(inherited);
        bool own_tcp = S.listen.fd < 0;  // an inherited UDP socket alone: TCP is our own
        if (own_tcp)
            open_listener();
        else
            ep_ctl(EPOLL_CTL_ADD, S.listen.fd, EPOLLIN, &S.listen);
        if (S.udp.fd < 0 && udp_port > 0)  // the container's own, beside the inherited TCP
            S.udp.fd = bind_socket(SOCK_DGRAM, (int)udp_port, reuseport);
        if (S.udp.fd >= 0)
            ep_ctl(EPOLL_CTL_ADD, S.udp.fd, EPOLLIN, &S.udp);
        for (int i = 0; i < S.nmore; i++)
            ep_ctl(EPOLL_CTL_ADD, S.more[i].fd, EPOLLIN, &S.more[i]);
        char tcp[INET6_ADDRSTRLEN + 16], udp[INET6_ADDRSTRLEN + 16] = "";
        sock_text(S.listen.fd, tcp, sizeof tcp);
        if (S.udp.fd >= 0)
            sock_text(S.udp.fd, udp, sizeof udp);
        fprintf(stderr, "httpd: %s listening on inherited sockets (LISTEN_FDS=%d): %s/tcp%s%s%s%s"
                " and %d more (delay_ms=%lld%s)\n", S.name, inherited, tcp,
                own_tcp ? " (its own)" : "", S.udp.fd >= 0 ? ", " : "", udp,
                S.udp.fd >= 0 ? "/udp" : "", S.nmore, (long long)S.delay_ms,
                S.udp_echo ? " udp_echo=1" : "");
    } else {
        open_listener();
        if (udp_port > 0) {
            S.udp.fd = bind_socket(SOCK_DGRAM, (int)udp_port, reuseport);
            ep_ctl(EPOLL_CTL_ADD, S.udp.fd, EPOLLIN, &S.udp);
        }
    }

    const char *stack = B.family == AF_INET ? "" : B.v6only ? " (v6only)" : " (dual-stack)";
    if (!inherited) {
        fprintf(stderr,
                "httpd: %s listening on %s%s port %ld/tcp%s%s (reuseport=%d%s delay_ms=%lld)\n",
                S.name, B.text, stack, port, udp_port ? " and udp " : "",
                udp_port ? getenv("UDP_PORT") : "", reuseport, S.udp_echo ? " udp_echo=1" : "",
                (long long)S.delay_ms);
    }

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        if (S.draining && S.nconns == 0)
            break;
        int64_t now = now_ms();
        if (S.draining && now >= S.drain_deadline) {
            fprintf(stderr, "httpd: %s: grace period over, %zu connection(s) cut\n", S.name,
                    S.nconns);
            break;
        }
        // Sleep until the next delayed answer or the end of the grace period.
        int64_t wake = -1;
        if (S.dq_head)
            wake = S.dq_head->due_ms;
        if (S.draining && (wake < 0 || S.drain_deadline < wake))
            wake = S.drain_deadline;
        int64_t idle_due = S.draining ? close_idle() : -1;
        if (S.draining && S.nconns == 0)
            break;
        if (idle_due >= 0 && (wake < 0 || idle_due < wake))
            wake = idle_due;
        int timeout = wake < 0 ? -1 : (int)(wake > now ? wake - now : 0);

        int n = epoll_wait(S.ep, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        bool stop = false;
        for (int i = 0; i < n; i++) {
            struct tag *t = evs[i].data.ptr;
            switch (t->kind) {
            case K_LISTEN:
                on_accept(t->fd);
                break;
            case K_UDP:
                on_udp(t->fd);
                break;
            case K_SIGNAL:
                on_signal(&stop);
                break;
            case K_CONN: {
                struct conn *c = (struct conn *)t;
                if (c->state == C_DELAYED) {
                    // Not polled for input while waiting: only an error or
                    // a hang-up can wake it, and then nobody wants the answer.
                    if (evs[i].events & (EPOLLERR | EPOLLHUP))
                        conn_close(c);
                } else if (c->state == C_WRITE)
                    conn_flush(c);
                else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    conn_on_readable(c);
                break;
            }
            }
        }
        run_delayed();
        // Draining frees connections other than the one an event named, so
        // it runs only after this batch of events is done with.
        if (stop)
            start_drain();
    }
    fprintf(stderr, "httpd: %s: bye\n", S.name);
    return 0;
}
