"""The torch model steps (`inf2hw.model`), exact attention pieces (`inf2hw.attention`)
and HF checkpoint I/O (`inf2hw.weights`), in fp32 on CPU.

The reference decoder must give exactly Hugging Face's greedy tokens with the same
weights; every attention split (sequence halves, write-back v2 tail scores, rows)
must equal plain attention. Small shapes: the whole file runs in seconds.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from inf2sim.specs import ModelSpec
from inf2hw import attention as A
from inf2hw import model as M
from inf2hw.weights import CheckpointError, load_checkpoint, save_checkpoint, spec_from_hf_config

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
GEN = 10


def load_spec(name: str) -> ModelSpec:
    return ModelSpec(**OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")))


SPECS = {
    "opt-125m": lambda: dataclasses.replace(load_spec("opt-125m"), num_layers=2),
    "llama-tiny": lambda: load_spec("llama-tiny"),
    "mixtral-tiny": lambda: dataclasses.replace(load_spec("llama-tiny"), name="mixtral-tiny", family="mixtral",
                                                num_experts=4, experts_top_k=2),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is as fast and does not stall on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(SPECS))
def model(request):
    torch.manual_seed(0)
    spec = SPECS[request.param]()
    w = M.init_random(spec, seed=1)
    prompt = torch.randint(0, spec.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    return spec, w, prompt


def test_reference_equals_hf_greedy(model):
    pytest.importorskip("transformers")
    spec, w, prompt = model
    toks, logits = M.reference_generate(spec, w, prompt, GEN)
    hf_toks, hf_logits = M.hf_generate(M.to_hf_model(spec, w), prompt, GEN)
    assert toks.shape == (2, GEN) and logits.shape == (2, spec.vocab_size)
    assert torch.equal(toks, hf_toks)
    torch.testing.assert_close(logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert min(len(set(r)) for r in toks.tolist()) >= GEN // 2, f"degenerate greedy tokens {toks.tolist()}"


def test_kv_from_x_is_bitwise_qkv(model):
    spec, w, _ = model
    x = torch.randn(2, 5, spec.hidden, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(11, 16).expand(2, 5)
    for lw in w.layers:
        q, k, v = M.qkv(lw, spec, x, pos)
        k2, v2 = M.kv_from_x(lw, spec, x, pos)
        assert q.shape == (2, spec.num_heads, 5, spec.head_dim) and k.shape == (2, spec.num_kv_heads, 5, spec.head_dim)
        assert torch.equal(k, k2) and torch.equal(v, v2)


def test_steps_keep_shapes_and_ties(model):
    spec, w, prompt = model
    w16 = w.to(dtype=torch.float16)
    assert (w16.lm_head is w16.embed) == spec.tie_embeddings
    assert w16.layers[0].wq.dtype == torch.float16 and w16.nbytes * 2 == w.nbytes
    pos = torch.arange(prompt.shape[1]).expand_as(prompt)
    x = M.embed(w, prompt, pos)
    q, k, v = M.qkv(w.layers[0], spec, x, pos)
    x1 = M.post(w.layers[0], spec, x, A.attend_heads(q, k, v, causal=True))
    assert x1.shape == x.shape and M.head(w, x1).shape == (*prompt.shape, spec.vocab_size)


# ----------------------------------------------------------------------- attention
def naive_attention(q, k, v, causal=False):
    """q [b, heads, t, d] unscaled, k/v [b, kv_heads, ctx, d]: repeat KV heads, softmax."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(~A.causal_mask(q.shape[2], k.shape[2]), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_rows_layout_and_gqa():
    b, heads, kvh, t, ctx, d = 3, 8, 2, 4, 9, 16
    q, k, v = rand(b, heads, t, d, seed=1), rand(b, kvh, ctx, d, seed=2), rand(b, kvh, ctx, d, seed=3)
    rows = A.q_to_rows(q, kvh)
    assert rows.shape == (b * kvh, heads // kvh, t, d)
    # row r = seq * kv_heads + kv_head holds query heads kv_head*group .. +group-1
    assert torch.equal(rows[A.row_index(2, 1, kvh), 3], q[2, 1 * 4 + 3])
    assert torch.equal(A.rows_to_heads(rows, b), q)
    assert torch.equal(A.rows_to_kv(A.kv_to_rows(k), b), k)
    torch.testing.assert_close(A.attend_heads(q, k, v), naive_attention(q, k, v), atol=1e-6, rtol=1e-5)
    qp = rand(b, heads, ctx, d, seed=4)  # prefill: queries on every key position
    torch.testing.assert_close(A.attend_heads(qp, k, v, causal=True), naive_attention(qp, k, v, causal=True),
                               atol=1e-6, rtol=1e-5)
    assert [s.stop - s.start for s in A.split_rows(10, 4)] == [3, 3, 2, 2]


def test_merge_of_sequence_chunks_equals_full():
    rows, g, d, ctx = 6, 4, 32, 37
    q, k, v = rand(rows, g, 1, d, seed=5), rand(rows, ctx, d, seed=6), rand(rows, ctx, d, seed=7)
    full_out, full_lse = A.attend_partial(q, k, v)
    h = ctx // 2
    out, lse = A.merge_partials([A.attend_partial(q, k[:, :h], v[:, :h]), A.attend_partial(q, k[:, h:], v[:, h:])])
    torch.testing.assert_close(out, full_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, full_lse, atol=1e-6, rtol=1e-5)
    assert out.dtype == torch.float32 and lse.shape == (rows, g, 1)
    # causal prefill split over three chunks, one of which no query can see yet
    t = 5
    qp = rand(rows, g, t, d, seed=8)
    kp, vp = k[:, : 3 * t], v[:, : 3 * t]  # ctx 15; queries at positions 10..14
    ref = A.attend_partial(qp, kp, vp, causal=True)
    bounds = [(0, 4), (4, 12), (12, 15)]
    parts = [A.attend_partial(qp, kp[:, a:b], vp[:, a:b], causal=True, q_start=10 - a) for a, b in bounds]
    parts.append(A.attend_partial(qp, kp[:, :3], vp[:, :3], causal=True, q_start=-t))  # all masked: empty partial
    assert torch.isinf(parts[-1][1]).all() and not parts[-1][0].any()
    out, lse = A.merge_partials(parts)
    torch.testing.assert_close(out, ref[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref[1], atol=1e-6, rtol=1e-5)


def test_writeback_v2_tail_scores_equal_plain_attention():
    rows, g, d, stored, tail = 4, 2, 16, 20, 3
    q = rand(rows, g, 1, d, seed=9)
    k, v = rand(rows, stored + tail, d, seed=10), rand(rows, stored + tail, d, seed=11)
    ref_out, ref_lse = A.attend_partial(q, k, v)
    scores = A.tail_scores(q, k[:, stored:])  # host
    assert scores.shape == (rows, g, 1, tail)
    out, lse = A.attend_with_scores(q, k[:, :stored], v[:, :stored], scores, v[:, stored:])  # device
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-5)
    # stored part in a larger preallocated fp16 buffer; tail merged on the host instead
    buf_k, buf_v = torch.zeros(rows, 64, d, dtype=torch.float16), torch.zeros(rows, 64, d, dtype=torch.float16)
    buf_k[:, :stored], buf_v[:, :stored] = k[:, :stored].half(), v[:, :stored].half()
    out16, _ = A.attend_with_scores(q, buf_k, buf_v, scores, v[:, stored:], mask_len=stored)
    torch.testing.assert_close(out16, ref_out, atol=5e-3, rtol=5e-3)
    merged, _ = A.merge_partials([A.attend_partial(q, k[:, :stored], v[:, :stored]),
                                  A.attend_scores_only(scores, v[:, stored:])])
    torch.testing.assert_close(merged, ref_out, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["opt-125m", "llama-tiny", "mixtral-tiny"])
def test_checkpoint_round_trip(name, tmp_path):
    spec = dataclasses.replace(SPECS[name](), vocab_size=1000)  # I/O, not the 50k vocab, is under test
    w = M.init_random(spec, seed=4)
    prompt = torch.randint(0, spec.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    toks, _ = M.reference_generate(spec, w, prompt, 4)
    save_checkpoint(spec, w, tmp_path / "one")
    shard = spec.hidden * spec.ffn_dim * 4  # a few tensors per shard
    save_checkpoint(spec, w, tmp_path / "sharded", max_shard_bytes=shard)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    for d in ("one", "sharded"):
        w2 = load_checkpoint(spec, tmp_path / d)
        assert torch.equal(w2.layers[-1].w_down, w.layers[-1].w_down)
        assert torch.equal(M.reference_generate(spec, w2, prompt, 4)[0], toks)
    got = spec_from_hf_config(tmp_path / "one", name=spec.name)
    assert dataclasses.replace(got, dtype_bytes=spec.dtype_bytes, checkpoint=None) == spec


def test_checkpoint_errors_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    spec = SPECS["llama-tiny"]()
    save_checkpoint(spec, M.init_random(spec, seed=0), tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(str(f))
    del sd["model.layers.2.mlp.up_proj.weight"]
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.2\.mlp\.up_proj\.weight") as e:
        load_checkpoint(spec, tmp_path)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \[688, 256\]"):
        load_checkpoint(dataclasses.replace(spec, ffn_dim=512), tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(spec, tmp_path / "nope")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type='gpt2' is not supported"):
        spec_from_hf_config(tmp_path)
