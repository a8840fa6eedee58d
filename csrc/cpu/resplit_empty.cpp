// resplit_empty: faiss's empty-cluster re-split, bit-identical to resplit_empty_ref.
//
// For each empty cluster ci >= n_frozen (found before any split), in increasing order:
//   w_j = max(count_j - 1, 0) for non-frozen j (or count_j if those sum to 0), float64;
//   donor cj = first j with cumsum(w)[j] > u[ci] * sum(w) (sequential float64 cumsum), capped
//   at K - 1; c[ci] = c[cj] * up, c[cj] *= down (float32, eps = 1/1024 alternating on dims);
//   count[ci] = count[cj] / 2, count[cj] -= count[ci] (float32).
// Serial: each split changes the weights the next one sees, and K is small next to N.

#include <algorithm>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace fastdc {
namespace {

constexpr float EPS = 1.0f / 1024.0f;  // faiss's relative perturbation (exact in float32)

// Donor index for uniform u given counts [K]; -1 when no cluster can donate (total <= 0).
i64 choose_donor(const float* cnt, i64 K, i64 n_frozen, double u, std::vector<double>& cs) {
    bool any = false;
    for (i64 j = 0; j < K; ++j) {
        const double w = j < n_frozen ? 0.0 : std::max(static_cast<double>(cnt[j]) - 1.0, 0.0);
        cs[j] = w;
        any = any || w != 0.0;
    }
    if (!any) {  // every cluster has <= 1 member: weight by the counts themselves
        for (i64 j = 0; j < K; ++j) cs[j] = j < n_frozen ? 0.0 : static_cast<double>(cnt[j]);
    }
    for (i64 j = 1; j < K; ++j) cs[j] += cs[j - 1];  // same order as torch's cumsum
    const double total = cs[K - 1];
    if (!(total > 0.0)) return -1;
    const double v = u * total;
    i64 lo = 0, hi = K;  // searchsorted(right=True): first j with cs[j] > v
    while (lo < hi) {
        const i64 mid = lo + (hi - lo) / 2;
        if (cs[mid] > v) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return std::min(lo, K - 1);
}

}  // namespace

void resplit_empty(float* centroids, float* counts, const double* uniforms, i64 B, i64 K, i64 D,
                   i64 n_frozen, i64* nsplit) {
    std::vector<double> cs(static_cast<std::size_t>(K));
    std::vector<i64> empties;
    for (i64 b = 0; b < B; ++b) {
        float* c = centroids + b * K * D;
        float* cnt = counts + b * K;
        nsplit[b] = 0;
        empties.clear();
        for (i64 j = n_frozen; j < K; ++j)
            if (cnt[j] == 0.0f) empties.push_back(j);
        for (const i64 ci : empties) {
            const i64 cj = choose_donor(cnt, K, n_frozen, uniforms[b * K + ci], cs);
            if (cj < 0) break;
            float* dst = c + ci * D;
            float* src = c + cj * D;
            for (i64 d = 0; d < D; ++d) dst[d] = src[d] * (d % 2 == 0 ? 1.0f + EPS : 1.0f - EPS);
            for (i64 d = 0; d < D; ++d) src[d] = src[d] * (d % 2 == 0 ? 1.0f - EPS : 1.0f + EPS);
            cnt[ci] = cnt[cj] / 2.0f;
            cnt[cj] -= cnt[ci];
            ++nsplit[b];
        }
    }
}

}  // namespace fastdc
