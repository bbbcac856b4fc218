// Per-prompt selection modes: one pass over each row of Q [P, N] (and C [P, N] or a broadcast [N]).
//
// Scores s_ij = Q_ij - lam * C_ij are computed in the input type T (float or double; float32 is the natural
// choice: half the bytes to read), so a numpy reference doing the same arithmetic in T agrees bit for bit.
// Tie rule: higher score, then cheaper model, then lower index. Totals are accumulated in double by callers.
// Value checks are folded into the same pass (see argbest.hpp) and reported through a Status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "argbest.hpp"

namespace routoo {

enum class Status : int { ok = 0, non_finite = 1, negative_cost = 2 };

// Row-major matrix view; stride 0 broadcasts one row of N values to every prompt.
template <class T>
struct Rows {
    const T* data;
    std::ptrdiff_t stride;  // elements between consecutive prompts: N, or 0 for a broadcast [N] vector
    const T* row(std::ptrdiff_t i) const { return data + i * stride; }
};

// Optional feasibility mask (1 = allowed); data == nullptr means every model is allowed.
struct Mask {
    const std::uint8_t* data = nullptr;
    std::ptrdiff_t stride = 0;
    const std::uint8_t* row(std::ptrdiff_t i) const { return data ? data + i * stride : nullptr; }
};

template <class T>
inline Status status_of(T chk, T cmin) {
    if (chk != T(0)) return Status::non_finite;  // NaN compares unequal to everything
    if (cmin < T(0)) return Status::negative_cost;
    return Status::ok;
}

// "x beats y" among models with equal score: cheaper, then lower index.
template <class T>
struct CheaperFirst {
    const T* c;
    bool operator()(std::int32_t x, std::int32_t y) const { return c[x] != c[y] ? c[x] < c[y] : x < y; }
};

// "x beats y" among models with equal cost: higher quality, then lower index.
template <class T>
struct BetterFirst {
    const T* q;
    bool operator()(std::int32_t x, std::int32_t y) const { return q[x] != q[y] ? q[x] > q[y] : x < y; }
};

// Best allowed model of one row under a mask (scalar); -1 when the mask allows nothing.
template <Score S, class T, class Tie>
inline std::int32_t argbest_masked(const T* q, const T* c, const std::uint8_t* ok, std::int64_t n, T wc,
                                   T& chk, T& cmin, Tie tie) {
    std::int32_t w = -1;
    T best = -std::numeric_limits<T>::infinity();
    for (std::int64_t j = 0; j < n; ++j) {
        const T s = detail::score<S>(q, c, j, wc);
        chk += (q[j] + c[j]) * T(0);
        cmin = c[j] < cmin ? c[j] : cmin;
        const auto jj = static_cast<std::int32_t>(j);
        if (ok[j] && (w < 0 || s > best || (s == best && tie(jj, w)))) { best = s; w = jj; }
    }
    return w;
}

// Sums of quality and cost over prompts with a choice (choice >= 0), in double -> totals[0], totals[1].
inline void sum_chosen(const std::int32_t* choice, const double* quality, const double* cost, std::int64_t P,
                       double* totals) {
    double tq = 0.0, tc = 0.0;
    for (std::int64_t i = 0; i < P; ++i)
        if (choice[i] >= 0) { tq += quality[i]; tc += cost[i]; }
    totals[0] = tq;
    totals[1] = tc;
}

// Per prompt argmax of Q - lam * C (lam = 0: max quality). Outputs choice [P] (-1 where the mask allows
// nothing), the chosen quality/cost [P] as double (NaN where -1) and their totals.
template <class T>
Status tradeoff(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, double lam,
                std::int32_t* choice, double* quality, double* cost, double* totals) {
    T chk = 0, cmin = std::numeric_limits<T>::infinity();
    const T wc = static_cast<T>(lam);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (std::int64_t i = 0; i < P; ++i) {
        const T* q = Q.row(i);
        const T* c = C.row(i);
        const CheaperFirst<T> tie{c};
        const std::int32_t j = ok.data ? argbest_masked<Score::tradeoff>(q, c, ok.row(i), N, wc, chk, cmin, tie)
                                       : argbest<Score::tradeoff>(q, c, N, wc, chk, cmin, tie);
        choice[i] = j;
        quality[i] = j >= 0 ? static_cast<double>(q[j]) : nan;
        cost[i] = j >= 0 ? static_cast<double>(c[j]) : nan;
    }
    sum_chosen(choice, quality, cost, P, totals);
    return status_of(chk, cmin);
}

// Per prompt the cheapest allowed model with Q >= floor[i] (ties: higher quality, then lower index). Where no
// allowed model reaches the floor, the max-quality allowed model (ties: cheaper) is chosen and flagged[i] = 1.
template <class T>
Status min_cost(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, const double* floor,
                std::int32_t* choice, double* quality, double* cost, std::uint8_t* flagged, double* totals) {
    T chk = 0, cmin = std::numeric_limits<T>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (std::int64_t i = 0; i < P; ++i) {
        const T* q = Q.row(i);
        const T* c = C.row(i);
        const std::uint8_t* m = ok.row(i);
        const CheaperFirst<T> cheaper{c};
        const BetterFirst<T> better{q};
        std::int32_t cheap = -1, best = -1;
        for (std::int64_t j = 0; j < N; ++j) {
            chk += (q[j] + c[j]) * T(0);
            cmin = c[j] < cmin ? c[j] : cmin;
            if (m && !m[j]) continue;
            const auto jj = static_cast<std::int32_t>(j);
            if (best < 0 || q[j] > q[best] || (q[j] == q[best] && cheaper(jj, best))) best = jj;
            if (static_cast<double>(q[j]) >= floor[i] &&
                (cheap < 0 || c[j] < c[cheap] || (c[j] == c[cheap] && better(jj, cheap))))
                cheap = jj;
        }
        const std::int32_t j = cheap >= 0 ? cheap : best;
        choice[i] = j;
        flagged[i] = cheap < 0;
        quality[i] = j >= 0 ? static_cast<double>(q[j]) : nan;
        cost[i] = j >= 0 ? static_cast<double>(c[j]) : nan;
    }
    sum_chosen(choice, quality, cost, P, totals);
    return status_of(chk, cmin);
}

// The memory floor for benchmarks: one plain pass that reads every element of Q and C (sum of both).
template <class T>
double memory_floor(Rows<T> Q, Rows<T> C, std::int64_t P, std::int64_t N) {
    constexpr int kLanes = 8;  // independent partial sums so the compiler can vectorise
    T acc[kLanes] = {};
    for (std::int64_t i = 0; i < P; ++i) {
        const T* q = Q.row(i);
        const T* c = C.row(i);
        std::int64_t j = 0;
        for (; j + kLanes <= N; j += kLanes)
            for (int l = 0; l < kLanes; ++l) acc[l] += q[j + l] + c[j + l];
        for (; j < N; ++j) acc[0] += q[j] + c[j];
    }
    double total = 0.0;
    for (int l = 0; l < kLanes; ++l) total += static_cast<double>(acc[l]);
    return total;
}

}  // namespace routoo
