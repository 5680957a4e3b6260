/* The per-timestep work of the CPU engine with bf16 products, fused (vrcurve/engine/backends/fused.py).
 *
 * A work block is R = nt x ns x kk rows of M entries: row r = (t ns + i) kk + k is query k of source i at
 * timestep t. Two passes do all of its work, both described by one ``vr_block`` (its buffers and their
 * capacities, which each pass checks before it writes anything):
 *
 *   vr_front: L = ca_t P[i, k, :] + table[t, i, :] (the table holds -cb_t D[i, :], shared by the queries of
 *             source i), less the row maximum where asked, clamped below at -126; e = 2^L; z[r] = sum e
 *             and dn[r] = e . dnvec (float32, from the float32 e); w[r, :] = bf16(e), round to nearest even.
 *   vr_quad:  the quadratic forms e^T B e of the bf16 weights with B = 2 D / dscale above the diagonal and
 *             0 elsewhere (D is symmetric with a zero diagonal, so this is e^T D e / dscale), then per
 *             (timestep, source) the sums over its queries of e^T B e / z^2 and of dn / z, in float64.
 *
 * vr_quad is a small matrix-product kernel of its own: only the triangle i < j of B is multiplied, about
 * M^2 / 2 products per row where a general product e @ D needs M^2 (or 2/3 M^2 by column blocks), and
 * the products e @ B never leave the registers. It runs at the CPU's bf16 peak (vdpbf16ps: pairs of bf16
 * products accumulated in float32), on 12 rows at a time against B packed in 16-column tiles
 * (vr_pack_size, and pack_triangle in vrcurve/engine/backends/fused.py).
 *
 * Only for x86-64 CPUs with AVX512-BF16 (the CPUs where --precision auto picks bf16 products); the
 * functions are compiled for that target alone and vr_supported() says whether this CPU runs them. Rows
 * are split over ``threads`` OpenMP threads (the caller passes torch.get_num_threads()). Loaded after a
 * PyTorch that ships libgomp.so.1 (the PyPI builds for Linux), this library shares that runtime and its
 * thread pool; beside another OpenMP runtime it has a pool of its own, with the same thread count.
 *
 * This file is plain C with no Python or PyTorch headers: setup.py builds it as an optional extension
 * (a machine without a C compiler installs vrcurve without it) and vrcurve/_kernel.py loads it by ctypes.
 * VR_ABI_VERSION comes from setup.py, which reads it from vrcurve/_kernel.py: the one place it is defined.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#define VR_HAVE_AVX512BF16 1
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define VR_EXPORT __attribute__((visibility("default")))

#ifndef VR_ABI_VERSION
#error "VR_ABI_VERSION is defined by setup.py (from vrcurve/_kernel.py); build with setup.py"
#endif

VR_EXPORT int vr_version(void) { return VR_ABI_VERSION; }

/* 1 where this CPU runs the kernels, 0 where it lacks AVX512-BF16, -1 where they were not compiled in
 * (not x86-64, or a compiler without AVX512-BF16 intrinsics). */
VR_EXPORT int vr_supported(void) {
#ifdef VR_HAVE_AVX512BF16
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return -1;
#endif
}

/* One block of work and every buffer it touches, with the capacity of each in elements (vrcurve/_kernel.py
 * mirrors this layout as a ctypes Structure; ``size`` is sizeof(vr_block) as the caller laid it out). */
typedef struct {
    int64_t size;
    int64_t nt, ns, kk, M;
    const float *P;       /* (ns, kk, M) with strides (p_source, p_query, 1); p_len elements readable */
    int64_t p_source, p_query, p_len;
    const float *table;   /* (nt, ns, M) contiguous: -cb_t D[i, :], shared by the kk queries of source i */
    int64_t table_len;
    const float *ca;      /* (nt,) */
    int64_t ca_len;
    const float *dnvec;   /* (M,) */
    int64_t dnvec_len;
    const uint16_t *B;    /* the packed triangle, vr_pack_size(M) bf16 */
    int64_t B_len;
    uint16_t *w;          /* (w_rows, w_row) bf16; for vr_quad w_row even, w[r, M] = 0 where M is odd */
    int64_t w_row, w_rows;
    float *z, *dn;        /* (z_len,) each */
    int64_t z_len;
    double *out;          /* (2, nt, ns) of out_len */
    int64_t out_len;
    int32_t shift, threads;
} vr_block;

/* Error codes (vrcurve/_kernel.py says what each means). */
enum { VR_OK = 0, VR_NOT_BUILT = -1, VR_LAYOUT = -2, VR_SHAPE = -3, VR_CAPACITY = -4 };

/* Tile jt of the packed triangle holds columns j0 = 16 jt .. j0 + 15 of B and its rows i < min(j0 + 16, M)
 * (below them the column is 0), as pairs of rows: n_pairs(jt) x 16 x 2 bf16, entry (ip, l, h) = B[2 ip + h,
 * j0 + l], 0 past M. */
