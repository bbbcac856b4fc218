// The hot loop of every per-prompt mode: index of the best model of one row for a linear score,
//     s_j = q_j - wc * c_j        (Score::tradeoff; wc = lambda, or 0 for max quality)
//     s_j = -c_j                  (Score::cheapest)
// computed in the input type T (float or double), without FMA, so numpy doing the same arithmetic in T agrees.
// Tie rule: among equal scores, `tie` (a strict "x beats y" on indices) decides; callers pass "cheaper, then
// lower index" or "higher quality, then lower index".
//
// Two passes: (1) the scores into a stack buffer, their maximum, and the validity checks (s * 0 turns NaN when
// any q or c is NaN or infinite; the minimum cost catches negative costs), so the data is read once;
// (2) a compare of the buffer against the maximum: the first index reaching it and whether another one does.
// Only a real tie runs the scalar tie break. SSE2 on x86-64 (baseline ISA, so the build stays portable); a
// scalar loop elsewhere and for rows longer than the buffer. With GCC on x86-64 an AVX2 copy of the scan is
// compiled alongside and picked at run time when the CPU supports it (rows of 16+ models).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace routoo {

enum class Score { tradeoff, cheapest };

namespace detail {

template <Score S, class T>
inline T score(const T* q, const T* c, std::int64_t j, T wc) {
    if constexpr (S == Score::tradeoff) return q[j] - wc * c[j];
    else return T(0) - c[j];
}

template <Score S, class T, class Tie>
inline std::int32_t argbest_scalar(const T* q, const T* c, std::int64_t n, T wc, T& chk, T& cmin, Tie tie) {
    T best = -std::numeric_limits<T>::infinity();
    T ck = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        const T s = score<S>(q, c, j, wc);
        ck += (q[j] + c[j]) * T(0);
        best = s > best ? s : best;
        cmin = c[j] < cmin ? c[j] : cmin;
    }
    chk += ck;
    std::int32_t w = -1;
    for (std::int64_t j = 0; j < n; ++j)
        if (score<S>(q, c, j, wc) == best && (w < 0 || tie(static_cast<std::int32_t>(j), w)))
            w = static_cast<std::int32_t>(j);
    return w;
}

#if defined(__SSE2__)
// Two SSE2 registers per step: float x 8 or double x 4.
struct Sse2Float {
    using T = float;
    using V = __m128;
    static constexpr int W = 4;
    static V load(const T* p) { return _mm_loadu_ps(p); }
    static void store(T* p, V v) { _mm_store_ps(p, v); }
    static V set1(T x) { return _mm_set1_ps(x); }
    static V add(V a, V b) { return _mm_add_ps(a, b); }
    static V sub(V a, V b) { return _mm_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm_mul_ps(a, b); }
    static V max(V a, V b) { return _mm_max_ps(a, b); }
    static V min(V a, V b) { return _mm_min_ps(a, b); }
    static int eqmask(V a, V b) { return _mm_movemask_ps(_mm_cmpeq_ps(a, b)); }
    // lanes with lo < x < hi
    static V inside(V x, V lo, V hi) { return _mm_and_ps(_mm_cmpgt_ps(x, lo), _mm_cmplt_ps(x, hi)); }
    static int both(V a, V b) { return _mm_movemask_ps(_mm_and_ps(a, b)); }
    static V hmax(V v) {
        v = _mm_max_ps(v, _mm_shuffle_ps(v, v, 0x4E));
        return _mm_max_ps(v, _mm_shuffle_ps(v, v, 0xB1));
    }
    static T first(V v) { return _mm_cvtss_f32(v); }
    static bool any_nan(V v) { return _mm_movemask_ps(_mm_cmpunord_ps(v, v)) != 0; }
    static bool any_negative(V v) { return _mm_movemask_ps(_mm_cmplt_ps(v, _mm_setzero_ps())) != 0; }
};
struct Sse2Double {
    using T = double;
    using V = __m128d;
    static constexpr int W = 2;
    static V load(const T* p) { return _mm_loadu_pd(p); }
    static void store(T* p, V v) { _mm_store_pd(p, v); }
    static V set1(T x) { return _mm_set1_pd(x); }
    static V add(V a, V b) { return _mm_add_pd(a, b); }
    static V sub(V a, V b) { return _mm_sub_pd(a, b); }
    static V mul(V a, V b) { return _mm_mul_pd(a, b); }
    static V max(V a, V b) { return _mm_max_pd(a, b); }
    static V min(V a, V b) { return _mm_min_pd(a, b); }
    static int eqmask(V a, V b) { return _mm_movemask_pd(_mm_cmpeq_pd(a, b)); }
    // lanes with lo < x < hi
    static V inside(V x, V lo, V hi) { return _mm_and_pd(_mm_cmpgt_pd(x, lo), _mm_cmplt_pd(x, hi)); }
    static int both(V a, V b) { return _mm_movemask_pd(_mm_and_pd(a, b)); }
    static V hmax(V v) { return _mm_max_pd(v, _mm_shuffle_pd(v, v, 1)); }
    static T first(V v) { return _mm_cvtsd_f64(v); }
    static bool any_nan(V v) { return _mm_movemask_pd(_mm_cmpunord_pd(v, v)) != 0; }
    static bool any_negative(V v) { return _mm_movemask_pd(_mm_cmplt_pd(v, _mm_setzero_pd())) != 0; }
};

