/* threads.c - a parallel-for over tasks with an atomic task counter, run by a pool of threads that
 * persists between calls (a model is hundreds of small matrices, each quantized in several
 * passes: starting threads for every pass cost more than some passes). A call that finds the pool
 * busy (another thread of the program is in a parallel-for) starts threads of its own.
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

/* ------------------------------------------------------------------ threads of one call */

typedef struct {
    pool_job *job;
    int worker;
} spawn_arg;

static void *spawned_main(void *p) {
    spawn_arg *a = (spawn_arg *)p;
    run_worker(a->job, a->worker);
    return NULL;
}

static void run_spawned(pool_job *job, int threads) {
    pthread_t *tids = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)(threads - 1));
    spawn_arg *args = (spawn_arg *)malloc(sizeof(spawn_arg) * (size_t)(threads - 1));
    int started = 0;
    if (tids && args)
        for (int i = 0; i < threads - 1; i++) {
            args[i].job = job;
            args[i].worker = i + 1;
            if (pthread_create(&tids[i], NULL, spawned_main, &args[i]) != 0) break;
            started++;
        }
    /* if threads could not be created, the calling thread does all the work */
    run_worker(job, 0);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    free(tids);
    free(args);
}

/* ------------------------------------------------------------------ the pool */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static int pool_size;           /* threads started */
static int pool_busy;           /* a parallel-for owns the pool */
static uint64_t pool_gen;       /* incremented for each job */
static pool_job *pool_cur;      /* the current job */
static int pool_wanted, pool_finished; /* pool threads taking part in it, and those done */
static int pool_atfork_set;

typedef struct {
    int index;    /* takes part as worker index + 1 when index < pool_wanted */
    uint64_t gen; /* the generation when it was started: the job it was started for is the next */
} pool_arg;

static void *pool_main(void *p) {
    const pool_arg a = *(pool_arg *)p;
    free(p);
    const int index = a.index;
    uint64_t seen = a.gen;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (pool_gen == seen) pthread_cond_wait(&pool_work, &pool_mu);
        seen = pool_gen;
        if (index >= pool_wanted) continue;
        pool_job *job = pool_cur;
        pthread_mutex_unlock(&pool_mu);
        run_worker(job, index + 1);
        pthread_mutex_lock(&pool_mu);
        if (++pool_finished == pool_wanted) pthread_cond_signal(&pool_done);
    }
    return NULL;
}

/* a forked child has none of the parent's threads: it starts with an empty pool */
static void pool_after_fork(void) {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    pool_mu = mu;
    pool_work = cv;
    pool_done = cv;
    pool_size = pool_busy = pool_wanted = pool_finished = 0;
    pool_cur = NULL;
}

/* With pool_mu held: at least n pool threads; returns how many there are. */
static int pool_grow(int n) {
    if (!pool_atfork_set) {
        pthread_atfork(NULL, NULL, pool_after_fork);
        pool_atfork_set = 1;
    }
    while (pool_size < n) {
        pthread_t tid;
        pool_arg *a = (pool_arg *)malloc(sizeof(pool_arg));
        if (!a) break;
        a->index = pool_size;
        a->gen = pool_gen;
        if (pthread_create(&tid, NULL, pool_main, a) != 0) {
            free(a);
            break;
        }
        pthread_detach(tid);
        pool_size++;
    }
    return pool_size;
}

int adpq_parallel_for(int threads, int64_t ntasks, adpq_task_fn fn, void *ctx) {
    pool_job job;
    job.fn = fn;
    job.ctx = ctx;
    job.ntasks = ntasks;
    atomic_init(&job.next, 0);
    atomic_init(&job.status, 0);
    if (threads > ntasks) threads = (int)(ntasks > 0 ? ntasks : 1);
    if (threads <= 1) {
        run_worker(&job, 0);
        return atomic_load(&job.status);
    }
    pthread_mutex_lock(&pool_mu);
    if (pool_busy) { /* another parallel-for runs: threads of our own */
        pthread_mutex_unlock(&pool_mu);
        run_spawned(&job, threads);
        return atomic_load(&job.status);
    }
    pool_busy = 1;
    const int helpers = pool_grow(threads - 1) < threads - 1 ? pool_size : threads - 1;
    pool_cur = &job;
    pool_wanted = helpers;
    pool_finished = 0;
    pool_gen++;
    pthread_cond_broadcast(&pool_work);
    pthread_mutex_unlock(&pool_mu);

    run_worker(&job, 0);

    pthread_mutex_lock(&pool_mu);
    while (pool_finished < pool_wanted) pthread_cond_wait(&pool_done, &pool_mu);
    pool_cur = NULL;
    pool_wanted = 0;
    pool_busy = 0;
    pthread_mutex_unlock(&pool_mu);
    return atomic_load(&job.status);
}
