/* threads.c - a minimal parallel-for over tasks with pthreads and an atomic task counter.
 * Results never depend on the number of workers: callers write each task's output to a place
 * fixed by the task index. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

typedef struct {
    adpq_task_fn fn;
    void *ctx;
    int64_t ntasks;
    atomic_llong next;
    atomic_int status;
} pool_job;

typedef struct {
    pool_job *job;
    int worker;
} pool_arg;

static void run_worker(pool_job *job, int worker) {
    for (;;) {
        if (atomic_load_explicit(&job->status, memory_order_relaxed) != 0) return;
        int64_t t = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (t >= job->ntasks) return;
        int rc = job->fn(job->ctx, t, worker);
        if (rc != 0) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->status, &expected, rc);
            return;
        }
    }
}

static void *thread_main(void *p) {
    pool_arg *a = (pool_arg *)p;
    run_worker(a->job, a->worker);
    return NULL;
}

int adpq_parallel_for(int threads, int64_t ntasks, adpq_task_fn fn, void *ctx) {
    pool_job job;
    job.fn = fn;
    job.ctx = ctx;
    job.ntasks = ntasks;
    atomic_init(&job.next, 0);
    atomic_init(&job.status, 0);
    if (threads > ntasks) threads = (int)(ntasks > 0 ? ntasks : 1);
    if (threads < 1) threads = 1;
    pthread_t *tids = NULL;
    pool_arg *args = NULL;
    int started = 0;
    if (threads > 1) {
        tids = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)(threads - 1));
        args = (pool_arg *)malloc(sizeof(pool_arg) * (size_t)(threads - 1));
        if (tids && args) {
            for (int i = 0; i < threads - 1; i++) {
                args[i].job = &job;
                args[i].worker = i + 1;
                if (pthread_create(&tids[i], NULL, thread_main, &args[i]) != 0) break;
                started++;
            }
        }
        /* if threads could not be created, the calling thread does all the work */
    }
    run_worker(&job, 0);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    free(tids);
    free(args);
    return atomic_load(&job.status);
}
