"""OPT / LLaMA / Mixtral blocks in torch, as the small steps a plan executes.

Called by the real engine (`inf2hw.engine`), which runs a schedule op by op and so
needs the forward pass cut at the places where data moves: `embed`, then per layer
`qkv` (norm + projections + RoPE) -> attention wherever the KV lives -> `post`
(out proj + residual + FFN), and `head` at the end. `kv_from_x` regenerates K,V from
the layer input X for the X-cache. Also called by the tests and by `reference_generate`,
the plain in-memory greedy decoder every policy is checked against, and by
`to_hf_model` to check that reference against Hugging Face transformers.
`prefill_attention` is the prompt's causal attention for both the engine and the
reference: exact fp32 (`inf2hw.attention`) on the CPU and for fp32 tensors, PyTorch's
fused kernel (FlashAttention's role) for fp16/bf16 on a GPU, where the exact form's
[heads, prompt, prompt] score tensor would not fit. `init_repeated` builds benchmark
weights in seconds (see its docstring).

Shapes: tokens/positions [batch, seq] int64; x [batch, seq, hidden] in the weights'
dtype; q [batch, heads, seq, head_dim]; k, v [batch, kv_heads, seq, head_dim].
Convention: **q is returned unscaled for every family**; attention
(`inf2hw.attention`) applies 1/sqrt(head_dim) to q·kᵀ itself (HF OPT folds that
scale into q_proj; we do not). Linear weights use torch's [out, in] layout.
Step functions are device-agnostic: they run where their tensors are.
"""
from __future__ import annotations

import functools

import math
from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from inf2sim.specs import ModelSpec

from .attention import attend_heads

Tensor = torch.Tensor


# ------------------------------------------------------------------------ weights
class _TensorGroup:
    """Shared `.to` / `.pin_memory` / `nbytes` over a dataclass's tensor fields."""

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}

    def _map(self, fn):
        done = {}  # keeps tied tensors tied (lm_head is embed)
        for t in self.tensors().values():
            if id(t) not in done:
                done[id(t)] = fn(t)
        kw = {n: done[id(t)] for n, t in self.tensors().items()}
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **kw})

    def to(self, device=None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False):
        return self._map(lambda t: t.to(device=device, dtype=dtype, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map(lambda t: t.pin_memory())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in self.tensors().values()}.values())


@dataclass
class LayerWeights(_TensorGroup):
    """One transformer block; moved between devices as a unit.

    Dense FFN: w_up [ffn, hidden] (OPT fc1 / LLaMA up_proj), w_down [hidden, ffn],
    w_gate [ffn, hidden] (LLaMA gate_proj). MoE (mixtral): the same names with a
    leading [experts] axis, plus router [experts, hidden]. OPT-only biases are None
    for the other families.
    """

    attn_norm: Tensor  # [hidden]
    wq: Tensor  # [heads*head_dim, hidden]
    wk: Tensor  # [kv_heads*head_dim, hidden]
    wv: Tensor  # [kv_heads*head_dim, hidden]
    wo: Tensor  # [hidden, heads*head_dim]
    ffn_norm: Tensor  # [hidden]
    w_up: Tensor
    w_down: Tensor
    w_gate: Optional[Tensor] = None
    router: Optional[Tensor] = None
    attn_norm_b: Optional[Tensor] = None
    bq: Optional[Tensor] = None
    bk: Optional[Tensor] = None
    bv: Optional[Tensor] = None
    bo: Optional[Tensor] = None
    ffn_norm_b: Optional[Tensor] = None
    b_up: Optional[Tensor] = None
    b_down: Optional[Tensor] = None


@dataclass
class Weights(_TensorGroup):
    """The whole model: embeddings, head and a list of `LayerWeights`."""

    spec: ModelSpec
    embed: Tensor  # [vocab, hidden]
    final_norm: Tensor  # [hidden]
    lm_head: Tensor  # [vocab, hidden]; the very same tensor as `embed` when tied
    layers: List[LayerWeights]
    pos_embed: Optional[Tensor] = None  # OPT: [max_positions + 2, hidden]
    final_norm_b: Optional[Tensor] = None  # OPT

    def _map(self, fn):
        w = super()._map(fn)
        w.layers = [lw._map(fn) for lw in self.layers]
        return w

    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(lw.nbytes for lw in self.layers)


