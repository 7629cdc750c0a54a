/* A minimal single-threaded epoll WebSocket echo server: the neutral target of bench/run_bench.py.
 *
 * It answers any GET upgrade (no auth, no path check), echoes every data frame back unmasked with
 * the same opcode, answers ping with pong and close with close. It is deliberately cheap so that
 * the generator, not the target, is what a benchmark measures.
 *
 * stdout (line-buffered), for the bench script:
 *   up <total_upgrades> <CLOCK_MONOTONIC ns>     at the 1st upgrade and every 100th after it
 *   st <CLOCK_MONOTONIC ns> <open> <upgrades> <frames_echoed>   every 100 ms when something changed
 *
 * Build: cc -O2 -o echo_server echo_server.c      Run: ./echo_server PORT [BIND_ADDR]
 * Loopback only by default (127.0.0.1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- SHA-1 (RFC 3174), only for Sec-WebSocket-Accept ---- */
static uint32_t rol(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t buf[256];
    if (total > sizeof buf) { memset(out, 0, 20); return; }
    memset(buf, 0, total);
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[off + 4 * i] << 24 | (uint32_t)buf[off + 4 * i + 1] << 16 |
                   (uint32_t)buf[off + 4 * i + 2] << 8 | buf[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    for (int i = 0; i < 5; i++) {
        out[4 * i] = h[i] >> 24; out[4 * i + 1] = h[i] >> 16; out[4 * i + 2] = h[i] >> 8; out[4 * i + 3] = h[i];
    }
}

static void base64(const uint8_t *in, size_t len, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- connections ---- */
typedef struct {
    uint8_t *in; size_t in_len, in_cap;    /* unparsed input */
    uint8_t *out; size_t out_len, out_cap; /* output the kernel did not take yet */
    int upgraded, open, closing;
} conn_t;

static conn_t *conns;
static int max_fds, ep;
static long long n_open, n_upgrades, n_frames;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void drop(int fd) {
    conn_t *c = &conns[fd];
    free(c->in); free(c->out);
    memset(c, 0, sizeof *c);
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    n_open--;
}

static int reserve(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    uint8_t *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p; *cap = n;
    return 0;
}

/* write what the kernel takes now, keep the rest in c->out and watch EPOLLOUT */
static int send_bytes(int fd, const uint8_t *data, size_t len) {
    conn_t *c = &conns[fd];
    size_t done = 0;
    if (c->out_len == 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno != EAGAIN) return -1;
        done = w > 0 ? (size_t)w : 0;
    }
    if (done < len) {
        int was_empty = c->out_len == 0;
        if (reserve(&c->out, &c->out_cap, c->out_len + len - done)) return -1;
        memcpy(c->out + c->out_len, data + done, len - done);
        c->out_len += len - done;
        if (was_empty) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
    }
    return 0;
}

static int flush_out(int fd) {
    conn_t *c = &conns[fd];
    while (c->out_len) {
        ssize_t w = write(fd, c->out, c->out_len);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        memmove(c->out, c->out + w, c->out_len - w);
        c->out_len -= w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return c->closing ? -1 : 0;
}

static int handshake(int fd) {
    conn_t *c = &conns[fd];
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return c->in_len > 16384 ? -1 : 0;
    size_t head = end + 4 - c->in;
    char *key = NULL; size_t key_len = 0;
    for (char *p = (char *)c->in; p < (char *)end; ) {
        char *eol = memmem(p, (char *)end + 2 - p, "\r\n", 2);
        if (!eol) break;
        if (eol - p > 18 && strncasecmp(p, "Sec-WebSocket-Key:", 18) == 0) {
            key = p + 18;
            while (*key == ' ') key++;
            key_len = eol - key;
            while (key_len && key[key_len - 1] == ' ') key_len--;
        }
        p = eol + 2;
    }
    if (!key || key_len > 64) {
        const char *bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        (void)!write(fd, bad, strlen(bad));
        return -1;
    }
    char cat[128];
    memcpy(cat, key, key_len);
    memcpy(cat + key_len, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    uint8_t digest[20];
    sha1((uint8_t *)cat, key_len + 36, digest);
    char accept[32];
    base64(digest, 20, accept);
    char resp[256];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    if (send_bytes(fd, (uint8_t *)resp, n)) return -1;
    memmove(c->in, c->in + head, c->in_len - head);
    c->in_len -= head;
    c->upgraded = 1;
    n_upgrades++;
    if (n_upgrades == 1 || n_upgrades % 100 == 0) printf("up %lld %lld\n", n_upgrades, now_ns());
    return 0;
}

/* parse complete frames in c->in, echo data frames; -1 = drop the connection */
static int frames(int fd) {
    conn_t *c = &conns[fd];
    size_t pos = 0;
    static uint8_t hdr[14];
    while (c->in_len - pos >= 2) {
        uint8_t *f = c->in + pos;
        int opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        size_t off = 2;
        if (plen == 126) { if (c->in_len - pos < 4) break; plen = (uint64_t)f[2] << 8 | f[3]; off = 4; }
        else if (plen == 127) {
            if (c->in_len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | f[2 + i];
            off = 10;
        }
        if (plen > (64u << 20)) return -1;
        uint8_t mask[4] = {0};
        if (masked) { if (c->in_len - pos < off + 4) break; memcpy(mask, f + off, 4); off += 4; }
        if (c->in_len - pos < off + plen) break;
        uint8_t *payload = f + off;
        if (masked) for (uint64_t i = 0; i < plen; i++) payload[i] ^= mask[i & 3];
        int reply = opcode == 0x9 ? 0xA : opcode;  /* ping -> pong, data and close echoed as they are */
        if (opcode != 0xA) {
            size_t h = 0;
            hdr[h++] = 0x80 | reply;
            if (plen < 126) hdr[h++] = (uint8_t)plen;
            else if (plen < 65536) { hdr[h++] = 126; hdr[h++] = plen >> 8; hdr[h++] = plen & 0xff; }
            else { hdr[h++] = 127; for (int i = 7; i >= 0; i--) hdr[h++] = (plen >> (8 * i)) & 0xff; }
            /* header and payload in one write: copy the header in front of the payload in place */
            if (off >= h) {
                memcpy(payload - h, hdr, h);
                if (send_bytes(fd, payload - h, h + plen)) return -1;
            } else {
                if (send_bytes(fd, hdr, h) || send_bytes(fd, payload, plen)) return -1;
            }
            if (opcode <= 0x2) n_frames++;
        }
        pos += off + plen;
        if (opcode == 0x8) { c->closing = 1; return c->out_len ? 0 : -1; }
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return 0;
}

static int on_readable(int fd) {
    conn_t *c = &conns[fd];
    for (;;) {
        if (reserve(&c->in, &c->in_cap, c->in_len + 4096)) return -1;
        size_t want = c->in_cap - c->in_len;
        ssize_t r = read(fd, c->in + c->in_len, want);
        if (r == 0) return -1;
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        c->in_len += r;
        if (!c->upgraded && handshake(fd)) return -1;
        if (c->upgraded && frames(fd)) return -1;
        if (c->closing) return c->out_len ? 0 : -1;
        if ((size_t)r < want) {
            /* idle connections keep no input buffer */
            if (c->in_len == 0 && c->in_cap > 4096) { free(c->in); c->in = NULL; c->in_cap = 0; }
            return 0;
        }
    }
}

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [BIND_ADDR]\n", argv[0]); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    max_fds = (int)sysconf(_SC_OPEN_MAX);
    conns = calloc(max_fds, sizeof *conns);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 65535)) { perror("listen"); return 1; }
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[512];
    long long last_report = 0, last_frames = -1, last_up = -1, last_open = -1;
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (cfd < 0) break;
                    if (cfd >= max_fds) { close(cfd); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    memset(&conns[cfd], 0, sizeof conns[cfd]);
                    conns[cfd].open = 1;
                    n_open++;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            if (!conns[fd].open) continue;
            int bad = 0;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) bad = 1;
            if (!bad && (evs[i].events & EPOLLOUT)) bad = flush_out(fd) < 0;
            if (!bad && (evs[i].events & EPOLLIN)) bad = on_readable(fd) < 0;
            if (bad) drop(fd);
        }
        long long t = now_ns();
        if (t - last_report >= 100000000LL) {
            if (n_frames != last_frames || n_upgrades != last_up || n_open != last_open)
                printf("st %lld %lld %lld %lld\n", t, n_open, n_upgrades, n_frames);
            last_report = t; last_frames = n_frames; last_up = n_upgrades; last_open = n_open;
        }
    }
    printf("st %lld %lld %lld %lld\n", now_ns(), n_open, n_upgrades, n_frames);
    return 0;
}
