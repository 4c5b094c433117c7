/*
 * vsock-e2e: the guest side of the vsock end-to-end test (busybox has no AF_VSOCK).
 * Built static on the host by tests/e2e/vsock.sh and packed into the guest.
 *
 *   vsock-e2e client-pattern PORT BYTES SEED   connect to CID 2:PORT, send BYTES of
 *       pattern SEED, shut down writing, read the reply to its end
 *   vsock-e2e server-pattern PORT BYTES SEED   accept one connection on PORT, read to the
 *       end, answer BYTES of pattern SEED
 *   vsock-e2e client-echo PORT N BYTES         N connections at once (one process each),
 *       each sends BYTES of pattern 100+k and checks the echo
 *   vsock-e2e server-echo PORT N               accept N connections, each served by its
 *       own process: read to the end, echo it all back
 *
 * Output: "E2E-RESULT key=value" lines. CRC-32 as zlib computes it. Pattern byte i of
 * seed s: base[(i + s * 4099) % 65521] ^ (s & 0xff), base[j] = (j*131 + (j>>8)*7 + 1) & 0xff.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define P 65521u
#define CHUNK 65536

static uint32_t crc_table[256];
static unsigned char base[P];

static void init_tables(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
    for (uint32_t j = 0; j < P; j++)
        base[j] = (unsigned char)((j * 131u + (j >> 8) * 7u + 1u) & 0xff);
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void fill(unsigned char *dst, uint64_t off, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = base[(off + i + (uint64_t)seed * 4099u) % P] ^ (seed & 0xff);
}

static void r(const char *key, const char *fmt, unsigned long long v)
{
    printf("E2E-RESULT %s=", key);
    printf(fmt, v);
    printf("\n");
    fflush(stdout);
}

static int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_pattern(int fd, uint64_t bytes, uint32_t seed, uint32_t *crc)
{
    static unsigned char buf[CHUNK];
    uint64_t off = 0;
    *crc = 0;
    while (off < bytes) {
        size_t n = bytes - off < CHUNK ? (size_t)(bytes - off) : CHUNK;
        fill(buf, off, n, seed);
        *crc = crc32_update(*crc, buf, n);
        if (send_all(fd, buf, n) < 0)
            return -1;
        off += n;
    }
    return 0;
}

/* Reads to the end; keeps the bytes in *keep when asked. Returns the count or -1. */
static long long read_to_end(int fd, uint32_t *crc, unsigned char **keep)
{
    unsigned char buf[CHUNK];
    long long total = 0;
    size_t cap = 0;
    *crc = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return total;
        *crc = crc32_update(*crc, buf, (size_t)n);
        if (keep) {
            if ((size_t)total + (size_t)n > cap) {
                cap = cap ? cap * 2 : 1 << 20;
                while (cap < (size_t)total + (size_t)n)
                    cap *= 2;
                *keep = realloc(*keep, cap);
                if (!*keep)
                    return -1;
            }
            memcpy(*keep + total, buf, (size_t)n);
        }
        total += n;
    }
}

static int vconnect(unsigned port)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket(AF_VSOCK)");
        return -1;
    }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = port };
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("connect");
        close(fd);
        return -1;
    }
    return fd;
}

static int vlisten(unsigned port)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket(AF_VSOCK)");
        return -1;
    }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0) {
        perror("bind/listen");
        close(fd);
        return -1;
    }
    printf("E2E-VSOCK-LISTENING %u\n", port);
    fflush(stdout);
    return fd;
}

static int client_pattern(unsigned port, uint64_t bytes, uint32_t seed)
{
    uint32_t sent_crc, got_crc;
    int fd = vconnect(port);
    r("vsock_g2h_connect", "%llu", fd >= 0);
    if (fd < 0)
        return 1;
    int st = send_pattern(fd, bytes, seed, &sent_crc);
    r("vsock_g2h_send_status", "%llu", st == 0);
    r("vsock_g2h_sent_crc", "%08llx", sent_crc);
    shutdown(fd, SHUT_WR);
    long long n = read_to_end(fd, &got_crc, NULL);
    r("vsock_g2h_reply_bytes", "%lld", (unsigned long long)n);
    r("vsock_g2h_reply_crc", "%08llx", got_crc);
    close(fd);
    return st == 0 && n >= 0 ? 0 : 1;
}

static int server_pattern(unsigned port, uint64_t bytes, uint32_t seed)
{
    uint32_t got_crc, sent_crc;
    int l = vlisten(port);
    if (l < 0)
        return 1;
    int fd = accept(l, NULL, NULL);
    r("vsock_h2g_accept", "%llu", fd >= 0);
    if (fd < 0)
        return 1;
    long long n = read_to_end(fd, &got_crc, NULL);
    r("vsock_h2g_recv_bytes", "%lld", (unsigned long long)n);
    r("vsock_h2g_recv_crc", "%08llx", got_crc);
    int st = send_pattern(fd, bytes, seed, &sent_crc);
    r("vsock_h2g_send_status", "%llu", st == 0);
    r("vsock_h2g_sent_crc", "%08llx", sent_crc);
    close(fd);
    close(l);
    return n >= 0 && st == 0 ? 0 : 1;
}

static int client_echo(unsigned port, int nconn, uint64_t bytes)
{
    for (int k = 0; k < nconn; k++) {
        pid_t p = fork();
        if (p == 0) {
            uint32_t sent, got;
            int fd = vconnect(port);
            if (fd < 0 || send_pattern(fd, bytes, 100 + k, &sent) < 0)
                _exit(1);
            shutdown(fd, SHUT_WR);
            long long n = read_to_end(fd, &got, NULL);
            _exit(n == (long long)bytes && got == sent ? 0 : 2);
        }
    }
    int ok = 0, st;
    while (wait(&st) > 0)
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    r("vsock_g2h_conc_ok", "%llu", ok);
    return 0;
}

static int server_echo(unsigned port, int nconn)
{
    int l = vlisten(port);
    if (l < 0)
        return 1;
    for (int k = 0; k < nconn; k++) {
        int fd = accept(l, NULL, NULL);
        if (fd < 0)
            break;
        pid_t p = fork();
        if (p == 0) {
            uint32_t crc;
            unsigned char *keep = NULL;
            long long n = read_to_end(fd, &crc, &keep);
            _exit(n >= 0 && send_all(fd, keep, (size_t)n) == 0 ? 0 : 1);
        }
        close(fd);
    }
    int ok = 0, st;
    while (wait(&st) > 0)
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    r("vsock_h2g_conc_served", "%llu", ok);
    close(l);
    return 0;
}

int main(int argc, char **argv)
{
    init_tables();
    if (argc == 5 && !strcmp(argv[1], "client-pattern"))
        return client_pattern(atoi(argv[2]), strtoull(argv[3], 0, 0), atoi(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "server-pattern"))
        return server_pattern(atoi(argv[2]), strtoull(argv[3], 0, 0), atoi(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "client-echo"))
        return client_echo(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], 0, 0));
    if (argc == 4 && !strcmp(argv[1], "server-echo"))
        return server_echo(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: see the top of vsock-guest.c\n");
    return 2;
}
