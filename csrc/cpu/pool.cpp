// parallel_for (pool.h): one task list at a time, handed out from an atomic counter.

#include "pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fastdc {
namespace {

// How a worker waits for the next list: SPIN polls of the list counter with PAUSE (about
// 45 us on the 2-core Zen 4 VM, where a PAUSE takes ~30 ns), then polls with sched_yield for
// up to YIELD_US (an idle core's yield returns at once; a busy one gives the core to whoever
// else wants it), then sleep. A Lloyd iteration on small rows issues its next kernel from
// Python 0.1-0.3 ms after the last one.
constexpr int SPIN = 1500;
constexpr int YIELD_US = 1000;

using Fn = std::function<void(i64, int)>;

struct Pool {
    std::mutex busy;  // held by the caller whose list runs
    std::mutex m;     // guards the fields below, except the atomics
    std::condition_variable wake, done;
    std::atomic<std::uint64_t> generation{0};  // bumped for every list
    std::atomic<i64> next{0};                  // the next task to hand out
    const Fn* fn = nullptr;
    i64 n_tasks = 0;
    int width = 0;      // threads the list may use (the caller included)
    bool open = false;  // workers may still join the list
    std::atomic<int> active{0};  // workers running the list (changed under m)
    int workers = 0;    // workers started (slots 1..workers)
    std::exception_ptr error;
};

Pool* g_pool = nullptr;
std::once_flag g_once;

Pool* the_pool() {
    std::call_once(g_once, [] {
        g_pool = new Pool;  // never freed: workers may still wait on it at exit
#if defined(__unix__) || defined(__APPLE__)
        pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });  // the child has no workers
#endif
    });
    return g_pool;
}

inline void relax() {
#if FASTDC_X86
    __builtin_ia32_pause();
#endif
}

// Take tasks of the list until none is left.
void run_tasks(Pool* p, const Fn& fn, i64 n, int slot) {
    for (;;) {
        const i64 t = p->next.fetch_add(1, std::memory_order_relaxed);
        if (t >= n) return;
        try {
            fn(t, slot);
        } catch (...) {
            std::lock_guard<std::mutex> lock(p->m);
            if (!p->error) p->error = std::current_exception();
            p->next.store(n, std::memory_order_relaxed);
        }
    }
}

void worker(Pool* p, int slot, std::uint64_t seen) {
    for (;;) {
        for (int i = 0; i < SPIN && p->generation.load(std::memory_order_acquire) == seen; ++i)
            relax();
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(YIELD_US);
        while (p->generation.load(std::memory_order_acquire) == seen &&
               std::chrono::steady_clock::now() < until)
            std::this_thread::yield();
        std::unique_lock<std::mutex> lock(p->m);
        p->wake.wait(lock, [&] { return p->generation.load(std::memory_order_relaxed) != seen; });
        seen = p->generation.load(std::memory_order_relaxed);
        if (!p->open || slot >= p->width) continue;
        ++p->active;
        const Fn& fn = *p->fn;
        const i64 n = p->n_tasks;
        lock.unlock();
        run_tasks(p, fn, n, slot);
        lock.lock();
        if (--p->active == 0) p->done.notify_all();
    }
}

}  // namespace

void parallel_for(i64 n_tasks, int n_threads, const Fn& fn) {
    if (n_tasks <= 0) return;
    const int width = static_cast<int>(std::min<i64>(clamp_threads(n_threads), n_tasks));
    Pool* p = the_pool();
    std::unique_lock<std::mutex> busy(p->busy, std::defer_lock);
    if (width == 1 || !busy.try_lock()) {
        for (i64 t = 0; t < n_tasks; ++t) fn(t, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(p->m);
        while (p->workers < width - 1) {
            std::thread(worker, p, p->workers + 1, p->generation.load()).detach();
            ++p->workers;
        }
        p->fn = &fn;
        p->n_tasks = n_tasks;
        p->width = width;
        p->open = true;
        p->error = nullptr;
        p->next.store(0, std::memory_order_relaxed);
        p->generation.fetch_add(1, std::memory_order_release);
    }
    p->wake.notify_all();
    run_tasks(p, fn, n_tasks, 0);
    {
        std::lock_guard<std::mutex> lock(p->m);
        p->open = false;
    }
    // the workers' last tasks end within a task's time: poll a while before sleeping (a
    // condition variable's wake-up took 50-100 us a list on the 2-core Zen 3 VM: 20 "elkan"
    // passes at 5 000 x 32, K = 100 on 2 threads, 6.1 -> 4.3 ms)
    for (int i = 0; i < SPIN && p->active.load(std::memory_order_acquire) != 0; ++i) relax();
    std::unique_lock<std::mutex> lock(p->m);
    p->done.wait(lock, [&] { return p->active.load(std::memory_order_relaxed) == 0; });
    if (p->error) std::rethrow_exception(std::exchange(p->error, nullptr));
}

}  // namespace fastdc
