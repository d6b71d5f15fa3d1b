#include "thread_pool.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define AUTOWELD_HAVE_ATFORK 1
#endif

#include "common.hpp"

namespace autoweld {

namespace pool {
namespace {

// Depth of parallel regions on this thread (workers are always inside one).
thread_local int region_depth = 0;

struct RegionGuard {
    RegionGuard() { ++region_depth; }
    ~RegionGuard() { --region_depth; }
    RegionGuard(const RegionGuard&) = delete;
    RegionGuard& operator=(const RegionGuard&) = delete;
};

// How long a thread busy-waits for a hand-off (a worker for its next task, a caller for its
// loop's last chunk) before it sleeps on a condition variable: waking a sleeping thread costs
// tens of microseconds on a busy two-core machine, and an inspection hands work over a dozen
// times. AUTOWELD_POOL_SPIN_US overrides it (0: always sleep at once); read once.
std::chrono::nanoseconds spin_budget() {
    static const std::chrono::nanoseconds budget = [] {
        long us = 50;
        if (const char* env = std::getenv("AUTOWELD_POOL_SPIN_US")) {
            char* end = nullptr;
            const long v = std::strtol(env, &end, 10);
            if (end != env && *end == '\0' && v >= 0 && v <= 100000) us = v;
        }
        return std::chrono::nanoseconds(us * 1000);
    }();
    return budget;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Busy-waits until done() or the spin budget is spent; returns done().
template <class Done>
bool spin_until(Done done) {
    const auto budget = spin_budget();
    if (budget.count() == 0) return done();
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        for (int i = 0; i < 64; ++i) {
            if (done()) return true;
            cpu_relax();
        }
        if (std::chrono::steady_clock::now() - start >= budget) return done();
    }
}

// Waits until ready(): spins first (without the mutex, so the thread that makes it true is
// not held up), then sleeps on `cv` under `m`. Returns with `m` held, for a caller that takes
// what it waited for under the lock.
template <class Ready>
std::unique_lock<std::mutex> await_ready(std::mutex& m, std::condition_variable& cv,
                                         Ready ready) {
    spin_until(ready);
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, ready);
    return lock;
}

class Pool;

// One worker thread and its mailbox. Never destroyed (the thread sleeps until process exit).
struct Worker {
    std::mutex mutex;
    std::condition_variable wake;
    std::function<void()> task;
    // Set (under the mutex) when a task is assigned, cleared when it is taken; atomic so that
    // spin_until can watch it without the mutex.
    std::atomic<bool> has_task{false};
};

class Pool {
public:
    // Leases up to `wanted` idle workers into `out`, starting new ones while fewer than `cap`
    // exist. A loop passes a cap of about twice the hardware threads: a worker it leased may still be
    // unscheduled (busy machine) when the next call comes, and starting a thread for every such
    // call would grow the pool without bound; the caller just does more itself. A team, whose
    // members must all run at once, passes kMaxWorkers.
    void lease(std::size_t wanted, std::size_t cap, std::vector<Worker*>& out) {
        out.reserve(wanted);  // no allocation (nor bad_alloc) below, once workers are taken
        std::lock_guard<std::mutex> lock(mutex_);
        while (out.size() < wanted && !idle_.empty()) {
            out.push_back(idle_.back());
            idle_.pop_back();
        }
        cap = std::min(cap, kMaxWorkers);
        while (out.size() < wanted && started_.load(std::memory_order_relaxed) < cap) {
            Worker* worker = nullptr;  // owned by the pool for the life of the process
            try {
                workers_.reserve(workers_.size() + 1);
                idle_.reserve(workers_.size() + 1);  // release() then never allocates
                worker = new Worker;
                std::thread(&Pool::worker_main, this, worker).detach();
            } catch (...) {
                delete worker;  // no memory, or the OS refused a thread: do with fewer
                break;
            }
            workers_.push_back(worker);  // capacity reserved above: cannot throw
            started_.fetch_add(1, std::memory_order_relaxed);
            out.push_back(worker);
        }
    }

