// The per-row test of the budget fast path: is model v this prompt's hull vertex for every lambda in a bracket
// [lo, hi], with no hull edge whose slope lies in the bracket?
//
// For the upper hull over (cost, quality) that holds exactly when, for every allowed model j with
// e = q_j - q_v, d = c_j - c_v:
//     d > 0:  e <= 0  or  e / d < lo      (nothing to the right is reached by an edge of slope >= lo)
//     d < 0:  e / d > hi                   (the edge into v is steeper than hi)
//     d == 0: e <= 0                       (no copy of v with higher quality)
// The test runs with a margin: lo_m = lo * (1 - 1e-9), hi_p = hi * (1 + 1e-9) and products instead of
// divisions, so a pass means the hull builder's double slopes dq / dc (computed from the same differences)
// are strictly outside [lo, hi] whatever the rounding; a borderline row fails the test and simply gets its
// full hull. Copies of v with the same (cost, quality) are harmless: the caller's v is the lowest index among
// them, as is the hull builder's vertex.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "argbest.hpp"

namespace routoo {

namespace detail {
template <class T>
inline bool fixed_vertex_scalar(const T* q, const T* c, const std::uint8_t* m, std::int64_t N, std::int32_t v,
                                double lo_m, double hi_p, T& cheapest, T& next) {
    const T qv_t = q[v];
    const double qv = static_cast<double>(q[v]), cv = static_cast<double>(c[v]);
    const T inf = std::numeric_limits<T>::infinity();
    T cheap = inf, nx = inf;
    int bad = 0;
    for (std::int64_t j = 0; j < N; ++j) {
        if (m && !m[j]) continue;
        const double e = static_cast<double>(q[j]) - qv, d = static_cast<double>(c[j]) - cv;
        const double rhs = (d > 0 ? lo_m : hi_p) * d;
        bad |= !((e < rhs) | ((e <= 0) & (d >= 0)));
        cheap = c[j] < cheap ? c[j] : cheap;
        nx = (q[j] > qv_t) & (c[j] < nx) ? c[j] : nx;
    }
    cheapest = cheap;
    next = nx;
    return !bad;
}

#if defined(ROUTOO_AVX2_PATH)
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }

// lanes of m[j .. j + 3] that are nonzero, as a double-lane mask
inline __m256d allowed4(const std::uint8_t* m) {
    std::int32_t word;
    std::memcpy(&word, m, sizeof word);
    const __m256i wide = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(word));
    return _mm256_castsi256_pd(_mm256_xor_si256(_mm256_cmpeq_epi64(wide, _mm256_setzero_si256()), _mm256_set1_epi64x(-1)));
}

// The scalar test four models at a time in double; m may be null (every model allowed).
template <class T>
inline bool fixed_vertex(const T* q, const T* c, const std::uint8_t* m, std::int64_t N, std::int32_t v, double lo_m,
                         double hi_p, T& cheapest, T& next) {
    const double qv = static_cast<double>(q[v]), cv = static_cast<double>(c[v]);
    const double inf = std::numeric_limits<double>::infinity();
    const __m256d vqv = _mm256_set1_pd(qv), vcv = _mm256_set1_pd(cv), vlo = _mm256_set1_pd(lo_m),
                  vhi = _mm256_set1_pd(hi_p), zero = _mm256_setzero_pd(), vinf = _mm256_set1_pd(inf);
    __m256d good = _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), cheap = vinf, nx = vinf;
    const std::int64_t body = N - N % 4;
    for (std::int64_t j = 0; j < body; j += 4) {
        const __m256d qd = load4(q + j), cd = load4(c + j);
        const __m256d e = _mm256_sub_pd(qd, vqv), d = _mm256_sub_pd(cd, vcv);
        const __m256d right = _mm256_cmp_pd(d, zero, _CMP_GT_OQ);
        const __m256d rhs = _mm256_mul_pd(_mm256_blendv_pd(vhi, vlo, right), d);
        const __m256d ok = _mm256_or_pd(_mm256_cmp_pd(e, rhs, _CMP_LT_OQ),
                                        _mm256_and_pd(_mm256_cmp_pd(e, zero, _CMP_LE_OQ), _mm256_cmp_pd(d, zero, _CMP_GE_OQ)));
        if (m) {
            const __m256d allowed = allowed4(m + j);
            good = _mm256_and_pd(good, _mm256_or_pd(ok, _mm256_xor_pd(allowed, _mm256_castsi256_pd(_mm256_set1_epi64x(-1)))));
            cheap = _mm256_min_pd(cheap, _mm256_blendv_pd(vinf, cd, allowed));
            nx = _mm256_min_pd(nx, _mm256_blendv_pd(vinf, cd, _mm256_and_pd(allowed, _mm256_cmp_pd(qd, vqv, _CMP_GT_OQ))));
            continue;
        }
        good = _mm256_and_pd(good, ok);
        cheap = _mm256_min_pd(cheap, cd);
        nx = _mm256_min_pd(nx, _mm256_blendv_pd(vinf, cd, _mm256_cmp_pd(qd, vqv, _CMP_GT_OQ)));
    }
    alignas(32) double ch[4], nn[4];
    _mm256_store_pd(ch, cheap);
    _mm256_store_pd(nn, nx);
    double cm = std::min(std::min(ch[0], ch[1]), std::min(ch[2], ch[3]));
    double nm = std::min(std::min(nn[0], nn[1]), std::min(nn[2], nn[3]));
    bool all = _mm256_movemask_pd(good) == 0xF;
    for (std::int64_t j = body; j < N; ++j) {
        if (m && !m[j]) continue;
        const double qj = static_cast<double>(q[j]), cj = static_cast<double>(c[j]);
        const double e = qj - qv, d = cj - cv;
        const double rhs = (d > 0 ? lo_m : hi_p) * d;
        all &= (e < rhs) | ((e <= 0) & (d >= 0));
        cm = cj < cm ? cj : cm;
        nm = (qj > qv) & (cj < nm) ? cj : nm;
    }
    cheapest = static_cast<T>(cm);  // exact: the cost of a model (or +inf)
    next = static_cast<T>(nm);
    return all;
}
}  // namespace avx2
#pragma GCC pop_options
#endif
}  // namespace detail

// Also returns, over allowed models, the cheapest cost and the cheapest cost among models of higher quality
// than v (+inf when v is the best): every hull edge leaving v costs at least next - c_v.
template <class T>
inline bool fixed_vertex(const T* q, const T* c, const std::uint8_t* m, std::int64_t N, std::int32_t v,
                         double lo_m, double hi_p, T& cheapest, T& next) {
#if defined(ROUTOO_AVX2_PATH)
    if (N >= 8 && detail::cpu_has_avx2()) return detail::avx2::fixed_vertex(q, c, m, N, v, lo_m, hi_p, cheapest, next);
#endif
    return detail::fixed_vertex_scalar(q, c, m, N, v, lo_m, hi_p, cheapest, next);
}

}  // namespace routoo
