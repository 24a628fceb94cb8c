// SPDX-License-Identifier: Apache-2.0
//
// client: the test suite's client inside containers (lbctl/client image).
//
// The demo image holds only /httpd and no shell, so tests that need a client
// in a container (another container on the engine's bridge, or a replica's own
// network namespace joined with --network container:<id>) run this one.
//
//   client tcp|udp HOST PORT [COUNT] [TIMEOUT_MS]
//
// Sends COUNT (default 1) requests, each on a new socket (so a load balancer
// sees COUNT new connections or UDP flows): TCP a `GET /` with
// "Connection: close", UDP one datagram. Prints one line per request: the
// first line of the HTTP body, or of the UDP reply, or "ERR <what>".  HOST
// is a numeric IPv4 or IPv6 address.  Exits 0 when every request got an
// answer, 1 otherwise, 2 on bad usage.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define BUF 4096

static void first_line(const char *text, size_t len)
{
    size_t n = 0;
    while (n < len && text[n] != '\n' && text[n] != '\r')
        n++;
    printf("%.*s\n", (int)n, text);
}

// Where to send: a numeric address (no resolver: the binary is static, and
// glibc's getaddrinfo would want NSS libraries at run time).
struct target {
    int type;  // SOCK_STREAM or SOCK_DGRAM
    struct sockaddr_storage addr;
    socklen_t len;
};

static bool parse_target(struct target *t, const char *host, long port)
{
    memset(&t->addr, 0, sizeof t->addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&t->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        t->len = sizeof *a4;
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        t->len = sizeof *a6;
        return true;
    }
    return false;
}

static int open_socket(const struct target *t, int timeout_ms)
{
    int fd = socket(t->addr.ss_family, t->type, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static bool tcp_once(const struct target *t, int timeout_ms)
{
    int fd = open_socket(t, timeout_ms);
    if (fd < 0) {
        printf("ERR socket: %s\n", strerror(errno));
        return false;
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, t->len) < 0) {
        // SO_SNDTIMEO ends a connect that got no answer with EINPROGRESS.
        printf("ERR connect: %s\n", errno == EINPROGRESS ? "timed out" : strerror(errno));
        close(fd);
        return false;
    }
    static const char req[] = "GET / HTTP/1.1\r\nHost: lbctl\r\nUser-Agent: lbctl-client\r\n"
                              "Connection: close\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        printf("ERR send: %s\n", strerror(errno));
        close(fd);
        return false;
    }
    char buf[BUF];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n < 0) {
            printf("ERR recv: %s\n", strerror(errno));
            close(fd);
            return false;
        }
        if (n == 0 || (len += (size_t)n) == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[len] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || memcmp(buf + 8, " 200", 4) != 0 || !body) {
        printf("ERR bad answer: %.40s\n", buf);
        return false;
    }
    body += 4;
    first_line(body, len - (size_t)(body - buf));
    return true;
}

static bool udp_once(const struct target *t, int timeout_ms, int i)
{
    int fd = open_socket(t, timeout_ms);
    if (fd < 0) {
        printf("ERR socket: %s\n", strerror(errno));
        return false;
    }
    char msg[64];
    int mlen = snprintf(msg, sizeof msg, "lbctl-client %d\n", i);
    if (sendto(fd, msg, (size_t)mlen, 0, (const struct sockaddr *)&t->addr, t->len) != mlen) {
        printf("ERR sendto: %s\n", strerror(errno));
        close(fd);
        return false;
    }
    char buf[BUF];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    close(fd);
    if (n <= 0) {
        printf("ERR recv: %s\n", n < 0 ? strerror(errno) : "empty datagram");
        return false;
    }
    first_line(buf, (size_t)n);
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6 || (strcmp(argv[1], "tcp") != 0 && strcmp(argv[1], "udp") != 0)) {
        fprintf(stderr, "usage: %s tcp|udp HOST PORT [COUNT] [TIMEOUT_MS]\n", argv[0]);
        return 2;
    }
    bool tcp = strcmp(argv[1], "tcp") == 0;
    long count = argc > 4 ? strtol(argv[4], NULL, 10) : 1;
    long timeout_ms = argc > 5 ? strtol(argv[5], NULL, 10) : 2000;
    if (count < 1 || count > 100000 || timeout_ms < 1 || timeout_ms > 600000) {
        fprintf(stderr, "client: COUNT must be 1..100000 and TIMEOUT_MS 1..600000\n");
        return 2;
    }
    long port = strtol(argv[3], NULL, 10);
    struct target t = {.type = tcp ? SOCK_STREAM : SOCK_DGRAM};
    if (port < 1 || port > 65535 || !parse_target(&t, argv[2], port)) {
        fprintf(stderr, "client: HOST must be a numeric IPv4 or IPv6 address, PORT 1..65535\n");
        return 2;
    }
    long failed = 0;
    for (long i = 0; i < count; i++) {
        bool ok = tcp ? tcp_once(&t, (int)timeout_ms) : udp_once(&t, (int)timeout_ms, (int)i);
        failed += !ok;
        fflush(stdout);
    }
    return failed ? 1 : 0;
}
