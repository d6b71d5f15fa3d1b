// A persistent, lazily started thread pool for the core's parallel loops. Python-free.
//
// Design:
// - Workers are started on first use and then sleep on a condition variable (no spinning)
//   until a call leases them. A call that wants k threads leases at most k - 1 idle workers
//   (starting new ones if none are idle, up to a cap) and works itself as the k-th; so a call
//   with threads=k never uses more than k threads, and concurrent callers never share or wait
//   for each other's workers.
// - Leasing never blocks: when no worker can be had (cap reached, or the OS refuses a thread)
//   the caller simply does more of the work itself. Hence no deadlock, whatever the nesting.
// - A call made from inside a parallel region (by a worker or by a calling thread while it runs
//   its share) runs inline on that thread: no oversubscription, no deadlock.
// - Exceptions thrown by any chunk are captured; the first is rethrown by the caller after
//   every chunk has finished.
// - The pool is never destroyed (the workers just sleep until the process ends), so nothing
//   happens at interpreter exit; after fork() the child gets a fresh, empty pool
//   (pthread_atfork), because the parent's worker threads do not exist there.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

namespace autoweld {

namespace pool {

// Runs body(member, team_size) once on each of `team_size` threads at the same time (the
// calling thread is member 0). team_size is min(wanted, 1 + workers that could be leased);
// it is 1 (the caller alone) inside a parallel region. All members are running concurrently,
// so they may synchronise with each other (barriers). Returns after every member returned;
// rethrows the first exception any member threw.
void run_team(std::size_t wanted, const std::function<void(std::size_t, std::size_t)>& body);

// Dynamic parallel loop: fn(begin, end) over [0, n) in chunks of `grain` (the last one
// shorter), handed out from an atomic counter to the caller and up to threads - 1 leased
// workers. threads <= 0 means all hardware threads. The caller returns as soon as every chunk
// is done: a leased worker the OS has not scheduled yet is not waited for (it finds nothing
// left and goes back to sleep). With one thread, or inside a parallel region, fn(0, n) runs
// directly. The first exception is rethrown after all chunks have finished.
void parallel_for_dynamic(std::size_t n, int threads, std::size_t grain,
                          const std::function<void(std::size_t, std::size_t)>& fn);

// Static split: fn(begin, end) on at most `threads` contiguous chunks of equal size.
void parallel_for_static(std::size_t n, int threads,
                         const std::function<void(std::size_t, std::size_t)>& fn);

// True on a thread that is currently inside a parallel region of the pool.
bool in_parallel_region();

// Number of worker threads the pool has started in this process (for tests).
std::size_t started_workers();

// Upper bound on the workers the pool starts (beyond it, callers do more work themselves).
constexpr std::size_t kMaxWorkers = 256;

}  // namespace pool
}  // namespace autoweld