static inline int64_t n_pairs(int64_t jt, int64_t M) {
    const int64_t top = 16 * jt + 16 < M ? 16 * jt + 16 : M;
    return (top + 1) / 2;
}

VR_EXPORT int64_t vr_pack_size(int64_t M) {
    int64_t n = 0;
    for (int64_t jt = 0; 16 * jt < M; ++jt) n += 32 * n_pairs(jt, M);
    return n;
}

/* f(args, lo, hi) on ``threads`` OpenMP threads, each taking a contiguous share of the rows 0..R-1. */
typedef void (*vr_rows_fn)(const void *args, int64_t r0, int64_t r1);

static void over_rows(vr_rows_fn f, const void *args, int64_t R, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
#ifdef _OPENMP
        const int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
#else
        const int64_t parts = 1, me = 0;
#endif
        f(args, R * me / parts, R * (me + 1) / parts);
    }
}

#ifdef VR_HAVE_AVX512BF16
#define VR_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

/* 2^x for x in [-126, 64): x = n + f with n = round(x), |f| <= 1/2; 2^f = 1 + f p(f) with p of degree 4
 * fitted for relative error (1.9e-7 evaluated in float32, against float32's 6e-8); scalef multiplies by
 * 2^n exactly. With x >= -126 the result is never subnormal. */
VR_TARGET static inline __m512 exp2_ps(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(0.001326472614891827f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.009671512991189957f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550733581185341f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022242426872253f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931470036506653f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

VR_TARGET static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* One row: e = 2^max(ca p + tab - off, -126) into w as bf16; returns sum e, and e . dnvec in *dn_out.
 * Inlined with a constant ``shift``, so that each case gets its own loop without branches. */
VR_TARGET static inline __attribute__((always_inline)) float front_row(
        const float *p, const float *tab, __m512 ca, __m512 off, int64_t M, uint16_t *wrow,
        const int shift, const float *dnvec, float *dn_out) {
    const __m512 lowest = _mm512_set1_ps(-126.0f);
    __m512 zs = _mm512_setzero_ps(), ds = _mm512_setzero_ps();
    for (int64_t j = 0; j < M; j += 16) {
        const __mmask16 m = tail_mask(M - j);
        __m512 L = _mm512_fmadd_ps(ca, _mm512_maskz_loadu_ps(m, p + j), _mm512_maskz_loadu_ps(m, tab + j));
        if (shift) L = _mm512_sub_ps(L, off);
        /* max(-126, L) with L second: a NaN logit stays NaN (vmaxps returns its second operand then) */
        const __m512 e = _mm512_maskz_mov_ps(m, exp2_ps(_mm512_max_ps(lowest, L)));
        zs = _mm512_add_ps(zs, e);
        ds = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(m, dnvec + j), ds);
        _mm256_mask_storeu_epi16(wrow + j, m, (__m256i)_mm512_cvtneps_pbh(e));
    }
    *dn_out = _mm512_reduce_add_ps(ds);
    return _mm512_reduce_add_ps(zs);
}

VR_TARGET static void front_rows(const void *args, int64_t r0, int64_t r1) {
    const vr_block *a = args;
    const int64_t M = a->M;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t k = r % a->kk, ti = r / a->kk, i = ti % a->ns, t = ti / a->ns;
        const float *p = a->P + i * a->p_source + k * a->p_query, *tab = a->table + ti * M;
        const __m512 ca = _mm512_set1_ps(a->ca[t]);
        uint16_t *wrow = a->w + r * a->w_row;
        if (a->shift) {
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int64_t j = 0; j < M; j += 16) {
                const __mmask16 m = tail_mask(M - j);
                const __m512 L = _mm512_fmadd_ps(ca, _mm512_maskz_loadu_ps(m, p + j), _mm512_maskz_loadu_ps(m, tab + j));
                mx = _mm512_mask_max_ps(mx, m, mx, L);
            }
            const __m512 off = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            a->z[r] = front_row(p, tab, ca, off, M, wrow, 1, a->dnvec, a->dn + r);
        } else {
            const __m512 off = _mm512_setzero_ps();
            a->z[r] = front_row(p, tab, ca, off, M, wrow, 0, a->dnvec, a->dn + r);
        }
    }
}