    static void assign(Worker* worker, std::function<void()> task) {
        {
            std::lock_guard<std::mutex> lock(worker->mutex);
            worker->task = std::move(task);
            worker->has_task.store(true, std::memory_order_release);
        }
        worker->wake.notify_one();
    }

    std::size_t started() const { return started_.load(std::memory_order_relaxed); }

    // Returns leased workers that were never given a task.
    void give_back(const std::vector<Worker*>& workers) {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.insert(idle_.end(), workers.begin(), workers.end());
    }

private:
    void release(Worker* worker) {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(worker);
    }

    void worker_main(Worker* worker) {
        region_depth = 1;  // anything a task calls runs inline on this thread
        for (;;) {
            std::function<void()> task;
            {
                const auto lock = await_ready(worker->mutex, worker->wake, [worker] {
                    return worker->has_task.load(std::memory_order_acquire);
                });
                task = std::move(worker->task);
                worker->task = nullptr;
                worker->has_task.store(false, std::memory_order_relaxed);
            }
            task();           // never throws: jobs catch their own exceptions
            task = nullptr;   // drop the job before becoming available again
            release(worker);
        }
    }

    std::mutex mutex_;
    std::vector<Worker*> idle_;
    std::vector<Worker*> workers_;  // every worker ever started (keeps them reachable)
    std::atomic<std::size_t> started_{0};
};

std::atomic<Pool*> current_pool{nullptr};

#if defined(AUTOWELD_HAVE_ATFORK)
// Pools of parent processes, left behind in a forked child (their threads do not exist there;
// their mutexes may even be held). Kept reachable so that leak checkers stay quiet.
constexpr int kMaxAbandoned = 64;
Pool* abandoned[kMaxAbandoned];
std::atomic<int> abandoned_count{0};

void reset_in_child() {
    Pool* old = current_pool.exchange(nullptr);
    if (old != nullptr) {
        const int slot = abandoned_count.fetch_add(1);
        if (slot < kMaxAbandoned) abandoned[slot] = old;
    }
    region_depth = 0;  // the forking thread may have been inside a region
}

struct AtForkRegistration {
    AtForkRegistration() { pthread_atfork(nullptr, nullptr, &reset_in_child); }
};
#endif

Pool& get_pool() {
#if defined(AUTOWELD_HAVE_ATFORK)
    static AtForkRegistration registration;
#endif
    Pool* p = current_pool.load(std::memory_order_acquire);
    if (p != nullptr) return *p;
    auto* fresh = new Pool;  // starts no thread yet; never destroyed (see header)
    Pool* expected = nullptr;
    if (current_pool.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel))
        return *fresh;
    delete fresh;
    return *expected;
}

// Shared state of one dynamic loop; leased workers hold it by shared_ptr because a late one may
// look at the counter after the caller has returned.
struct LoopJob {
    std::size_t n = 0, grain = 1, chunks = 0;
    const std::function<void(std::size_t, std::size_t)>* fn = nullptr;  // only for claimed chunks
    std::atomic<std::size_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
    std::exception_ptr error;

    void work() {
        RegionGuard region;
        for (std::size_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
            try {
                (*fn)(c * grain, std::min(n, (c + 1) * grain));
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                if (!error) error = std::current_exception();
            }
            if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
                std::lock_guard<std::mutex> lock(mutex);
                finished.notify_all();
            }
        }
    }
};

struct TeamJob {
    std::size_t size = 1;
    const std::function<void(std::size_t, std::size_t)>* body = nullptr;
    std::atomic<std::size_t> remaining{0};
    std::mutex mutex;
    std::condition_variable finished;
    std::exception_ptr error;

