// The batch budget for large batches: the same answer as solve_budget over every prompt's hull, from a core
// of prompts around the break slope (the expanding-core idea of Pisinger's minimal algorithm for the
// multiple-choice knapsack, reimplemented here on top of solve_budget's LP + round down + greedy fill).
//
//  1. Bracket. Hulls of a stratified sample of S prompts give the sample's break slope at the per-prompt
//     budget b = budget / P shifted by +-k standard errors of the sample's mean cost: [lo, hi] holds lambda*
//     with high probability (never assumed: step 4 checks it).
//  2. One pass over all prompts. Per row, the argmax v of q - lam_mid * c (the SIMD scan) and fixed_vertex():
//     when v is the hull vertex for all of [lo, hi] with no edge slope inside, the prompt is fixed at v: the LP
//     takes all its edges steeper than hi and none below lo. Otherwise (the core) its full hull is built while
//     the row is in cache; its edges steeper than hi are taken, those in [lo, hi] go to the break search.
//  3. Break search (select_break) over the core's bracket edges with the residual budget - sum of start costs.
//  4. Check: the break edge is in the bracket iff the residual is >= 0 and not every bracket edge fits (or
//     nothing is left below lo). Then every edge before it in LP order (slope desc, prompt, position) is an
//     edge steeper than hi or a bracket edge before it, so the LP solution and lambda* are solve_budget's,
//     unless rounding of the running sums could decide differently (near_tie: then the full path answers).
//     Otherwise: solve_budget over all hulls (the answer never depends on the guess). The LP bound agrees to
//     rounding (its fractional term uses the residual).
//  5. Greedy fill exactly as solve_budget: its candidates are the untaken edges (LP order after the break)
//     with dc <= left. Those are the bracket edges after the break, the core's edges below lo, and edges of
//     fixed prompts above their vertex. A fixed prompt's chain can only start if its next hull edge fits, and
//     that edge costs at least next_cost - c_v (next_cost: cheapest model of higher quality), so only fixed
//     prompts with next_cost - c_v <= left get their hull built; the others would take nothing (their next
//     edge is skipped for not fitting, and every later edge of theirs fails the "next edge" test).
//     left = budget - the LP's total cost is summed in prompt order over the same vertices as solve_budget,
//     so it is the same number, and so is every later step of the fill.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "budget.hpp"
#include "fixed_vertex.hpp"
#include "hull.hpp"

namespace routoo {

struct BudgetOptions {
    std::int64_t fast_min_prompts = 20000;  // smaller batches take the full path
    double sigmas = 5.0;                    // bracket half-width in standard errors of the sample mean cost
    bool forced = false;                    // use [lo, hi] below instead of the sample's bracket (tests)
    double lo = 0.0, hi = 0.0;
};

enum class BudgetPath : int { full = 0, fast = 1, fast_then_full = 2 };

struct BudgetOutcome {
    Status status = Status::ok;
    std::int64_t empty_prompt = -1;
    double min_total_cost = 0.0;
    bool solved = false;  // false: a bad status, an empty prompt or a budget below min_total_cost
    BudgetResult result;
    BudgetPath path = BudgetPath::full;
};

namespace detail {
// Could solve_budget's rounding decide the break differently? Both solvers compare running sums of the same
// doubles with the residual budget, in different orders: solve_budget subtracts the cheapest total (P terms)
// and then quickselect partition sums of the taken edges (at most P * (N - 1) terms), this path the start
// costs (P terms) and the taken bracket edges. Each differs from the exact value by at most
// gamma_n * (budget + min_total + start_cost) with n the number of terms (gamma_n = n u / (1 - n u)). The
// decisions agree when the remaining residual is farther than twice that from 0 and, for a break edge, from
// its dc. Otherwise the full path answers: the result stays solve_budget's to the bit (about 2 eps / dc of
// batches at the exact boundary, e.g. a budget equal to the cost of every prompt's best model).
// One exception needs no margin: when every prompt starts on its cheapest model (hi = inf) and no edge is
// taken, both residuals are the same number (budget - the same sum of the same costs) and no sum of edges
// touched it; a partition sum that holds the first edge is never below that edge's dc (rounding is monotone).
inline bool near_tie(std::int64_t P, std::int64_t N, double budget, double min_total, double start_cost,
                     bool from_cheapest, const std::vector<Edge>& e, std::size_t t, double residual) {
    if (from_cheapest && t == 0 && !e.empty()) return false;
    const double n = static_cast<double>(P) * static_cast<double>(std::max<std::int64_t>(N, 2)) + 64.0;
    const double u = std::ldexp(1.0, -53);
    const double gamma = n * u / (1.0 - n * u);
    const double eps = 2.0 * gamma * (std::fabs(budget) + std::fabs(min_total) + std::fabs(start_cost));
    if (t == e.size()) return !e.empty() || start_cost != min_total ? residual <= eps : false;
    return residual <= eps || e[t].dc - residual <= eps;
}

// A candidate of the greedy fill: an edge with its prompt's true index (LP order) and its level slot.
struct FillEdge {
    Edge e;
    std::int32_t slot;
};

}  // namespace detail

struct BudgetWork {
    Hulls all;                        // full path: every prompt's hull
    Hulls sample, core, extra;        // fast path: sampled prompts, core prompts, fixed prompts the fill may touch
    std::vector<double> next_cost;    // [P] fixed prompts: cheapest cost of higher quality (+inf: top; core: +inf)
    std::vector<std::int32_t> core_prompt, extra_prompt;  // slot -> prompt
    std::vector<std::int32_t> level;  // core then extra slots: vertices taken
    std::vector<Edge> between;        // core edges with slope in [lo, hi]
    std::vector<detail::FillEdge> fit;  // greedy fill candidates

