// pybind11 glue for the selector core: numpy in/out without copies, shape/dtype checks, GIL released around
// every solve. Value checks (NaN, infinity, negative cost) are folded into the core's single pass and come back
// as a status code; routoo_fast/selector.py turns a bad status into a ValueError naming the entry.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "routoo/budget.hpp"
#include "routoo/budget_fast.hpp"
#include "routoo/hull.hpp"
#include "routoo/per_prompt.hpp"

namespace py = pybind11;
using routoo::Mask;
using routoo::Rows;

namespace {

struct Shape {
    std::int64_t P, N;
};

// Q must be a C-contiguous [P, N] array; C the same dtype, [P, N] or [N]; allowed None or uint8 [P, N] / [N].
Shape check_inputs(const py::array& Q, const py::array& C, const py::object& allowed) {
    if (Q.ndim() != 2) throw std::invalid_argument("Q must be 2-D [n_prompts, n_models], got ndim=" + std::to_string(Q.ndim()));
    const Shape s{Q.shape(0), Q.shape(1)};
    if (!(Q.flags() & py::array::c_style)) throw std::invalid_argument("Q must be C-contiguous");
    if (!(C.flags() & py::array::c_style)) throw std::invalid_argument("C must be C-contiguous");
    if (!Q.dtype().is(C.dtype())) throw std::invalid_argument("Q and C must have the same dtype");
    const bool row = C.ndim() == 1 && C.shape(0) == s.N;
    const bool full = C.ndim() == 2 && C.shape(0) == s.P && C.shape(1) == s.N;
    if (!row && !full) throw std::invalid_argument("C must have shape [n_prompts, n_models] or [n_models]");
    if (!allowed.is_none()) {
        auto a = py::cast<py::array>(allowed);
        if (!a.dtype().is(py::dtype::of<std::uint8_t>())) throw std::invalid_argument("allowed must be uint8");
        if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("allowed must be C-contiguous");
        const bool arow = a.ndim() == 1 && a.shape(0) == s.N;
        const bool afull = a.ndim() == 2 && a.shape(0) == s.P && a.shape(1) == s.N;
        if (!arow && !afull) throw std::invalid_argument("allowed must have shape [n_prompts, n_models] or [n_models]");
    }
    return s;
}

template <class T>
Rows<T> rows(const py::array& a, std::int64_t N) {
    return {static_cast<const T*>(a.data()), a.ndim() == 2 ? static_cast<std::ptrdiff_t>(N) : 0};
}

Mask mask(const py::object& allowed, std::int64_t N) {
    if (allowed.is_none()) return {};
    auto a = py::cast<py::array>(allowed);
    return {static_cast<const std::uint8_t*>(a.data()), a.ndim() == 2 ? static_cast<std::ptrdiff_t>(N) : 0};
}

// Call f.template operator()<T>() with T = float or double, from Q's dtype.
template <class F>
auto dispatch(const py::array& Q, F&& f) {
    if (Q.dtype().is(py::dtype::of<float>())) return f(float{});
    if (Q.dtype().is(py::dtype::of<double>())) return f(double{});
    throw std::invalid_argument("Q must be float32 or float64");
}

py::tuple tradeoff(const py::array& Q, const py::array& C, double lam, const py::object& allowed) {
    const Shape s = check_inputs(Q, C, allowed);
    py::array_t<std::int32_t> choice(s.P);
    py::array_t<double> quality(s.P), cost(s.P);
    const Mask m = mask(allowed, s.N);
    auto* ch = choice.mutable_data();
    auto* qu = quality.mutable_data();
    auto* co = cost.mutable_data();
    double totals[2];
    const auto status = dispatch(Q, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        return routoo::tradeoff<T>(rows<T>(Q, s.N), rows<T>(C, s.N), m, s.P, s.N, lam, ch, qu, co, totals);
    });
    py::array_t<bool> feasible(s.P);
    auto* fe = feasible.mutable_data();
    for (std::int64_t i = 0; i < s.P; ++i) fe[i] = ch[i] >= 0;
    return py::make_tuple(choice, quality, cost, feasible, totals[0], totals[1], static_cast<int>(status));
}

