// pybind11 bindings: fastdc._C.
//
// Every entry point takes NumPy views of contiguous CPU tensors (zero-copy: arguments are
// declared noconvert, so a wrong dtype or layout raises TypeError instead of silently copying,
// which would lose the outputs), checks shapes, then runs the kernel with the GIL released.
// Outputs are allocated by the caller (fastdc/ops/cpu.py) with torch.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace py = pybind11;
using fastdc::i64;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

// Raise ValueError unless a has the given rank; returns its shape as i64.
template <typename T>
std::vector<i64> shape_of(const Array<T>& a, py::ssize_t ndim, const char* name) {
    if (a.ndim() != ndim) {
        throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                    " dims, got " + std::to_string(a.ndim()));
    }
    return std::vector<i64>(a.shape(), a.shape() + ndim);
}

void expect(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

i64 assign_py(const Array<float>& x, const Array<float>& c, bool ip, Array<float>& dist,
               Array<i64>& idx, int n_threads, const std::string& isa,
               std::optional<Array<float>>& dist2, bool bf16) {
    const auto xs = shape_of(x, 3, "x"), cs = shape_of(c, 3, "centroids");
    const auto ds = shape_of(dist, 2, "dist"), is = shape_of(idx, 2, "idx");
    expect(cs[0] == xs[0] && cs[2] == xs[2], "centroids must be [B, K, D] matching x [B, N, D]");
    expect(ds[0] == xs[0] && ds[1] == xs[1] && is == ds, "dist and idx must be [B, N]");
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    float* d2 = nullptr;
    if (dist2) {
        expect(shape_of(*dist2, 2, "dist2") == ds, "dist2 must be [B, N] like dist");
        d2 = dist2->mutable_data();
    }
    const float *xp = x.data(), *cp = c.data();
    float* dp = dist.mutable_data();
    i64* ip_ = idx.mutable_data();
    py::gil_scoped_release release;
    return fastdc::assign(xp, cp, xs[0], xs[1], cs[1], xs[2], ip, dp, ip_, d2, n_threads, path,
                          bf16);
}

void assign_dist_py(const Array<float>& x, const Array<float>& c, const Array<i64>& idx, bool ip,
                    Array<float>& dist, int n_threads, const std::string& isa) {
    const auto xs = shape_of(x, 3, "x"), cs = shape_of(c, 3, "centroids");
    const auto is = shape_of(idx, 2, "idx"), ds = shape_of(dist, 2, "dist");
    expect(cs[0] == xs[0] && cs[2] == xs[2], "centroids must be [B, K, D] matching x [B, N, D]");
    expect(is[0] == xs[0] && is[1] == xs[1] && ds == is, "idx and dist must be [B, N]");
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    const float *xp = x.data(), *cp = c.data();
    const i64* ip_ = idx.data();
    float* dp = dist.mutable_data();
    py::gil_scoped_release release;
    fastdc::assign_dist(xp, cp, ip_, xs[0], xs[1], cs[1], xs[2], ip, dp, n_threads, path);
}

void assign_bounded_py(const Array<float>& x, const Array<float>& c, const Array<float>& shift,
                       bool first, bool exact_dist, Array<i64>& labels, Array<float>& lower, Array<float>& dist,
                       Array<i64>& computed, int n_threads, const std::string& isa) {
    const auto xs = shape_of(x, 3, "x"), cs = shape_of(c, 3, "centroids");
    const auto ss = shape_of(shift, 2, "shift"), ls = shape_of(labels, 2, "labels");
    const auto bs = shape_of(lower, 3, "lower"), ds = shape_of(dist, 2, "dist");
    const auto ns = shape_of(computed, 1, "computed");
    expect(cs[0] == xs[0] && cs[2] == xs[2], "centroids must be [B, K, D] matching x [B, N, D]");
    expect(ss[0] == xs[0] && ss[1] == cs[1], "shift must be [B, K]");
    expect(ls[0] == xs[0] && ls[1] == xs[1] && ds == ls, "labels and dist must be [B, N]");
    expect(bs[0] == xs[0] && bs[1] == xs[1] && bs[2] == cs[1], "lower must be [B, N, K]");
    expect(ns[0] == xs[0], "computed must be [B]");
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    const float *xp = x.data(), *cp = c.data(), *sp = shift.data();
    i64* lp = labels.mutable_data();
    float* bp = lower.mutable_data();
    float* dp = dist.mutable_data();
    i64* np_ = computed.mutable_data();
    py::gil_scoped_release release;
    fastdc::assign_bounded(xp, cp, sp, xs[0], xs[1], cs[1], xs[2], first, exact_dist, lp, bp, dp,
                           np_, n_threads, path);
}

// The sizes of a Lloyd loop's rows x [B, N, D] and centroids [B, K, D], checked against each
// other, against its labels and dist ([B, N]) and against n_frozen (in [0, K]).
struct LoopShape {
    i64 B, N, K, D;
};
LoopShape loop_shape(const Array<float>& x, const Array<float>& c, const Array<i64>& labels,
                     const Array<float>& dist, i64 n_frozen) {
    const auto xs = shape_of(x, 3, "x"), cs = shape_of(c, 3, "centroids");
    const i64 B = xs[0], N = xs[1];
    expect(cs[0] == B && cs[2] == xs[2], "centroids must be [B, K, D] matching x [B, N, D]");
    expect(shape_of(labels, 2, "labels") == std::vector<i64>{B, N} &&
               shape_of(dist, 2, "dist") == std::vector<i64>{B, N},
           "labels and dist must be [B, N]");
    expect(n_frozen >= 0 && n_frozen <= cs[1], "n_frozen must be in [0, K]");
    return {B, N, cs[1], xs[2]};
}

// The optional weights [B, N] of a Lloyd loop's rows (nullptr for none), shape-checked.
const float* loop_weights(const std::optional<Array<float>>& weights, i64 B, i64 N) {
    if (!weights) return nullptr;
    expect(shape_of(*weights, 2, "weights") == std::vector<i64>{B, N}, "weights must be [B, N]");
    return weights->data();
}

// assign_bounded's bounds of a Lloyd loop, lower [B, N, K] and shift [B, K]: both or neither
// (nullptr), shape-checked.
struct LoopBounds {
    float* lower;
    float* shift;
};
LoopBounds loop_bounds(std::optional<Array<float>>& lower, std::optional<Array<float>>& shift,
                       i64 B, i64 N, i64 K) {
    expect(lower.has_value() == shift.has_value(), "give both lower and shift, or neither");
    if (!lower) return {nullptr, nullptr};
    expect(shape_of(*lower, 3, "lower") == std::vector<i64>{B, N, K}, "lower must be [B, N, K]");
    expect(shape_of(*shift, 2, "shift") == std::vector<i64>{B, K}, "shift must be [B, K]");
    return {lower->mutable_data(), shift->mutable_data()};
}

void lloyd_step_py(const Array<float>& x, const Array<float>& c,
                   const std::optional<Array<float>>& weights, const Array<double>& uniforms,
                   i64 n_frozen, Array<i64>& labels, Array<float>& dist,
                   std::optional<Array<float>>& lower, std::optional<Array<float>>& shift,
                   bool first, Array<float>& new_c, Array<float>& counts, Array<i64>& nsplit,
                   Array<i64>& computed, int n_threads, const std::string& isa, bool bf16) {
    const auto [B, N, K, D] = loop_shape(x, c, labels, dist, n_frozen);
    expect(shape_of(uniforms, 2, "uniforms") == std::vector<i64>{B, K} &&
               shape_of(counts, 2, "counts") == std::vector<i64>{B, K},
           "uniforms and counts must be [B, K]");
    expect(shape_of(new_c, 3, "new_centroids") == std::vector<i64>{B, K, D},
           "new_centroids must be [B, K, D]");
    expect(shape_of(nsplit, 1, "nsplit")[0] == B && shape_of(computed, 1, "computed")[0] == B,
           "nsplit and computed must be [B]");
    const float* wp = loop_weights(weights, B, N);
    const LoopBounds bounds = loop_bounds(lower, shift, B, N, K);
    float *bp = bounds.lower, *sp = bounds.shift;
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    const float *xp = x.data(), *cp = c.data();
    const double* up = uniforms.data();
    i64 *lp = labels.mutable_data(), *np_ = nsplit.mutable_data(), *kp = computed.mutable_data();
    float *dp = dist.mutable_data(), *op = new_c.mutable_data(), *cnt = counts.mutable_data();
    py::gil_scoped_release release;
    fastdc::lloyd_step(xp, cp, wp, up, B, N, K, D, n_frozen, lp, dp, bp, sp, first, op, cnt, np_,
                       kp, n_threads, path, bf16);
}

py::tuple lloyd_run_py(const Array<float>& x, const std::optional<Array<float>>& weights,
                       const Array<double>& uniforms, i64 n_frozen, Array<float>& c,
                       Array<i64>& labels, Array<float>& dist, std::optional<Array<float>>& lower,
                       std::optional<Array<float>>& shift, i64 tile_passes, double refresh_above,
                       double threshold, Array<double>& obj, Array<float>& counts,
                       Array<i64>& nsplit, Array<i64>& computed, Array<i64>& changed,
                       Array<double>& seconds, Array<double>& search, int n_threads,
                       const std::string& isa, bool bf16) {
    const auto [B, N, K, D] = loop_shape(x, c, labels, dist, n_frozen);
    const auto us = shape_of(uniforms, 3, "uniforms");
    const i64 niter = us[0];
    expect(us[1] == B && us[2] == K, "uniforms must be [niter, B, K]");
    const std::vector<i64> per_iter{niter, B};
    expect(shape_of(obj, 2, "obj") == per_iter && shape_of(nsplit, 2, "nsplit") == per_iter &&
               shape_of(computed, 2, "computed") == per_iter &&
               shape_of(changed, 2, "changed") == per_iter,
           "obj, nsplit, computed and changed must be [niter, B]");
    expect(shape_of(counts, 3, "counts") == std::vector<i64>{niter, B, K},
           "counts must be [niter, B, K]");
    expect(shape_of(seconds, 1, "seconds")[0] == niter && shape_of(search, 1, "search")[0] == niter,
           "seconds and search must be [niter]");
    const float* wp = loop_weights(weights, B, N);
    const LoopBounds bounds = loop_bounds(lower, shift, B, N, K);
    float *bp = bounds.lower, *sp = bounds.shift;
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    const fastdc::LloydRecords rec{obj.mutable_data(),      counts.mutable_data(),
                                   nsplit.mutable_data(),   computed.mutable_data(),
                                   changed.mutable_data(),  seconds.mutable_data(),
                                   search.mutable_data()};
    const float* xp = x.data();
    const double* up = uniforms.data();
    float *cp = c.mutable_data(), *dp = dist.mutable_data();
    i64* lp = labels.mutable_data();
    bool refresh = true;
    int reason = 0;
    i64 ran;
    {
        py::gil_scoped_release release;
        ran = fastdc::lloyd_run(xp, wp, up, B, N, K, D, niter, n_frozen, cp, lp, dp, bp, sp,
                                {tile_passes, refresh_above}, threshold, rec, &refresh, &reason,
                                n_threads, path, bf16);
    }
    return py::make_tuple(ran, refresh, reason);
}

void knn_py(const Array<float>& x, const Array<float>& y, i64 k, bool ip, Array<float>& dist,
            Array<i64>& idx, int n_threads) {
    const auto xs = shape_of(x, 3, "x"), ys = shape_of(y, 3, "y");
    const auto ds = shape_of(dist, 3, "dist"), is = shape_of(idx, 3, "idx");
    expect(ys[0] == xs[0] && ys[2] == xs[2], "y must be [B, M, D] matching x [B, N, D]");
    expect(ds[0] == xs[0] && ds[1] == xs[1] && ds[2] == k && is == ds,
           "dist and idx must be [B, N, k]");
    const float *xp = x.data(), *yp = y.data();
    float* dp = dist.mutable_data();
    i64* ip_ = idx.mutable_data();
    py::gil_scoped_release release;
    fastdc::knn(xp, yp, xs[0], xs[1], ys[1], xs[2], k, ip, dp, ip_, n_threads);
}

void cluster_sums_py(const Array<float>& x, const Array<i64>& idx,
                     const std::optional<Array<float>>& weights, Array<float>& sums,
                     Array<float>& counts, int n_threads) {
    const auto xs = shape_of(x, 3, "x"), is = shape_of(idx, 2, "idx");
    const auto ss = shape_of(sums, 3, "sums"), ns = shape_of(counts, 2, "counts");
    expect(is[0] == xs[0] && is[1] == xs[1], "idx must be [B, N] matching x [B, N, D]");
    expect(ss[0] == xs[0] && ss[2] == xs[2] && ns[0] == ss[0] && ns[1] == ss[1],
           "sums must be [B, k, D] and counts [B, k]");
    const float* wp = nullptr;
    if (weights) {
        expect(shape_of(*weights, 2, "weights") == is, "weights must be [B, N] like idx");
        wp = weights->data();
    }
    const float* xp = x.data();
    const i64* ip = idx.data();
    float *sp = sums.mutable_data(), *np = counts.mutable_data();
    py::gil_scoped_release release;
    fastdc::cluster_sums(xp, ip, wp, xs[0], xs[1], xs[2], ss[1], sp, np, n_threads);
}

void row_norms_py(const Array<float>& x, Array<float>& norms, int n_threads) {
    const auto xs = shape_of(x, 3, "x"), ns = shape_of(norms, 2, "norms");
    expect(ns[0] == xs[0] && ns[1] == xs[1], "norms must be [B, N] matching x [B, N, D]");
    const float* xp = x.data();
    float* np = norms.mutable_data();
    py::gil_scoped_release release;
    fastdc::row_norms(xp, xs[0] * xs[1], xs[2], np, n_threads);
}

void resplit_empty_py(Array<float>& centroids, Array<float>& counts,
                      const Array<double>& uniforms, i64 n_frozen, Array<i64>& nsplit) {
    const auto cs = shape_of(centroids, 3, "centroids"), ns = shape_of(counts, 2, "counts");
    expect(ns[0] == cs[0] && ns[1] == cs[1], "counts must be [B, K] matching centroids");
    expect(shape_of(uniforms, 2, "uniforms") == ns, "uniforms must be [B, K] like counts");
    expect(shape_of(nsplit, 1, "nsplit")[0] == cs[0], "nsplit must be [B]");
    expect(n_frozen >= 0 && n_frozen <= cs[1], "n_frozen must be in [0, K]");
    float *cp = centroids.mutable_data(), *np = counts.mutable_data();
    const double* up = uniforms.data();
    i64* sp = nsplit.mutable_data();
    py::gil_scoped_release release;
    fastdc::resplit_empty(cp, np, up, cs[0], cs[1], cs[2], n_frozen, sp);
}

void sobel_py(const py::array& images, const std::optional<Array<float>>& mean,
              const std::optional<Array<float>>& std_, py::array& out, int out_type,
              int n_threads) {
    const bool u8 = py::isinstance<Array<std::uint8_t>>(images);
    const bool f32 = py::isinstance<Array<float>>(images);
    expect(u8 || f32, "images must be a C-contiguous uint8 or float32 array");
    expect(images.ndim() == 4 && images.shape(1) == 3, "images must be [B, 3, H, W]");
    expect(out_type >= 0 && out_type <= 2, "out_type must be 0 (f32), 1 (f16) or 2 (bf16)");
    const auto type = static_cast<fastdc::OutType>(out_type);
    const py::ssize_t out_item = type == fastdc::OutType::f32 ? 4 : 2;
    expect(out.itemsize() == out_item && (out.flags() & py::array::c_style) && out.writeable(),
           "out must be a writable C-contiguous array of 4-byte (f32) or 2-byte (f16/bf16) items");
    const i64 B = images.shape(0), H = images.shape(2), W = images.shape(3);
    expect(out.ndim() == 4 && out.shape(0) == B && out.shape(1) == 2 && out.shape(2) == H &&
               out.shape(3) == W,
           "out must be [B, 2, H, W]");
    expect(mean.has_value() == std_.has_value(), "give both mean and std, or neither");
    const float *mp = nullptr, *sp = nullptr;
    if (mean) {
        expect(mean->size() == 3 && std_->size() == 3, "mean and std must hold 3 values");
        mp = mean->data();
        sp = std_->data();
    }
    const void* ip = images.data();
    void* op = out.mutable_data();
    py::gil_scoped_release release;
    fastdc::sobel(ip, u8, B, H, W, mp, sp, op, type, n_threads);
}

// Names of the SIMD paths this CPU runs, narrowest first.
std::vector<std::string> isa_available() {
    std::vector<std::string> names;
    for (auto isa : {fastdc::Isa::generic, fastdc::Isa::avx2, fastdc::Isa::avx512}) {
        if (fastdc::isa_missing(isa).empty()) names.emplace_back(fastdc::isa_name(isa));
    }
    return names;
}

// Features a path needs that this CPU lacks ("" when it runs); ValueError for unknown names.
std::string isa_missing_py(const std::string& name) {
    for (auto isa : {fastdc::Isa::generic, fastdc::Isa::avx2, fastdc::Isa::avx512}) {
        if (name == fastdc::isa_name(isa)) return fastdc::isa_missing(isa);
    }
    throw std::invalid_argument("unknown SIMD path " + name + "; use generic, avx2 or avx512");
}

double fma_peak_py(const std::string& isa, int n_threads, double seconds) {
    const fastdc::Isa path = fastdc::resolve_isa(isa);
    expect(seconds > 0 && seconds <= 60, "seconds must be in (0, 60]");
    py::gil_scoped_release release;
    return fastdc::fma_peak_gflops(path, n_threads, seconds);
}

double bf16_peak_py(int n_threads, double seconds) {
    expect(seconds > 0 && seconds <= 60, "seconds must be in (0, 60]");
    expect(fastdc::bf16_missing().empty(), "this CPU lacks " + fastdc::bf16_missing());
    py::gil_scoped_release release;
    return fastdc::bf16_peak_gflops(n_threads, seconds);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "fastdc C++/OpenMP kernels (assign, knn, cluster_sums, resplit_empty, sobel)";
    m.def("simd", &fastdc::simd_name,
          "SIMD path the kernels take by default: 'avx512', 'avx2' or 'generic' (the widest "
          "this CPU runs, or FASTDC_CPU_ISA).");
    m.def("isa_available", &isa_available, "SIMD paths this CPU runs, narrowest first.");
    m.def("isa_missing", &isa_missing_py, py::arg("isa"),
          "isa_missing(isa): CPU features the path needs that this CPU lacks ('' if none).");
    m.def("fma_peak_gflops", &fma_peak_py, py::arg("isa") = "", py::arg("n_threads") = 1,
          py::arg("seconds") = 0.2,
          "fma_peak_gflops(isa='' (default path), n_threads=1, seconds=0.2): measured FMA "
          "throughput of the path in GFLOP/s, the peak the assign benchmark compares with.");
    m.def("bf16_peak_gflops", &bf16_peak_py, py::arg("n_threads") = 1, py::arg("seconds") = 0.2,
          "bf16_peak_gflops(n_threads=1, seconds=0.2): measured VDPBF16PS throughput in GFLOP/s, "
          "the peak of the bf16 pass of assign (ValueError without avx512_bf16).");
    m.def("assign", &assign_py, py::arg("x").noconvert(), py::arg("centroids").noconvert(),
          py::arg("ip"), py::arg("dist").noconvert(), py::arg("idx").noconvert(),
          py::arg("n_threads"), py::arg("isa") = "",
          py::arg("dist2").noconvert().none(true) = py::none(), py::arg("bf16") = false,
          "assign(x f32[B,N,D], centroids f32[B,K,D], ip, dist f32[B,N] out, idx i64[B,N] out, "
          "n_threads, isa='' (default path) | 'generic' | 'avx2' | 'avx512', dist2 f32[B,N] out "
          "| None, bf16=False): nearest (L2) / most similar (IP) centroid, ties -> smallest "
          "index; dist2: the second best; bf16: bf16 main pass with an exact float32 re-check "
          "(same answers; avx512 path with avx512_bf16 only). Returns the rows the bf16 pass could "
          "not settle (scored again in float32; 0 without bf16).");
    m.def("bf16_missing", &fastdc::bf16_missing,
          "CPU features the bf16 pass of assign needs that this CPU lacks ('' if none).");
    m.def("assign_dist", &assign_dist_py, py::arg("x").noconvert(),
          py::arg("centroids").noconvert(), py::arg("idx").noconvert(), py::arg("ip"),
          py::arg("dist").noconvert(), py::arg("n_threads"), py::arg("isa") = "",
          "assign_dist(x f32[B,N,D], centroids f32[B,K,D], idx i64[B,N], ip, dist f32[B,N] out, "
          "n_threads, isa=''): the dist assign reports for each row's given centroid, bit for "
          "bit as the path computes it.");
    m.def("assign_bounded", &assign_bounded_py, py::arg("x").noconvert(),
          py::arg("centroids").noconvert(), py::arg("shift").noconvert(), py::arg("first"),
          py::arg("exact_dist"), py::arg("labels").noconvert(), py::arg("lower").noconvert(),
          py::arg("dist").noconvert(), py::arg("computed").noconvert(), py::arg("n_threads"),
          py::arg("isa") = "",
          "assign_bounded(x f32[B,N,D], centroids f32[B,K,D], shift f32[B,K], first, exact_dist, "
          "labels i64[B,N] in/out, lower f32[B,N,K] in/out, dist f32[B,N] out, computed i64[B] "
          "out, n_threads, isa=''): assign (L2) with per-centroid lower bounds; assign's "
          "labels, bit for bit (dist too with exact_dist or first).");
    m.def("knn", &knn_py, py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("k"),
          py::arg("ip"), py::arg("dist").noconvert(), py::arg("idx").noconvert(),
          py::arg("n_threads"),
          "knn(x f32[B,N,D], y f32[B,M,D], k, ip, dist f32[B,N,k] out, idx i64[B,N,k] out, "
          "n_threads): k best rows of y per row of x, best first, ties -> smallest index.");
    m.def("lloyd_step", &lloyd_step_py, py::arg("x").noconvert(),
          py::arg("centroids").noconvert(), py::arg("weights").noconvert().none(true),
          py::arg("uniforms").noconvert(), py::arg("n_frozen"), py::arg("labels").noconvert(),
          py::arg("dist").noconvert(), py::arg("lower").noconvert().none(true),
          py::arg("shift").noconvert().none(true), py::arg("first"),
          py::arg("new_centroids").noconvert(), py::arg("counts").noconvert(),
          py::arg("nsplit").noconvert(), py::arg("computed").noconvert(), py::arg("n_threads"),
          py::arg("isa") = "", py::arg("bf16") = false,
          "lloyd_step(x f32[B,N,D], centroids f32[B,K,D], weights f32[B,N]|None, uniforms "
          "f64[B,K], n_frozen, labels i64[B,N] out (in/out with bounds), dist f32[B,N] out, "
          "lower f32[B,N,K]|None in/out, shift f32[B,K]|None in/out, first, new_centroids "
          "f32[B,K,D] out, counts f32[B,K] out, nsplit i64[B] out, computed i64[B] out, "
          "n_threads, isa='', bf16=False): one Lloyd iteration (assign or assign_bounded, "
          "cluster_sums, means, resplit_empty, shifts) in one call.");
    m.def("lloyd_run", &lloyd_run_py, py::arg("x").noconvert(),
          py::arg("weights").noconvert().none(true), py::arg("uniforms").noconvert(),
          py::arg("n_frozen"), py::arg("centroids").noconvert(), py::arg("labels").noconvert(),
          py::arg("dist").noconvert(), py::arg("lower").noconvert().none(true),
          py::arg("shift").noconvert().none(true), py::arg("tile_passes"),
          py::arg("refresh_above"), py::arg("threshold"), py::arg("obj").noconvert(),
          py::arg("counts").noconvert(), py::arg("nsplit").noconvert(),
          py::arg("computed").noconvert(), py::arg("changed").noconvert(),
          py::arg("seconds").noconvert(), py::arg("search").noconvert(), py::arg("n_threads"),
          py::arg("isa") = "", py::arg("bf16") = false,
          "lloyd_run(x f32[B,N,D], weights f32[B,N]|None, uniforms f64[niter,B,K], n_frozen, "
          "centroids f32[B,K,D] in/out, labels i64[B,N] out, dist f32[B,N] out, lower "
          "f32[B,N,K]|None, shift f32[B,K]|None, tile_passes, refresh_above, threshold, obj "
          "f64[niter,B] out, counts f32[niter,B,K] out, nsplit i64[niter,B] out, computed "
          "i64[niter,B] out, changed i64[niter,B] out, seconds f64[niter] out, search "
          "f64[niter] out, n_threads, isa='', bf16=False) -> (iterations run, refresh_next, "
          "reason 0/1 converged/2 threshold): the Lloyd loop's iterations in one call.");
    m.def("cluster_sums", &cluster_sums_py, py::arg("x").noconvert(), py::arg("idx").noconvert(),
          py::arg("weights").noconvert().none(true), py::arg("sums").noconvert(),
          py::arg("counts").noconvert(), py::arg("n_threads"),
          "cluster_sums(x f32[B,N,D], idx i64[B,N], weights f32[B,N]|None, sums f32[B,k,D] out, "
          "counts f32[B,k] out, n_threads): per-cluster sums/counts, float64 accumulation.");
    m.def("row_norms", &row_norms_py, py::arg("x").noconvert(), py::arg("norms").noconvert(),
          py::arg("n_threads"),
          "row_norms(x f32[B,N,D], norms f32[B,N] out, n_threads): row norms, squares summed "
          "in float64.");
    m.def("resplit_empty", &resplit_empty_py, py::arg("centroids").noconvert(),
          py::arg("counts").noconvert(), py::arg("uniforms").noconvert(), py::arg("n_frozen"),
          py::arg("nsplit").noconvert(),
          "resplit_empty(centroids f32[B,K,D] inout, counts f32[B,K] inout, uniforms f64[B,K], "
          "n_frozen, nsplit i64[B] out): faiss's empty-cluster re-split, in place.");
    m.def("sobel", &sobel_py, py::arg("images"), py::arg("mean").noconvert().none(true),
          py::arg("std").noconvert().none(true), py::arg("out"), py::arg("out_type"),
          py::arg("n_threads"),
          "sobel(images u8|f32[B,3,H,W], mean f32[3]|None, std f32[3]|None, out [B,2,H,W], "
          "out_type 0=f32 1=f16 2=bf16 (2-byte outputs as int16 views), n_threads).");
}
