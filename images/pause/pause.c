// SPDX-License-Identifier: Apache-2.0
//
// pause: the sandbox process of an lbctl app, like Kubernetes' pause.
//
// It holds a network namespace open for replicas that join it with
// `--network container:<sandbox>`, so the namespace (and the port the
// replicas share) outlives any single replica.  It does nothing but wait:
// exit 0 on SIGTERM/SIGINT, and as PID 1 of its container reap any zombie
// that ends up parented to it.
//
// `pause hold DEADLINE ADDR:PORT[/v6only]...` is an app's traffic hold
// (lbctl pause, ebpf mode): in the replicas' namespace and as their user, it
// listens with SO_REUSEPORT on every address they listen on (IPv6 in
// brackets; /v6only for an IPv6-only socket), so each listener joins the
// replicas' reuseport group, where lbctl's program steers new connections to
// it while the app is paused.  It never accepts: the kernel completes the
// handshakes and keeps the connections, with what the clients sent, in its
// accept queue (as long as net.core.somaxconn allows), and when it exits
// they migrate to the replicas.  It exits on SIGTERM (lbctl resumes the app
// first) or by itself at DEADLINE (epoch seconds), so that a hold ends even
// when no daemon runs.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_term(int sig)
{
    (void)sig;
    _exit(0);  // async-signal-safe; there is nothing to clean up
}

static void on_child(int sig)
{
    (void)sig;
    // Reap every exited child; one SIGCHLD may stand for several.
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(sig, &sa, NULL) < 0) {
        perror("sigaction");
        _exit(1);
    }
}

// One listener of the hold; exits 1 with the reason on any error (lbctl sees
// the container exit and the line in its log).
static void hold_listen(const char *spec)
{
    char addr[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof addr) {
        fprintf(stderr, "pause hold: %s: use ADDR:PORT, [ADDR6]:PORT or [ADDR6]:PORT/v6only\n",
                spec);
        exit(2);
    }
    memcpy(addr, spec, (size_t)(colon - spec));
    addr[colon - spec] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    int v6only = strcmp(end, "/v6only") == 0;
    if (port < 1 || port > 65535 || (*end && !v6only)) {
        fprintf(stderr, "pause hold: %s: bad port\n", spec);
        exit(2);
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    int family;
    size_t n = strlen(addr);
    if (addr[0] == '[' && n > 2 && addr[n - 1] == ']') {
        addr[n - 1] = 0;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        family = a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, addr + 1, &a->sin6_addr) != 1)
            family = -1;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        family = a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, addr, &a->sin_addr) != 1)
            family = -1;
        len = sizeof *a;
    }
    if (family < 0) {
        fprintf(stderr, "pause hold: %s: bad address\n", spec);
        exit(2);
    }
    int fd = socket(family, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        (family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0) ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 ||
        // The kernel caps the backlog at net.core.somaxconn (4096 by default).
        listen(fd, 65535) < 0) {
        fprintf(stderr, "pause hold: %s: %s\n", spec, strerror(errno));
        exit(1);
    }
    // Never accepted, never closed: the process's exit closes it.
}

static int hold(int argc, char **argv)
{
    char *end;
    long long deadline = strtoll(argc > 2 ? argv[2] : "", &end, 10);
    if (argc < 4 || *end || deadline <= 0) {
        fprintf(stderr, "usage: pause hold DEADLINE ADDR:PORT[/v6only]...\n");
        return 2;
    }
    for (int i = 3; i < argc; i++)
        hold_listen(argv[i]);
    printf("holding new connections until %lld\n", deadline);
    fflush(stdout);
    for (;;) {
        long long now = (long long)time(NULL);
        if (now >= deadline)
            return 0;
        sleep((unsigned)(deadline - now > 3600 ? 3600 : deadline - now));
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("lbctl pause 2");
        return 0;
    }
    // PID 1 ignores signals it has no handler for, so both must be caught
    // explicitly or `docker stop` would wait for its timeout and SIGKILL.
    handle(SIGTERM, on_term);
    handle(SIGINT, on_term);
    handle(SIGCHLD, on_child);
    if (argc > 1 && strcmp(argv[1], "hold") == 0)
        return hold(argc, argv);
    for (;;)
        pause();
}
