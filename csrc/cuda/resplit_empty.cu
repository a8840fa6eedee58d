// resplit_empty: faiss's empty-cluster re-split in place, one block of THREADS threads per problem.
//
// For each empty cluster ci (count 0, ci >= n_frozen) in increasing order: donor weights
// w_j = max(count_j - 1, 0) (raw counts when those sum to 0), frozen clusters weigh 0; donor =
// number of float64 prefix sums <= u[ci] * total (searchsorted right), capped at K - 1; then
// c[ci] = c[cj] * up, c[cj] *= down (up = 1 + eps on even dims, 1 - eps on odd), count[ci] =
// count[cj] / 2, count[cj] -= count[ci]. Prefix sums: block scans of THREADS clusters plus a carry.
// Same result as the torch reference whenever the float64 prefix sums are exact (integer counts).
// The launch size comes from fastdc/ops/cuda_sources.py (LAUNCH["resplit_empty"]) as a -D define.

#if !defined(THREADS)
#error "compile with the launch size of fastdc/ops/cuda_sources.py: -DTHREADS"
#endif
static_assert(THREADS >= 32 && (THREADS & (THREADS - 1)) == 0,
              "the block reduction halves THREADS: a power of two, whole warps");

__device__ __forceinline__ double donor_weight(const float* cnt, long long j, long long K,
                                               long long n_frozen, int use_raw) {
    if (j >= K || j < n_frozen) return 0.0;
    const double v = (double)cnt[j];
    return use_raw ? v : fmax(v - 1.0, 0.0);
}

// Sum of v over the block (every thread gets it). red: THREADS doubles of shared memory.
__device__ double block_sum(double v, double* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    const double total = red[0];
    __syncthreads();
    return total;
}

extern "C" __global__ void __launch_bounds__(THREADS) resplit_empty_f32(
    float* __restrict__ c,          // [B, K, D] centroids, updated in place
    float* __restrict__ cnt_all,    // [B, K] counts, updated in place
    const double* __restrict__ u,   // [B, K] uniforms in [0, 1), one per cluster slot
    long long* __restrict__ nsplit, // [B] out: clusters re-split per problem
    long long K,                    // clusters per problem
    long long D,                    // feature dim
    long long n_frozen,             // the first n_frozen clusters neither split nor donate
    float eps)                      // relative perturbation (faiss: 1/1024)
{
    __shared__ double scan[THREADS];
    __shared__ int next_empty;
    const int t = threadIdx.x;
    const long long b = blockIdx.x;
    float* cnt = cnt_all + b * K;
    float* cb = c + b * K * D;
    long long splits = 0;
    int done = 0;  // set once nothing can donate: later empties stay empty

    for (long long s0 = 0; s0 < K && !done; s0 += THREADS) {
        const long long mine = s0 + t;
        int empty = (mine < K && mine >= n_frozen && cnt[mine] == 0.f);
        __syncthreads();
        while (!done && __syncthreads_or(empty)) {
            if (t == 0) next_empty = THREADS;
            __syncthreads();
            if (empty) atomicMin(&next_empty, t);
            __syncthreads();
            const long long ci = s0 + next_empty;
            if (t == next_empty) empty = 0;

            double adj = 0.0;
            for (long long j = t; j < K; j += THREADS) adj += donor_weight(cnt, j, K, n_frozen, 0);
            const int use_raw = block_sum(adj, scan) == 0.0;
            double part = 0.0;
            for (long long j = t; j < K; j += THREADS) part += donor_weight(cnt, j, K, n_frozen, use_raw);
            const double total = block_sum(part, scan);
            if (!(total > 0.0)) {
                done = 1;
                break;
            }
            const double target = u[b * K + ci] * total;
            long long donor = 0;
            double carry = 0.0;
            for (long long j0 = 0; j0 < K; j0 += THREADS) {
                const long long j = j0 + t;
                scan[t] = donor_weight(cnt, j, K, n_frozen, use_raw);
                __syncthreads();
                for (int off = 1; off < THREADS; off <<= 1) {  // Hillis-Steele inclusive scan
                    const double add = t >= off ? scan[t - off] : 0.0;
                    __syncthreads();
                    scan[t] += add;
                    __syncthreads();
                }
                donor += __syncthreads_count(j < K && carry + scan[t] <= target);
                carry += scan[THREADS - 1];
                __syncthreads();
            }
            const long long cj = donor < K - 1 ? donor : K - 1;
            for (long long d = t; d < D; d += THREADS) {
                const float row = cb[cj * D + d];
                const float up = (d % 2 == 0) ? 1.f + eps : 1.f - eps;
                const float down = (d % 2 == 0) ? 1.f - eps : 1.f + eps;
                const float new_ci = row * up;
                cb[ci * D + d] = new_ci;
                cb[cj * D + d] = (cj == ci) ? new_ci * down : row * down;
            }
            if (t == 0) {
                const float donor_cnt = cnt[cj];
                const float half = donor_cnt * 0.5f;  // = count / 2, exact
                cnt[ci] = half;
                cnt[cj] = donor_cnt - half;
            }
            ++splits;
            __threadfence_block();
            __syncthreads();
        }
    }
    if (t == 0) nsplit[b] = splits;
}