    std::size_t bytes() const {
        auto hb = [](const Hulls& h) {
            return h.edges.capacity() * sizeof(Edge) + h.model.capacity() * 20 + h.offset.capacity() * 8 +
                   h.level.capacity() * 4;
        };
        return hb(all) + hb(sample) + hb(core) + hb(extra) + next_cost.capacity() * 8 +
               (core_prompt.capacity() + extra_prompt.capacity() + level.capacity()) * 4 +
               between.capacity() * sizeof(Edge) + fit.capacity() * sizeof(detail::FillEdge);
    }
};

// A budget at most this fraction below the cheapest total (every prompt on its cheapest model) counts as that total:
// it gets every prompt's cheapest model, and total_cost may exceed it by that much. How a caller sums the minima
// (numpy's pairwise sum, mean * n_prompts, another order) moves the total by rounding only: at most (P - 1) u relative
// for P prompts (u = 2^-53), under 1e-9 up to ~9e6 prompts. Any lower budget is refused. The reference
// (routoo_fast/_reference.py) applies the same rule.
inline constexpr double kBudgetRelSlack = 1e-9;

namespace detail {

inline bool budget_too_small(double budget, double min_total_cost) {
    return budget < min_total_cost * (1.0 - kBudgetRelSlack);
}

template <class T>
BudgetOutcome budget_full(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, double budget,
                          std::int32_t* choice, double* quality, double* cost, BudgetWork& w) {
    BudgetOutcome out;
    out.status = build_hulls<T>(Q, C, ok, P, N, w.all);
    out.empty_prompt = w.all.empty_prompt;
    out.min_total_cost = w.all.min_total_cost;
    if (out.status != Status::ok || out.empty_prompt >= 0 || budget_too_small(budget, out.min_total_cost)) return out;
    out.result = solve_budget(w.all, budget, choice, quality, cost);
    out.solved = true;
    return out;
}

inline std::uint64_t splitmix(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Break slope of the sample's LP at residual r (hull edges e, reordered): +inf when r < 0 (even the cheapest
// models overspend), 0 when every edge fits.
inline double break_slope(std::vector<Edge>& e, double r) {
    if (r < 0) return std::numeric_limits<double>::infinity();
    const std::size_t t = select_break(e, r);
    return t < e.size() ? e[t].slope : 0.0;
}

// Step 1: the bracket from the hulls of S stratified sample prompts (one pseudo-random prompt from each of S
// equal blocks, fixed seed). False when the sample cannot narrow anything (or holds a bad row: the full path
// then reports it).
template <class T>
bool sample_bracket(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, double budget, double sigmas,
                    BudgetWork& w, double& lo, double& hi) {
    const auto S = static_cast<std::int64_t>(
        std::min<double>(static_cast<double>(P) / 4, std::max(2048.0, 2.5 * std::cbrt(static_cast<double>(P) * P))));
    if (S < 2) return false;
    Hulls& h = w.sample;
    reset_hulls(h, S);
    T chk = 0, cmin = std::numeric_limits<T>::infinity();
    std::vector<HullPoint<T>> cand(static_cast<std::size_t>(N));
    for (std::int64_t k = 0; k < S; ++k) {
        const std::int64_t a = k * P / S, b = (k + 1) * P / S;
        const std::int64_t i = a + static_cast<std::int64_t>(splitmix(static_cast<std::uint64_t>(k)) % static_cast<std::uint64_t>(b - a));
        if (!append_hull(Q.row(i), C.row(i), ok.row(i), N, static_cast<std::int32_t>(k), h, cand.data(), chk, cmin))
            return false;
    }
    if (status_of(chk, cmin) != Status::ok) return false;
    // the sample's cost per prompt at its own break slope, and its spread
    const double per_prompt = budget / static_cast<double>(P);
    std::vector<std::int32_t>& level = h.level;
    level.assign(static_cast<std::size_t>(S), 0);
    double r = per_prompt * static_cast<double>(S) - h.min_total_cost;
    if (r >= 0) {
        const std::size_t t = select_break(h.edges, r);
        for (std::size_t k = 0; k < t; ++k) ++level[h.edges[k].prompt];
    }
    double mean = 0.0, sq = 0.0;
    for (std::int64_t k = 0; k < S; ++k) mean += h.cost[h.offset[k] + level[k]];
    mean /= static_cast<double>(S);
    for (std::int64_t k = 0; k < S; ++k) {
        const double d = h.cost[h.offset[k] + level[k]] - mean;
        sq += d * d;
    }
    const double sd = std::sqrt(sq / static_cast<double>(std::max<std::int64_t>(S - 1, 1)));
    const double se = sd / std::sqrt(static_cast<double>(S)) *
                      std::sqrt(std::max(0.0, 1.0 - static_cast<double>(S) / static_cast<double>(P)));
    const double shift = sigmas * se * static_cast<double>(S);
    const double base = per_prompt * static_cast<double>(S) - h.min_total_cost;
    hi = break_slope(h.edges, base - shift) * (1.0 + 1e-3);  // less budget: a steeper break
    lo = break_slope(h.edges, base + shift) * (1.0 - 1e-3);
    return !(std::isinf(hi) && lo == 0.0);
}

}  // namespace detail

// Steps 2-5 for a given bracket; vq, vc [P] receive each prompt's chosen quality and cost (as solve_budget's). Returns false (nothing usable in `out`) when the break is not in the bracket
// or a fixed prompt's hull does not contain its vertex (not expected; the full path then answers).
template <class T>
bool budget_in_bracket(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, double budget, double lo,
                       double hi, std::int32_t* choice, double* vq, double* vc, BudgetWork& w, BudgetOutcome& out) {
    w.next_cost.resize(static_cast<std::size_t>(P));
    reset_hulls(w.core, P / 16);
    w.core_prompt.clear();
    w.level.clear();
    w.between.clear();
    const double lo_m = lo * (1.0 - 1e-9), hi_p = hi * (1.0 + 1e-9);
    const bool by_cost = std::isinf(hi);  // every prompt starts on its cheapest model
    const T lam_mid = static_cast<T>(lo + (hi - lo) / 2);
    const double inf = std::numeric_limits<double>::infinity();
    T chk = 0, cmin = std::numeric_limits<T>::infinity();
    std::vector<detail::HullPoint<T>> cand(static_cast<std::size_t>(N));
    double* next_cost = w.next_cost.data();
    bool below_lo = false;  // some edge of slope < lo exists: "every bracket edge fits" is then a miss
    bool broken = false;    // a core row had no hull (non-finite values: the status reports them)
    // step 2
    out.empty_prompt = -1;
    out.min_total_cost = 0.0;
    for (std::int64_t i = 0; i < P; ++i) {
        const T* q = Q.row(i);
        const T* c = C.row(i);
        const std::uint8_t* m = ok.row(i);
        std::int32_t v;
        if (by_cost) {
            const BetterFirst<T> better{q};
            v = m ? argbest_masked<Score::cheapest>(q, c, m, N, T(0), chk, cmin, better)
                  : argbest<Score::cheapest>(q, c, N, T(0), chk, cmin, better);
        } else {
            const CheaperFirst<T> cheaper{c};
            v = m ? argbest_masked<Score::tradeoff>(q, c, m, N, lam_mid, chk, cmin, cheaper)
                  : argbest<Score::tradeoff>(q, c, N, lam_mid, chk, cmin, cheaper);
        }
        if (v < 0) {
            if (out.empty_prompt < 0) out.empty_prompt = i;
            vq[i] = vc[i] = 0.0;
            next_cost[i] = inf;
            choice[i] = -1;
            continue;
        }
        T cheapest, next;
        const bool fixed = fixed_vertex(q, c, m, N, v, lo_m, hi_p, cheapest, next);
        out.min_total_cost += static_cast<double>(cheapest);
        if (fixed) {
            choice[i] = v;
            vq[i] = static_cast<double>(q[v]);
            vc[i] = static_cast<double>(c[v]);
            next_cost[i] = static_cast<double>(next);
            below_lo |= next_cost[i] != inf;
            continue;
        }
        const auto slot = static_cast<std::int32_t>(w.core_prompt.size());
        w.core_prompt.push_back(static_cast<std::int32_t>(i));
        const std::size_t e0 = w.core.edges.size();
        if (!append_hull(q, c, m, N, slot, w.core, cand.data(), chk, cmin)) {  // only with non-finite values
            broken = true;
            w.level.push_back(0);
            vq[i] = vc[i] = 0.0;
            next_cost[i] = inf;
            choice[i] = -1;
            continue;
        }
        std::int32_t taken = 0;
        for (std::size_t k = e0; k < w.core.edges.size(); ++k) {
            const Edge& e = w.core.edges[k];
            if (e.slope > hi) ++taken;
            else if (e.slope >= lo) w.between.push_back(e);
            else below_lo = true;
        }
        w.level.push_back(taken);
        const std::int64_t at = w.core.offset[slot] + taken;
        choice[i] = w.core.model[at];
        vq[i] = w.core.quality[at];
        vc[i] = w.core.cost[at];
        next_cost[i] = inf;
    }
    out.status = status_of(chk, cmin);
    out.solved = false;
    if (out.status != Status::ok || out.empty_prompt >= 0 || detail::budget_too_small(budget, out.min_total_cost))
        return true;  // diagnosis only, the same as the full path's
    if (broken) return false;
    // step 3
    double start_cost = 0.0;
    for (std::int64_t i = 0; i < P; ++i) start_cost += vc[i];
    double residual = budget - start_cost;
    if (residual < 0) {
        // with hi = inf every prompt starts on its cheapest model, start_cost is min_total_cost summed the same
        // way, and solve_budget's clamp applies (a budget within kBudgetRelSlack below the cheapest total)
        if (!std::isinf(hi)) return false;  // the break is steeper than hi
        residual = 0;
    }
    std::vector<Edge>& e = w.between;
    const std::size_t t = select_break(e, residual);
    if (t == e.size() && below_lo) return false;  // the break is below lo
    if (detail::near_tie(P, N, budget, out.min_total_cost, start_cost, std::isinf(hi), e, t, residual)) return false;
    // step 4: the LP solution
    const auto ncore = static_cast<std::int64_t>(w.core_prompt.size());
    for (std::size_t k = 0; k < t; ++k) ++w.level[e[k].prompt];
    auto place = [&](const Hulls& h, std::int64_t slot, std::int32_t prompt, std::int32_t lev) {
        const std::int64_t at = h.offset[slot] + lev;
        choice[prompt] = h.model[at];
        vq[prompt] = h.quality[at];
        vc[prompt] = h.cost[at];
    };
    for (std::int64_t s = 0; s < ncore; ++s) place(w.core, s, w.core_prompt[s], w.level[s]);
    BudgetResult& r = out.result;
    r = BudgetResult{};
    for (std::int64_t i = 0; i < P; ++i) {
        r.total_quality += vq[i];
        r.total_cost += vc[i];
    }
    r.lp_bound = r.total_quality;
    if (t < e.size()) {
        const Edge br = e[t];
        r.lambda_star = br.slope;
        r.break_gain = br.dq;
        r.break_prompt = w.core_prompt[br.prompt];
        r.lp_bound += br.dq * (residual / br.dc);
        // step 5: the greedy fill, in two rounds. Every candidate of round 1 (bracket edges after the break,
        // slope >= lo) precedes every candidate of round 2 (slope < lo) in LP order, so running them one after
        // the other is the single sorted sweep of solve_budget; round 2 only needs edges that fit what round 1
        // left, which usually shrinks its candidates to a handful of prompts.
        double left = budget - r.total_cost;
        std::vector<detail::FillEdge>& fit = w.fit;
        auto sweep = [&]() {
            for (auto& f : fit) f.e.prompt = f.slot < ncore ? w.core_prompt[f.slot] : w.extra_prompt[f.slot - ncore];
            std::sort(fit.begin(), fit.end(),
                      [](const detail::FillEdge& a, const detail::FillEdge& b) { return edge_before(a.e, b.e); });
            for (const detail::FillEdge& f : fit) {
                if (f.e.dc > left || w.level[f.slot] + 1 != f.e.pos) continue;
                ++w.level[f.slot];
                left -= f.e.dc;
            }
        };
        fit.clear();
        for (std::size_t k = t; k < e.size(); ++k)
            if (e[k].dc <= left) fit.push_back({e[k], e[k].prompt});
        Hulls& hx = w.extra;
        reset_hulls(hx, 0);
        w.extra_prompt.clear();
        sweep();
        fit.clear();
        for (const Edge& x : w.core.edges)
            if (x.slope < lo && x.dc <= left) fit.push_back({x, x.prompt});
        for (std::int64_t i = 0; i < P; ++i) {
            if (!(next_cost[i] - vc[i] <= left)) continue;  // its next hull edge cannot fit
            const auto xs = static_cast<std::int32_t>(w.extra_prompt.size());
            w.extra_prompt.push_back(static_cast<std::int32_t>(i));
            const std::size_t e0 = hx.edges.size();
            append_hull(Q.row(i), C.row(i), ok.row(i), N, xs, hx, cand.data(), chk, cmin);
            std::int32_t pos = -1;
            for (std::int64_t a = hx.offset[xs]; a < hx.offset[xs + 1]; ++a)
                if (hx.model[a] == choice[i]) pos = static_cast<std::int32_t>(a - hx.offset[xs]);
            if (pos < 0) return false;
            w.level.push_back(pos);
            for (std::size_t k = e0; k < hx.edges.size(); ++k)
                if (hx.edges[k].pos > pos && hx.edges[k].dc <= left)
                    fit.push_back({hx.edges[k], static_cast<std::int32_t>(ncore + xs)});
        }
        sweep();
        for (std::int64_t s = 0; s < ncore; ++s) place(w.core, s, w.core_prompt[s], w.level[s]);
        for (std::size_t s = 0; s < w.extra_prompt.size(); ++s)
            place(hx, static_cast<std::int64_t>(s), w.extra_prompt[s], w.level[ncore + s]);
    }
    r.total_quality = r.total_cost = 0.0;  // in prompt order, as solve_budget
    for (std::int64_t i = 0; i < P; ++i) {
        r.total_quality += vq[i];
        r.total_cost += vc[i];
    }
    out.solved = true;
    return true;
}

// The batch budget: the fast path for large batches, the full path (build_hulls + solve_budget) otherwise and
// whenever the fast path's bracket misses.
template <class T>
BudgetOutcome solve_budget_auto(Rows<T> Q, Rows<T> C, Mask ok, std::int64_t P, std::int64_t N, double budget,
                                std::int32_t* choice, double* quality, double* cost, BudgetWork& w,
                                const BudgetOptions& opt = {}) {
    const bool want_fast = opt.forced || (P >= opt.fast_min_prompts && N >= 2);
    double lo = opt.lo, hi = opt.hi;
    if (want_fast && (opt.forced || detail::sample_bracket<T>(Q, C, ok, P, N, budget, opt.sigmas, w, lo, hi))) {
        BudgetOutcome out;
        if (budget_in_bracket<T>(Q, C, ok, P, N, budget, lo, hi, choice, quality, cost, w, out)) {
            out.path = BudgetPath::fast;
            return out;
        }
        BudgetOutcome full = detail::budget_full<T>(Q, C, ok, P, N, budget, choice, quality, cost, w);
        full.path = BudgetPath::fast_then_full;
        return full;
    }
    return detail::budget_full<T>(Q, C, ok, P, N, budget, choice, quality, cost, w);
}

}  // namespace routoo
