"""AdpqEmbedding and the row decoder behind it; quantizing the input embedding and the output
projection at load (adpq.load(..., embeddings=, lm_head=))."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import adpq  # noqa: E402
from adpq.io.checkpoint import quantize_checkpoint  # noqa: E402
from adpq.io.folder import CheckpointError  # noqa: E402
from adpq.runtime import torch_format  # noqa: E402
from adpq.runtime.embedding import AdpqEmbedding  # noqa: E402
from adpq.runtime.linear import AdpqLinear  # noqa: E402

from _ckpt_util import make_llama  # noqa: E402

CONFIGS = [
    (2, 32, {}), (3, 64, {"symmetric": False}), (4, 8, {"outlier_format": "group"}),
    (8, -1, {"symmetric": False, "zero_point": "float"}), (3, 24, {"scale_dtype": "bfloat16"}),
    (3, 128, {"outlier_format": "group", "symmetric": False, "column_scaling": "mean_abs"}),
]


@pytest.mark.parametrize("cols", [200, 203])  # 203: rows do not start at byte boundaries
@pytest.mark.parametrize("bits,group_size,kw", CONFIGS)
def test_rows_decode_like_the_whole_matrix(bits, group_size, kw, cols):
    rng = np.random.default_rng(bits * 1000 + group_size + cols)
    w = rng.standard_normal((90, cols)).astype(np.float32) * rng.uniform(0.1, 3, cols).astype(np.float32)
    qt = adpq.quantize(w, bits=bits, group_size=group_size, outlier_ratio=0.03, **kw)
    full = qt.dequantize()
    emb = AdpqEmbedding(qt)
    rows = torch.tensor([0, 89, 5, 5, 17, 44, 1])
    got = torch_format.dequantize_rows(emb._arrays, qt.layout, qt.config, rows, emb._row_outliers)
    assert np.array_equal(got.numpy(), full[rows.numpy()])
    ids = torch.tensor([[3, 3, 0], [89, 12, 7]])
    out = emb(ids)
    assert out.shape == (2, 3, cols) and out.dtype == torch.float32
    assert np.array_equal(out.numpy(), full[ids.numpy()])
    with pytest.raises(IndexError):
        emb(torch.tensor([90]))
    with pytest.raises(TypeError):
        emb(torch.tensor([1.0]))
    emb.to(torch.bfloat16)
    assert emb(ids).dtype == torch.bfloat16 and emb._arrays["codes"].dtype == torch.uint8


def test_load_quantizes_tied_embedding_and_head_once(tmp_path):
    src = make_llama(tmp_path / "src", tied=True, dtype="float32")
    quantize_checkpoint(src, tmp_path / "q", adpq.QuantConfig(bits=4, group_size=32), progress=False)
    m = adpq.load(tmp_path / "q", embeddings=8)
    emb, head = m.get_input_embeddings(), m.get_output_embeddings()
    assert isinstance(emb, AdpqEmbedding) and isinstance(head, AdpqLinear)
    assert emb._arrays["codes"].data_ptr() == head.arrays()["codes"].data_ptr()  # held once
    assert emb._qt.config.bits == 8
    # the same model with the embedding matrix replaced by its dequantization
    ref = adpq.load(tmp_path / "q")
    w_hat = torch.from_numpy(emb._qt.dequantize())
    with torch.no_grad():
        ref.get_input_embeddings().weight.copy_(w_hat)  # tied: the head reads it too
        x = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
        a, b = m(x).logits, ref(x).logits
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with pytest.raises(CheckpointError, match="runtime"):
        m.save_pretrained(tmp_path / "out")
    m2 = adpq.load(tmp_path / "q", lm_head=8, embeddings=adpq.QuantConfig(bits=4))
    assert m2.get_output_embeddings().arrays()["codes"].data_ptr() != m2.get_input_embeddings()._arrays["codes"].data_ptr()
    with pytest.raises(TypeError):
        adpq.load(tmp_path / "q", embeddings="8")