static inline int32_t pair_at(const uint16_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* q[r] = e_r^T B e_r for the RT rows at E (stride ldw): for each 16-column tile, acc_r = (e_r @ B)[tile]
 * by pairs of rows of the tile (one vdpbf16ps per row and pair, the pair of e_r broadcast), then
 * qv_r += acc_r * e_r[tile]. RT accumulators and RT partial sums stay in registers. */
#define VR_QUAD_TILE(RT)                                                                                       \
    VR_TARGET static inline __attribute__((always_inline)) void quad_tile_##RT(                                \
            const uint16_t *E, int64_t ldw, const uint16_t *B, int64_t M, float *q) {                        \
        __m512 qv[RT];                                                                                         \
        _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) qv[r] = _mm512_setzero_ps();                    \
        const uint16_t *bp = B;                                                                                \
        for (int64_t jt = 0; 16 * jt < M; ++jt) {                                                              \
            const int64_t np = n_pairs(jt, M), j0 = 16 * jt;                                                   \
            __m512 acc[RT];                                                                                    \
            _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) acc[r] = _mm512_setzero_ps();               \
            for (int64_t ip = 0; ip < np; ++ip) {                                                              \
                const __m512bh b = (__m512bh)_mm512_loadu_si512(bp + 32 * ip);                                 \
                _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) acc[r] = _mm512_dpbf16_ps(              \
                    acc[r], (__m512bh)_mm512_set1_epi32(pair_at(E + r * ldw + 2 * ip)), b);                    \
            }                                                                                                  \
            bp += 32 * np;                                                                                     \
            const __mmask16 m = tail_mask(M - j0);                                                             \
            _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {                                           \
                const __m512i e16 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, E + r * ldw + j0));    \
                qv[r] = _mm512_fmadd_ps(acc[r], _mm512_castsi512_ps(_mm512_slli_epi32(e16, 16)), qv[r]);      \
            }                                                                                                  \
        }                                                                                                      \
        _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) q[r] = _mm512_reduce_add_ps(qv[r]);             \
    }
VR_QUAD_TILE(12)
VR_QUAD_TILE(4)
VR_QUAD_TILE(1)

/* Rows r0..r1-1: e^T B e / z^2 and dn / z summed over the queries of each (timestep, source) in double,
 * added to out (another thread may hold the other part of a group: the additions are atomic). */
VR_TARGET static void quad_rows(const void *args, int64_t r0, int64_t r1) {
    const vr_block *a = args;
    const int64_t groups = a->nt * a->ns;
    double quad_sum = 0.0, dn_sum = 0.0;
    float q[48];
    for (int64_t s0 = r0; s0 < r1; s0 += 48) {
        const int64_t s1 = s0 + 48 < r1 ? s0 + 48 : r1;
        int64_t r = s0;
        for (; r + 12 <= s1; r += 12) quad_tile_12(a->w + r * a->w_row, a->w_row, a->B, a->M, q + (r - s0));
        for (; r + 4 <= s1; r += 4) quad_tile_4(a->w + r * a->w_row, a->w_row, a->B, a->M, q + (r - s0));
        for (; r < s1; ++r) quad_tile_1(a->w + r * a->w_row, a->w_row, a->B, a->M, q + (r - s0));
        for (r = s0; r < s1; ++r) {
            const double inv = 1.0 / (double)a->z[r];
            quad_sum += (double)q[r - s0] * inv * inv;
            dn_sum += (double)a->dn[r] * inv;
            const int64_t g = r / a->kk;
            if (r + 1 == r1 || (r + 1) / a->kk != g) {
#pragma omp atomic
                a->out[g] += quad_sum;
#pragma omp atomic
                a->out[groups + g] += dn_sum;
                quad_sum = dn_sum = 0.0;
            }
        }
    }
}
#endif

/* What both passes need of a block: a struct of this library's layout and a shape with room for it. */
static int check_common(const vr_block *b) {
    if (b == 0 || b->size != (int64_t)sizeof(vr_block)) return VR_LAYOUT;
    if (b->nt < 1 || b->ns < 1 || b->kk < 1 || b->M < 1) return VR_SHAPE;
    const int64_t R = b->nt * b->ns * b->kk;
    if (b->w_row < b->M || b->w_rows < R || b->z_len < R) return VR_CAPACITY;
    return VR_OK;
}

VR_EXPORT int vr_front(const vr_block *b) {
#ifdef VR_HAVE_AVX512BF16
    int err = check_common(b);
    if (err) return err;
    if (b->p_query < b->M || b->p_source < 0) return VR_SHAPE;
    const int64_t last = (b->ns - 1) * b->p_source + (b->kk - 1) * b->p_query + b->M;  /* one past P's last read */
    if (b->p_len < last || b->table_len < b->nt * b->ns * b->M || b->ca_len < b->nt || b->dnvec_len < b->M)
        return VR_CAPACITY;
    over_rows(front_rows, b, b->nt * b->ns * b->kk, b->threads);
    return VR_OK;
#else
    (void)b;
    return VR_NOT_BUILT;
#endif
}

/* out (2, nt, ns) float64: per (timestep, source), the sums over its queries of e^T B e / z^2 (B packed
 * by vr_pack_size's layout) and of dn / z. */
VR_EXPORT int vr_quad(const vr_block *b) {
#ifdef VR_HAVE_AVX512BF16
    int err = check_common(b);
    if (err) return err;
    if (b->w_row % 2 != 0) return VR_SHAPE;
    if (b->B_len != vr_pack_size(b->M) || b->out_len < 2 * b->nt * b->ns) return VR_CAPACITY;
    for (int64_t g = 0; g < 2 * b->nt * b->ns; ++g) b->out[g] = 0.0;
    over_rows(quad_rows, b, b->nt * b->ns * b->kk, b->threads);
    return VR_OK;
#else
    (void)b;
    return VR_NOT_BUILT;
#endif
}
