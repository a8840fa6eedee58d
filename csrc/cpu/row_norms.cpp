// row_norms: the Euclidean norm of every row, squares summed in float64 (exact products, no
// overflow), on the kernels' thread pool (pool.h) in tasks of ROWS_PER_TASK rows.

#include <algorithm>
#include <cmath>

#include "common.h"
#include "kernels.h"
#include "pool.h"

#if FASTDC_X86
#include <immintrin.h>
#endif

namespace fastdc {
namespace {

constexpr i64 ROWS_PER_TASK = 256;

double sum_sq_generic(const float* xi, i64 d0, i64 D) {
    double s = 0.0;
    for (i64 d = d0; d < D; ++d) s += static_cast<double>(xi[d]) * xi[d];
    return s;
}

#if FASTDC_X86
// Four ymm float64 accumulators over 16 floats a step, the tail on the portable loop.
FASTDC_AVX2 double sum_sq_avx2(const float* xi, i64 D) {
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    i64 d = 0;
    for (; d + 16 <= D; d += 16) {
        for (int k = 0; k < 4; ++k) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(xi + d + 4 * k));
            a[k] = _mm256_fmadd_pd(v, v, a[k]);
        }
    }
    const __m256d s = _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3]));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, s);
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + sum_sq_generic(xi, d, D);
}
#endif

}  // namespace

void row_norms(const float* x, i64 rows, i64 D, float* norms, int n_threads) {
    const bool avx2 = has_avx2_fma();
    parallel_for((rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK, n_threads, [&](i64 t, int) {
        const i64 end = std::min(rows, (t + 1) * ROWS_PER_TASK);
        for (i64 i = t * ROWS_PER_TASK; i < end; ++i) {
            const float* xi = x + i * D;
#if FASTDC_X86
            const double s = avx2 ? sum_sq_avx2(xi, D) : sum_sq_generic(xi, 0, D);
#else
            (void)avx2;
            const double s = sum_sq_generic(xi, 0, D);
#endif
            norms[i] = static_cast<float>(std::sqrt(s));
        }
    });
}

}  // namespace fastdc
