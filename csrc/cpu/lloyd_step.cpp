// lloyd_step: one iteration of the Lloyd loop over rows held in one block, in one call: the
// assignment (assign's tile, or assign_bounded's pass with its per-centroid bounds), the
// per-cluster sums and counts, the means, faiss's empty-cluster re-split, and with bounds each
// centroid's cumulative shift. The same kernels the loop otherwise calls one by one, so the
// results are theirs bit for bit; what goes away is the Python between them (about 0.2 ms an
// iteration, as much as the assignment itself at 5 000 x 32, K = 100).

#include <algorithm>
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

// shift[j] += an upper bound of ||new_j - old_j||, rounded up (fastdc/engine/pruning.py,
// Assigner.moved): the move summed in float64 (relative error far below 2^-22), grown by
// 2^-22, added in float64, grown by 2^-23 and 2^-149 so that the float32 total is never
// below the exact sum (a NaN or infinite move gives a NaN or infinite shift: no bound holds).
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

}  // namespace

void lloyd_step(const float* x, const float* c, const float* weights, const double* uniforms,
                i64 B, i64 N, i64 K, i64 D, i64 n_frozen, i64* labels, float* dist,
                float* lower, float* shift, bool first, float* new_c, float* counts,
                i64* nsplit, i64* computed, int n_threads, Isa isa, bool bf16) {
    if (lower != nullptr) {
        assign_bounded(x, c, shift, B, N, K, D, first, false, labels, lower, dist, computed,
                       n_threads, isa);
    } else {
        assign(x, c, B, N, K, D, false, dist, labels, nullptr, n_threads, isa, bf16);
        std::fill(computed, computed + B, N * K);
    }
    cluster_sums(x, labels, weights, B, N, D, K, new_c, counts, n_threads);
    for (i64 b = 0; b < B; ++b) {
        means_in_place(new_c + b * K * D, counts + b * K, K, D);
        std::copy(c + b * K * D, c + (b * K + n_frozen) * D, new_c + b * K * D);
    }
    std::vector<float> left(counts, counts + B * K);  // the re-split moves counts: a copy
    resplit_empty(new_c, left.data(), uniforms, B, K, D, n_frozen, nsplit);
    if (lower == nullptr) return;
    for (i64 b = 0; b < B; ++b) add_moves(c + b * K * D, new_c + b * K * D, K, D, shift + b * K);
}

}  // namespace fastdc
