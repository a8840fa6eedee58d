// sobel: fused DeepCluster front end in one pass over the images.
//
//   n_c   = (v_c [/ 255] - mean_c) / std_c                 per channel, float32
//   grey  = n_0 / 3 + n_1 / 3 + n_2 / 3                     (1x1 conv with weights 1/3)
//   Gx, Gy = 3x3 Sobel cross-correlations of grey with zero padding 1
//
// Separable form per output row y, with grey rows above (a), centre (m), below (z), each
// zero-padded by one column on both sides:
//   s[x] = a[x] + 2 m[x] + z[x],  t[x] = a[x] - z[x]
//   Gx[x] = s[x-1] - s[x+1],      Gy[x] = t[x-1] + 2 t[x] + t[x+1]
// Work is split over (image, band of rows); each task keeps a ring of three grey rows, so every
// pixel is read once (plus two halo rows per band). uint8 inputs go through a 256-entry lookup
// table per channel holding exactly the reference's float32 value n_c / 3.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace fastdc {
namespace {

constexpr i64 BAND_ROWS = 32;  // rows per task: 2 halo rows per 32 recomputed (~6% extra grey
                               // work), and 224-row images give 7 tasks each for balance
constexpr float THIRD = 1.0f / 3.0f;  // the reference's 1x1 conv weight, rounded to float32

// Per-channel normalisation: value -> n_c / 3 (float32 arithmetic in the reference's order).
struct Normaliser {
    bool u8;
    float mean[3], std[3];
    bool has_mean;
    float lut[3][256];  // uint8 only

    Normaliser(bool is_u8, const float* m, const float* s) : u8(is_u8), has_mean(m != nullptr) {
        for (int ch = 0; ch < 3; ++ch) {
            mean[ch] = has_mean ? m[ch] : 0.0f;
            std[ch] = has_mean ? s[ch] : 1.0f;
        }
        if (u8) {
            for (int ch = 0; ch < 3; ++ch)
                for (int v = 0; v < 256; ++v) lut[ch][v] = value(ch, static_cast<float>(v) / 255.0f);
        }
    }
    float value(int ch, float v) const {
        if (has_mean) v = (v - mean[ch]) / std[ch];
        return v * THIRD;
    }
};

// Grey row y of one image into g[1 .. W] (g[0] = g[W + 1] = 0); zeros when y is outside.
void grey_row(const void* image, const Normaliser& nm, i64 H, i64 W, i64 y, float* g) {
    g[0] = 0.0f;
    g[W + 1] = 0.0f;
    float* o = g + 1;
    if (y < 0 || y >= H) {
        for (i64 x = 0; x < W; ++x) o[x] = 0.0f;
        return;
    }
    const i64 plane = H * W;
    if (nm.u8) {
        const auto* p = static_cast<const unsigned char*>(image) + y * W;
        for (i64 x = 0; x < W; ++x)
            o[x] = nm.lut[0][p[x]] + nm.lut[1][p[plane + x]] + nm.lut[2][p[2 * plane + x]];
    } else {
        const auto* p = static_cast<const float*>(image) + y * W;
        for (i64 x = 0; x < W; ++x)
            o[x] = nm.value(0, p[x]) + nm.value(1, p[plane + x]) + nm.value(2, p[2 * plane + x]);
    }
}

// Gx, Gy of one output row from three padded grey rows (a above, m centre, z below);
// s, t are [W + 2] scratch.
void sobel_row(const float* a, const float* m, const float* z, i64 W, float* s, float* t,
               float* gx, float* gy) {
    for (i64 x = 0; x < W + 2; ++x) {
        s[x] = a[x] + 2.0f * m[x] + z[x];
        t[x] = a[x] - z[x];
    }
    for (i64 x = 0; x < W; ++x) {
        gx[x] = s[x] - s[x + 2];
        gy[x] = t[x] + 2.0f * t[x + 1] + t[x + 2];
    }
}

// float32 -> bfloat16 bits, round to nearest even (NaN -> quiet NaN), as torch converts.
inline std::uint16_t to_bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return 0x7FC0;
    return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// float32 -> IEEE binary16 bits, round to nearest even; overflow -> inf, NaN -> quiet NaN.
inline std::uint16_t to_f16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    const std::uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return static_cast<std::uint16_t>(sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u));
    if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: inf
    if (a < 0x38800000u) {  // below 2^-14: a subnormal half, units of 2^-24
        float v;
        std::memcpy(&v, &a, 4);
        return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::nearbyint(v * 16777216.0f)));
    }
    std::uint32_t r = a - 0x38000000u;  // rebias the exponent from 127 to 15
    r += 0xFFFu + ((r >> 13) & 1u);     // round the 13 dropped mantissa bits to nearest even
    return static_cast<std::uint16_t>(sign | (r >> 13));
}

