/* kvbucket.clients._streamcopy: the client's copies into shared memory, the GIL released.
 *
 * stream_copy: a copy with non-temporal stores. A shared-memory put writes each chunk into an arena
 * slot no recent put wrote. An ordinary copy (numpy's, glibc's memcpy below its non-temporal
 * threshold, which scales with the L3 size) first reads every destination cache line in for
 * ownership, then writes it: three passes over memory for two passes of data. Non-temporal stores
 * write whole lines straight to memory. Measured here (benchmarks/bench_copy.py, 2 MiB into fresh
 * slots, three runs): 0.59-0.71x of a memcpy into a warm buffer with numpy's copy, 0.94-0.96x with
 * these stores.
 *
 * copy_xxh3: the copy and the chunk's checksum (xxh3_64) in one pass, each 64-byte stripe loaded into
 * registers once, stored and hashed from them (the portable walk reads each stored stripe back from
 * L1), so the checksum is of exactly the bytes stored. Every shared-memory put copies with it
 * (non-temporal stores) and every get (ordinary stores: the caller reads its buffer next):
 * clients/shm.py `stream_hash`, `copy_hash`.
 *
 * A destination written with non-temporal stores is then not in cache. x86-64 only (SSE2 is
 * baseline, AVX2 when the CPU has it); elsewhere `stream_copy` is a memcpy and `copy_xxh3` a portable
 * walk. STORES names which: "avx2", "sse2" or "memcpy".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KVB_X86 1

__attribute__((target("avx2"))) static void copy_avx2(char *d, const char *s, size_t n) {
    for (; n >= 128; n -= 128, d += 128, s += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s);
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + 32), b);
        _mm256_stream_si256((__m256i *)(d + 64), c);
        _mm256_stream_si256((__m256i *)(d + 96), e);
    }
    memcpy(d, s, n);
}

static void copy_sse2(char *d, const char *s, size_t n) {
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
}

static int have_avx2;

static void stream(char *d, const char *s, size_t n) {
    /* Up to the first 32-byte boundary of the destination by memcpy: the stores need it aligned. */
    size_t head = (32 - ((uintptr_t)d & 31)) & 31;
    if (head > n)
        head = n;
    memcpy(d, s, head);
    if (have_avx2)
        copy_avx2(d + head, s + head, n - head);
    else
        copy_sse2(d + head, s + head, n - head);
    _mm_sfence(); /* the stores are visible to other cores (the daemon) before this returns */
}
#else
#define KVB_X86 0
static void stream(char *d, const char *s, size_t n) { memcpy(d, s, n); }
#endif

/* ---- copy_xxh3: one pass that copies and computes XXH3-64 (seed 0, default secret) ----------------
 *
 * Written from the XXH3 specification (xxHash's doc/xxhash_spec.md); tests/clients/test_shm_copy.py
 * checks it against the xxhash package at every length class. Over 240 bytes each 64-byte stripe is
 * loaded into registers once, stored to the destination and accumulated from the same registers: the
 * checksum is of exactly the bytes stored, read from memory once (a copy, then a hash of the
 * destination, reads them twice). Up to 240 bytes: a memcpy, then the destination hashed. */

#define P32_1 0x9E3779B1U
#define P32_2 0x85EBCA77U
#define P32_3 0xC2B2AE3DU
#define P64_1 0x9E3779B185EBCA87ULL
#define P64_2 0xC2B2AE3D27D4EB4FULL
#define P64_3 0x165667B19E3779F9ULL
#define P64_4 0x85EBCA77C2B2AE63ULL
#define P64_5 0x27D4EB2F165667C5ULL
#define PMX1 0x165667919E3779F9ULL
#define PMX2 0x9FB21C651E98DF25ULL
#define SECRET_LEN 192
#define STRIPE 64
#define STRIPES_PER_BLOCK ((SECRET_LEN - STRIPE) / 8) /* 16 */
#define BLOCK (STRIPE * STRIPES_PER_BLOCK)          /* 1024 */
/* Bytes ahead of the stripe being read. A 32 MiB source in memory (not cache) hashed 1.35x slower
 * than by the xxhash package without it; 0.9-1.05x with it (256-2048 tried, 1024 kept). */
#define PREFETCH 1024

static const uint8_t SECRET[SECRET_LEN] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LE64(x) __builtin_bswap64(x)
#define LE32(x) __builtin_bswap32(x)
#else
#define LE64(x) (x)
#define LE32(x) (x)
#endif

static inline uint64_t rd64(const void *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return LE64(v);
}

