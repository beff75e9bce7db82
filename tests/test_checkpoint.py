"""Checkpoint streaming, the adpq on-disk format, resume, loading back into transformers."""
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

import adpq
import adpq.io.checkpoint
from adpq.io.checkpoint import quantize_checkpoint
from adpq.io.folder import FORMAT_VERSION, INCOMPLETE_MARKER, CheckpointError, SourceCheckpoint
from adpq.io.adpq_format import AdpqCheckpoint, dequantize_checkpoint, inspect_checkpoint
from adpq.io.safetensors import SafetensorsError, SafetensorsFile, write_safetensors

from _ckpt_util import GROUP, make_llama, write_checkpoint, llama_config, llama_tensors

CFG = dict(bits=3, group_size=GROUP, outlier_ratio=0.02)


def cfg(**kw):
    return adpq.QuantConfig(**{**CFG, **kw})


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ safetensors reader / writer


def test_reader_and_writer_match_the_safetensors_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], np.int64),
              "c": np.array([True, False]), "d": np.zeros((0, 3), np.float16), "e": np.uint8(7) * np.ones(5, np.uint8)}
    p1 = str(tmp_path / "lib.safetensors")
    st.save_file(arrays, p1, metadata={"k": "v"})
    f = SafetensorsFile(p1)
    assert f.metadata == {"k": "v"}
    for k, a in arrays.items():
        assert bits_equal(f.get(k), a)
    p2 = str(tmp_path / "ours.safetensors")
    write_safetensors(p2, arrays.items(), {"k": "v"})
    back = st.load_file(p2)
    for k, a in arrays.items():
        assert bits_equal(back[k], a)
    bf = np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)
    write_safetensors(p2, [("bf", bf)])
    assert SafetensorsFile(p2).tensors["bf"].dtype == "BF16" and bits_equal(SafetensorsFile(p2).get("bf"), bf)


def _corrupt(path, how):
    raw = bytearray(open(path, "rb").read())
    if how == "truncate":
        raw = raw[: len(raw) - 100]
    elif how == "header_len":
        raw[:8] = struct.pack("<Q", 10**12)
    elif how == "json":
        raw[8] = ord("x")
    elif how == "dtype":
        n = struct.unpack("<Q", raw[:8])[0]
        h = raw[8:8 + n].replace(b'"F32"', b'"Q7 "', 1)
        raw[8:8 + n] = h
    elif how == "tiny":
        raw = raw[:5]
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("how,msg", [("truncate", "truncated"), ("header_len", "header length"),
                                     ("json", "invalid JSON"), ("dtype", "unsupported dtype 'Q7 '"),
                                     ("tiny", "not a safetensors file")])
def test_corrupt_files_give_clear_errors(tmp_path, how, msg):
    src = make_llama(tmp_path / "src")
    bad = os.path.join(src, "model-00002-of-00002.safetensors")
    _corrupt(bad, how)
    with pytest.raises(SafetensorsError, match=msg) as e:
        quantize_checkpoint(src, tmp_path / "dst", cfg(), progress=False)
    assert "model-00002-of-00002.safetensors" in str(e.value)
    assert not os.path.exists(tmp_path / "dst")


