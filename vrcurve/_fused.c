/* The element-wise work of the CPU engine, fused (vrcurve/estimator.py, issue 4).
 *
 * A work block is R = nt x ns x kk rows of M entries: row r = (t ns + i) kk + k is query k of source i at
 * timestep t. PyTorch would make about seven passes over such a block (the logits, exp2, the row sums, the
 * bf16 copy, then the products' element-wise product with the weights and its row sums); here they are two,
 * one on each side of the bf16 matrix products (which stay with PyTorch / oneDNN):
 *
 *   vr_front: L = ca_t P[i, k, :] + table[t, i, :] (the table holds -cb_t D[i, :], shared by the queries of
 *             source i), less the row maximum where asked, clamped below at -126; e = 2^L; z[r] = sum e
 *             (float32); w[r, :] = bf16(e) (round to nearest even); where asked, dn[r] = e . dnvec.
 *   vr_back:  per (timestep, source), the sums over its queries of (y[r, :M] . w[r, :]) / z[r]^2 (bf16 y
 *             and w, accumulated in float32 by vdpbf16ps) and of (e . dn) / z[r], in float64.
 *
 * Only for x86-64 CPUs with AVX512-BF16 (the CPUs where --precision auto picks bf16 products); the
 * functions are compiled for that target alone and vr_supported() says whether this CPU runs them. Rows
 * are split over OpenMP threads: loaded after PyTorch, this library shares PyTorch's libgomp (same soname)
 * and so its thread pool.
 *
 * This file is plain C with no Python or PyTorch headers: setup.py builds it as an optional extension
 * (a machine without a C compiler installs vrcurve without it) and vrcurve/_kernel.py loads it by ctypes.
 */
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#define VR_HAVE_AVX512BF16 1
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define VR_EXPORT __attribute__((visibility("default")))

VR_EXPORT int vr_version(void) { return 1; }