py::tuple min_cost(const py::array& Q, const py::array& C, const py::array_t<double, py::array::c_style>& floor,
                   const py::object& allowed) {
    const Shape s = check_inputs(Q, C, allowed);
    if (floor.ndim() != 1 || floor.shape(0) != s.P) throw std::invalid_argument("min_quality must have shape [n_prompts]");
    py::array_t<std::int32_t> choice(s.P);
    py::array_t<double> quality(s.P), cost(s.P);
    py::array_t<std::uint8_t> flagged(s.P);
    const Mask m = mask(allowed, s.N);
    auto* ch = choice.mutable_data();
    auto* qu = quality.mutable_data();
    auto* co = cost.mutable_data();
    auto* fl = flagged.mutable_data();
    const double* fq = floor.data();
    double totals[2];
    const auto status = dispatch(Q, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        return routoo::min_cost<T>(rows<T>(Q, s.N), rows<T>(C, s.N), m, s.P, s.N, fq, ch, qu, co, fl, totals);
    });
    return py::make_tuple(choice, quality, cost, flagged, totals[0], totals[1], static_cast<int>(status));
}

routoo::Status hulls(const py::array& Q, const py::array& C, const py::object& allowed, Shape s, routoo::Hulls& h) {
    const Mask m = mask(allowed, s.N);
    return dispatch(Q, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        return routoo::build_hulls<T>(rows<T>(Q, s.N), rows<T>(C, s.N), m, s.P, s.N, h);
    });
}

// Per-thread budget storage reused across calls: fresh buffers of this size (tens of MB at 1e5 prompts)
// cost more in page faults than the solve itself. Buffers above kKeepBytes are released after the call.
routoo::BudgetWork& budget_workspace() {
    thread_local routoo::BudgetWork w;
    return w;
}

// Returns a dict; on a bad status, an empty prompt or a budget below the cheapest total, it holds only the
// diagnosis (status, empty_prompt, min_total_cost) and no solution; a solution comes with the chosen
// models' quality and cost (float64 [P], the inputs' values). `path` says which solver answered
// (0 full, 1 fast, 2 fast bracket missed then full). fast_min_prompts and bracket are for tests and
// benchmarks: the batch size from which the fast path is tried, and a forced bracket (lo, hi) for it.
py::dict budget(const py::array& Q, const py::array& C, double total_budget, const py::object& allowed,
                std::int64_t fast_min_prompts, const py::object& bracket) {
    const Shape s = check_inputs(Q, C, allowed);
    routoo::BudgetOptions opt;
    opt.fast_min_prompts = fast_min_prompts;
    if (!bracket.is_none()) {
        const auto b = py::cast<py::sequence>(bracket);
        if (b.size() != 2) throw std::invalid_argument("bracket must be (lo, hi)");
        opt.lo = py::cast<double>(b[0]);
        opt.hi = py::cast<double>(b[1]);
        if (!(opt.lo >= 0 && opt.hi >= opt.lo)) throw std::invalid_argument("bracket must be (lo, hi) with 0 <= lo <= hi");
        opt.forced = true;
    }
    routoo::BudgetWork& w = budget_workspace();
    struct Trim {
        routoo::BudgetWork& w;
        ~Trim() {
            constexpr std::size_t kKeepBytes = std::size_t(256) << 20;
            if (w.bytes() > kKeepBytes) w = routoo::BudgetWork{};
        }
    } trim_on_exit{w};
    py::array_t<std::int32_t> choice(s.P);
    py::array_t<double> quality(s.P), cost(s.P);
    auto* ch = choice.mutable_data();
    auto* qu = quality.mutable_data();
    auto* co = cost.mutable_data();
    const Mask m = mask(allowed, s.N);
    const routoo::BudgetOutcome o = dispatch(Q, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        return routoo::solve_budget_auto<T>(rows<T>(Q, s.N), rows<T>(C, s.N), m, s.P, s.N, total_budget, ch, qu, co, w, opt);
    });
    py::dict out;
    out["status"] = static_cast<int>(o.status);
    out["empty_prompt"] = o.empty_prompt;
    out["min_total_cost"] = o.min_total_cost;
    out["path"] = static_cast<int>(o.path);
    if (!o.solved) return out;
    const routoo::BudgetResult& r = o.result;
    out["choice"] = choice;
    out["quality"] = quality;
    out["cost"] = cost;
    out["lambda_star"] = r.lambda_star;
    out["lp_bound"] = r.lp_bound;
    out["break_gain"] = r.break_gain;
    out["break_prompt"] = r.break_prompt;
    out["total_quality"] = r.total_quality;
    out["total_cost"] = r.total_cost;
    return out;
}

