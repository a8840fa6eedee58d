// knn: fused distance + top-k in fp32 (CUDA cores), batched over B problems, never an N x M
// buffer.
//
// One block of THREADS threads owns TILE_N query rows of one problem and keeps, in shared
// memory, each row's list of its k best (score, index) pairs so far, sorted (k <= MAX_K).
// Database tiles of TILE_M rows stream past in increasing index order; the D axis is walked in
// chunks of TILE_D staged in shared memory; each thread accumulates a 4 x 4 block of dot
// products in registers. Each thread then scores its 16 pairs and keeps only those that beat
// their row's current worst (the list's k-th score: one compare per score once the lists have
// filled), writing them to a shared score tile and marking them in the row's 64-bit mask. One
// thread per row then folds the marked scores into its list in increasing index order. After
// the last tile the lists become dist and idx; only those are written.
//
// score = |y|^2 - 2 x.y (L2) or -x.y (inner product), smallest first. Every insertion compares
// with strict "<" and database rows arrive in increasing index, so an equal score never
// displaces a smaller index: equal scores go to the smallest index, and -0.0 ties with +0.0.
// Compiled at run time by CuPy (NVRTC): no host headers, extern "C" entry points.
// The launch sizes come from fastdc/ops/cuda_sources.py (LAUNCH["knn"]) as -D defines.

#if !defined(THREADS) || !defined(TILE_N) || !defined(TILE_M) || !defined(TILE_D) || \
    !defined(MAX_K)
#error "compile with the launch sizes of fastdc/ops/cuda_sources.py (-DTHREADS=... and so on)"
#endif
static_assert(THREADS == (TILE_N / 4) * (TILE_M / 4), "one thread per 4 x 4 block of scores");
static_assert(TILE_M <= 64, "a row's marked scores fit one 64-bit mask");
static_assert(TILE_N <= THREADS, "one thread per row folds the marked scores");
static_assert(MAX_K >= 1, "lists of at least one neighbour");

#define GROUP (TILE_M / 4)  // threads sharing a row group: one per 4 database rows of a tile
#define PAD 1               // breaks shared-memory bank conflicts on the padded tiles

struct Tiles {
    float xs[TILE_D][TILE_N + PAD];     // x chunk, transposed: xs[d][row]
    float ys[TILE_D][TILE_M + PAD];     // database chunk, transposed: ys[d][col]
    float sc[TILE_N][TILE_M + PAD];     // the scores that beat their row's worst
    float top_s[TILE_N][MAX_K + PAD];   // each row's k best scores, ascending
    int top_i[TILE_N][MAX_K + PAD];     // their database rows
    unsigned long long mask[TILE_N];    // bit c: sc[row][c] is marked
    float worst[TILE_N];                // top_s[row][k - 1]
};

