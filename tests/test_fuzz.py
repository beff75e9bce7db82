"""The fuzz harness (tests/fuzz/fuzz_readers.py) runs for a bounded time in CI: ~20 s of atheris over the
safetensors reader, the adpq-format reader and QuantizedTensor.from_arrays, from the seed corpus. Any
input that raises something other than a clear error, crashes or hangs fails the test (ADPQ_FUZZ_SECONDS
changes the time)."""
import os
import subprocess
import sys

import pytest

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz", "fuzz_readers.py")


def test_fuzz_readers_for_a_bounded_time(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; the `test` extra has it)")
    seconds = int(os.environ.get("ADPQ_FUZZ_SECONDS", "20"))
    r = subprocess.run([sys.executable, HARNESS, "--seconds", str(seconds), "--artifacts", str(tmp_path)],
                       capture_output=True, text=True, timeout=seconds + 120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"the fuzzer found an input (saved in {tmp_path}):\n{out[-6000:]}"
    assert "stat::number_of_executed_units" in out and not os.listdir(tmp_path), out[-3000:]