constexpr int kBuffer = 512;  // longest row (in models) handled by the SIMD path

#include "argbest_simd.inc"
#endif

// AVX2 copy of the same scan, compiled for AVX2 only inside this region and called only when the CPU has it
// (runtime check), so the build flags stay portable. GCC only; other compilers use the SSE2 path.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ROUTOO_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
struct Float {
    using T = float;
    using V = __m256;
    static constexpr int W = 8;
    static V load(const T* p) { return _mm256_loadu_ps(p); }
    static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
    static V set1(T x) { return _mm256_set1_ps(x); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V min(V a, V b) { return _mm256_min_ps(a, b); }
    static int eqmask(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
    static V hmax(V v) {
        v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
        v = _mm256_max_ps(v, _mm256_shuffle_ps(v, v, 0x4E));
        return _mm256_max_ps(v, _mm256_shuffle_ps(v, v, 0xB1));
    }
    static T first(V v) { return _mm256_cvtss_f32(v); }
    static bool any_nan(V v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
    static bool any_negative(V v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ)) != 0; }
};
struct Double {
    using T = double;
    using V = __m256d;
    static constexpr int W = 4;
    static V load(const T* p) { return _mm256_loadu_pd(p); }
    static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
    static V set1(T x) { return _mm256_set1_pd(x); }
    static V add(V a, V b) { return _mm256_add_pd(a, b); }
    static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
    static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
    static V max(V a, V b) { return _mm256_max_pd(a, b); }
    static V min(V a, V b) { return _mm256_min_pd(a, b); }
    static int eqmask(V a, V b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ)); }
    static V hmax(V v) {
        v = _mm256_max_pd(v, _mm256_permute2f128_pd(v, v, 1));
        return _mm256_max_pd(v, _mm256_shuffle_pd(v, v, 0x5));
    }
    static T first(V v) { return _mm256_cvtsd_f64(v); }
    static bool any_nan(V v) { return _mm256_movemask_pd(_mm256_cmp_pd(v, v, _CMP_UNORD_Q)) != 0; }
    static bool any_negative(V v) { return _mm256_movemask_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_LT_OQ)) != 0; }
};
#include "argbest_simd.inc"
}  // namespace avx2
#pragma GCC pop_options

// ROUTOO_NO_AVX2=1 forces the SSE2 path (tests use it to check both copies on an AVX2 machine)
inline bool cpu_has_avx2() {
    static const bool has = __builtin_cpu_supports("avx2") && !std::getenv("ROUTOO_NO_AVX2");
    return has;
}
#endif

// Bit mask over models j0 .. j0 + 7 of lc < c_j < bc and lq < q_j < bq (the box between a hull's ends).
template <class T>
inline unsigned box_mask8(const T* q, const T* c, T lq, T lc, T bq, T bc) {
#if defined(__SSE2__)
    using X = std::conditional_t<sizeof(T) == sizeof(float), Sse2Float, Sse2Double>;
    const auto vlq = X::set1(lq), vlc = X::set1(lc), vbq = X::set1(bq), vbc = X::set1(bc);
    unsigned mk = 0;
    for (int k = 0; k < 8; k += X::W)
        mk |= static_cast<unsigned>(X::both(X::inside(X::load(c + k), vlc, vbc), X::inside(X::load(q + k), vlq, vbq)))
              << k;
    return mk;
#else
    unsigned mk = 0;
    for (int k = 0; k < 8; ++k) mk |= static_cast<unsigned>((c[k] > lc) & (c[k] < bc) & (q[k] > lq) & (q[k] < bq)) << k;
    return mk;
#endif
}

}  // namespace detail

// Index of the best model of a row (see the file comment); -1 only when n == 0 or every score is NaN.
// `chk` becomes nonzero (NaN) when any q or c is not finite; `cmin` becomes negative when any cost is.
template <Score S, class T, class Tie>
inline std::int32_t argbest(const T* q, const T* c, std::int64_t n, T wc, T& chk, T& cmin, Tie tie) {
#if defined(__SSE2__)
    if (n >= 16 && n <= detail::kBuffer) {
#if defined(ROUTOO_AVX2_PATH)
        if (detail::cpu_has_avx2()) {
            if constexpr (sizeof(T) == sizeof(float)) return detail::avx2::argbest_simd<detail::avx2::Float, S>(q, c, n, wc, chk, cmin, tie);
            else return detail::avx2::argbest_simd<detail::avx2::Double, S>(q, c, n, wc, chk, cmin, tie);
        }
#endif
    }
    if (n >= 8 && n <= detail::kBuffer) {
        if constexpr (sizeof(T) == sizeof(float)) return detail::argbest_simd<detail::Sse2Float, S>(q, c, n, wc, chk, cmin, tie);
        else return detail::argbest_simd<detail::Sse2Double, S>(q, c, n, wc, chk, cmin, tie);
    }
#endif
    return detail::argbest_scalar<S>(q, c, n, wc, chk, cmin, tie);
}

}  // namespace routoo
