// Vector operations of the width-generic kernels (assign_tile.h), one struct per x86 SIMD
// path (Avx2Vec, Avx512Vec): W float lanes, F (float vector), I (int32 vector), M (lane mask),
// every operation compiled for its path only (function target attribute) and inlined into
// that path's code; then the kernels of assign_tile.h for each path (fastdc::avx2 and
// fastdc::avx512).
#pragma once

#include "common.h"

#if FASTDC_X86
#include <immintrin.h>

namespace fastdc {
struct Avx2Vec {
    using F = __m256;
    using I = __m256i;
    using M = __m256;
    static constexpr int W = 8;
    FASTDC_AVX2 static F load(const float* p) { return _mm256_load_ps(p); }
    FASTDC_AVX2 static F loadu(const float* p) { return _mm256_loadu_ps(p); }
    FASTDC_AVX2 static void store(float* p, F v) { _mm256_store_ps(p, v); }
    FASTDC_AVX2 static void storeu(float* p, F v) { _mm256_storeu_ps(p, v); }
    FASTDC_AVX2 static I loadi(const int* p) {
        return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    }
    FASTDC_AVX2 static void storei(int* p, I v) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(p), v);
    }
    FASTDC_AVX2 static F set1(float v) { return _mm256_set1_ps(v); }
    FASTDC_AVX2 static F zero() { return _mm256_setzero_ps(); }
    FASTDC_AVX2 static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    FASTDC_AVX2 static F add(F a, F b) { return _mm256_add_ps(a, b); }
    FASTDC_AVX2 static F min(F a, F b) { return _mm256_min_ps(a, b); }
    FASTDC_AVX2 static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    FASTDC_AVX2 static F blend(M m, F a, F b) { return _mm256_blendv_ps(a, b, m); }
    FASTDC_AVX2 static I blendi(M m, I a, I b) {
        return _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), m));
    }
    FASTDC_AVX2 static I iota(int j) {
        return _mm256_add_epi32(_mm256_set1_epi32(j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
};
struct Avx512Vec {
    using F = __m512;
    using I = __m512i;
    using M = __mmask16;
    static constexpr int W = 16;
    FASTDC_AVX512 static F load(const float* p) { return _mm512_load_ps(p); }
    FASTDC_AVX512 static F loadu(const float* p) { return _mm512_loadu_ps(p); }
    FASTDC_AVX512 static void store(float* p, F v) { _mm512_store_ps(p, v); }
    FASTDC_AVX512 static void storeu(float* p, F v) { _mm512_storeu_ps(p, v); }
    FASTDC_AVX512 static I loadi(const int* p) { return _mm512_load_si512(p); }
    FASTDC_AVX512 static void storei(int* p, I v) { _mm512_store_si512(p, v); }
    FASTDC_AVX512 static F set1(float v) { return _mm512_set1_ps(v); }
    FASTDC_AVX512 static F zero() { return _mm512_setzero_ps(); }
    FASTDC_AVX512 static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    FASTDC_AVX512 static F add(F a, F b) { return _mm512_add_ps(a, b); }
    FASTDC_AVX512 static F min(F a, F b) { return _mm512_min_ps(a, b); }
    FASTDC_AVX512 static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    FASTDC_AVX512 static F blend(M m, F a, F b) { return _mm512_mask_blend_ps(m, a, b); }
    FASTDC_AVX512 static I blendi(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }
    FASTDC_AVX512 static I iota(int j) {
        return _mm512_add_epi32(_mm512_set1_epi32(j),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                  14, 15));
    }
};

// The width-generic kernels (tile, fma_chains) of each path.
namespace avx2 {
using Vec = Avx2Vec;
#define FASTDC_TILE_TARGET FASTDC_AVX2
#include "assign_tile.h"
#undef FASTDC_TILE_TARGET
}  // namespace avx2

namespace avx512 {
using Vec = Avx512Vec;
#define FASTDC_TILE_TARGET FASTDC_AVX512
#include "assign_tile.h"
#undef FASTDC_TILE_TARGET
}  // namespace avx512
}  // namespace fastdc
#endif
