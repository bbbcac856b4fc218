// Batch budget: choose one model per prompt maximising sum Q subject to sum C <= budget (multiple-choice
// knapsack), through its LP relaxation (Sinha & Zoltners 1979; Dyer 1984; Zemel 1984).
//
// Every prompt starts at its cheapest hull vertex. Upgrading along hull edge e costs dc_e and gains dq_e; the LP
// takes edges in order of slope dq/dc (descending) until the residual budget runs out, the last one
// fractionally. Because each hull is concave, that order takes a prefix of every prompt's edges. The break edge
// is found by a weighted quickselect over all edges (expected O(E)), no full sort. The integer answer rounds the
// fractional prompt down and then fills the leftover budget greedily: among edges that still fit, best slope
// first, each only if it is its prompt's next edge.
// Edge order is a strict total order: slope descending, then prompt, then position along the hull, so the
// result does not depend on the pivots.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "hull.hpp"

namespace routoo {

// a before b in the LP order
inline bool edge_before(const Edge& a, const Edge& b) {
    if (a.slope != b.slope) return a.slope > b.slope;
    if (a.prompt != b.prompt) return a.prompt < b.prompt;
    return a.pos < b.pos;
}

struct BudgetResult {
    double lambda_star = 0.0;  // slope of the break edge (0 when every prompt gets its best model)
    double lp_bound = 0.0;     // LP optimum: an upper bound on the integer optimum
    double break_gain = 0.0;   // dq of the break edge: lp_bound - integer optimum <= break_gain
    std::int64_t break_prompt = -1;
    double total_quality = 0.0, total_cost = 0.0;
};

// Weighted quickselect: reorders e so that e[0 .. t) are exactly the edges before the break edge in LP order,
// with their total dc <= residual, and returns t (t == e.size() when everything fits). `residual` is reduced by
// the taken edges' dc.
inline std::size_t select_break(std::vector<Edge>& e, double& residual) {
    std::size_t lo = 0, hi = e.size();
    std::uint64_t rng = 0x9E3779B97F4A7C15ull;  // fixed seed: pivots only affect speed, never the answer
    while (lo < hi) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        std::swap(e[lo], e[lo + rng % (hi - lo)]);
        const Edge pivot = e[lo];
        // partition (lo, hi) into [before pivot | after pivot], summing dc of the "before" part
        std::size_t mid = lo + 1;
        double w = 0.0;
        for (std::size_t k = lo + 1; k < hi; ++k)
            if (edge_before(e[k], pivot)) { w += e[k].dc; std::swap(e[k], e[mid++]); }
        std::swap(e[lo], e[mid - 1]);  // pivot now at mid - 1, everything before it precedes it
        const std::size_t p = mid - 1;
        if (w > residual) { hi = p; continue; }  // the break lies among the edges before the pivot
        residual -= w;
        if (e[p].dc > residual) return p;        // the pivot itself is the break edge
        residual -= e[p].dc;
        lo = p + 1;
    }
    return lo;
}

// Solve; choice [P] gets model indices, quality and cost [P] (when not null) the chosen models' values.
// Precondition: h has no empty prompt and budget >= h.min_total_cost. Reorders h.edges (the selection
// partitions them in place).
inline BudgetResult solve_budget(Hulls& h, double budget, std::int32_t* choice, double* quality = nullptr,
                                 double* cost = nullptr) {
    const std::int64_t P = static_cast<std::int64_t>(h.offset.size()) - 1;
    std::vector<Edge>& e = h.edges;
    std::vector<std::int32_t>& level = h.level;
    level.assign(static_cast<std::size_t>(P), 0);
    BudgetResult r;
    double residual = budget - h.min_total_cost;
    if (residual < 0) residual = 0;
    const std::size_t t = select_break(e, residual);
    for (std::size_t k = 0; k < t; ++k) ++level[e[k].prompt];
    for (std::int64_t i = 0; i < P; ++i) {
        const std::int64_t v = h.offset[i] + level[i];
        r.total_quality += h.quality[v];
        r.total_cost += h.cost[v];
    }
    r.lp_bound = r.total_quality;
    if (t < e.size()) {
        const Edge& br = e[t];
        r.lambda_star = br.slope;
        r.break_gain = br.dq;
        r.break_prompt = br.prompt;
        r.lp_bound += br.dq * (residual / br.dc);
        // greedy fill of what rounding down left: candidates are untaken edges that fit, in LP order
        double left = budget - r.total_cost;
        std::vector<Edge> fit;
        for (std::size_t k = t; k < e.size(); ++k)
            if (e[k].dc <= left) fit.push_back(e[k]);
        std::sort(fit.begin(), fit.end(), edge_before);
        for (const Edge& f : fit) {
            if (f.dc > left || level[f.prompt] + 1 != f.pos) continue;
            ++level[f.prompt];
            left -= f.dc;
        }
    }
    r.total_quality = r.total_cost = 0.0;  // recomputed from the vertices: no drift from summed differences
    for (std::int64_t i = 0; i < P; ++i) {
        const std::int64_t v = h.offset[i] + level[i];
        choice[i] = h.model[v];
        if (quality) quality[i] = h.quality[v];
        if (cost) cost[i] = h.cost[v];
        r.total_quality += h.quality[v];
        r.total_cost += h.cost[v];
    }
    return r;
}

}  // namespace routoo
