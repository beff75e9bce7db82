"""The C core's worker pool (csrc/threads.c): results do not depend on threads, concurrent callers
(Python threads, the GIL released) each get a correct result, and a forked child starts a pool of
its own."""
import os
import threading

import numpy as np
import pytest

import adpq

from test_reference import assert_same_arrays


def matrices(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_t(3, size=(int(rng.integers(40, 300)), int(rng.integers(50, 700)))) * 0.02)
            .astype(np.float32) for _ in range(n)]


def test_results_do_not_depend_on_threads():
    for w in matrices(6):
        ref = adpq.quantize(w, threads=1).arrays()
        for t in (2, 3, 8):
            assert_same_arrays(adpq.quantize(w, threads=t).arrays(), ref)


def test_concurrent_callers():
    ws = matrices(12, seed=1)
    refs = [adpq.quantize(w, threads=1).arrays() for w in ws]
    errors = []

    def work(k):
        try:
            for _ in range(5):
                for i in range(k % 3, len(ws), 3):
                    assert_same_arrays(adpq.quantize(ws[i], threads=2).arrays(), refs[i])
                    w_hat = adpq.quantize(ws[i], threads=3).dequantize(threads=2)
                    assert np.isfinite(w_hat).all()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_child_gets_its_own_pool():
    w = matrices(1, seed=2)[0]
    ref = adpq.quantize(w, threads=2).arrays()  # the parent's pool is up
    pid = os.fork()
    if pid == 0:  # child: its pool threads were not copied; it must start new ones
        ok = False
        try:
            got = adpq.quantize(w, threads=2).arrays()
            ok = all(np.array_equal(got[k].view(np.uint8), ref[k].view(np.uint8)) for k in ref)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
