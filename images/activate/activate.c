// SPDX-License-Identifier: Apache-2.0
//
// activate: an entrypoint shim that hands a container listeners made outside
// it, by the systemd socket-activation protocol (sd_listen_fds(3)).
//
//   activate PROGRAM [ARG...]
//
// It connects to a Unix socket that the listeners' creator serves (bind-
// mounted into the container), receives the listeners there over SCM_RIGHTS,
// puts them on fds 3, 4, ... and execs PROGRAM with
//   LISTEN_FDS=<count>  LISTEN_PID=<its own pid: exec keeps it>
//   LISTEN_FDNAMES=<the names the creator sent, ':'-separated>
// so the app serves sockets of another network namespace (the host's) while
// the container keeps a namespace of its own for everything else.
//
// Why a shim: Docker's API (and Podman's Docker-compatible one) cannot pass
// file descriptors into a container; a process inside it can receive them.
// Built static, so it runs in any image (bind-mounted, as the entrypoint in
// front of the image's own).
//
// Environment:
//   LBCTL_ACTIVATION_SOCKET   the Unix socket (default /run/lbctl/activation.sock)
//   LBCTL_ACTIVATION_TIMEOUT  seconds to wait for it to answer (default 30):
//                             the creator may start after the container
//
// Protocol (one connection, one message from the creator): the payload is the
// names ("tcp4" or "tcp4:tcp6"), the ancillary data 1..MAX_FDS descriptors
// in the same order.  A message without descriptors is a refusal: its payload
// says why, and the shim prints it before it exits 111 (the container's log
// then says what the creator would not do).  The creator keeps no copy after sending, so the app is
// each listener's only owner: when the app closes it or dies, the socket is
// gone and leaves the creator's reuseport group and socket map at once.
//
// Exit status when nothing was exec'd: 111 (no listeners received), 127
// (PROGRAM cannot be run), 2 (usage).

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 16
#define FIRST_FD 3  // SD_LISTEN_FDS_START
#define PARK_FD 64  // received fds are moved above the target range first

static void fail(int code, const char *what)
{
    fprintf(stderr, "activate: %s\n", what);
    exit(code);
}

static int connect_with_retry(const char *path, long timeout_s)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        fail(111, "LBCTL_ACTIVATION_SOCKET is too long");
    strcpy(sa.sun_path, path);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            fail(111, "socket(AF_UNIX) failed");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        int err = errno;
        close(fd);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= timeout_s) {
            fprintf(stderr, "activate: nothing serves listeners on %s (%s) after %ld s\n",
                    path, strerror(err), timeout_s);
            exit(111);
        }
        usleep(100 * 1000);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARG...]\n", argv[0]);
        return 2;
    }
    const char *path = getenv("LBCTL_ACTIVATION_SOCKET");
    if (!path || !*path)
        path = "/run/lbctl/activation.sock";
    const char *t = getenv("LBCTL_ACTIVATION_TIMEOUT");
    long timeout_s = t && *t ? strtol(t, NULL, 10) : 30;

    int us = connect_with_retry(path, timeout_s);
    char names[512];
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    } ctl;
    struct iovec iov = {.iov_base = names, .iov_len = sizeof names - 1};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf,
    };
    ssize_t n;
    do
        n = recvmsg(us, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        fail(111, n == 0 ? "the creator closed the connection without listeners"
                         : "recvmsg failed");
    names[n] = '\0';
    if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))
        fail(111, "the creator sent more than this shim takes");
    int fds[MAX_FDS], count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && count < MAX_FDS; i++)
            memcpy(&fds[count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    close(us);
    if (count == 0) {
        if (names[0])  // the creator's reason
            fail(111, names);
        fail(111, "the creator sent no listeners");
    }

    // The received numbers may already lie in 3..3+count-1: park every one
    // above that range, then put them in place (dup2 clears close-on-exec,
    // which the app must not have on them).
    for (int i = 0; i < count; i++) {
        int parked = fcntl(fds[i], F_DUPFD_CLOEXEC, PARK_FD);
        if (parked < 0)
            fail(111, "fcntl(F_DUPFD) failed");
        close(fds[i]);
        fds[i] = parked;
    }
    for (int i = 0; i < count; i++) {
        if (dup2(fds[i], FIRST_FD + i) < 0)
            fail(111, "dup2 failed");
        close(fds[i]);
    }

    char buf[32];
    snprintf(buf, sizeof buf, "%d", count);
    setenv("LISTEN_FDS", buf, 1);
    snprintf(buf, sizeof buf, "%d", (int)getpid());
    setenv("LISTEN_PID", buf, 1);
    // Names only if they are as many as the fds (sd_listen_fds_with_names).
    int colons = 0;
    for (char *p = names; *p; p++)
        colons += *p == ':';
    if (names[0] && colons == count - 1)
        setenv("LISTEN_FDNAMES", names, 1);
    else
        unsetenv("LISTEN_FDNAMES");
    unsetenv("LBCTL_ACTIVATION_SOCKET");
    unsetenv("LBCTL_ACTIVATION_TIMEOUT");

    execvp(argv[1], argv + 1);
    fprintf(stderr, "activate: cannot run %s: %s\n", argv[1], strerror(errno));
    return 127;
}