static inline uint32_t rd32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return LE32(v);
}

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t mul128_fold(uint64_t a, uint64_t b) {
    unsigned __int128 m = (unsigned __int128)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

static inline uint64_t avalanche(uint64_t x) {
    x ^= x >> 37;
    x *= PMX1;
    return x ^ (x >> 32);
}

static inline uint64_t avalanche_xxh64(uint64_t x) {
    x ^= x >> 33;
    x *= P64_2;
    x ^= x >> 29;
    x *= P64_3;
    return x ^ (x >> 32);
}

static inline uint64_t mix16(const uint8_t *in, size_t secret_at) {
    return mul128_fold(rd64(in) ^ rd64(SECRET + secret_at), rd64(in + 8) ^ rd64(SECRET + secret_at + 8));
}

static uint64_t xxh3_short(const uint8_t *in, size_t n) { /* n <= 240 */
    if (n == 0)
        return avalanche_xxh64(rd64(SECRET + 56) ^ rd64(SECRET + 64));
    if (n <= 3) {
        uint32_t c = (uint32_t)in[n - 1] | ((uint32_t)n << 8) | ((uint32_t)in[0] << 16) | ((uint32_t)in[n >> 1] << 24);
        return avalanche_xxh64((uint64_t)(rd32(SECRET) ^ rd32(SECRET + 4)) ^ c);
    }
    if (n <= 8) {
        uint64_t v = (rd64(SECRET + 8) ^ rd64(SECRET + 16)) ^ ((uint64_t)rd32(in + n - 4) | ((uint64_t)rd32(in) << 32));
        v ^= rotl64(v, 49) ^ rotl64(v, 24);
        v *= PMX2;
        v ^= (v >> 35) + n;
        v *= PMX2;
        return v ^ (v >> 28);
    }
    if (n <= 16) {
        uint64_t lo = (rd64(SECRET + 24) ^ rd64(SECRET + 32)) ^ rd64(in);
        uint64_t hi = (rd64(SECRET + 40) ^ rd64(SECRET + 48)) ^ rd64(in + n - 8);
        return avalanche(n + __builtin_bswap64(lo) + hi + mul128_fold(lo, hi));
    }
    uint64_t acc = n * P64_1;
    if (n <= 128) {
        for (int i = (int)((n - 1) >> 5); i >= 0; i--) {
            acc += mix16(in + 16 * i, 32 * i);
            acc += mix16(in + n - 16 * i - 16, 32 * i + 16);
        }
        return avalanche(acc);
    }
    for (size_t i = 0; i < 8; i++)
        acc += mix16(in + 16 * i, 16 * i);
    acc = avalanche(acc);
    for (size_t i = 8; i < (n >> 4); i++)
        acc += mix16(in + 16 * i, 16 * (i - 8) + 3);
    acc += mix16(in + n - 16, 119);
    return avalanche(acc);
}

static const uint64_t ACC_INIT[8] = {P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1};

static uint64_t merge(const uint64_t acc[8], size_t n) {
    uint64_t r = n * P64_1;
    for (int i = 0; i < 4; i++)
        r += mul128_fold(acc[2 * i] ^ rd64(SECRET + 11 + 16 * i), acc[2 * i + 1] ^ rd64(SECRET + 11 + 16 * i + 8));
    return avalanche(r);
}

/* The long-input walk shared by both implementations: STRIPE_COPY(d, s, key) stores a stripe and
 * accumulates it, STRIPE_ACC(p, key) only accumulates, SCRAMBLE() ends a block. The rounds cover
 * every full block but the last; that block's stripes bar the last follow; the final stripe (the
 * last 64 bytes, overlapping) is read back from the destination, where it has landed. Only the first
 * `copy_len` bytes are copied: past them the source is hashed alone (another thread copies them),
 * and the final stripe is read from the source when any of it lies there. */
#define STEP(d, s, at, key, copy_len)                                                                 \
    do {                                                                                              \
        __builtin_prefetch((s) + (at) + PREFETCH);                                                    \
        if ((at) + STRIPE <= (copy_len)) {                                                            \
            STRIPE_COPY((d) + (at), (s) + (at), key);                                                 \
        } else {                                                                                      \
            if ((at) < (copy_len))                                                                    \
                memcpy((d) + (at), (s) + (at), (copy_len) - (at));                                    \
            STRIPE_ACC((s) + (at), key);                                                              \
        }                                                                                             \
    } while (0)

#define LONG_WALK(d, s, n, copy_len)                                                                  \
    do {                                                                                              \
        size_t rounds_ = ((n) - 1) / BLOCK, at_ = 0;                                                  \
        for (size_t r_ = 0; r_ < rounds_; r_++) {                                                     \
            for (size_t k_ = 0; k_ < STRIPES_PER_BLOCK; k_++, at_ += STRIPE)                          \
                STEP(d, s, at_, SECRET + 8 * k_, copy_len);                                           \
            SCRAMBLE();                                                                               \
        }                                                                                             \
        size_t full_ = ((n) - at_ - 1) / STRIPE;                                                      \
        for (size_t k_ = 0; k_ < full_; k_++, at_ += STRIPE)                                          \
            STEP(d, s, at_, SECRET + 8 * k_, copy_len);                                               \
        if (at_ < (copy_len))                                                                         \
            memcpy((d) + at_, (s) + at_, (copy_len) - at_);                                           \
        FENCE();                                                                                      \
        STRIPE_ACC(((copy_len) == (n) ? (const uint8_t *)(d) : (s)) + (n) - STRIPE,                   \
                   SECRET + SECRET_LEN - STRIPE - 7);                                                 \
    } while (0)

static uint64_t long_scalar(uint8_t *d, const uint8_t *s, size_t n, size_t copy_len) {
    uint64_t acc[8];
    memcpy(acc, ACC_INIT, sizeof acc);
#define STRIPE_ACC(p, key)                                                                            \
    for (int i = 0; i < 8; i++) {                                                                     \
        uint64_t v_ = rd64((p) + 8 * i), x_ = v_ ^ rd64((key) + 8 * i);                               \
        acc[i ^ 1] += v_;                                                                             \
        acc[i] += (x_ & 0xFFFFFFFFULL) * (x_ >> 32);                                                  \
    }
#define STRIPE_COPY(dp, sp, key) /* hashed as stored: read back from L1, not from the source */      \
    do {                                                                                              \
        memcpy((dp), (sp), STRIPE);                                                                   \
        STRIPE_ACC((const uint8_t *)(dp), key);                                                       \
    } while (0)
#define SCRAMBLE()                                                                                    \
    for (int i = 0; i < 8; i++) {                                                                     \
        acc[i] ^= acc[i] >> 47;                                                                       \
        acc[i] ^= rd64(SECRET + SECRET_LEN - STRIPE + 8 * i);                                         \
        acc[i] *= P32_1;                                                                              \
    }
#define FENCE()
    LONG_WALK(d, s, n, copy_len);
#undef STRIPE_ACC
#undef STRIPE_COPY
#undef SCRAMBLE
#undef FENCE
    return merge(acc, n);
}

#if KVB_X86
/* acc[i] for lanes 0-3 in a0, 4-7 in a1. acc[i ^ 1] += v: swap the 64-bit halves of each 128-bit lane. */
#define AVX_ACC(a, v, key)                                                                            \
    do {                                                                                              \
        __m256i dk_ = _mm256_xor_si256((v), _mm256_loadu_si256((const __m256i *)(key)));              \
        __m256i prod_ = _mm256_mul_epu32(dk_, _mm256_srli_epi64(dk_, 32));                            \
        (a) = _mm256_add_epi64((a), _mm256_add_epi64(prod_, _mm256_shuffle_epi32((v), 0x4E)));        \
    } while (0)

#define AVX_SCRAMBLE(a, key)                                                                          \
    do {                                                                                              \
        __m256i x_ = _mm256_xor_si256((a), _mm256_srli_epi64((a), 47));                               \
        x_ = _mm256_xor_si256(x_, _mm256_loadu_si256((const __m256i *)(key)));                        \
        __m256i lo_ = _mm256_mul_epu32(x_, prime);                                                    \
        __m256i hi_ = _mm256_mul_epu32(_mm256_srli_epi64(x_, 32), prime);                             \
        (a) = _mm256_add_epi64(lo_, _mm256_slli_epi64(hi_, 32));                                      \
    } while (0)

__attribute__((target("avx2"))) static uint64_t long_avx2(uint8_t *d, const uint8_t *s, size_t n, size_t copy_len,
                                                         int nt) {
    __m256i a0 = _mm256_loadu_si256((const __m256i *)ACC_INIT);
    __m256i a1 = _mm256_loadu_si256((const __m256i *)(ACC_INIT + 4));
    const __m256i prime = _mm256_set1_epi32((int)P32_1);
#define STRIPE_ACC(p, key)                                                                            \
    do {                                                                                              \
        __m256i v0_ = _mm256_loadu_si256((const __m256i *)(p));                                       \
        __m256i v1_ = _mm256_loadu_si256((const __m256i *)((p) + 32));                                \
        AVX_ACC(a0, v0_, key);                                                                        \
        AVX_ACC(a1, v1_, (key) + 32);                                                                 \
    } while (0)
#define STRIPE_COPY(dp, sp, key)                                                                      \
    do {                                                                                              \
        __m256i v0_ = _mm256_loadu_si256((const __m256i *)(sp));                                      \
        __m256i v1_ = _mm256_loadu_si256((const __m256i *)((sp) + 32));                               \
        if (nt) {                                                                                     \
            _mm256_stream_si256((__m256i *)(dp), v0_);                                                \
            _mm256_stream_si256((__m256i *)((dp) + 32), v1_);                                         \
        } else {                                                                                      \
            _mm256_storeu_si256((__m256i *)(dp), v0_);                                                \
            _mm256_storeu_si256((__m256i *)((dp) + 32), v1_);                                         \
        }                                                                                             \
        AVX_ACC(a0, v0_, key);                                                                        \
        AVX_ACC(a1, v1_, (key) + 32);                                                                 \
    } while (0)
#define SCRAMBLE()                                                                                    \
    do {                                                                                              \
        AVX_SCRAMBLE(a0, SECRET + SECRET_LEN - STRIPE);                                               \
        AVX_SCRAMBLE(a1, SECRET + SECRET_LEN - STRIPE + 32);                                          \
    } while (0)
#define FENCE()                                                                                       \
    do {                                                                                              \
        if (nt)                                                                                       \
            _mm_sfence();                                                                             \
    } while (0)
    LONG_WALK(d, s, n, copy_len);
#undef STRIPE_ACC
#undef STRIPE_COPY
#undef SCRAMBLE
#undef FENCE
    uint64_t acc[8];
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 4), a1);
    return merge(acc, n);
}
#endif

