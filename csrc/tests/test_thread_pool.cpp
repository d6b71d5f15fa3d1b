// Tests of the persistent thread pool: coverage, the per-call thread limit, concurrency of a
// team, reuse of workers across calls, nested calls, exception propagation, concurrent callers
// and a pool that works again in a forked child.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__unix__)
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "check.hpp"
#include "common.hpp"
#include "thread_pool.hpp"

namespace pool = autoweld::pool;

namespace {

bool covers_once(std::size_t n, int threads, std::size_t grain) {
    std::vector<std::atomic<int>> hits(n);
    pool::parallel_for_dynamic(n, threads, grain, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) hits[i]++;
    });
    for (auto& h : hits)
        if (h.load() != 1) return false;
    return true;
}

// Distinct threads that ran chunks of one call, with chunks slow enough that idle helpers
// would join in if the limit allowed them.
std::size_t threads_used(int threads) {
    std::mutex m;
    std::set<std::thread::id> ids;
    pool::parallel_for_dynamic(64, threads, 1, [&](std::size_t, std::size_t) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        std::lock_guard<std::mutex> lock(m);
        ids.insert(std::this_thread::get_id());
    });
    return ids.size();
}

}  // namespace

int main() {
    // Every index exactly once, for any thread count, grain and size.
    for (int threads : {1, 2, 3, 8})
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}})
            for (std::size_t grain : {std::size_t{0}, std::size_t{1}, std::size_t{16}}) {
                CHECK(covers_once(n, threads, grain));
                std::vector<std::atomic<int>> hits(n);
                pool::parallel_for_static(n, threads, [&](std::size_t b, std::size_t e) {
                    for (std::size_t i = b; i < e; ++i) hits[i]++;
                });
                bool once = true;
                for (auto& h : hits) once = once && h.load() == 1;
                CHECK(once);
            }

    // The per-call thread count is an upper bound.
    CHECK(threads_used(1) == 1);
    CHECK(threads_used(2) <= 2);
    CHECK(threads_used(3) <= 3);

    // A team's members run at the same time: each waits (bounded) until all have arrived,
    // which could not happen if the pool ran them one after another.
    for (std::size_t wanted : {std::size_t{2}, std::size_t{4}}) {
        std::atomic<std::size_t> arrived{0}, team_seen{0};
        std::atomic<bool> all_met{true};
        std::mutex m;
        std::set<std::thread::id> ids;
        pool::run_team(wanted, [&](std::size_t member, std::size_t team) {
            if (member == 0) team_seen = team;
            {
                std::lock_guard<std::mutex> lock(m);
                ids.insert(std::this_thread::get_id());
            }
            arrived++;
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
            while (arrived.load() < team)
                if (std::chrono::steady_clock::now() > deadline) {
                    all_met = false;
                    break;
                }
        });
        CHECK(team_seen.load() == wanted);  // workers can be started here
        CHECK(ids.size() == wanted);
        CHECK(all_met.load());
    }

    // Workers persist: many calls do not start a thread each.
    for (int call = 0; call < 500; ++call) CHECK(covers_once(40, 2, 1));
    CHECK(pool::started_workers() >= 1);
    CHECK(pool::started_workers() <= 16);

    // Nested calls (from workers and from the calling thread) run inline and complete.
    {
        std::atomic<int> total{0};
        std::atomic<bool> inside{true};
        pool::parallel_for_dynamic(8, 4, 1, [&](std::size_t, std::size_t) {
            inside = inside && pool::in_parallel_region();
            pool::parallel_for_dynamic(100, 4, 1, [&](std::size_t b, std::size_t e) {
                total += static_cast<int>(e - b);
            });
            pool::run_team(3, [&](std::size_t, std::size_t team) { CHECK(team == 1); });
        });
        CHECK(total.load() == 800);
        CHECK(inside.load());
        CHECK(!pool::in_parallel_region());
    }

    // The first exception is rethrown after every other chunk has run.
    {
        std::atomic<int> ran{0};
        CHECK_THROWS(pool::parallel_for_dynamic(50, 4, 1,
                                                [&](std::size_t b, std::size_t) {
                                                    if (b == 7) throw std::runtime_error("chunk");
                                                    ran++;
                                                }),
                     std::runtime_error);
        CHECK(ran.load() == 49);
        CHECK_THROWS(pool::run_team(3,
                                    [](std::size_t member, std::size_t) {
                                        if (member == 2) throw std::invalid_argument("member");
                                    }),
                     std::invalid_argument);
        // The pool still works afterwards.
        CHECK(covers_once(1000, 3, 7));
    }

    // Several callers at once each get their own workers.
    {
        std::atomic<bool> ok{true};
        std::vector<std::thread> callers;
        for (int c = 0; c < 4; ++c)
            callers.emplace_back([&] {
                for (int r = 0; r < 50; ++r) ok = ok && covers_once(300, 3, 5);
            });
        for (auto& t : callers) t.join();
        CHECK(ok.load());
    }

#if defined(__unix__)
    // After fork() the child's pool starts afresh (the parent's workers do not exist there).
    {
        CHECK(pool::started_workers() >= 1);
        std::fflush(nullptr);
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(30);  // a hang would kill the child: reported as a failure below
            bool ok = pool::started_workers() == 0;
            ok = ok && covers_once(1000, 3, 1);
            std::atomic<std::size_t> members{0};
            pool::run_team(2, [&](std::size_t, std::size_t) { members++; });
            ok = ok && members.load() == 2 && pool::started_workers() >= 1;
            std::_Exit(ok ? 0 : 1);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK(covers_once(1000, 3, 1));  // and the parent's is untouched
    }
#endif
    return autoweld_test::finish("test_thread_pool");
}