    void member(std::size_t index) {
        {
            RegionGuard region;
            try {
                (*body)(index, size);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                if (!error) error = std::current_exception();
            }
        }
        if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard<std::mutex> lock(mutex);
            finished.notify_all();
        }
    }
};

}  // namespace

bool in_parallel_region() { return region_depth > 0; }

std::size_t started_workers() {
    Pool* p = current_pool.load(std::memory_order_acquire);
    return p == nullptr ? 0 : p->started();
}

void run_team(std::size_t wanted, const std::function<void(std::size_t, std::size_t)>& body) {
    if (wanted <= 1 || in_parallel_region()) {
        RegionGuard region;
        body(0, 1);
        return;
    }
    std::vector<Worker*> workers;
    Pool& pool = get_pool();
    pool.lease(wanted - 1, kMaxWorkers, workers);
    // Everything that may throw (allocations) happens before the first task is handed out, so
    // a failure leaves no member running with a team size that will never be reached.
    std::vector<std::function<void()>> tasks;
    std::shared_ptr<TeamJob> job;
    try {
        job = std::make_shared<TeamJob>();
        job->size = workers.size() + 1;
        job->body = &body;
        job->remaining.store(job->size);
        tasks.reserve(workers.size());
        for (std::size_t w = 0; w < workers.size(); ++w)
            tasks.emplace_back([job, w] { job->member(w + 1); });
    } catch (...) {
        pool.give_back(workers);
        throw;
    }
    for (std::size_t w = 0; w < workers.size(); ++w) Pool::assign(workers[w], std::move(tasks[w]));
    job->member(0);
    await_ready(job->mutex, job->finished,
                [&] { return job->remaining.load(std::memory_order_acquire) == 0; });
    if (job->error) std::rethrow_exception(job->error);
}

void parallel_for_dynamic(std::size_t n, int threads, std::size_t grain,
                          const std::function<void(std::size_t, std::size_t)>& fn) {
    if (n == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t chunks = (n + grain - 1) / grain;
    const std::size_t wanted =
        std::min(static_cast<std::size_t>(std::max(1, resolve_threads(threads))), chunks);
    if (wanted <= 1 || in_parallel_region()) {
        RegionGuard region;
        fn(0, n);
        return;
    }
    std::vector<Worker*> workers;
    const std::size_t hardware = static_cast<std::size_t>(std::max(1, resolve_threads(0)));
    Pool& pool = get_pool();
    // Cap: twice the threads a loop may use, so one spare worker per thread is there when a
    // worker leased by the previous (short) call has not been scheduled back to idle yet —
    // otherwise the next long call (kNN after preprocessing) would run alone half the time.
    pool.lease(wanted - 1, 2 * std::max(hardware, wanted) - 1, workers);
    std::vector<std::function<void()>> tasks;
    std::shared_ptr<LoopJob> job;
    try {  // allocations first (see run_team)
        job = std::make_shared<LoopJob>();
        job->n = n;
        job->grain = grain;
        job->chunks = chunks;
        job->fn = &fn;
        tasks.reserve(workers.size());
        for (std::size_t w = 0; w < workers.size(); ++w) tasks.emplace_back([job] { job->work(); });
    } catch (...) {
        pool.give_back(workers);
        throw;
    }
    for (std::size_t w = 0; w < workers.size(); ++w) Pool::assign(workers[w], std::move(tasks[w]));
    job->work();
    await_ready(job->mutex, job->finished,
                [&] { return job->done.load(std::memory_order_acquire) == job->chunks; });
    if (job->error) std::rethrow_exception(job->error);
}

void parallel_for_static(std::size_t n, int threads,
                         const std::function<void(std::size_t, std::size_t)>& fn) {
    if (n == 0) return;
    const std::size_t workers =
        std::min(static_cast<std::size_t>(std::max(1, resolve_threads(threads))), n);
    parallel_for_dynamic(n, static_cast<int>(workers), (n + workers - 1) / workers, fn);
}

}  // namespace pool
}  // namespace autoweld
