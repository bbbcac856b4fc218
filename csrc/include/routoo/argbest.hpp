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
// scalar loop elsewhere and for rows longer than the buffer.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
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
};

constexpr int kBuffer = 512;  // longest row (in models) handled by the SIMD path

template <class X, Score S, class Tie>
inline std::int32_t argbest_simd(const typename X::T* q, const typename X::T* c, std::int64_t n, typename X::T wc,
                                 typename X::T& chk, typename X::T& cmin, Tie tie) {
    using T = typename X::T;
    using V = typename X::V;
    constexpr int W = X::W, W2 = 2 * X::W;
    alignas(16) T buf[kBuffer];
    const V vw = X::set1(wc), zero = X::set1(T(0));
    V m0 = X::set1(-std::numeric_limits<T>::infinity()), m1 = m0, k0 = zero, k1 = zero, cm = X::set1(cmin);
    const std::int64_t body = n - n % W2;
    for (std::int64_t j = 0; j < body; j += W2) {
        const V c0 = X::load(c + j), c1 = X::load(c + j + W);
        V s0, s1;
        if constexpr (S == Score::tradeoff) {
            s0 = X::sub(X::load(q + j), X::mul(vw, c0));
            s1 = X::sub(X::load(q + j + W), X::mul(vw, c1));
        } else {
            s0 = X::sub(zero, c0);
            s1 = X::sub(zero, c1);
            k0 = X::add(k0, X::mul(X::load(q + j), zero));  // q is not in the score: check it directly
            k1 = X::add(k1, X::mul(X::load(q + j + W), zero));
        }
        X::store(buf + j, s0);
        X::store(buf + j + W, s1);
        m0 = X::max(m0, s0);
        m1 = X::max(m1, s1);
        k0 = X::add(k0, X::mul(s0, zero));
        k1 = X::add(k1, X::mul(s1, zero));
        cm = X::min(cm, X::min(c0, c1));
    }
    alignas(16) T mm[W], kk[W], cc[W];
    X::store(mm, X::max(m0, m1));
    X::store(kk, X::add(k0, k1));
    X::store(cc, cm);
    T best = mm[0], ck = kk[0];
    for (int l = 1; l < W; ++l) {
        best = mm[l] > best ? mm[l] : best;
        ck += kk[l];
        cmin = cc[l] < cmin ? cc[l] : cmin;
    }
    cmin = cc[0] < cmin ? cc[0] : cmin;
    for (std::int64_t j = body; j < n; ++j) {
        const T s = score<S>(q, c, j, wc);
        buf[j] = s;
        ck += (q[j] + c[j]) * T(0);
        best = s > best ? s : best;
        cmin = c[j] < cmin ? c[j] : cmin;
    }
    chk += ck;
    const V vb = X::set1(best);
    std::int32_t first = -1;
    bool tied = false;
    for (std::int64_t j = 0; j < body; j += W2) {
        const int mk = X::eqmask(X::load(buf + j), vb) | (X::eqmask(X::load(buf + j + W), vb) << W);
        if (mk) {
            tied |= first >= 0 || (mk & (mk - 1)) != 0;
            if (first < 0) first = static_cast<std::int32_t>(j) + __builtin_ctz(static_cast<unsigned>(mk));
        }
    }
    for (std::int64_t j = body; j < n; ++j)
        if (buf[j] == best) {
            tied |= first >= 0;
            if (first < 0) first = static_cast<std::int32_t>(j);
        }
    if (tied)
        for (std::int64_t j = first + 1; j < n; ++j)
            if (buf[j] == best && tie(static_cast<std::int32_t>(j), first)) first = static_cast<std::int32_t>(j);
    return first;
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
// `chk` accumulates a value that is nonzero (NaN) when any q or c is not finite; `cmin` the smallest cost.
template <Score S, class T, class Tie>
inline std::int32_t argbest(const T* q, const T* c, std::int64_t n, T wc, T& chk, T& cmin, Tie tie) {
#if defined(__SSE2__)
    if (n >= 8 && n <= detail::kBuffer) {
        if constexpr (sizeof(T) == sizeof(float)) return detail::argbest_simd<detail::Sse2Float, S>(q, c, n, wc, chk, cmin, tie);
        else return detail::argbest_simd<detail::Sse2Double, S>(q, c, n, wc, chk, cmin, tie);
    }
#endif
    return detail::argbest_scalar<S>(q, c, n, wc, chk, cmin, tie);
}

}  // namespace routoo
