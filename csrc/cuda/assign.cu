// assign: fused distance + argmin in fp32 (CUDA cores), batched over B problems.
//
// THE FALLBACK, not the fast path: a single-buffered SGEMM tile with scalar loads (about 6 s
// for 20 Lloyd iterations at N = 1.28M, D = 256, K = 10k on an H100 by the review's estimate,
// unmeasured); the Triton kernels (kernels/assign.py: bf16 tensor cores + fp32 re-check) are
// the GPU backend to use. It is kept for machines without Triton and as an independent check.
//
// One block of THREADS threads owns TILE_N rows of one problem. Centroid tiles of TILE_K
// stream past; the D axis is walked in chunks of TILE_D staged in shared memory; each thread
// accumulates a 4 x 4 block of dot products in registers. After each centroid tile the
// TILE_K / 4 threads that share a row group reduce their candidates with warp shuffles, and the
// running (best score, best index) of every row stays in registers. Only dist and idx are
// written.
//
// score = |c|^2 - 2 x.c (L2) or -x.c (inner product); ties go to the smallest index.
// Compiled at run time by CuPy (NVRTC): no host headers, extern "C" entry points.
// The launch sizes come from fastdc/ops/cuda_sources.py (LAUNCH["assign"]) as -D defines.

#if !defined(THREADS) || !defined(TILE_N) || !defined(TILE_K) || !defined(TILE_D)
#error "compile with the launch sizes of fastdc/ops/cuda_sources.py (-DTHREADS=... and so on)"
#endif
static_assert(THREADS == (TILE_N / 4) * (TILE_K / 4), "one thread per 4 x 4 block of scores");
static_assert(THREADS == 4 * TILE_N, "|x|^2 takes 4 threads per row");
static_assert(TILE_N == TILE_K, "one staging loop fills the x and the centroid chunks");
static_assert(TILE_K / 4 <= 32 && (TILE_K / 4 & (TILE_K / 4 - 1)) == 0,
              "a row group is a power-of-two run of lanes inside one warp");

#define GROUP (TILE_K / 4)  // threads sharing a row group: one per 4 centroids of a tile
#define PAD 1               // breaks shared-memory bank conflicts on the transposed tiles

// Lexicographic (score, index) minimum: smaller score wins, then the smaller index.
__device__ __forceinline__ void take_better(float& s, long long& i, float s2, long long i2) {
    if (s2 < s || (s2 == s && i2 < i)) {
        s = s2;
        i = i2;
    }
}

// The TILE_N rows of this block: |x|^2 into xsq_s, 4 threads per row strided over D, then a
// shuffle reduction inside the 4.
__device__ __forceinline__ void row_norms(const float* xb, long long row0, long long N,
                                          long long D, int tid, float* xsq_s) {
    const int r = tid / 4, part = tid % 4;
    const long long row = row0 + r;
    float acc = 0.f;
    if (row < N)
        for (long long d = part; d < D; d += 4) {
            float v = xb[row * D + d];
            acc = fmaf(v, v, acc);
        }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (part == 0) xsq_s[r] = acc;
}

// acc[i][j] = x[row0 + ty*4 + i] . c[k0 + tx*4 + j] over all of D, staging TILE_D features of
// the x and centroid tiles in shared memory at a time (coalesced along d).
__device__ __forceinline__ void tile_dots(const float* xb, const float* cb, long long row0,
                                          long long k0, long long N, long long K, long long D,
                                          int tid, int tx, int ty,
                                          float (&xs)[TILE_D][TILE_N + PAD],
                                          float (&cs)[TILE_D][TILE_K + PAD], float (&acc)[4][4]) {
    for (long long d0 = 0; d0 < D; d0 += TILE_D) {
        for (int e = tid; e < TILE_N * TILE_D; e += THREADS) {
            const int r = e / TILE_D, d = e % TILE_D;
            const long long row = row0 + r, col = k0 + r, dd = d0 + d;
            xs[d][r] = (row < N && dd < D) ? xb[row * D + dd] : 0.f;
            cs[d][r] = (col < K && dd < D) ? cb[col * D + dd] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < TILE_D; ++d) {
            float a[4], w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[d][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) w[j] = cs[d][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// Fold the tile's scores into each row's running best: this thread's best of its 4 centroids
// per row, then across the GROUP column groups (consecutive lanes of one warp).
__device__ __forceinline__ void fold_tile(const float (&acc)[4][4], const float* csq, long long b,
                                          long long k0, long long K, int tx, int is_l2,
                                          float (&best)[4], long long (&best_i)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float s = __int_as_float(0x7f800000);
        long long si = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long col = k0 + tx * 4 + j;
            if (col < K) {
                const float sc = is_l2 ? csq[b * K + col] - 2.f * acc[i][j] : -acc[i][j];
                take_better(s, si, sc, col);
            }
        }
#pragma unroll
        for (int off = GROUP / 2; off >= 1; off >>= 1) {
            const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
            const long long i2 = __shfl_xor_sync(0xffffffffu, si, off);
            take_better(s, si, s2, i2);
        }
        take_better(best[i], best_i[i], s, si);
    }
}

// (THREADS, 1): without the minimum ptxas held the kernel to 64 registers and spilled 24 bytes
extern "C" __global__ void __launch_bounds__(THREADS, 1) assign_f32(
    const float* __restrict__ x,    // [B, N, D] rows
    const float* __restrict__ c,    // [B, K, D] centroids
    const float* __restrict__ csq,  // [B, K] |c|^2 (read when is_l2)
    float* __restrict__ dist,       // [B, N] out: squared L2 distance (>= 0) or best inner product
    long long* __restrict__ idx,    // [B, N] out: index of the best centroid
    long long N,                    // rows per problem
    long long K,                    // centroids per problem
    long long D,                    // feature dim
    int is_l2)                      // 1: smallest L2 distance; 0: largest inner product
{
    __shared__ float xs[TILE_D][TILE_N + PAD];  // x chunk, transposed: xs[d][row]
    __shared__ float cs[TILE_D][TILE_K + PAD];  // centroid chunk, transposed: cs[d][col]
    __shared__ float xsq_s[TILE_N];

    const int tid = threadIdx.x;
    const int tx = tid % GROUP;  // column group: centroids tx*4 .. tx*4+3 of the tile
    const int ty = tid / GROUP;  // row group: rows ty*4 .. ty*4+3 of the tile
    const long long b = blockIdx.y;
    const long long row0 = (long long)blockIdx.x * TILE_N;
    const float* xb = x + b * N * D;
    const float* cb = c + b * K * D;
    row_norms(xb, row0, N, D, tid, xsq_s);

    float best[4];
    long long best_i[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        best[i] = __int_as_float(0x7f800000);  // +inf
        best_i[i] = 0;
    }
    for (long long k0 = 0; k0 < K; k0 += TILE_K) {
        float acc[4][4] = {};
        tile_dots(xb, cb, row0, k0, N, K, D, tid, tx, ty, xs, cs, acc);
        fold_tile(acc, csq, b, k0, K, tx, is_l2, best, best_i);
    }

    if (tx == 0) {
#pragma unroll  // constant indices keep best[] and best_i[] in registers (no local memory)
        for (int i = 0; i < 4; ++i) {
            const long long row = row0 + ty * 4 + i;
            if (row < N) {
                const float dv = is_l2 ? fmaxf(xsq_s[ty * 4 + i] + best[i], 0.f) : -best[i];
                dist[b * N + row] = dv;
                idx[b * N + row] = best_i[i];
            }
        }
    }
}
