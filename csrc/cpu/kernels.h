// Declarations of the fastdc CPU kernels (bound to Python in module.cpp).
//
// All arrays are dense, row-major (C-contiguous) and batched over B independent problems.
// Every kernel writes every element of its outputs. None of them touches Python objects, so
// the bindings call them with the GIL released.
#pragma once

#include "common.h"

namespace fastdc {

// Nearest centroid of each row.
//   x:     float32 [B, N, D]      rows to assign
//   c:     float32 [B, K, D]      centroids (K >= 1)
//   ip:    false: squared L2 (smallest wins), true: inner product (largest wins)
//   dist:  float32 [B, N] out     L2: max(||x||^2 + min_j(||c_j||^2 - 2 x.c_j), 0); IP: max_j x.c_j
//   idx:   int64   [B, N] out     arg-min / arg-max, ties -> smallest j
//   dist2: float32 [B, N] out or nullptr: the second smallest squared L2 distance (IP: second
//          largest inner product); equals dist on a tie; +inf (IP: -inf) when K == 1
// Memory: O(K*D) packed centroids + O(threads * block) scratch; never an N x K buffer.
// Per-row results do not depend on n_threads. isa: the SIMD path (one this CPU runs: see
// resolve_isa); paths may differ from one another in the last bits of dist.
// bf16: score with the bf16 main pass (assign_bf16.h; needs isa avx512 and bf16_missing()
// empty): the same dist and idx as the float32 path, bit for bit; dist2 is then only a bound on
// the float32 path's (<= for L2, >= for IP), exact for the rows scored again in float32.
// Returns the number of rows the bf16 pass could not settle (scored again in float32; 0 without
// bf16).
i64 assign(const float* x, const float* c, i64 B, i64 N, i64 K, i64 D, bool ip, float* dist,
           i64* idx, float* dist2, int n_threads, Isa isa, bool bf16 = false);

// The dist assign reports for row i when its centroid is idx[i], bit for bit as the path `isa`
// computes it (the pruned Lloyd loop's distances for the rows it does not re-assign).
//   idx: int64 [B, N] in [0, K) (checked: throws otherwise); dist: float32 [B, N] out
void assign_dist(const float* x, const float* c, const i64* idx, i64 B, i64 N, i64 K, i64 D,
                 bool ip, float* dist, int n_threads, Isa isa);

// assign (squared L2, float32 path) with a lower bound per row and centroid, for the Lloyd
// loop's passes (assign_bounded.cpp): most centroids of most rows are ruled out by their bounds.
//   shift:    float32 [B, K]      each centroid's cumulative shift S_j: a running sum of upper
//                                 bounds of its moves, each step rounded up (any start value)
//   first:    true: score every pair (labels and lower are only written)
//   exact_dist: dist bit for bit assign's (one more exact chain per row); false: rows settled
//             by their estimates get the estimate (within E / 2 of the exact value)
//   labels:   int64   [B, N] in/out  each row's centroid in the previous pass (in [0, K) unless
//                                 first); out: assign's idx
//   lower:    float32 [B, N, K] in/out  stored bounds: lower[i, j] - S_j <= ||x_i - c_j||
//                                 (rounded inwards) for the previous centroids and shifts;
//                                 out: the same for these centroids and shifts
//   dist:     float32 [B, N] out  see exact_dist (the first pass: assign's bits)
//   computed: int64   [B] out     distances estimated besides each row's own label's (N * K when
//                                 first)
void assign_bounded(const float* x, const float* c, const float* shift, i64 B, i64 N, i64 K,
                    i64 D, bool first, bool exact_dist, i64* labels, float* lower, float* dist,
                    i64* computed, int n_threads, Isa isa);

// One Lloyd iteration of rows held in one block (lloyd_step.cpp): assign (or assign_bounded's
// pass), cluster_sums, the means, resplit_empty; the kernels' own results, bit for bit.
//   x, weights (or nullptr), uniforms, n_frozen: as cluster_sums and resplit_empty take them
//   c:        float32 [B, K, D]      the iteration's centroids
//   labels:   int64   [B, N] out     assign's idx (in/out with bounds: assign_bounded's labels)
//   dist:     float32 [B, N] out     assign's dist (with bounds: assign_bounded's, not exact)
//   lower, shift: nullptr (assign's tile), or assign_bounded's bounds [B, N, K] and cumulative
//             shifts [B, K] (in/out: the shifts then grow by upper bounds of the centroids'
//             moves to new_c, rounded up); first: assign_bounded's
//   new_c:    float32 [B, K, D] out  the new centroids: means (the n_frozen first kept from c),
//                                    empty clusters re-split
//   counts:   float32 [B, K] out     cluster_sums' counts (before the re-split)
//   nsplit:   int64   [B] out        clusters re-split
//   computed: int64   [B] out        assign_bounded's (N * K without bounds)
void lloyd_step(const float* x, const float* c, const float* weights, const double* uniforms,
                i64 B, i64 N, i64 K, i64 D, i64 n_frozen, i64* labels, float* dist,
                float* lower, float* shift, bool first, float* new_c, float* counts,
                i64* nsplit, i64* computed, int n_threads, Isa isa, bool bf16);
// Per-iteration records of lloyd_run (row it of each: iteration it).
struct LloydRecords {
    double* obj;      // [niter, B] the sum of the pass's dist, in float64, in row order
    float* counts;    // [niter, B, K] lloyd_step's counts
    i64* nsplit;      // [niter, B]
    i64* computed;    // [niter, B] assign_bounded's (N * K in passes that score every pair)
    i64* changed;     // [niter, B] rows whose label changed (iteration 0: every row); written
                      // only when the run stops early (threshold >= 0)
    double* seconds;  // [niter] seconds from the call's start to the end of each iteration
    double* search;   // [niter] seconds spent in the assignments so far
};
// When a run with bounds scores every pair (fastdc/engine/pruning.py): its first tile_passes
// passes, and a pass after one that estimated more than refresh_above of the distances.
struct ElkanSchedule {
    i64 tile_passes;
    double refresh_above;
};
// The Lloyd loop's iterations (lloyd_step.cpp), lloyd_step after lloyd_step, with the schedule
// of the bounds' passes and the stop test of fastdc/engine/convergence.py: threshold < 0 runs
// all niter; 0 stops at a fixed point (no label changed, no re-split in this iteration or the
// one before, in every problem); > 0 also once every problem's relative objective change was
// <= threshold. Returns the iterations run.
//   uniforms: float64 [niter, B, K]  the re-splits' draws, one [B, K] per iteration
//   c:        float32 [B, K, D] in/out  initial centroids; out: the last iteration's new ones
//   labels, dist: [B, N] out (scratch between iterations); lower, shift: as lloyd_step's
//   refresh_next: out, whether a pass after these would score every pair (first)
//   reason:   out, 0: ran niter (or threshold < 0), 1: fixed point, 2: objective threshold
i64 lloyd_run(const float* x, const float* weights, const double* uniforms, i64 B, i64 N, i64 K,
              i64 D, i64 niter, i64 n_frozen, float* c, i64* labels, float* dist, float* lower,
              float* shift, const ElkanSchedule& schedule, double threshold,
              const LloydRecords& rec, bool* refresh_next, int* reason, int n_threads, Isa isa,
              bool bf16);
// CPU features the bf16 pass of assign needs that this CPU lacks, space-separated ("" if none).
std::string bf16_missing();

// Measured FMA throughput of `isa` on n_threads threads, in GFLOP/s (2 flops per lane per
// FMA): a loop of independent vector FMA chains, one per accumulator register of the path's
// tile, run for about `seconds`. The peak the assign kernel is compared with.
double fma_peak_gflops(Isa isa, int n_threads, double seconds);

// The same for the bf16 pass's instruction (VDPBF16PS: 2 multiply-adds per lane, 4 flops);
// throws std::invalid_argument where bf16_missing() is not empty.
double bf16_peak_gflops(int n_threads, double seconds);

// The k nearest (L2) / most similar (IP) database rows of each row.
//   x:    float32 [B, N, D]; y: float32 [B, M, D] database; 1 <= k <= M
//   dist: float32 [B, N, k] out  L2: max(||x||^2 + ||y_j||^2 - 2 x.y_j, 0); IP: x.y_j
//   idx:  int64   [B, N, k] out  best first, equal scores -> smaller j first
// Memory: O(M*D) packed y + O(threads * block) scratch; never an N x M buffer.
void knn(const float* x, const float* y, i64 B, i64 N, i64 M, i64 D, i64 k, bool ip,
         float* dist, i64* idx, int n_threads);

// Per-cluster sums and counts, deterministic and independent of n_threads.
//   x:       float32 [B, N, D]
//   idx:     int64   [B, N]    cluster of each row, in [0, k) (checked: throws otherwise)
//   weights: float32 [B, N] or nullptr (weight 1)
//   sums:    float32 [B, k, D] out   sum over rows i of cluster j of w_i * x_i (float64 accumulation)
//   counts:  float32 [B, k]    out   sum of w_i (or number of rows)
void cluster_sums(const float* x, const i64* idx, const float* weights, i64 B, i64 N, i64 D,
                  i64 k, float* sums, float* counts, int n_threads);

// Euclidean norm of every row, the squares summed in float64 (in any order), rounded to
// float32: NaN for a row holding NaN, inf for one holding inf or whose norm exceeds float32.
//   x: float32 [rows, D]; norms: float32 [rows] out
void row_norms(const float* x, i64 rows, i64 D, float* norms, int n_threads);

// faiss's empty-cluster re-split, in place (see fastdc/ops/resplit_empty.py for the rule).
//   centroids: float32 [B, K, D] in/out
//   counts:    float32 [B, K]    in/out
//   uniforms:  float64 [B, K]    one uniform in [0, 1) per cluster slot
//   nsplit:    int64   [B]       out: clusters re-split in each problem
void resplit_empty(float* centroids, float* counts, const double* uniforms, i64 B, i64 K, i64 D,
                   i64 n_frozen, i64* nsplit);

// Output element types of sobel.
enum class OutType { f32 = 0, f16 = 1, bf16 = 2 };

// Fused Sobel front end: [B, 3, H, W] -> [B, 2, H, W] (channel 0: Gx, channel 1: Gy).
//   images:   uint8 (is_u8) or float32 [B, 3, H, W]; uint8 is scaled by 1/255 first
//   mean/std: float32 [3] or nullptr: per-channel (v - mean) / std
//   out:      [B, 2, H, W] of out_type (float32, float16 or bfloat16 bits), round to nearest even
void sobel(const void* images, bool is_u8, i64 B, i64 H, i64 W, const float* mean,
           const float* std, void* out, OutType out_type, int n_threads);

}  // namespace fastdc
