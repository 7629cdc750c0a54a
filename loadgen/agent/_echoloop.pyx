# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The closed-loop echo hot path in C: per reply, time it, count it, send the next echo.

Optional: worker.py uses it when it is built against the installed picows (it cimports picows' C
classes, so the versions must match) and falls back to the same logic in Python otherwise. It
does what worker.LoopConn does, with the same frames (frames.echo_frame) and the same histogram
layout (histogram.Recorder), without a Python call per message: the Python version spends ~2.4 us
of a ~10 us round trip in the interpreter (bench/README.md).
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef extern from *:
    """
    #ifndef PICOWS_BUILD_VERSION
    #define PICOWS_BUILD_VERSION "unknown"
    #endif
    """
    const char* PICOWS_BUILD_VERSION
    int __builtin_clzll(unsigned long long)

# picows' version this module was compiled against; worker.py refuses the module on any other.
BUILT_WITH_PICOWS = PICOWS_BUILD_VERSION.decode()

# histogram.Recorder's layout (HdrHistogram's, for 1 us .. 1 day at 3 significant digits)
cdef enum:
    SUB_HALF_MAG = 10
    COUNTS_LEN = 28 << 10
    DIRECT_US = 1 << 11
    HEADER_ROOM = 14  # picows writes the WebSocket frame header in front of the message
    HEAD_MAX = 80  # '{"type":"echo","id":<int64>,"ts":<int64>,"body":"'
cdef int64_t HIGHEST_US = 24 * 3600 * 1000000LL

cdef const char* ECHO_PREFIX = b'{"type":"echo"'
cdef Py_ssize_t ECHO_PREFIX_LEN = 14


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # the clock of time.monotonic_ns()
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline Py_ssize_t write_int(char* p, int64_t v) noexcept nogil:
    """Decimal digits of v >= 0 at p; returns their count."""
    cdef char tmp[20]
    cdef Py_ssize_t n = 0, i
    if v == 0:
        p[0] = 48
        return 1
    while v > 0:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    for i in range(n):
        p[i] = tmp[n - 1 - i]
    return n


cdef class EchoStats:
    """One worker's closed-loop counters and latency counts since the last drain, plus the frame
    buffer every connection of the worker builds its next echo in (one event loop: no sharing)."""

    cdef public int64_t seq
    cdef public bint sending
    cdef int64_t received, bytes_received, sent, bytes_sent
    cdef int64_t counts[COUNTS_LEN]
    cdef char* buf
    cdef bytes body

    def __cinit__(self, bytes body, int64_t seq=0):
        self.body = body
        self.seq = seq
        self.sending = True
        memset(self.counts, 0, sizeof(self.counts))
        self.buf = <char*>malloc(HEADER_ROOM + HEAD_MAX + len(body) + 2)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.buf)

    cdef inline void record(self, int64_t us) noexcept:
        cdef int bucket
        if us < DIRECT_US:
            self.counts[us if us >= 1 else 1] += 1
        else:
            if us > HIGHEST_US:
                us = HIGHEST_US
            bucket = (64 - __builtin_clzll(<unsigned long long>(us | (DIRECT_US - 1)))) - (SUB_HALF_MAG + 1)
            self.counts[((bucket + 1) << SUB_HALF_MAG) + (us >> bucket) - (1 << SUB_HALF_MAG)] += 1

    cdef Py_ssize_t build(self, int64_t seq, int64_t ts) noexcept:
        """frames.echo_frame(seq, ts, body) at buf + HEADER_ROOM; returns its length."""
        cdef char* p = self.buf + HEADER_ROOM
        cdef Py_ssize_t n = 20
        cdef Py_ssize_t blen = len(self.body)
        memcpy(p, b'{"type":"echo","id":', 20)
        n += write_int(p + n, seq)
        memcpy(p + n, b',"ts":', 6)
        n += 6
        n += write_int(p + n, ts)
        memcpy(p + n, b',"body":"', 9)
        n += 9
        memcpy(p + n, <char*>self.body, blen)
        n += blen
        p[n] = 34  # "
        p[n + 1] = 125  # }
        return n + 2

    def frame(self, int64_t seq, int64_t ts) -> bytes:
        """The echo frame build() writes, as bytes (for tests)."""
        cdef Py_ssize_t n = self.build(seq, ts)
        return (self.buf + HEADER_ROOM)[:n]

    def record_us(self, int64_t us) -> None:
        self.record(us)

    def drain_into(self, iv, worker) -> None:
        """Add everything since the last drain to the worker's Interval and totals, and start over."""
        cdef list counts = iv.latency.counts
        cdef Py_ssize_t i
        for i in range(COUNTS_LEN):
            if self.counts[i]:
                counts[i] += self.counts[i]
                self.counts[i] = 0
        iv.msgs_received += self.received
        iv.bytes_received += self.bytes_received
        iv.msgs_sent += self.sent
        iv.bytes_sent += self.bytes_sent
        worker.totals_received += self.received
        worker.totals_sent += self.sent
        self.received = self.bytes_received = self.sent = self.bytes_sent = 0


cdef class EchoConnBase(WSListener):
    """A closed-loop connection's state and its per-reply path; the rest of its behaviour (connect,
    close, other frames via on_other_frame) is Python, in worker.py."""

    cdef public object w
    cdef public Py_ssize_t slot
    cdef public WSTransport transport
    cdef public int64_t established_ns
    cdef public int64_t sent_ns  # send time of the echo in flight (0: none)
    cdef public bint planned
    cdef public bint closed_by_gateway
    cdef public EchoStats stats

    def __init__(self, worker, Py_ssize_t slot):
        self.w = worker
        self.slot = slot
        self.stats = worker.echo_stats

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef EchoStats st = self.stats
        cdef int64_t now
        if (frame.msg_type == WSMsgType.TEXT and self.sent_ns != 0 and frame.payload_size >= ECHO_PREFIX_LEN
                and memcmp(frame.payload_ptr, ECHO_PREFIX, ECHO_PREFIX_LEN) == 0):
            now = monotonic_ns()
            st.received += 1
            st.bytes_received += frame.payload_size
            st.record((now - self.sent_ns) // 1000)
            self.sent_ns = 0
            if st.sending and not self.planned:
                self.send_next(now)
        else:
            self.on_other_frame(transport, frame)

    cpdef send_next(self, int64_t now):
        """The next echo of this connection, timed from `now`."""
        cdef EchoStats st = self.stats
        cdef Py_ssize_t n
        st.seq += 1
        n = st.build(st.seq, now)
        self.sent_ns = now
        self.transport.send_reuse_external_buffer(WSMsgType.TEXT, st.buf + HEADER_ROOM, n)
        st.sent += 1
        st.bytes_sent += n

    def on_other_frame(self, transport, frame):
        raise NotImplementedError
