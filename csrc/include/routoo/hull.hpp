// Per-prompt upper convex hull over (cost, quality), the LP-relevant models of a multiple-choice knapsack.
//
// For prompt i the hull is the chain of allowed models v_0, v_1, ..., v_k with strictly increasing cost and
// quality (dominated models dropped) and non-increasing edge slopes (dq/dc); v_0 is the cheapest model (ties:
// higher quality, then lower index), v_k the best one (ties: cheaper, then lower index). Collinear middle
// points are kept: they are finer integer steps along the same LP edge.
// Cost O(N) per prompt plus gift wrapping over the few models that survive two linear filters.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "per_prompt.hpp"

namespace routoo {

// One hull edge: upgrading `prompt` from vertex pos - 1 to pos costs dc and gains dq (slope = dq / dc > 0).
struct Edge {
    double slope, dc, dq;
    std::int32_t prompt, pos;  // pos: index (1..k) of the edge's upper vertex within the prompt's hull
};

struct Hulls {
    std::vector<std::int64_t> offset;  // [P + 1]: prompt i owns vertices offset[i] .. offset[i + 1] - 1
    std::vector<std::int32_t> model;   // vertex -> model index
    std::vector<double> cost, quality; // vertex -> (cost, quality)
    std::vector<Edge> edges;           // hull edges, prompt by prompt, built with the vertices
    std::vector<std::int32_t> level;   // solver scratch: vertices taken per prompt
    double min_total_cost = 0.0;       // sum over prompts of the cheapest allowed cost
    std::int64_t empty_prompt = -1;    // first prompt with no allowed model, or -1
};

namespace detail {
// Is b strictly below the segment a -> c (cost increasing)? Exact for float inputs (differences and products
// of floats are exact in double); a tiny rounding for double inputs only matters for near-collinear points.
inline bool below(double ca, double qa, double cb, double qb, double cc, double qc) {
    return (qb - qa) * (cc - ca) < (qc - qa) * (cb - ca);
}
}  // namespace detail

namespace detail {
template <class T>
struct HullPoint {
    T q, c;
    std::int32_t j;
};
}  // namespace detail

// Appends one prompt's hull (row q, c of N models, optional mask row m) to h; its edges get prompt = label.
// Adds the cheapest allowed cost to h.min_total_cost. Returns false, appending an empty prompt, when no model
// is allowed (or no score compares). `cand` is scratch of at least N points; chk / cmin collect value checks.
template <class T>
bool append_hull(const T* q, const T* c, const std::uint8_t* m, std::int64_t N, std::int32_t label, Hulls& h,
                 detail::HullPoint<T>* cand, T& chk, T& cmin) {
    // pass 1: the best model b (top of the hull: max q, ties cheaper) and the cheapest model l (its bottom:
    // max -c, ties higher quality)
    const CheaperFirst<T> cheaper{c};
    const BetterFirst<T> better{q};
    const std::int32_t b = m ? argbest_masked<Score::tradeoff>(q, c, m, N, T(0), chk, cmin, cheaper)
                             : argbest<Score::tradeoff>(q, c, N, T(0), chk, cmin, cheaper);
    const std::int32_t l = m ? argbest_masked<Score::cheapest>(q, c, m, N, T(0), chk, cmin, better)
                             : argbest<Score::cheapest>(q, c, N, T(0), chk, cmin, better);
    if (b < 0 || l < 0) {
        h.offset.push_back(static_cast<std::int64_t>(h.model.size()));
        return false;
    }
    const double bq = static_cast<double>(q[b]), bc = static_cast<double>(c[b]);
    const double lq = static_cast<double>(q[l]), lc = static_cast<double>(c[l]);
    h.min_total_cost += lc;
    // pass 2: keep only models strictly inside the box (lc, bc) x (lq, bq) and not below the line L -> B;
    // everything else is dominated by L or B or lies under the hull. The box test runs 8 models at a time
    // in T (exact); the line test in double only for the few inside the box.
    std::size_t k = 0;
    auto consider = [&](std::int64_t j) {  // branch-free append: the outcome is unpredictable
        const double qj = static_cast<double>(q[j]), cj = static_cast<double>(c[j]);
        cand[k] = {q[j], c[j], static_cast<std::int32_t>(j)};
        k += static_cast<std::size_t>((!m || m[j]) & !detail::below(lc, lq, cj, qj, bc, bq));
    };
    if (b != l) {
        // the box masks of up to 64 models go into one word first: one unpredictable loop exit per 64
        // models instead of one per 8
        std::int64_t j = 0;
        for (; j + 8 <= N;) {
            const std::int64_t base = j;
            std::uint64_t word = 0;
            for (; j + 8 <= N && j - base < 64; j += 8)
                word |= static_cast<std::uint64_t>(detail::box_mask8(q + j, c + j, q[l], c[l], q[b], c[b])) << (j - base);
            for (; word; word &= word - 1) consider(base + __builtin_ctzll(word));
        }
        for (; j < N; ++j)
            if (c[j] > c[l] && c[j] < c[b] && q[j] > q[l] && q[j] < q[b]) consider(j);
    }
    // gift wrapping from L to B over the survivors: the next vertex is the candidate right of the current
    // one with the steepest slope from it (nearest first on equal slopes, so collinear points stay; the
    // lower index on identical points). Branch-free inner loop; a few steps per prompt.
    const std::size_t first = h.model.size();
    auto push = [&](std::int32_t j, double cj, double qj) {
        if (h.model.size() > first) {
            const double dc = cj - h.cost.back(), dq = qj - h.quality.back();
            h.edges.push_back({dq / dc, dc, dq, label, static_cast<std::int32_t>(h.model.size() - first)});
        }
        h.model.push_back(j); h.cost.push_back(cj); h.quality.push_back(qj);
    };
    push(l, lc, lq);
    double pc = lc, pq = lq;
    while (pc != bc || pq != bq) {
        double nc = bc, nq = bq;
        std::int32_t nj = b;
        for (std::size_t a = 0; a < k; ++a) {
            // cross product, not a division: exact for float inputs, the same predicate as the reference
            const double xc = static_cast<double>(cand[a].c), xq = static_cast<double>(cand[a].q);
            const double d = (xq - pq) * (nc - pc) - (nq - pq) * (xc - pc);  // > 0: x is steeper than n
            const bool take = (xc > pc) & ((d > 0) | ((d == 0) & (xc < nc)));
            nc = take ? xc : nc;
            nq = take ? xq : nq;
            nj = take ? cand[a].j : nj;
        }
        push(nj, nc, nq);
        pc = nc;
        pq = nq;
    }
    h.offset.push_back(static_cast<std::int64_t>(h.model.size()));
    return true;
}

// Empties h for about `prompts` prompts (capacity kept).
inline void reset_hulls(Hulls& h, std::int64_t prompts) {
    h.offset.assign(1, 0);
    h.offset.reserve(static_cast<std::size_t>(prompts) + 1);
    h.model.clear(); h.cost.clear(); h.quality.clear();
    const auto guess = static_cast<std::size_t>(4 * prompts);  // random data averages under 4 vertices per prompt
    h.model.reserve(guess); h.cost.reserve(guess); h.quality.reserve(guess);
    h.edges.clear();
    h.edges.reserve(guess - static_cast<std::size_t>(prompts));
    h.min_total_cost = 0.0;
    h.empty_prompt = -1;
}

template <class T>
Status build_hulls(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, Hulls& h) {
    reset_hulls(h, P);
    T chk = 0, cmin = std::numeric_limits<T>::infinity();
    std::vector<detail::HullPoint<T>> cand(static_cast<std::size_t>(N));
    for (std::int64_t i = 0; i < P; ++i)
        if (!append_hull(Q.row(i), C.row(i), ok.row(i), N, static_cast<std::int32_t>(i), h, cand.data(), chk, cmin) &&
            h.empty_prompt < 0)
            h.empty_prompt = i;
    return status_of(chk, cmin);
}

}  // namespace routoo
