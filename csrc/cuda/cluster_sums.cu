// cluster_sums: per-cluster (weighted) sums and counts with fp32 atomics, batched.
// Grid: (ceil(N / ROWS), B); block: THREADS threads striding over D for each of ROWS rows.
// Not deterministic run to run (atomic order); the Triton backend offers a deterministic mode.
// The launch sizes come from fastdc/ops/cuda_sources.py (LAUNCH["cluster_sums"]) as -D defines.

#if !defined(THREADS) || !defined(ROWS)
#error "compile with the launch sizes of fastdc/ops/cuda_sources.py: -DTHREADS -DROWS"
#endif
static_assert(THREADS % 32 == 0 && ROWS >= 1, "whole warps, at least one row per block");

extern "C" __global__ void __launch_bounds__(THREADS) cluster_sums_f32(
    const float* __restrict__ x,         // [B, N, D] rows
    const long long* __restrict__ idx,   // [B, N] cluster ids in [0, K)
    const float* __restrict__ w,         // [B, N] weights, or null: weight 1
    float* __restrict__ sums,            // [B, K, D] zero-filled: accumulates weight * row
    float* __restrict__ counts,          // [B, K] zero-filled: accumulates weights
    long long N,                         // rows per problem
    long long K,                         // clusters per problem
    long long D)                         // feature dim
{
    const long long b = blockIdx.y;
    const long long r0 = (long long)blockIdx.x * ROWS;
    for (int r = 0; r < ROWS; ++r) {
        const long long row = r0 + r;
        if (row >= N) return;
        const long long ci = idx[b * N + row];
        const float wt = w ? w[b * N + row] : 1.f;
        if (threadIdx.x == 0) atomicAdd(counts + b * K + ci, wt);
        const float* xr = x + (b * N + row) * D;
        float* sr = sums + (b * K + ci) * D;
        for (long long d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(sr + d, wt * xr[d]);
    }
}
