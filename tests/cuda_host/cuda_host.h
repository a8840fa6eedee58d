// cuda_host.h: the part of CUDA C++ that csrc/cuda/*.cu use, for g++ on the CPU, so that the
// sources compile unchanged (included after this header) and their kernels run as written.
//
// Execution model: a launch starts one std::thread per CUDA thread of a block; these threads
// walk the grid's blocks one at a time, in order, with a barrier between blocks, so __shared__
// (function-static storage here) is shared by one block's threads. __syncthreads is a barrier of
// the block's threads, warp shuffles exchange through per-warp slots and a barrier of the
// warp's 32 lanes, atomics are std::atomic_ref. A barrier that a returned thread of its block
// (or warp) can no longer reach is a divergent barrier: the launch reports it as an error.
// Only the intrinsics the sources use are defined, so a new one fails to compile here first.
#pragma once

#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace cuda_host {

constexpr int WARP = 32;

// A barrier of `expected` threads that also sums one int over them (__syncthreads_count).
// Threads that returned from the kernel leave it: they count as arrived (so no wait hangs) and
// any barrier they miss is recorded as divergent. Waiters sleep on the generation counter
// (std::atomic::wait, a futex), not on the mutex. Every completed phase adds to `progress`.
class Barrier {
public:
    Barrier(int expected, std::atomic<long long>& progress)
        : expected_(expected), progress_(progress) {}

    int sync(int value) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (left_) diverged_ = true;
        sum_ += value;
        if (++arrived_ + left_ == expected_) return complete();
        const unsigned gen = generation_.load(std::memory_order_relaxed);
        lock.unlock();
        generation_.wait(gen, std::memory_order_acquire);
        return result_;  // stays until the next phase, which needs this thread
    }

    void leave() {
        std::lock_guard<std::mutex> lock(mutex_);
        ++left_;
        if (arrived_) {
            diverged_ = true;
            if (arrived_ + left_ == expected_) complete();
        }
    }

    // Between blocks (every thread waits on the grid barrier): all threads take part again.
    void next_block() { left_ = 0; }

    bool diverged() const { return diverged_; }

private:
    int complete() {
        result_ = sum_;
        sum_ = 0;
        arrived_ = 0;
        ++progress_;
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
        return result_;
    }

    std::mutex mutex_;
    std::atomic<unsigned> generation_{0};
    const int expected_;
    std::atomic<long long>& progress_;
    int arrived_ = 0, left_ = 0, sum_ = 0, result_ = 0;
    bool diverged_ = false;
};

// One launch's synchronisation state: the block barrier, one barrier and two slot buffers
// (alternate shuffles use alternate buffers, so one barrier per shuffle suffices) per warp.
struct Launch {
    Launch(int threads, int warps)
        : block(threads, progress), slots(std::size_t(warps) * 2 * WARP) {
        for (int w = 0; w < warps; ++w)
            warp.push_back(
                std::make_unique<Barrier>(std::min(WARP, threads - w * WARP), progress));
    }

    void fail(const char* what) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error.empty()) error = what;
    }

    std::atomic<long long> progress{0};  // barrier phases completed (the watchdog's clock)
    Barrier block;
    std::vector<std::unique_ptr<Barrier>> warp;
    std::vector<std::uint64_t> slots;  // [warp][buffer][lane]
    std::mutex error_mutex;
    std::string error;
};

inline thread_local Launch* launch_state;
inline thread_local int lane_id, warp_id, shuffles;

// The value of `v` held by lane `src` of this warp; every lane of a full warp must call it.
template <class T>
T exchange(unsigned mask, T v, int src) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move <= 8 bytes");
    Launch& L = *launch_state;
    if (mask != 0xffffffffu || blockDim.x * blockDim.y * blockDim.z < (warp_id + 1u) * WARP)
        L.fail("a shuffle without the full mask of a full warp");
    std::uint64_t* slot = &L.slots[(std::size_t(warp_id) * 2 + (shuffles++ & 1)) * WARP];
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    slot[lane_id] = bits;
    L.warp[warp_id]->sync(0);
    std::memcpy(&v, &slot[src & (WARP - 1)], sizeof v);
    return v;
}

// float32 -> float16 / bfloat16 bits, rounded to nearest even (PTX cvt.rn; NaN -> 0x7fff).
inline unsigned short to_f16(float v) {
    if (std::isnan(v)) return 0x7fff;
    return std::bit_cast<unsigned short>(static_cast<_Float16>(v));
}

