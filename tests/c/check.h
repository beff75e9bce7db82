/* check.h - what the C test files share (defined in test_core.c): the check counters and CHECK, the
 * check groups (begin/end print one line each), and the seeded random inputs. */
#ifndef ADPQ_TEST_CHECK_H
#define ADPQ_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

extern long long grp_checks, grp_failed;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        grp_checks++;                                                                                                  \
        if (!(cond)) {                                                                                                 \
            if (grp_failed++ < 8) {                                                                                    \
                printf("    FAIL line %d: ", __LINE__);                                                                \
                printf(__VA_ARGS__);                                                                                   \
                printf("\n");                                                                                          \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

void begin(const char *name);
void end(void);

/* splitmix64, uniform [0, 1), [0, n), standard normal */
uint64_t rnd64(void);
double unif(void);
int64_t below(int64_t n);
float normal(void);

/* test_matmul.c */
void test_matmul(int have_v);

#endif
