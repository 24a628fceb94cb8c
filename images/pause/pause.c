// SPDX-License-Identifier: Apache-2.0
//
// pause: the sandbox process of an lbctl app, like Kubernetes' pause.
//
// It holds a network namespace open for replicas that join it with
// `--network container:<sandbox>`, so the namespace (and the port the
// replicas share) outlives any single replica.  It does nothing but wait:
// exit 0 on SIGTERM/SIGINT, and as PID 1 of its container reap any zombie
// that ends up parented to it.

#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
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

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("lbctl pause 1");
        return 0;
    }
    // PID 1 ignores signals it has no handler for, so both must be caught
    // explicitly or `docker stop` would wait for its timeout and SIGKILL.
    handle(SIGTERM, on_term);
    handle(SIGINT, on_term);
    handle(SIGCHLD, on_child);
    for (;;)
        pause();
}
