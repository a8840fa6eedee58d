// The exact scalar scores of assign (assign.cpp), shared with assign_bounded.cpp: a pair's
// score computed one pair at a time, bit for bit as the tiles compute it.
#pragma once

#include "common.h"

namespace fastdc {

// Squared norm of a row or centroid (every path and the bias use this value): 8 partial sums
// (d mod 8), then added in a fixed order. One chain would cost as much as the whole tile work
// at K = 100 (its adds wait on each other).
float row_sq(const float* xi, i64 D);

// Scores of n (<= 16) (row, centroid) pairs, bit for bit those of the path's tile: the same
// chain over d from zero (a fused multiply-add per d on the x86 paths, a product then a sum on
// the portable one) of xs[r][d] and scale * cs[r][d], then bias[r]. Rows interleave so that
// their chains overlap. scale: -2 (L2) or -1 (IP).
void chain_scores(Isa isa, i64 D, i64 n, const float* const* xs, const float* const* cs,
                  const float* bias, float scale, float* out);

}  // namespace fastdc
