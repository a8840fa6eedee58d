// sobel: DeepCluster's input filter in one pass: [B, 3, H, W] uint8 or float32 ->
// [B, 2, H, W] float32 / float16 / bfloat16. One thread per output pixel (blocks of
// BLOCK_X x BLOCK_Y); each reads its 3 x 3 neighbourhood of the three channels (re-reads hit
// L1), scales uint8 by 1/255, normalises (x - mean) / std, takes grey = the 1x1 conv with
// weights 1/3, applies Gx and Gy with zero padding (0 in grey space), and writes both outputs.
// fp16/bf16 stores use round-to-nearest-even conversions (PTX cvt.rn; bf16 needs sm_80+).
// The block size comes from fastdc/ops/cuda_sources.py (LAUNCH["sobel"]) as -D defines.

#if !defined(BLOCK_X) || !defined(BLOCK_Y)
#error "compile with the launch sizes of fastdc/ops/cuda_sources.py: -DBLOCK_X -DBLOCK_Y"
#endif
static_assert(BLOCK_X * BLOCK_Y <= 1024, "at most 1024 threads per block");

struct SobelNorm {
    float mean[3];  // per-channel mean (used when norm != 0)
    float std[3];   // per-channel std
};

__device__ __forceinline__ float load_px(const unsigned char* p) { return (float)*p; }
__device__ __forceinline__ float load_px(const float* p) { return *p; }

__device__ __forceinline__ void store_px(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_px(unsigned short* p, float v, int bf16) {
    unsigned short h;
    if (bf16)
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    else
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

template <typename In>
__device__ __forceinline__ float grey_at(const In* img, long long HW, long long y, long long x,
                                         long long H, long long W, int is_u8, int norm,
                                         const SobelNorm& nm) {
    if (y < 0 || y >= H || x < 0 || x >= W) return 0.f;  // conv2d's zero padding
    const float third = 0.3333333432674408f;  // float32(1/3): the 1x1 conv's weight
    float g = 0.f;
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
        float v = load_px(img + ch * HW + y * W + x);
        if (is_u8) v = v / 255.f;  // IEEE division, as torch does
        if (norm) v = (v - nm.mean[ch]) / nm.std[ch];
        g = (ch == 0) ? v * third : g + v * third;
    }
    return g;
}

template <typename In>
__device__ __forceinline__ void sobel_px(const In* images, long long H, long long W, int is_u8,
                                         int norm, const SobelNorm& nm, long long& out_off,
                                         float& gx, float& gy, bool& ok) {
    const long long x = (long long)blockIdx.x * BLOCK_X + threadIdx.x;
    const long long y = (long long)blockIdx.y * BLOCK_Y + threadIdx.y;
    const long long b = blockIdx.z;
    const long long HW = H * W;
    ok = x < W && y < H;
    if (!ok) return;
    const In* img = images + b * 3 * HW;
    float g[3][3];
#pragma unroll
    for (int a = 0; a < 3; ++a)
#pragma unroll
        for (int cc = 0; cc < 3; ++cc)
            g[a][cc] = (a == 1 && cc == 1) ? 0.f
                                            : grey_at(img, HW, y + a - 1, x + cc - 1, H, W, is_u8, norm, nm);
    // Gx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]], Gy = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    gx = g[0][0] - g[0][2] + 2.f * g[1][0] - 2.f * g[1][2] + g[2][0] - g[2][2];
    gy = g[0][0] + 2.f * g[0][1] + g[0][2] - g[2][0] - 2.f * g[2][1] - g[2][2];
    out_off = b * 2 * HW + y * W + x;
}

// One entry point per (input, output) dtype pair. Arguments: images [B, 3, H, W], out
// [B, 2, H, W], H, W, is_u8 (1 for uint8 input), norm (1: apply mean/std), the six floats.
#define SOBEL_F32OUT(NAME, IN)                                                                  \
    extern "C" __global__ void NAME(const IN* __restrict__ images, float* __restrict__ out,    \
                                    long long H, long long W, int is_u8, int norm, float m0,   \
                                    float m1, float m2, float s0, float s1, float s2) {        \
        const SobelNorm nm = {{m0, m1, m2}, {s0, s1, s2}};                                     \
        long long off;                                                                          \
        float gx, gy;                                                                           \
        bool ok;                                                                                \
        sobel_px(images, H, W, is_u8, norm, nm, off, gx, gy, ok);                              \
        if (!ok) return;                                                                        \
        store_px(out + off, gx);                                                                \
        store_px(out + off + H * W, gy);                                                        \
    }

#define SOBEL_16OUT(NAME, IN, IS_BF16)                                                          \
    extern "C" __global__ void NAME(const IN* __restrict__ images,                              \
                                    unsigned short* __restrict__ out, long long H, long long W, \
                                    int is_u8, int norm, float m0, float m1, float m2,          \
                                    float s0, float s1, float s2) {                             \
        const SobelNorm nm = {{m0, m1, m2}, {s0, s1, s2}};                                     \
        long long off;                                                                          \
        float gx, gy;                                                                           \
        bool ok;                                                                                \
        sobel_px(images, H, W, is_u8, norm, nm, off, gx, gy, ok);                              \
        if (!ok) return;                                                                        \
        store_px(out + off, gx, IS_BF16);                                                       \
        store_px(out + off + H * W, gy, IS_BF16);                                               \
    }

SOBEL_F32OUT(sobel_u8_f32, unsigned char)
SOBEL_F32OUT(sobel_f32_f32, float)
SOBEL_16OUT(sobel_u8_f16, unsigned char, 0)
SOBEL_16OUT(sobel_f32_f16, float, 0)
SOBEL_16OUT(sobel_u8_bf16, unsigned char, 1)
SOBEL_16OUT(sobel_f32_bf16, float, 1)