// acc[i][j] = x[row0 + ty*4 + i] . y[m0 + tx*4 + j] over all of D, staging TILE_D features of
// the x and database tiles in shared memory at a time (coalesced along d). Ends on a barrier.
__device__ __forceinline__ void tile_dots(const float* xb, const float* yb, long long row0,
                                          long long m0, long long N, long long M, long long D,
                                          int tid, int tx, int ty, Tiles& t,
                                          float (&acc)[4][4]) {
    for (long long d0 = 0; d0 < D; d0 += TILE_D) {
        for (int e = tid; e < TILE_N * TILE_D; e += THREADS) {
            const int r = e / TILE_D, d = e % TILE_D;
            const long long row = row0 + r, dd = d0 + d;
            t.xs[d][r] = (row < N && dd < D) ? xb[row * D + dd] : 0.f;
        }
        for (int e = tid; e < TILE_M * TILE_D; e += THREADS) {
            const int c = e / TILE_D, d = e % TILE_D;
            const long long col = m0 + c, dd = d0 + d;
            t.ys[d][c] = (col < M && dd < D) ? yb[col * D + dd] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < TILE_D; ++d) {
            float a[4], w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = t.xs[d][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) w[j] = t.ys[d][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// Score this thread's 16 pairs; those that beat their row's worst go to sc and its mask.
__device__ __forceinline__ void mark_tile(const float (&acc)[4][4], const float* ysq,
                                          long long b, long long m0, long long M, int tx,
                                          int ty, int is_l2, Tiles& t) {
    float yq[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const long long col = m0 + tx * 4 + j;
        yq[j] = (is_l2 && col < M) ? ysq[b * M + col] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = ty * 4 + i;
        const float worst = t.worst[r];
        unsigned long long bits = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = tx * 4 + j;
            const float s = is_l2 ? yq[j] - 2.f * acc[i][j] : -acc[i][j];
            if (m0 + c < M && s < worst) {  // also drops NaN
                t.sc[r][c] = s;
                bits |= 1ull << c;
            }
        }
        if (bits) atomicOr(&t.mask[r], bits);
    }
}

// Fold row r's marked scores (database rows m0 + c) into its sorted list of k, in increasing
// c: each shifts the worse entries up one slot; clears the mask and refreshes the worst.
__device__ __forceinline__ void fold_row(int r, long long m0, int k, Tiles& t) {
    unsigned long long m = t.mask[r];
    while (m) {
        const int c = __ffsll((long long)m) - 1;
        m &= m - 1;
        const float s = t.sc[r][c];
        if (!(s < t.top_s[r][k - 1])) continue;  // an earlier score of this tile beat it
        int p = k - 1;
        while (p > 0 && s < t.top_s[r][p - 1]) {
            t.top_s[r][p] = t.top_s[r][p - 1];
            t.top_i[r][p] = t.top_i[r][p - 1];
            --p;
        }
        t.top_s[r][p] = s;
        t.top_i[r][p] = (int)(m0 + c);
    }
    t.mask[r] = 0;
    t.worst[r] = t.top_s[r][k - 1];
}

// (THREADS, 4): without a minimum ptxas held the kernel to 72 registers and spilled 8 bytes; with
// it, 102 registers and no spill (4 blocks of 128 threads per SM fit the 64K registers)
extern "C" __global__ void __launch_bounds__(THREADS, 4) knn_f32(
    const float* __restrict__ x,    // [B, N, D] queries
    const float* __restrict__ y,    // [B, M, D] database
    const float* __restrict__ xsq,  // [B, N] |x|^2 (read when is_l2)
    const float* __restrict__ ysq,  // [B, M] |y|^2 (read when is_l2)
    float* __restrict__ dist,       // [B, N, k] out: squared L2 distance (>= 0) or inner product
    long long* __restrict__ idx,    // [B, N, k] out: database rows, best first
    long long N,                    // queries per problem
    long long M,                    // database rows per problem, < 2^31
    long long D,                    // feature dim
    int k,                          // neighbours per query, 1 <= k <= min(M, MAX_K)
    int is_l2)                      // 1: smallest L2 distance; 0: largest inner product
{
    __shared__ Tiles t;

    const int tid = threadIdx.x;
    const int tx = tid % GROUP;  // column group: database rows tx*4 .. tx*4+3 of the tile
    const int ty = tid / GROUP;  // row group: query rows ty*4 .. ty*4+3 of the tile
    const long long b = blockIdx.y;
    const long long row0 = (long long)blockIdx.x * TILE_N;
    const float* xb = x + b * N * D;
    const float* yb = y + b * M * D;

    // empty lists: +inf scores never displace a real one; the first tile's barriers publish them
    for (int e = tid; e < TILE_N * MAX_K; e += THREADS) {
        t.top_s[e / MAX_K][e % MAX_K] = __int_as_float(0x7f800000);
        t.top_i[e / MAX_K][e % MAX_K] = -1;
    }
    if (tid < TILE_N) {
        t.mask[tid] = 0;
        t.worst[tid] = __int_as_float(0x7f800000);
    }
    for (long long m0 = 0; m0 < M; m0 += TILE_M) {
        float acc[4][4] = {};
        tile_dots(xb, yb, row0, m0, N, M, D, tid, tx, ty, t, acc);
        mark_tile(acc, ysq, b, m0, M, tx, ty, is_l2, t);
        __syncthreads();
        if (tid < TILE_N) fold_row(tid, m0, k, t);
        __syncthreads();
    }

    for (int e = tid; e < TILE_N * k; e += THREADS) {  // coalesced: consecutive (row, slot)
        const int r = e / k, p = e % k;
        const long long row = row0 + r;
        if (row < N) {
            const float s = t.top_s[r][p];
            dist[(b * N + row) * k + p] = is_l2 ? fmaxf(xsq[b * N + row] + s, 0.f) : -s;
            idx[(b * N + row) * k + p] = t.top_i[r][p];
        }
    }
}