// Hull edges of every prompt, for frontier(): base vertex (cheapest model) per prompt plus edge arrays.
py::dict hull_edges(const py::array& Q, const py::array& C, const py::object& allowed) {
    const Shape s = check_inputs(Q, C, allowed);
    routoo::Hulls h;
    py::dict out;
    const auto status = hulls(Q, C, allowed, s, h);
    out["status"] = static_cast<int>(status);
    out["empty_prompt"] = h.empty_prompt;
    if (status != routoo::Status::ok || h.empty_prompt >= 0) return out;
    const std::vector<routoo::Edge>& e = h.edges;
    const auto E = static_cast<py::ssize_t>(e.size());
    py::array_t<std::int32_t> base(s.P), prompt(E), pos(E);
    py::array_t<double> base_cost(s.P), base_quality(s.P), slope(E), dc(E), dq(E);
    for (std::int64_t i = 0; i < s.P; ++i) {
        base.mutable_data()[i] = h.model[h.offset[i]];
        base_cost.mutable_data()[i] = h.cost[h.offset[i]];
        base_quality.mutable_data()[i] = h.quality[h.offset[i]];
    }
    for (py::ssize_t k = 0; k < E; ++k) {
        prompt.mutable_data()[k] = e[k].prompt;
        pos.mutable_data()[k] = e[k].pos;
        slope.mutable_data()[k] = e[k].slope;
        dc.mutable_data()[k] = e[k].dc;
        dq.mutable_data()[k] = e[k].dq;
    }
    out["base"] = base; out["base_cost"] = base_cost; out["base_quality"] = base_quality;
    out["prompt"] = prompt; out["pos"] = pos; out["slope"] = slope; out["dc"] = dc; out["dq"] = dq;
    return out;
}

double memory_floor(const py::array& Q, const py::array& C) {
    const Shape s = check_inputs(Q, C, py::none());
    return dispatch(Q, [&](auto t) {
        using T = decltype(t);
        py::gil_scoped_release nogil;
        return routoo::memory_floor<T>(rows<T>(Q, s.N), rows<T>(C, s.N), s.P, s.N);
    });
}

}  // namespace

PYBIND11_MODULE(_selector, m) {
    m.doc() = "routoo_fast C++ selector core (use routoo_fast.selector; these functions skip value checks)";
    m.def("tradeoff", &tradeoff, py::arg("Q"), py::arg("C"), py::arg("lam"), py::arg("allowed") = py::none(),
          "argmax_j Q[i,j] - lam*C[i,j] per prompt -> (choice, quality, cost, feasible, total_quality, total_cost, status)");
    m.def("min_cost", &min_cost, py::arg("Q"), py::arg("C"), py::arg("min_quality"), py::arg("allowed") = py::none(),
          "cheapest model reaching the floor per prompt -> (choice, quality, cost, flagged, total_quality, total_cost, status)");
    m.def("budget", &budget, py::arg("Q"), py::arg("C"), py::arg("total_budget"), py::arg("allowed") = py::none(),
          py::arg("fast_min_prompts") = routoo::BudgetOptions{}.fast_min_prompts, py::arg("bracket") = py::none(),
          "multiple-choice knapsack via hulls + LP break slope -> dict");
    m.def("hull_edges", &hull_edges, py::arg("Q"), py::arg("C"), py::arg("allowed") = py::none(),
          "per-prompt upper hull edges -> dict");
    m.def("_memory_floor", &memory_floor, py::arg("Q"), py::arg("C"),
          "benchmark floor: one plain pass summing Q and C");
    m.attr("BUDGET_REL_SLACK") = routoo::kBudgetRelSlack;
}