// Store a float32 row as out_type.
void store_row(const float* v, i64 W, void* out, OutType type) {
    if (type == OutType::f32) {
        std::memcpy(out, v, static_cast<std::size_t>(W) * 4);
    } else if (type == OutType::f16) {
        auto* o = static_cast<std::uint16_t*>(out);
        for (i64 x = 0; x < W; ++x) o[x] = to_f16(v[x]);
    } else {
        auto* o = static_cast<std::uint16_t*>(out);
        for (i64 x = 0; x < W; ++x) o[x] = to_bf16(v[x]);
    }
}

// One band of output rows [y0, y1) of one image; scratch holds 7 rows of W + 2 floats.
void sobel_band(const void* image, const Normaliser& nm, i64 H, i64 W, i64 y0, i64 y1,
                unsigned char* out, i64 out_elem, OutType type, float* scratch) {
    const i64 row = W + 2;
    float* ring[3] = {scratch, scratch + row, scratch + 2 * row};
    float *s = scratch + 3 * row, *t = scratch + 4 * row;
    float *gx = scratch + 5 * row, *gy = scratch + 6 * row;
    grey_row(image, nm, H, W, y0 - 1, ring[0]);
    grey_row(image, nm, H, W, y0, ring[1]);
    const i64 plane_bytes = H * W * out_elem;
    for (i64 y = y0; y < y1; ++y) {
        grey_row(image, nm, H, W, y + 1, ring[2]);
        sobel_row(ring[0], ring[1], ring[2], W, s, t, gx, gy);
        store_row(gx, W, out + y * W * out_elem, type);
        store_row(gy, W, out + plane_bytes + y * W * out_elem, type);
        float* old = ring[0];  // rotate: centre becomes above, below becomes centre
        ring[0] = ring[1];
        ring[1] = ring[2];
        ring[2] = old;
    }
}

}  // namespace

void sobel(const void* images, bool is_u8, i64 B, i64 H, i64 W, const float* mean,
           const float* std, void* out, OutType out_type, int n_threads) {
    if (B == 0 || H == 0 || W == 0) return;
    const int nt = clamp_threads(n_threads);
    const Normaliser nm(is_u8, mean, std);
    const i64 in_elem = is_u8 ? 1 : 4, out_elem = out_type == OutType::f32 ? 4 : 2;
    const i64 bands = (H + BAND_ROWS - 1) / BAND_ROWS;
    std::vector<float> scratch(static_cast<std::size_t>(nt) * 7 * (W + 2));
#pragma omp parallel num_threads(nt)
    {
#if defined(_OPENMP)
        float* my = scratch.data() + static_cast<i64>(omp_get_thread_num()) * 7 * (W + 2);
#else
        float* my = scratch.data();
#endif
#pragma omp for schedule(static)
        for (i64 task = 0; task < B * bands; ++task) {
            const i64 b = task / bands, y0 = (task % bands) * BAND_ROWS;
            const auto* image = static_cast<const unsigned char*>(images) + b * 3 * H * W * in_elem;
            auto* o = static_cast<unsigned char*>(out) + b * 2 * H * W * out_elem;
            sobel_band(image, nm, H, W, y0, std::min(H, y0 + BAND_ROWS), o, out_elem, out_type, my);
        }
    }
}

}  // namespace fastdc
