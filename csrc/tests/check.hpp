// A minimal test harness for the C++ core: CHECK records a failure and goes on; the test
// executable's main returns autoweld_test::finish(), non-zero when anything failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace autoweld_test {

inline int& failures() {
    static int count = 0;
    return count;
}

inline void fail(const char* file, int line, const std::string& what) {
    std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
    ++failures();
}

inline int finish(const char* name) {
    if (failures() == 0) {
        std::printf("%s: all checks passed\n", name);
        return 0;
    }
    std::printf("%s: %d check(s) failed\n", name, failures());
    return 1;
}

}  // namespace autoweld_test

#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) autoweld_test::fail(__FILE__, __LINE__, #cond);      \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                              \
    do {                                                                                   \
        double _a = (a), _b = (b);                                                         \
        if (!(std::fabs(_a - _b) <= (tol)))                                                \
            autoweld_test::fail(__FILE__, __LINE__,                                        \
                                std::string(#a " ~ " #b ": ") + std::to_string(_a) + " vs " + \
                                    std::to_string(_b));                                   \
    } while (0)

#define CHECK_THROWS(expr, exception_type)                                          \
    do {                                                                            \
        bool _thrown = false;                                                       \
        try {                                                                       \
            expr;                                                                   \
        } catch (const exception_type&) {                                           \
            _thrown = true;                                                         \
        } catch (...) {                                                             \
        }                                                                           \
        if (!_thrown) autoweld_test::fail(__FILE__, __LINE__, #expr " did not throw " #exception_type); \
    } while (0)
