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
#include <type_traits>

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

// Lanes of ok(e, d) for four models: e < (d < 0 ? hi_p * d : max(lo_m * d, tiny)), tiny the smallest
// positive double, so for d >= 0 "e < max(lo_m d, tiny)" is "e < lo_m d or e <= 0". The blend picks by d's
// sign bit: d = -0 (a -0.0 cost) takes the left-side test, which is stricter there (e < -0), so only more rows
// go to the core. NaN products (lo_m or hi_p infinite, d = 0) give the right answer: max returns tiny (its
// second operand), and an unordered compare is false. (With denormals flushed to zero tiny reads as 0 and v
// fails its own lane: every row goes to the core, slower but still exact.)
inline __m256d ok4(__m256d e, __m256d d, __m256d vlo, __m256d vhi, __m256d tiny) {
    const __m256d rhs = _mm256_blendv_pd(_mm256_max_pd(_mm256_mul_pd(vlo, d), tiny), _mm256_mul_pd(vhi, d), d);
    return _mm256_cmp_pd(e, rhs, _CMP_LT_OQ);
}

// The scalar test four models at a time in double; m may be null (every model allowed). The cheapest and next
// costs are reduced in T (8 float lanes for float rows).
template <class T>
inline bool fixed_vertex(const T* q, const T* c, const std::uint8_t* m, std::int64_t N, std::int32_t v, double lo_m,
                         double hi_p, T& cheapest, T& next) {
    const double qv = static_cast<double>(q[v]), cv = static_cast<double>(c[v]);
    const double inf = std::numeric_limits<double>::infinity();
    const __m256d vqv = _mm256_set1_pd(qv), vcv = _mm256_set1_pd(cv), vlo = _mm256_set1_pd(lo_m),
                  vhi = _mm256_set1_pd(hi_p), vinf = _mm256_set1_pd(inf),
                  tiny = _mm256_set1_pd(std::numeric_limits<double>::denorm_min());
    const __m256d ones = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    __m256d good = ones, cheap = vinf, nx = vinf;
    std::int64_t j = 0;
    if (!m && std::is_same<T, float>::value) {
        const __m256 fqv = _mm256_set1_ps(static_cast<float>(q[v])), finf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
        __m256 fcheap = finf, fnx = finf;
        for (; j + 8 <= N; j += 8) {
            const __m256 q8 = _mm256_loadu_ps(reinterpret_cast<const float*>(q) + j);
            const __m256 c8 = _mm256_loadu_ps(reinterpret_cast<const float*>(c) + j);
            fcheap = _mm256_min_ps(fcheap, c8);
            fnx = _mm256_min_ps(fnx, _mm256_blendv_ps(finf, c8, _mm256_cmp_ps(q8, fqv, _CMP_GT_OQ)));
            const __m256d e0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(q8)), vqv);
            const __m256d e1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(q8, 1)), vqv);
            const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(c8)), vcv);
            const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(c8, 1)), vcv);
            good = _mm256_and_pd(good, _mm256_and_pd(ok4(e0, d0, vlo, vhi, tiny), ok4(e1, d1, vlo, vhi, tiny)));
        }
        // fold the float lanes into the double accumulators (exact: float -> double)
        cheap = _mm256_min_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(fcheap)), _mm256_cvtps_pd(_mm256_extractf128_ps(fcheap, 1)));
        nx = _mm256_min_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(fnx)), _mm256_cvtps_pd(_mm256_extractf128_ps(fnx, 1)));
    }
    for (; j + 4 <= N; j += 4) {
        const __m256d qd = load4(q + j), cd = load4(c + j);
        const __m256d ok = ok4(_mm256_sub_pd(qd, vqv), _mm256_sub_pd(cd, vcv), vlo, vhi, tiny);
        const __m256d allowed = m ? allowed4(m + j) : ones;
        good = _mm256_and_pd(good, _mm256_or_pd(ok, _mm256_xor_pd(allowed, ones)));
        cheap = _mm256_min_pd(cheap, _mm256_blendv_pd(vinf, cd, allowed));
        nx = _mm256_min_pd(nx, _mm256_blendv_pd(vinf, cd, _mm256_and_pd(allowed, _mm256_cmp_pd(qd, vqv, _CMP_GT_OQ))));
    }
    alignas(32) double ch[4], nn[4];
    _mm256_store_pd(ch, cheap);
    _mm256_store_pd(nn, nx);
    double cm = std::min(std::min(ch[0], ch[1]), std::min(ch[2], ch[3]));
    double nm = std::min(std::min(nn[0], nn[1]), std::min(nn[2], nn[3]));
    bool all = _mm256_movemask_pd(good) == 0xF;
    for (; j < N; ++j) {
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