OPT_POS_OFFSET = 2  # OPT's learned positions are indexed with position + 2 (fairseq padding legacy)


def init_random(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> Weights:
    """Seeded random weights, drawn in fp32 on the CPU then cast (same values on any device).

    Chosen so greedy decoding gives varied tokens (checked: ~all distinct over 32
    steps for opt-125m and llama-tiny), which a test of exact token equality needs:
    * embeddings and lm_head N(0, 0.02) as HF init;
    * linear weights N(0, 1/fan_in), so blocks move the residual stream (with HF's
      0.02 everywhere the residual stays the token's own embedding);
    * attention out proj 4x smaller: otherwise the context average dominates the
      residual and greedy decoding settles on one repeated token;
    * OPT fc2 rows zero-mean over the ffn axis, so ReLU's positive mean adds no
      fixed direction that picks the same argmax for every input;
    * norm scales 1 + N(0, 0.1) and OPT biases N(0, 0.02), non-trivial so a
      mis-mapped weight cannot hide in a comparison against Hugging Face.
    """
    g = torch.Generator().manual_seed(seed)
    opt, moe = spec.family == "opt", spec.family == "mixtral"
    H, F_, E = spec.hidden, spec.ffn_dim, spec.num_experts

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    def lin(out_f, in_f, experts=None, gain=1.0, centered=False):
        shape = (experts, out_f, in_f) if experts else (out_f, in_f)
        t = torch.randn(*shape, generator=g) * (gain / math.sqrt(in_f))
        return (t - t.mean(-1, keepdim=True) if centered else t).to(device=device, dtype=dtype)

    def norm():
        return randn(H, std=0.1) + 1.0

    def bias(n):
        return randn(n, std=0.02) if opt else None

    layers = []
    for _ in range(spec.num_layers):
        ex = E if moe else None
        layers.append(LayerWeights(
            attn_norm=norm(), wq=lin(spec.q_dim, H), wk=lin(spec.kv_dim, H), wv=lin(spec.kv_dim, H),
            wo=lin(H, spec.q_dim, gain=0.25), ffn_norm=norm(),
            w_up=lin(F_, H, ex), w_down=lin(H, F_, ex, centered=opt), w_gate=None if opt else lin(F_, H, ex),
            router=lin(E, H) if moe else None,
            attn_norm_b=bias(H), bq=bias(spec.q_dim), bk=bias(spec.kv_dim), bv=bias(spec.kv_dim),
            bo=bias(H), ffn_norm_b=bias(H), b_up=bias(F_), b_down=bias(H)))
    embed = randn(spec.vocab_size, H, std=0.02)
    return Weights(
        spec=spec, embed=embed, final_norm=norm(), layers=layers,
        lm_head=embed if spec.tie_embeddings else randn(spec.vocab_size, H, std=0.02),
        pos_embed=randn(spec.max_positions + OPT_POS_OFFSET, H, std=0.02) if opt else None,
        final_norm_b=bias(H))


_init_random_exact = init_random  # `init_repeated` draws its one layer with this even if init_random is swapped


def init_repeated(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float16, device="cpu") -> Weights:
    """Benchmark weights: `init_random` of a one-layer model, whose block is copied
    to every layer (distinct memory per layer, so no layer reads another's weights
    from a cache). Same shapes and bytes as `init_random`, so every transfer and
    kernel costs the same, made in seconds for 13B+ models where `init_random` draws
    every value from one CPU generator (minutes). Not for exactness tests: every
    layer computes the same function."""
    from dataclasses import replace

    one = _init_random_exact(replace(spec, num_layers=1), seed=seed, dtype=dtype, device=device)
    one.spec = spec
    block = one.layers[0]
    one.layers = [block] + [block._map(torch.clone) for _ in range(spec.num_layers - 1)]
    return one


# ---------------------------------------------------------------------- primitives
def _norm(x: Tensor, w: Tensor, b: Optional[Tensor], spec: ModelSpec) -> Tensor:
    """OPT: LayerNorm(w, b). LLaMA/Mixtral: RMSNorm computed in fp32, as HF does."""
    if spec.family == "opt":
        return F.layer_norm(x, (x.shape[-1],), w, b, spec.norm_eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + spec.norm_eps)
    return w * xf.to(x.dtype)


@functools.lru_cache(maxsize=16)
def _inv_freq(d: int, theta: float, device: str) -> Tensor:
    """[d/2] fp32 rotary frequencies (HF's inv_freq), made once per (d, theta, device)."""
    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))


