// lloyd_step: one iteration of the Lloyd loop over rows held in one block, in one call: the
// assignment (assign's tile, or assign_bounded's pass with its per-centroid bounds), the
// per-cluster sums and counts, the means, faiss's empty-cluster re-split, and with bounds each
// centroid's cumulative shift. The same kernels the loop otherwise calls one by one, so the
// results are theirs bit for bit; what goes away is the Python between them (about 0.2 ms an
// iteration, as much as the assignment itself at 5 000 x 32, K = 100).
//
// lloyd_run: the loop's iterations themselves, lloyd_step after lloyd_step, with the rules the
// Python loop applies between them (fastdc/engine/lloyd.py): the "elkan" passes' schedule
// (Assigner in fastdc/engine/pruning.py), the objective, and the stop test (StopCheck in
// fastdc/engine/convergence.py).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace fastdc {
namespace {

// sums [K, D] / counts [K] in place, as fastdc.ops.means_from_sums divides (float32, a count
// of 0 divides by 1: the sums of an empty cluster are 0).
void means_in_place(float* sums, const float* counts, i64 K, i64 D) {
    for (i64 j = 0; j < K; ++j) {
        const float n = counts[j] > 0.0f ? counts[j] : 1.0f;
        for (i64 d = 0; d < D; ++d) sums[j * D + d] = sums[j * D + d] / n;
    }
}

// shift[j] += an upper bound of ||new_j - old_j||, rounded up (fastdc.ops.lloyd_step's
// grow_shifts): the move summed in float64 (relative error far below 2^-22), grown by 2^-22,
// added in float64, grown by 2^-23 and 2^-149 so that the float32 total is never below the
// exact sum (a NaN or infinite move gives a NaN or infinite shift: no bound holds).
void add_moves(const float* old_c, const float* new_c, i64 K, i64 D, float* shift) {
    for (i64 j = 0; j < K; ++j) {
        double sq = 0.0;
        for (i64 d = 0; d < D; ++d) {
            const double v = static_cast<double>(new_c[j * D + d]) - old_c[j * D + d];
            sq += v * v;
        }
        const double total = static_cast<double>(shift[j]) + std::sqrt(sq) * (1.0 + 0x1p-22);
        shift[j] = static_cast<float>(total * (1.0 + 0x1p-23) + 0x1p-149);
    }
}

// The rows and options every iteration of a run shares.
struct Rows {
    const float* x;
    const float* weights;
    i64 B, N, K, D, n_frozen;
    int n_threads;
    Isa isa;
    bool bf16;
};

// The assignment of one iteration: assign_bounded's pass with bounds, assign's tile without.
void assignment(const Rows& r, const float* c, i64* labels, float* dist, float* lower,
                const float* shift, bool first, i64* computed) {
    if (lower != nullptr) {
        assign_bounded(r.x, c, shift, r.B, r.N, r.K, r.D, first, false, labels, lower, dist,
                       computed, r.n_threads, r.isa);
        return;
    }
    assign(r.x, c, r.B, r.N, r.K, r.D, false, dist, labels, nullptr, r.n_threads, r.isa, r.bf16);
    std::fill(computed, computed + r.B, r.N * r.K);
}

// The rest of the iteration: sums and counts, means, frozen centroids, re-split, shifts.
void update(const Rows& r, const float* c, const i64* labels, const double* uniforms,
            float* shift, float* new_c, float* counts, i64* nsplit) {
    const i64 K = r.K, D = r.D;
    cluster_sums(r.x, labels, r.weights, r.B, r.N, D, K, new_c, counts, r.n_threads);
    for (i64 b = 0; b < r.B; ++b) {
        means_in_place(new_c + b * K * D, counts + b * K, K, D);
        std::copy(c + b * K * D, c + (b * K + r.n_frozen) * D, new_c + b * K * D);
    }
    std::vector<float> left(counts, counts + r.B * K);  // the re-split moves counts: a copy
    resplit_empty(new_c, left.data(), uniforms, r.B, K, D, r.n_frozen, nsplit);
    if (shift == nullptr) return;
    for (i64 b = 0; b < r.B; ++b) add_moves(c + b * K * D, new_c + b * K * D, K, D, shift + b * K);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void lloyd_step(const float* x, const float* c, const float* weights, const double* uniforms,
                i64 B, i64 N, i64 K, i64 D, i64 n_frozen, i64* labels, float* dist,
                float* lower, float* shift, bool first, float* new_c, float* counts,
                i64* nsplit, i64* computed, int n_threads, Isa isa, bool bf16) {
    const Rows r{x, weights, B, N, K, D, n_frozen, n_threads, isa, bf16};
    assignment(r, c, labels, dist, lower, shift, first, computed);
    update(r, c, labels, uniforms, lower != nullptr ? shift : nullptr, new_c, counts, nsplit);
}

i64 lloyd_run(const float* x, const float* weights, const double* uniforms, i64 B, i64 N, i64 K,
              i64 D, i64 niter, i64 n_frozen, float* c, i64* labels, float* dist, float* lower,
              float* shift, const ElkanSchedule& schedule, double threshold,
              const LloydRecords& rec, bool* refresh_next, int* reason, int n_threads, Isa isa,
              bool bf16) {
    const auto t0 = std::chrono::steady_clock::now();
    const Rows r{x, weights, B, N, K, D, n_frozen, n_threads, isa, bf16};
    std::vector<float> other(B * K * D);  // the centroids alternate between c and this
    float* cur = c;
    float* next = other.data();
    const bool stopping = threshold >= 0.0;
    std::vector<i64> previous(stopping ? B * N : 0, -1);  // the last iteration's labels
    std::vector<char> done(B, 0), split_before(B, 0);
    std::vector<double> obj_before;
    bool refresh = true;
    i64 passes = 0, it = 0;
    double search = 0.0;
    *reason = 0;
    while (it < niter) {
        // "elkan": a pass that scores every pair sets the bounds only when the next one reads
        // them; without bounds, assign's tile
        const bool bounded =
            lower != nullptr && !(refresh && passes < schedule.tile_passes - 1);
        i64* computed = rec.computed + it * B;
        const auto t_assign = std::chrono::steady_clock::now();
        assignment(r, cur, labels, dist, bounded ? lower : nullptr, shift, refresh, computed);
        search += seconds_since(t_assign);
        update(r, cur, labels, uniforms + it * B * K, bounded ? shift : nullptr, next,
               rec.counts + it * B * K, rec.nsplit + it * B);
        std::swap(cur, next);
        double* obj = rec.obj + it * B;
        for (i64 b = 0; b < B; ++b) {  // in row order (fastdc.engine.rows.Block.objective)
            double s = 0.0;
            for (i64 i = 0; i < N; ++i) s += dist[b * N + i];
            obj[b] = s;
        }
        if (lower != nullptr) {
            ++passes;
            double total = 0.0;
            for (i64 b = 0; b < B; ++b) total += static_cast<double>(computed[b]);
            refresh = passes < schedule.tile_passes ||
                      (!refresh && total > schedule.refresh_above * static_cast<double>(N * K * B));
        }
        rec.seconds[it] = seconds_since(t0);
        rec.search[it] = search;
        ++it;
        if (!stopping) continue;
        bool all_done = true, all_fixed = true;
        for (i64 b = 0; b < B; ++b) {
            i64 changed = 0;
            for (i64 i = 0; i < N; ++i) {
                changed += labels[b * N + i] != previous[b * N + i];
                previous[b * N + i] = labels[b * N + i];
            }
            rec.changed[(it - 1) * B + b] = changed;
            const bool split = rec.nsplit[(it - 1) * B + b] > 0;
            const bool fixed = changed == 0 && !split && !split_before[b];
            bool stop = fixed;
            if (threshold > 0.0 && !obj_before.empty()) {
                const double prev = obj_before[b];
                stop = stop ||
                       (prev != 0.0 && std::abs(prev - obj[b]) <= threshold * std::abs(prev));
            }
            done[b] = done[b] || stop;
            split_before[b] = split;
            all_done = all_done && done[b];
            all_fixed = all_fixed && fixed;
        }
        obj_before.assign(obj, obj + B);
        if (all_done) {
            *reason = all_fixed ? 1 : 2;
            break;
        }
    }
    if (cur != c) std::copy(cur, cur + B * K * D, c);
    *refresh_next = refresh;
    return it;
}

}  // namespace fastdc