inline unsigned short to_bf16(float v) {
    if (std::isnan(v)) return 0x7fff;
    const std::uint32_t u = std::bit_cast<std::uint32_t>(v);
    return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

constexpr bool same_text(const char* a, const char* b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
}

// Which of the two inline-PTX statements the sources use `text` is; any other does not compile.
consteval int ptx_kind(const char* text) {
    if (same_text(text, R"("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v))")) return 0;
    if (same_text(text, R"("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v))")) return 1;
    throw "cuda_host.h emulates only asm(\"cvt.rn.{f16,bf16}.f32 %0, %1;\" : \"=h\"(h) : \"f\"(v))";
}

template <int kind>
void ptx_cvt(unsigned short& h, float v) {
    h = kind ? to_bf16(v) : to_f16(v);
}

// Run `kernel(args...)` over the grid: blockDim threads, each walking every block in order.
template <class... A, std::size_t... I>
std::string run(void (*kernel)(A...), dim3 grid, dim3 block, void** args,
                std::index_sequence<I...>) {
    const int threads = int(block.x * block.y * block.z);
    const int warps = (threads + WARP - 1) / WARP;
    const long long blocks = (long long)grid.x * grid.y * grid.z;
    Launch L(threads, warps);
    long long next = 0;
    std::barrier step(threads, [&]() noexcept {
        ++next;
        ++L.progress;
        L.block.next_block();
        for (auto& w : L.warp) w->next_block();
    });
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            launch_state = &L;
            lane_id = t % WARP;
            warp_id = t / WARP;
            blockDim = block;
            gridDim = grid;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (long long blk = 0; blk < blocks; blk = next) {
                blockIdx = {unsigned(blk % grid.x), unsigned((blk / grid.x) % grid.y),
                            unsigned(blk / ((long long)grid.x * grid.y))};
                kernel(*static_cast<A*>(args[I])...);
                L.block.leave();
                L.warp[warp_id]->leave();
                step.arrive_and_wait();
            }
        });
    }
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool done = false;
    std::thread watchdog([&] {  // no barrier phase in 120 s: the threads wait on each other
        std::unique_lock<std::mutex> lock(done_mutex);
        long long seen = -1;
        while (!done_cv.wait_for(lock, std::chrono::seconds(120), [&] { return done; })) {
            if (L.progress == seen) {
                std::fprintf(stderr, "cuda_host: no barrier completed in 120 s: deadlock\n");
                std::abort();
            }
            seen = L.progress;
        }
    });
    for (auto& th : pool) th.join();
    {
        std::lock_guard<std::mutex> lock(done_mutex);
        done = true;
    }
    done_cv.notify_one();
    watchdog.join();
    if (L.block.diverged()) L.fail("__syncthreads not reached by every thread of a block");
    for (auto& w : L.warp)
        if (w->diverged()) L.fail("a shuffle not reached by every lane of a warp");
    return L.error;
}

// One parameter's type as the launcher passes it: p pointer, f float, d double, i int32,
// q int64.
template <class T>
constexpr char type_code() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else if constexpr (std::is_integral_v<T> && std::is_signed_v<T> && sizeof(T) == 4) return 'i';
    else if constexpr (std::is_integral_v<T> && std::is_signed_v<T> && sizeof(T) == 8) return 'q';
    else return '?';
}

// A kernel of the source: its name, parameter type codes and launcher.
struct Kernel {
    const char* name;
    std::string signature;
    std::string (*launch)(dim3 grid, dim3 block, void** args);
};

template <auto kernel>
std::string launch_kernel(dim3 grid, dim3 block, void** args) {
    return []<class... A>(void (*fn)(A...), dim3 g, dim3 b, void** a) {
        return run(fn, g, b, a, std::index_sequence_for<A...>{});
    }(kernel, grid, block, args);
}

template <class... A>
std::string signature(void (*)(A...)) {
    return std::string{type_code<A>()...};
}

}  // namespace cuda_host

inline void __syncthreads() { cuda_host::launch_state->block.sync(0); }
inline int __syncthreads_count(int predicate) {
    return cuda_host::launch_state->block.sync(predicate != 0);
}
inline int __syncthreads_or(int predicate) {
    return cuda_host::launch_state->block.sync(predicate != 0) != 0;
}
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return cuda_host::exchange(mask, v, cuda_host::lane_id ^ lane_mask);
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicMin(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
    return std::atomic_ref<unsigned long long>(*p).fetch_or(v);
}

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }

// Inline PTX: the statement's text picks the conversion, its operands are bound by name.
#define asm(...) ::cuda_host::ptx_cvt<::cuda_host::ptx_kind(#__VA_ARGS__)>(h, v)