static uint64_t copy_xxh3_raw(uint8_t *d, const uint8_t *s, size_t n, size_t copy_len, int nt, int portable) {
    if (n <= 240) {
        memcpy(d, s, copy_len);
        return xxh3_short(copy_len == n ? d : s, n);
    }
#if KVB_X86
    if (have_avx2 && !portable) /* non-temporal stores need the destination 32-byte aligned (an arena slot is) */
        return long_avx2(d, s, n, copy_len, nt && ((uintptr_t)d & 31) == 0);
#endif
    return long_scalar(d, s, n, copy_len);
}

static PyObject *copy_xxh3_call(PyObject *args, const char *format, int portable) {
    Py_buffer dst, src;
    int nt = 0;
    Py_ssize_t copy_len = -1;
    uint64_t h = 0;
    if (!PyArg_ParseTuple(args, format, &dst, &src, &nt, &copy_len))
        return NULL;
    if (dst.len != src.len) {
        PyErr_Format(PyExc_ValueError, "destination of %zd bytes for a source of %zd", dst.len, src.len);
    } else if (copy_len < -1 || copy_len > src.len) {
        PyErr_Format(PyExc_ValueError, "copy_len %zd for a source of %zd bytes", copy_len, src.len);
    } else {
        size_t n = (size_t)src.len, upto = copy_len < 0 ? n : (size_t)copy_len;
        Py_BEGIN_ALLOW_THREADS
        h = copy_xxh3_raw((uint8_t *)dst.buf, (const uint8_t *)src.buf, n, upto, nt, portable);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *copy_xxh3(PyObject *self, PyObject *args) { return copy_xxh3_call(args, "w*y*|pn:copy_xxh3", 0); }

/* The portable walk, which CPUs without AVX2 run: exposed so that tests run it here too. */
static PyObject *copy_xxh3_portable(PyObject *self, PyObject *args) {
    return copy_xxh3_call(args, "w*y*|pn:_copy_xxh3_portable", 1);
}
static PyObject *stream_copy(PyObject *self, PyObject *args) {
    Py_buffer dst, src;
    if (!PyArg_ParseTuple(args, "w*y*:stream_copy", &dst, &src))
        return NULL;
    if (dst.len != src.len) {
        PyErr_Format(PyExc_ValueError, "destination of %zd bytes for a source of %zd", dst.len, src.len);
    } else { /* "w*" and "y*" hand out contiguous buffers only */
        Py_BEGIN_ALLOW_THREADS
        stream((char *)dst.buf, (const char *)src.buf, (size_t)dst.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"stream_copy", stream_copy, METH_VARARGS,
     "stream_copy(dst, src): dst[:] = src with non-temporal stores (the GIL released); the bytes are "
     "in memory, not in this core's cache, when it returns."},
    {"copy_xxh3", copy_xxh3, METH_VARARGS,
     "copy_xxh3(dst, src, nontemporal=False, copy_len=-1) -> int: dst[:] = src and the xxh3_64 of the bytes "
     "stored, in one pass (the GIL released); non-temporal stores when asked and dst is 32-byte aligned. "
     "With copy_len, only dst[:copy_len] is written; the rest of src is hashed (another thread copies it)."},
    {"_copy_xxh3_portable", copy_xxh3_portable, METH_VARARGS,
     "copy_xxh3 by the portable walk (CPUs without AVX2 run it): for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_streamcopy", NULL, -1, methods};

PyMODINIT_FUNC PyInit__streamcopy(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
#if KVB_X86
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    if (PyModule_AddStringConstant(m, "STORES", have_avx2 ? "avx2" : "sse2") < 0) {
#else
    if (PyModule_AddStringConstant(m, "STORES", "memcpy") < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
