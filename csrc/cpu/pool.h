// The thread pool of the k-means kernels (assign, assign_dist, cluster_sums).
//
// parallel_for hands tasks out one at a time from a shared counter to the calling thread and
// to pooled worker threads, and returns once every task has run. Unlike an OpenMP parallel
// region it never waits for a thread to arrive: a worker that wakes after the tasks ran out
// takes no part, and the caller waits only for the tasks already taken. On a CPU shared with
// other processes, OpenMP's fork and join wait for every thread of the team to be scheduled,
// and its idle threads spin, taking the cores the team needs: assigning 5000 x 32 rows to 100
// centroids took 24 ms a call (median; 0.43 ms at best) on 2 threads while other processes
// kept the 2-core "AMD EPYC" (Zen 4) VM at a load average of 3, and 0.8 ms on this pool in the
// same conditions. Workers spin briefly for the next task list, then sleep.
#pragma once

#include <functional>

#include "common.h"

namespace fastdc {

// Run fn(task, slot) for every task in [0, n_tasks) on up to n_threads threads (the caller and
// n_threads - 1 pooled workers, started on first use); slot in [0, n_threads) names the
// thread, so fn may index per-thread scratch with it (the caller is slot 0). A task list
// started while another thread's list runs is run on the caller alone. An exception thrown by
// fn is rethrown on the caller once the tasks taken have finished (the others may not run).
// Safe after fork(): a child starts new workers.
void parallel_for(i64 n_tasks, int n_threads, const std::function<void(i64, int)>& fn);

}  // namespace fastdc