def test_tensors_are_read_into_private_arrays_and_a_shrunk_file_is_an_error(tmp_path):
    """read_tensor reads each tensor with pread into its own array (read-only unless copy=True);
    a file cut short after its header was read gives an error, not a crash (SIGBUS); the file stays
    open, so one deleted underneath still reads as it was validated."""
    src = make_llama(tmp_path / "src", dtype="bfloat16", shards=1)
    f = SafetensorsFile(os.path.join(src, "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    copy = f.get(name, copy=True)
    a = f.get(name)
    assert not a.flags.writeable and copy.flags.writeable and bits_equal(a, copy)
    f = SafetensorsFile(os.path.join(src, "model.safetensors"))
    last = max(f.tensors.values(), key=lambda t: t.end)
    os.unlink(os.path.join(src, "model.safetensors"))
    assert bits_equal(f.get(name), copy)
    os.truncate(f"/proc/self/fd/{f._fd}", f.data_start + last.end - 1)
    with pytest.raises(SafetensorsError, match="changed size since its header was read"):
        f.get(last.name)
    f.close()
    with pytest.raises(SafetensorsError, match="closed"):
        f.get(name)


# ------------------------------------------------------------------ the adpq format


def test_adpq_format_round_trips_bit_for_bit(tmp_path):
    src = make_llama(tmp_path / "src", tied=False, dtype="float32")
    dst = tmp_path / "q"
    c = cfg()
    rep = quantize_checkpoint(src, dst, c, progress=False, max_shard_size="150KB")
    files = sorted(os.listdir(dst))
    assert INCOMPLETE_MARKER not in files
    assert "tokenizer_config.json" in files and "generation_config.json" in files
    assert "model.safetensors.index.json" in files and len(rep.output_files) > 1
    conf = json.load(open(dst / "config.json"))
    qc = conf["quantization_config"]
    assert qc["quant_method"] == "adpq" and qc["format_version"] == FORMAT_VERSION == 3
    assert {k: qc[k] for k in c.to_dict()} == json.loads(json.dumps(c.to_dict()))
    index = json.load(open(dst / "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(rep.output_files)

    source = SourceCheckpoint(src)
    ck = AdpqCheckpoint(dst)
    quantized = [t.name for t in rep.quantized]
    assert sorted(quantized) == sorted(n for n in source.names() if n.endswith("proj.weight"))
    assert sorted(ck.names()) == sorted(source.names())
    for name in source.names():
        w = np.array(source.get(name))
        if name in quantized:
            qt = adpq.quantize(w, config=c)
            back = ck.quantized_tensor(name)
            a1, a2 = qt.arrays(), back.arrays()
            assert a1.keys() == a2.keys()
            for k in a1:
                assert bits_equal(a1[k], a2[k]), (name, k)
            assert back.shape == w.shape and back.dtype == "float32"
            assert bits_equal(back.dequantize(), qt.dequantize())
        else:
            assert bits_equal(ck.tensor(name), w)

    # the pipeline (several tensors in flight on two workers) writes in source order, across shards
    written = []
    for fn in rep.output_files:
        f = SafetensorsFile(dst / fn)
        for n in f.names():  # by offset
            base = n.split(".adpq.")[0]  # (codes: the name itself)
            if not written or written[-1] != base:
                written.append(base)
    assert written == source.names()

    t = rep.totals()
    assert t["tensors_quantized"] == 14 and t["tensors_kept"] == 7
    ins = inspect_checkpoint(dst)["totals"]
    assert ins["tensors_quantized"] == 14 and abs(ins["bits_per_weight_quantized"] - t["bits_per_weight_quantized"]) < 1e-9
    for tr in rep.quantized:
        assert abs(tr.bits_per_weight - 8 * tr.bytes_out / tr.numel) < 1e-9
        assert set(tr.metrics) >= {"mse", "rel_fro_error", "sqnr_db", "max_abs_error", "kl_divergence"}
    table = rep.format_table()
    for k in ("q_proj", "down_proj", "bits/weight", "GB/s"):
        assert k in table


def test_fake_format_and_dequantize_agree(tmp_path):
    src = make_llama(tmp_path / "src", dtype="bfloat16")
    quantize_checkpoint(src, tmp_path / "q", cfg(), progress=False)
    quantize_checkpoint(src, tmp_path / "fake", cfg(), format="fake", progress=False)
    dequantize_checkpoint(tmp_path / "q", tmp_path / "deq", progress=False)
    fake, deq, s = SourceCheckpoint(tmp_path / "fake"), SourceCheckpoint(tmp_path / "deq"), SourceCheckpoint(src)
    assert fake.names() and sorted(fake.names()) == sorted(deq.names()) == sorted(s.names())
    for n in fake.names():
        assert fake.tensors[n].dtype == s.tensors[n].dtype == "BF16"
        assert bits_equal(fake.get(n), deq.get(n))
    conf = json.load(open(tmp_path / "fake" / "config.json"))
    assert "quantization_config" not in conf
    quantize_checkpoint(src, tmp_path / "fake16", cfg(), format="fake", fake_dtype="float16", progress=False)
    f16 = SourceCheckpoint(tmp_path / "fake16")
    assert all(t.dtype == "F16" for t in f16.tensors.values())
    assert json.load(open(tmp_path / "fake16" / "config.json"))["dtype"] == "float16"


def test_kept_tensors_keep_dtype_and_single_file(tmp_path):
    t = llama_tensors(False, np.float16)
    t["model.extra_ids"] = np.arange(10, dtype=np.int64)
    t["model.flags"] = np.array([True, False, True])
    src = write_checkpoint(tmp_path / "src", t, llama_config(False, "float16"), shards=1)
    rep = quantize_checkpoint(src, tmp_path / "q", cfg(), progress=False)
    assert rep.output_files == ["model.safetensors"]
    assert not os.path.exists(tmp_path / "q" / "model.safetensors.index.json")
    ck = AdpqCheckpoint(tmp_path / "q")
    assert bits_equal(ck.tensor("model.extra_ids"), t["model.extra_ids"])
    assert bits_equal(ck.tensor("model.flags"), t["model.flags"])
    assert ck.quantized_tensor("model.layers.0.mlp.up_proj.weight").dtype == "float16"
    st = pytest.importorskip("safetensors.numpy")  # the header is written in place, padded: still standard
    lib = st.load_file(str(tmp_path / "q" / "model.safetensors"))
    assert bits_equal(lib["model.extra_ids"], t["model.extra_ids"])
    assert bits_equal(lib["model.layers.0.mlp.up_proj.weight"],
                      ck.quantized_tensor("model.layers.0.mlp.up_proj.weight").arrays()["codes"])


# ------------------------------------------------------------------ selection


def test_selection_patterns(tmp_path):
    src = make_llama(tmp_path / "src")
    rep = quantize_checkpoint(src, tmp_path / "a", cfg(), include=["*.mlp.*"], exclude="*down_proj*",
                              progress=False)
    assert sorted(t.name for t in rep.quantized) == sorted(
        f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up"))
    with pytest.raises(CheckpointError, match="matches no tensor"):
        quantize_checkpoint(src, tmp_path / "b", cfg(), include="*.qproj.*", progress=False)
    with pytest.raises(CheckpointError, match="matches no tensor"):
        quantize_checkpoint(src, tmp_path / "b", cfg(), exclude="nothing*", progress=False)
    with pytest.raises(CheckpointError, match="only 2-D"):
        quantize_checkpoint(src, tmp_path / "b", cfg(), include="*norm*", progress=False)
    assert not os.path.exists(tmp_path / "b")


def test_unsupported_dtype_selected(tmp_path):
    t = llama_tensors(False, np.float32)
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].astype(np.float64)
    src = write_checkpoint(tmp_path / "src", t, llama_config(False, "float32"))
    with pytest.raises(CheckpointError, match="unsupported dtype F64"):
        quantize_checkpoint(src, tmp_path / "q", cfg(), progress=False)
    rep = quantize_checkpoint(src, tmp_path / "q", cfg(), exclude="*0.mlp.up_proj*", progress=False)
    assert rep.totals()["tensors_quantized"] == 13


def test_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        quantize_checkpoint(tmp_path / "missing", tmp_path / "q", cfg(), progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no .safetensors files.*pytorch_model.bin"):
        quantize_checkpoint(tmp_path / "empty", tmp_path / "q", cfg(), progress=False)
    src = make_llama(tmp_path / "src")
    with pytest.raises(CheckpointError, match="separate folders"):
        quantize_checkpoint(src, os.path.join(src, "out"), cfg(), progress=False)
    with pytest.raises(CheckpointError, match="not an adpq-format folder"):
        AdpqCheckpoint(src)


def test_existing_destination_and_overwrite(tmp_path):
    src = make_llama(tmp_path / "src")
    dst = tmp_path / "q"
    quantize_checkpoint(src, dst, cfg(), progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        quantize_checkpoint(src, dst, cfg(bits=4), progress=False)
    rep = quantize_checkpoint(src, dst, cfg(bits=4), progress=False, overwrite=True)
    assert json.load(open(dst / "config.json"))["quantization_config"]["bits"] == 4
    assert rep.totals()["tensors_resumed"] == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        quantize_checkpoint(src, other, cfg(), progress=False, overwrite=True)
    assert (other / "important.txt").exists()


# ------------------------------------------------------------------ crash and resume


class _Crash(Exception):
    pass


def test_resume_after_crash(tmp_path, monkeypatch):
    src = make_llama(tmp_path / "src", shards=2)
    dst = tmp_path / "q"
    c = cfg()
    real = adpq.quantize
    calls = {"n": 0}

    def crashing(w, config=None):
        calls["n"] += 1
        if calls["n"] == 9:
            raise _Crash("simulated crash")
        return real(w, config=config)

    monkeypatch.setattr(adpq.io.checkpoint, "quantize", crashing)
    with pytest.raises(_Crash):
        quantize_checkpoint(src, dst, c, progress=False, max_shard_size="40KB")
    monkeypatch.setattr(adpq.io.checkpoint, "quantize", real)
    assert os.path.exists(dst / INCOMPLETE_MARKER)
    assert not any(f.endswith(".tmp") for f in os.listdir(dst))
    with pytest.raises(CheckpointError, match="incomplete"):
        AdpqCheckpoint(dst)
    with pytest.raises(CheckpointError, match="incomplete"):
        inspect_checkpoint(dst)
    with pytest.raises(CheckpointError, match="incomplete"):
        adpq.load(dst)
    # a different config does not silently mix with the interrupted run
    with pytest.raises(CheckpointError, match="different settings"):
        quantize_checkpoint(src, dst, cfg(bits=4), progress=False, max_shard_size="40KB")
    # leftovers of a shard being written when the crash came are ignored
    (dst / ".model-part-00099.safetensors.tmp").write_bytes(b"junk")
    rep = quantize_checkpoint(src, dst, c, progress=False, max_shard_size="40KB")
    assert rep.totals()["tensors_resumed"] > 0
    assert not os.path.exists(dst / INCOMPLETE_MARKER)
    clean = tmp_path / "clean"
    quantize_checkpoint(src, clean, c, progress=False, max_shard_size="40KB")
    a, b = AdpqCheckpoint(dst), AdpqCheckpoint(clean)
    assert a.names() == b.names()
    for n in a.names():
        if a.is_quantized(n):
            x, y = a.quantized_tensor(n).arrays(), b.quantized_tensor(n).arrays()
            assert x.keys() == y.keys() and all(bits_equal(x[k], y[k]) for k in x)
        else:
            assert bits_equal(a.tensor(n), b.tensor(n))


def test_no_resume_restarts(tmp_path, monkeypatch):
    src = make_llama(tmp_path / "src")
    dst = tmp_path / "q"
    real = adpq.quantize
    calls = {"n": 0}

    def crashing(w, config=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Crash()
        return real(w, config=config)

    monkeypatch.setattr(adpq.io.checkpoint, "quantize", crashing)
    with pytest.raises(_Crash):
        quantize_checkpoint(src, dst, cfg(), progress=False, max_shard_size="20KB")
    monkeypatch.setattr(adpq.io.checkpoint, "quantize", real)
    rep = quantize_checkpoint(src, dst, cfg(), progress=False, resume=False)
    assert rep.totals()["tensors_resumed"] == 0 and not os.path.exists(dst / INCOMPLETE_MARKER)


# ------------------------------------------------------------------ loading into transformers


@pytest.mark.parametrize("tied,dtype", [(False, "float32"), (True, "bfloat16")])
def test_load_matches_fake_quant_folder(tmp_path, tied, dtype):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    src = make_llama(tmp_path / "src", tied=tied, dtype=dtype)
    quantize_checkpoint(src, tmp_path / "q", cfg(), progress=False)
    quantize_checkpoint(src, tmp_path / "fake", cfg(), format="fake", progress=False)
    m = adpq.load(tmp_path / "q", dequantize=True)  # (the packed model: tests/test_runtime.py)
    f = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fake")
    tdt = getattr(torch, dtype)
    assert m.dtype == tdt and f.dtype == tdt
    if tied:
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = m(x).logits, f(x).logits
    assert torch.equal(a, b)
    # and the quantized model is not the original one
    o = transformers.AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        assert not torch.equal(o(x).logits, a)
    m32 = adpq.load(tmp_path / "q", dtype="float32", dequantize=True)
    assert m32.dtype == torch.float32


def test_nonfinite_weight_names_the_tensor(tmp_path):
    t = llama_tensors(False, np.float32)
    t["model.layers.1.self_attn.v_proj.weight"][3, 5] = np.nan
    src = write_checkpoint(tmp_path / "src", t, llama_config(False, "float32"))
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.v_proj.weight"):
        quantize_checkpoint(src, tmp_path / "q", cfg(), progress=False)
    with pytest.raises(CheckpointError, match="incomplete"):
        AdpqCheckpoint(tmp_path / "q")


@pytest.mark.parametrize("version", [1, 2])
def test_older_format_folders_still_load(tmp_path, version):
    """Formats 1 and 2 stored the codes as NAME.adpq.codes; format 1 also had no column scaling: its
    per-tensor configs lack the field, which must read as 'none' even though QuantConfig's default is
    now 'auto'."""
    src = make_llama(tmp_path / "src", tied=False, dtype="float32")
    dst = tmp_path / "q"
    quantize_checkpoint(src, dst, cfg(column_scaling="none"), progress=False)
    ref = {n: AdpqCheckpoint(dst).quantized_tensor(n).dequantize() for n in AdpqCheckpoint(dst).qmeta}
    for f in dst.glob("*.safetensors"):  # rewrite the headers as that format wrote them
        b = f.read_bytes()
        n = struct.unpack("<Q", b[:8])[0]
        header = json.loads(b[8:8 + n])
        meta = header["__metadata__"]
        meta["adpq.format_version"] = str(version)
        for k in [k for k in meta if k.startswith("adpq:")]:
            header[f"{k[5:]}.adpq.codes"] = header.pop(k[5:])
            if version == 1:
                m = json.loads(meta[k])
                del m["config"]["column_scaling"]
                meta[k] = json.dumps(m)
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        f.write_bytes(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
    index = dst / "model.safetensors.index.json"
    if index.exists():
        idx = json.loads(index.read_text())
        idx["weight_map"] = {(f"{k}.adpq.codes" if k in ref else k): v for k, v in idx["weight_map"].items()}
        index.write_text(json.dumps(idx))
    conf = json.load(open(dst / "config.json"))
    conf["quantization_config"]["format_version"] = version
    if version == 1:
        del conf["quantization_config"]["column_scaling"]
    (dst / "config.json").write_text(json.dumps(conf))
    ck = AdpqCheckpoint(dst)
    assert ck.qmeta and all(("column_scaling" in json.dumps(m["config"])) == (version == 2)
                            for m in ck.qmeta.values())
    for name, w_hat in ref.items():
        qt = ck.quantized_tensor(name)
        assert qt.config.column_scaling == "none" and bits_equal(qt.dequantize(), w_hat)