VR_EXPORT int vr_supported(void) {
#ifdef VR_HAVE_AVX512BF16
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

typedef struct {
    const float *P;       /* (ns, kk, M) with strides (p_source, p_query, 1) */
    int64_t p_source, p_query;
    const float *table;   /* (nt, ns, M) contiguous: nb_t D[i, :], shared by the kk queries of source i */
    const float *ca;      /* (nt,) */
    int64_t nt, ns, kk, M;
    int shift;
    uint16_t *w;          /* (R, w_row) bf16 */
    int64_t w_row;
    float *z;             /* (R,) */
    const float *dnvec;   /* (M,) or NULL */
    float *dn;            /* (R,) or NULL */
} vr_front_args;

typedef struct {
    const uint16_t *y;    /* (R, y_row) bf16: e @ D by column blocks in its first M columns, then n_cols */
    int64_t y_row;
    const uint16_t *w;    /* (R, w_row) bf16 */
    int64_t w_row;
    const float *z;       /* (R,) */
    const float *dn;      /* (R,) or NULL: then e . dn is the sum of the n_cols columns of y after M */
    int64_t n_cols, nt, ns, kk, M;
    double *out;          /* (2, nt, ns) */
} vr_back_args;

static void thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
#else
    int64_t parts = 1, me = 0;
#endif
    *lo = n * me / parts;
    *hi = n * (me + 1) / parts;
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
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* One row: e = 2^max(ca p + tab - off, -126) into w as bf16, returns sum e (and e . dnvec in *dn_out).
 * Inlined with constant flags, so that each case gets its own loop without branches. */
VR_TARGET static inline __attribute__((always_inline)) float front_row(
        const float *p, const float *tab, __m512 ca, __m512 off, int64_t M, uint16_t *wrow,
        const int shift, const float *dnvec, float *dn_out) {
    const __m512 lowest = _mm512_set1_ps(-126.0f);
    __m512 zs = _mm512_setzero_ps(), ds = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= M; j += 16) {
        __m512 L = _mm512_fmadd_ps(ca, _mm512_loadu_ps(p + j), _mm512_loadu_ps(tab + j));
        if (shift) L = _mm512_sub_ps(L, off);
        const __m512 e = exp2_ps(_mm512_max_ps(L, lowest));
        zs = _mm512_add_ps(zs, e);
        if (dnvec) ds = _mm512_fmadd_ps(e, _mm512_loadu_ps(dnvec + j), ds);
        _mm256_storeu_si256((__m256i *)(wrow + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (j < M) {
        const __mmask16 m = tail_mask(M - j);
        __m512 L = _mm512_fmadd_ps(ca, _mm512_maskz_loadu_ps(m, p + j), _mm512_maskz_loadu_ps(m, tab + j));
        if (shift) L = _mm512_sub_ps(L, off);
        const __m512 e = _mm512_maskz_mov_ps(m, exp2_ps(_mm512_max_ps(L, lowest)));
        zs = _mm512_add_ps(zs, e);
        if (dnvec) ds = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(m, dnvec + j), ds);
        _mm256_mask_storeu_epi16(wrow + j, m, (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (dnvec) *dn_out = _mm512_reduce_add_ps(ds);
    return _mm512_reduce_add_ps(zs);
}

VR_TARGET static void front_rows(const vr_front_args *a, int64_t r0, int64_t r1) {
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
            a->z[r] = a->dn ? front_row(p, tab, ca, off, M, wrow, 1, a->dnvec, a->dn + r)
                            : front_row(p, tab, ca, off, M, wrow, 1, 0, 0);
        } else {
            const __m512 off = _mm512_setzero_ps();
            a->z[r] = a->dn ? front_row(p, tab, ca, off, M, wrow, 0, a->dnvec, a->dn + r)
                            : front_row(p, tab, ca, off, M, wrow, 0, 0, 0);
        }
    }
}

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c = {(uint32_t)v << 16};
    return c.f;
}

/* Rows r0..r1-1: e^T D e / z^2 and e . dn / z summed over the queries of each (timestep, source) in double,
 * added to out (another thread may hold the other part of a group: the additions are atomic). */
VR_TARGET static void back_rows(const vr_back_args *a, int64_t r0, int64_t r1) {
    const int64_t M = a->M, groups = a->nt * a->ns;
    double quad_sum = 0.0, dn_sum = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t *y = a->y + r * a->y_row, *w = a->w + r * a->w_row;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < M; j += 32) {
            const int64_t left = M - j;
            const __mmask32 m = left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1u);
            const __m512i yv = _mm512_maskz_loadu_epi16(m, y + j), wv = _mm512_maskz_loadu_epi16(m, w + j);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)yv, (__m512bh)wv);
        }
        double dn = 0.0;
        if (a->dn) {
            dn = a->dn[r];
        } else {
            for (int64_t c = 0; c < a->n_cols; ++c) dn += bf16_to_float(y[M + c]);
        }
        const double inv = 1.0 / (double)a->z[r];
        quad_sum += (double)_mm512_reduce_add_ps(acc) * inv * inv;
        dn_sum += dn * inv;
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
#endif

VR_EXPORT int vr_front(const float *P, int64_t p_source, int64_t p_query, const float *table, const float *ca,
                       int64_t nt, int64_t ns, int64_t kk, int64_t M, int shift, uint16_t *w, int64_t w_row,
                       float *z, const float *dnvec, float *dn) {
#ifdef VR_HAVE_AVX512BF16
    const vr_front_args a = {P, p_source, p_query, table, ca, nt, ns, kk, M, shift, w, w_row, z, dnvec, dn};
    const int64_t R = nt * ns * kk;
#pragma omp parallel
    {
        int64_t lo, hi;
        thread_range(R, &lo, &hi);
        front_rows(&a, lo, hi);
    }
    return 0;
#else
    return -1;
#endif
}

/* out (2, nt, ns) float64: the sums over each (timestep, source)'s queries of e^T D e / z^2 (from the bf16
 * products y and weights w) and of e . dn / z (dn given, or the n_cols columns of y after M). */
VR_EXPORT int vr_back(const uint16_t *y, int64_t y_row, const uint16_t *w, int64_t w_row, const float *z,
                      const float *dn, int64_t n_cols, int64_t nt, int64_t ns, int64_t kk, int64_t M, double *out) {
#ifdef VR_HAVE_AVX512BF16
    const vr_back_args a = {y, y_row, w, w_row, z, dn, n_cols, nt, ns, kk, M, out};
    const int64_t R = nt * ns * kk;
    for (int64_t g = 0; g < 2 * nt * ns; ++g) out[g] = 0.0;
#pragma omp parallel
    {
        int64_t lo, hi;
        thread_range(R, &lo, &hi);
        back_rows(&a, lo, hi);
    }
    return 0;
#else
    return -1;
#endif
}