def _rope_cos_sin(positions: Tensor, d: int, theta: float, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """positions [b, t] -> cos, sin [b, 1, t, d] in `dtype` (computed in fp32, as HF does);
    one pair serves q and k of a layer call."""
    freqs = positions.float().unsqueeze(-1) * _inv_freq(d, theta, str(positions.device))  # [b, t, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [b, t, d]
    return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, HF 'rotate_half' layout. x [b, heads, t, d], cos, sin [b, 1, t, d]."""
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """[b, t, n_heads*d] -> [b, n_heads, t, d]."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)


# ---------------------------------------------------------------- engine steps
def embed(w: Weights, tokens: Tensor, positions: Tensor) -> Tensor:
    """tokens, positions [b, t] int64 -> x [b, t, hidden]. OPT adds learned positions."""
    x = F.embedding(tokens, w.embed)  # [b, t, hidden]
    if w.spec.family == "opt":
        x = x + F.embedding(positions + OPT_POS_OFFSET, w.pos_embed)
    return x


def _kv(lw: LayerWeights, spec: ModelSpec, h: Tensor, rope: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    k = _heads(F.linear(h, lw.wk, lw.bk), spec.num_kv_heads)  # [b, kv_heads, t, d]
    v = _heads(F.linear(h, lw.wv, lw.bv), spec.num_kv_heads)  # [b, kv_heads, t, d]
    if rope is not None:
        k = _rope(k, *rope)
    return k, v


def rope_tables(spec: ModelSpec, positions: Tensor, dtype: torch.dtype) -> Optional[Tuple[Tensor, Tensor]]:
    """RoPE cos, sin [b, 1, t, d] for positions [b, t] (None for OPT): the same for every
    layer, so a caller may make them once per step and pass them to `qkv` / `kv_from_x`."""
    return None if spec.family == "opt" else _rope_cos_sin(positions, spec.head_dim, spec.rope_theta, dtype)


def qkv(lw: LayerWeights, spec: ModelSpec, x: Tensor, positions: Tensor,
        rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Pre-attention norm + projections (+ RoPE, from `rope` when given). x [b, t, hidden] ->
    q [b, heads, t, d] (unscaled), k, v [b, kv_heads, t, d]."""
    h = _norm(x, lw.attn_norm, lw.attn_norm_b, spec)  # [b, t, hidden]
    if rope is None:
        rope = rope_tables(spec, positions, h.dtype)
    q = _heads(F.linear(h, lw.wq, lw.bq), spec.num_heads)  # [b, heads, t, d]
    if rope is not None:
        q = _rope(q, *rope)
    k, v = _kv(lw, spec, h, rope)
    return q, k, v


def kv_from_x(lw: LayerWeights, spec: ModelSpec, x: Tensor, positions: Tensor,
              rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """X-cache: regenerate k, v [b, kv_heads, t, d] from the layer input x [b, t, hidden].
    Same ops in the same order as `qkv`, so bitwise equal for the same x."""
    h = _norm(x, lw.attn_norm, lw.attn_norm_b, spec)
    return _kv(lw, spec, h, rope if rope is not None else rope_tables(spec, positions, h.dtype))


def _moe(lw: LayerWeights, spec: ModelSpec, h: Tensor) -> Tensor:
    """Mixtral sparse MoE as HF: softmax router in fp32, top-k, renormalised weights."""
    b, t, hid = h.shape
    h2 = h.reshape(-1, hid)  # [tokens, hidden]
    probs = torch.softmax(F.linear(h2, lw.router).float(), dim=-1)  # [tokens, experts]
    top_w, top_i = torch.topk(probs, spec.experts_top_k, dim=-1)  # [tokens, k]
    top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h2)
    for e in range(spec.num_experts):
        tok, slot = torch.where(top_i == e)  # tokens routed to expert e, and in which slot
        if tok.numel() == 0:
            continue
        he = h2[tok]  # [n, hidden]
        y = F.silu(F.linear(he, lw.w_gate[e])) * F.linear(he, lw.w_up[e])  # [n, ffn]
        y = F.linear(y, lw.w_down[e]) * top_w[tok, slot, None]  # [n, hidden]
        out.index_add_(0, tok, y.to(out.dtype))
    return out.view(b, t, hid)


def post(lw: LayerWeights, spec: ModelSpec, x: Tensor, attn: Tensor) -> Tensor:
    """attn [b, heads, t, d] (any float dtype) -> out proj + residual + FFN -> x_next [b, t, hidden]."""
    b, _, t, _ = attn.shape
    a = attn.transpose(1, 2).reshape(b, t, spec.q_dim).to(x.dtype)  # [b, t, heads*d]
    x = x + F.linear(a, lw.wo, lw.bo)
    h = _norm(x, lw.ffn_norm, lw.ffn_norm_b, spec)  # [b, t, hidden]
    if spec.family == "opt":
        f = F.linear(F.relu(F.linear(h, lw.w_up, lw.b_up)), lw.w_down, lw.b_down)  # ReLU fc1 -> fc2
    elif spec.family == "mixtral":
        f = _moe(lw, spec, h)
    else:
        f = F.linear(F.silu(F.linear(h, lw.w_gate)) * F.linear(h, lw.w_up), lw.w_down)  # SwiGLU
    return x + f


def prefill_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of a prompt over itself: q [b, heads, P, d] unscaled, k, v
    [b, kv_heads, P, d] -> [b, heads, P, d] in q's dtype. PyTorch's fused
    scaled_dot_product_attention on every device and dtype (flash / memory-efficient
    kernels on a GPU, the CPU flash kernel on a CPU): no [P, P] score matrix in memory.
    On this repo's 2-core CPU it is 13x faster than the materialised fp32 `attend_heads`
    at b=4, 12 heads, P=2048 (benchmarks/prefill_attention.py); in fp32 the two
    agree to ~1e-6, so greedy tokens still match the reference model's."""
    if q.is_cuda and q.dtype == torch.float32:
        return attend_heads(q, k, v, causal=True)  # fp32 on a GPU stays the materialised reference
    gqa = q.shape[1] != k.shape[1]
    kw = {"enable_gqa": True} if gqa else {}
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(q.shape[-1]), **kw)


def head(w: Weights, x: Tensor) -> Tensor:
    """Final norm + lm_head: x [b, t, hidden] -> logits [b, t, vocab] (x's dtype)."""
    return F.linear(_norm(x, w.final_norm, w.final_norm_b, w.spec), w.lm_head)


# ---------------------------------------------------------------------- reference
@torch.no_grad()
def reference_generate(spec: ModelSpec, weights: Weights, prompt_ids: Tensor, gen_len: int,
                       step_logits: Optional[list] = None) -> Tuple[Tensor, Tensor]:
    """Plain in-memory greedy decoding with a concatenating KV cache.

    prompt_ids [b, p] int64 -> (tokens [b, gen_len] int64, last_logits fp32 [b, vocab],
    the logits that chose the last token). Runs where the weights are. If `step_logits`
    is a list, every step's logits (fp32 [b, vocab]) are appended to it.
    """
    dev = weights.embed.device
    ids = prompt_ids.to(dev)
    b, p = ids.shape
    cache: List[Tuple[Tensor, Tensor]] = []  # per layer: k, v [b, kv_heads, ctx, d]
    pos = torch.arange(p, device=dev).expand(b, p)  # [b, p]
    x = embed(weights, ids, pos)
    for lw in weights.layers:  # prefill
        q, k, v = qkv(lw, spec, x, pos)
        cache.append((k, v))
        x = post(lw, spec, x, prefill_attention(q, k, v))
    logits = head(weights, x[:, -1:])[:, -1].float()  # [b, vocab]
    if step_logits is not None:
        step_logits.append(logits)
    out = [logits.argmax(-1)]
    for step in range(1, gen_len):  # decode: one token per step
        pos = torch.full((b, 1), p + step - 1, device=dev, dtype=torch.int64)
        x = embed(weights, out[-1][:, None], pos)  # [b, 1, hidden]
        for i, lw in enumerate(weights.layers):
            q, k, v = qkv(lw, spec, x, pos)
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
            cache[i] = (k, v)
            x = post(lw, spec, x, attend_heads(q, k, v))
        logits = head(weights, x)[:, -1].float()
        if step_logits is not None:
            step_logits.append(logits)
        out.append(logits.argmax(-1))
    return torch.stack(out, dim=1), logits


# ------------------------------------------------------- Hugging Face cross-check
def to_hf_model(spec: ModelSpec, weights: Weights):
    """The same model as transformers' OPT/Llama/MixtralForCausalLM, fp32, eval mode, CPU.

    Imports transformers lazily (a test dependency); never touches the network.
    """
    import transformers as tf

    from .weights import hf_config_dict, hf_state_dict

    cfg = hf_config_dict(spec)
    cls = {"opt": (tf.OPTConfig, tf.OPTForCausalLM), "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
           "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM)}[spec.family]
    config = cls[0](**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "torch_dtype")})
    if spec.family != "opt" and not hasattr(config, "rope_parameters"):
        config.rope_theta = spec.rope_theta  # transformers < 5
    config._attn_implementation = "eager"
    try:  # skip transformers' random init: every weight is overwritten below
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = cls[1](config).float().eval()
    sd = {k: v.float().contiguous() for k, v in hf_state_dict(spec, weights.to("cpu")).items()}
    if spec.family == "mixtral":
        sd = _mixtral_to_module_names(sd, model.state_dict().keys(), spec)
    sd.setdefault("lm_head.weight", sd.get("model.embed_tokens.weight", sd.get("model.decoder.embed_tokens.weight")))
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)  # shares storage, no copy
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise RuntimeError(f"HF {spec.family} state dict mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def _mixtral_to_module_names(sd: dict, module_keys, spec: ModelSpec) -> dict:
    """Checkpoint names (block_sparse_moe.experts.E.w1) -> this transformers' module names
    (transformers >= 5 fuses experts into mlp.experts.gate_up_proj [E, 2*ffn, hidden])."""
    if not any(".mlp.experts.gate_up_proj" in k for k in module_keys):
        return sd  # per-expert modules: checkpoint names are module names
    out = {k: v for k, v in sd.items() if ".block_sparse_moe." not in k}
    for i in range(spec.num_layers):
        pre = f"model.layers.{i}.block_sparse_moe."
        ex = range(spec.num_experts)
        out[f"model.layers.{i}.mlp.gate.weight"] = sd[pre + "gate.weight"]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([sd[f"{pre}experts.{e}.w1.weight"], sd[f"{pre}experts.{e}.w3.weight"]]) for e in ex])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([sd[f"{pre}experts.{e}.w2.weight"] for e in ex])
    return out


@torch.no_grad()
def hf_generate(model, prompt_ids: Tensor, gen_len: int) -> Tuple[Tensor, Tensor]:
    """Greedy decoding with an HF model's own KV cache: (tokens [b, gen_len], last_logits fp32 [b, vocab])."""
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=prompt_ids, use_cache=True)
    toks = []
    for step in range(gen_len):
        logits = out.logits[:, -1].float()  # [b, vocab]
        toks.append(logits.argmax(-1))
        if step + 1 < gen_len:
            past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            out = model(input_ids=toks[-1][:, None], use_cache=True, **{cache_kw: past})
    return torch.stack(toks, dim=1), logits
