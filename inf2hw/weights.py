"""Hugging Face checkpoint directories <-> `inf2hw.model.Weights`.

Called by the engine when the model config names a `checkpoint` directory, by
`inf2hw.model.to_hf_model` (the name mapping), and by the tests (random weights ->
save -> load). A directory holds `config.json` plus `model.safetensors`, or shards
`model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`. Tensor
names are Hugging Face's: OPT (`model.decoder.*`, the `model.` prefix optional as in
facebook/opt-* files), LLaMA (`model.layers.*`) and Mixtral on-disk names
(`block_sparse_moe.experts.E.w1/w2/w3`). Nothing here needs transformers.

Supported OPT variants are the pre-LayerNorm ones without a projection (125m,
1.3b and up; not 350m). A missing or wrongly shaped tensor raises `CheckpointError`
(a `ValueError`) with one line naming the tensor. Sizes in bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from inf2sim.specs import ModelSpec, SpecError

from .model import OPT_POS_OFFSET, LayerWeights, Weights


class CheckpointError(SpecError):
    """A checkpoint directory that does not fit the model spec; one line naming the tensor or file."""


class _Entry(NamedTuple):
    name: str  # HF tensor name
    layer: Optional[int]  # None: a model-level tensor
    field: str  # attribute of Weights / LayerWeights
    expert: Optional[int]  # Mixtral: index into the stacked [experts, ...] field
    shape: Tuple[int, ...]


def _layout(spec: ModelSpec) -> List[_Entry]:
    """Every tensor of the checkpoint, where it lives in `Weights` and its shape."""
    H, Q, KV, F_, V = spec.hidden, spec.q_dim, spec.kv_dim, spec.ffn_dim, spec.vocab_size
    out: List[_Entry] = []
    if spec.family == "opt":
        p = "model.decoder."
        out += [_Entry(p + "embed_tokens.weight", None, "embed", None, (V, H)),
                _Entry(p + "embed_positions.weight", None, "pos_embed", None, (spec.max_positions + OPT_POS_OFFSET, H)),
                _Entry(p + "final_layer_norm.weight", None, "final_norm", None, (H,)),
                _Entry(p + "final_layer_norm.bias", None, "final_norm_b", None, (H,))]
        per_layer = [("self_attn.q_proj", "wq", "bq", (Q, H)), ("self_attn.k_proj", "wk", "bk", (KV, H)),
                     ("self_attn.v_proj", "wv", "bv", (KV, H)), ("self_attn.out_proj", "wo", "bo", (H, Q)),
                     ("self_attn_layer_norm", "attn_norm", "attn_norm_b", (H,)),
                     ("final_layer_norm", "ffn_norm", "ffn_norm_b", (H,)),
                     ("fc1", "w_up", "b_up", (F_, H)), ("fc2", "w_down", "b_down", (H, F_))]
        for i in range(spec.num_layers):
            for mod, wf, bf, shape in per_layer:
                out.append(_Entry(f"{p}layers.{i}.{mod}.weight", i, wf, None, shape))
                out.append(_Entry(f"{p}layers.{i}.{mod}.bias", i, bf, None, shape[:1]))
    else:
        out += [_Entry("model.embed_tokens.weight", None, "embed", None, (V, H)),
                _Entry("model.norm.weight", None, "final_norm", None, (H,))]
        for i in range(spec.num_layers):
            p = f"model.layers.{i}."
            out += [_Entry(p + "self_attn.q_proj.weight", i, "wq", None, (Q, H)),
                    _Entry(p + "self_attn.k_proj.weight", i, "wk", None, (KV, H)),
                    _Entry(p + "self_attn.v_proj.weight", i, "wv", None, (KV, H)),
                    _Entry(p + "self_attn.o_proj.weight", i, "wo", None, (H, Q)),
                    _Entry(p + "input_layernorm.weight", i, "attn_norm", None, (H,)),
                    _Entry(p + "post_attention_layernorm.weight", i, "ffn_norm", None, (H,))]
            if spec.family == "mixtral":
                out.append(_Entry(p + "block_sparse_moe.gate.weight", i, "router", None, (spec.num_experts, H)))
                for e in range(spec.num_experts):
                    q = f"{p}block_sparse_moe.experts.{e}."
                    out += [_Entry(q + "w1.weight", i, "w_gate", e, (F_, H)), _Entry(q + "w3.weight", i, "w_up", e, (F_, H)),
                            _Entry(q + "w2.weight", i, "w_down", e, (H, F_))]
            else:
                out += [_Entry(p + "mlp.gate_proj.weight", i, "w_gate", None, (F_, H)),
                        _Entry(p + "mlp.up_proj.weight", i, "w_up", None, (F_, H)),
                        _Entry(p + "mlp.down_proj.weight", i, "w_down", None, (H, F_))]
    if not spec.tie_embeddings:
        out.append(_Entry("lm_head.weight", None, "lm_head", None, (V, H)))
    return out


def hf_state_dict(spec: ModelSpec, weights: Weights) -> Dict[str, torch.Tensor]:
    """Our weights under HF checkpoint names (expert slices are views; lm_head only if untied)."""
    sd = {}
    for e in _layout(spec):
        t = getattr(weights if e.layer is None else weights.layers[e.layer], e.field)
        sd[e.name] = t if e.expert is None else t[e.expert]
    return sd


def hf_config_dict(spec: ModelSpec, dtype: torch.dtype = torch.float32) -> dict:
    """config.json contents that transformers reads back as the same shape."""
    common = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.num_layers,
                  num_attention_heads=spec.num_heads, max_position_embeddings=spec.max_positions,
                  tie_word_embeddings=spec.tie_embeddings, torch_dtype=str(dtype).replace("torch.", ""))
    if spec.family == "opt":
        if spec.q_dim != spec.hidden or spec.num_kv_heads != spec.num_heads:
            raise CheckpointError(f"model {spec.name}: OPT needs num_heads*head_dim == hidden and num_kv_heads == num_heads")
        return dict(model_type="opt", architectures=["OPTForCausalLM"], ffn_dim=spec.ffn_dim,
                    do_layer_norm_before=True, word_embed_proj_dim=spec.hidden, activation_function="relu",
                    enable_bias=True, layer_norm_elementwise_affine=True, dropout=0.0, **common)
    cfg = dict(intermediate_size=spec.ffn_dim, num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
               rms_norm_eps=spec.norm_eps, rope_theta=spec.rope_theta, hidden_act="silu",
               rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta}, **common)
    if spec.family == "mixtral":
        return dict(model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=spec.num_experts,
                    num_experts_per_tok=spec.experts_top_k, **cfg)
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=False, mlp_bias=False, **cfg)


def spec_from_hf_config(path, name: Optional[str] = None) -> ModelSpec:
    """A ModelSpec from a checkpoint directory's config.json (opt, llama, mistral, mixtral)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"checkpoint {path}: no config.json")
    c = json.loads(cfg_path.read_text())
    kind = c.get("model_type")
    dtype_bytes = 4 if c.get("torch_dtype", c.get("dtype")) == "float32" else 2
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    common = dict(name=name or Path(path).name, num_layers=c["num_hidden_layers"], hidden=hidden, num_heads=heads,
                  vocab_size=c["vocab_size"], max_positions=c["max_position_embeddings"], dtype_bytes=dtype_bytes,
                  checkpoint=str(path))
    if kind == "opt":
        if not c.get("do_layer_norm_before", True) or c.get("word_embed_proj_dim", hidden) != hidden:
            raise CheckpointError(f"checkpoint {path}: post-LayerNorm / projected OPT variants (e.g. opt-350m) are not supported")
        return ModelSpec(family="opt", num_kv_heads=heads, head_dim=hidden // heads, ffn_dim=c["ffn_dim"],
                         norm_eps=1e-5, tie_embeddings=c.get("tie_word_embeddings", True), **common)
    if kind not in ("llama", "mistral", "mixtral"):
        raise CheckpointError(f"checkpoint {path}: model_type={kind!r} is not supported; use opt, llama, mistral or mixtral")
    rope = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    moe = kind == "mixtral"
    return ModelSpec(family="mixtral" if moe else "llama", num_kv_heads=c.get("num_key_value_heads") or heads,
                     head_dim=c.get("head_dim") or hidden // heads, ffn_dim=c["intermediate_size"],
                     num_experts=c.get("num_local_experts", 1) if moe else 1,
                     experts_top_k=c.get("num_experts_per_tok", 1) if moe else 1, rope_theta=float(rope),
                     norm_eps=c.get("rms_norm_eps", 1e-6), tie_embeddings=c.get("tie_word_embeddings", False), **common)


def _tensor_files(path: Path) -> Dict[str, Path]:
    """Tensor name -> safetensors file, from the shard index or by listing every file."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        return {k: path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint {path}: no *.safetensors files (only safetensors checkpoints are read)")
    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            where.update({k: f for k in h.keys()})
    return where


def load_checkpoint(spec: ModelSpec, path, dtype: torch.dtype = torch.float32, device="cpu") -> Weights:
    """Read an HF safetensors directory into `Weights` (first `spec.num_layers` layers).

    Raises CheckpointError naming the first missing or mismatched-shape tensor.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory")
    where = _tensor_files(path)
    handles: dict = {}
    model: dict = {}
    layers: List[dict] = [{} for _ in range(spec.num_layers)]
    try:
        for e in _layout(spec):
            name = e.name
            if name not in where and name.startswith("model.decoder."):
                name = name[len("model."):]  # facebook/opt-* files omit the prefix
            if name not in where:
                raise CheckpointError(f"checkpoint {path}: missing tensor {e.name} (model {spec.name}, shape {list(e.shape)})")
            f = where[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt")
            t = handles[f].get_tensor(name)
            if tuple(t.shape) != e.shape:
                raise CheckpointError(f"checkpoint {path}: tensor {e.name} has shape {list(t.shape)}, "
                                      f"model {spec.name} needs {list(e.shape)}")
            t = t.to(device=device, dtype=dtype)
            dst = model if e.layer is None else layers[e.layer]
            if e.expert is None:
                dst[e.field] = t
            else:
                dst.setdefault(e.field, [None] * spec.num_experts)[e.expert] = t
    finally:
        handles.clear()
    for d in layers:
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = torch.stack(v)  # [experts, ...]
    model.setdefault("lm_head", model["embed"])  # tied: the very same tensor
    return Weights(spec=spec, layers=[LayerWeights(**d) for d in layers], **model)


def save_checkpoint(spec: ModelSpec, weights: Weights, path, max_shard_bytes: Optional[int] = None) -> Path:
    """Write an HF-compatible directory: config.json + safetensors (sharded with an index
    json when the tensors exceed `max_shard_bytes`). Returns the directory."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = weights.embed.dtype
    (path / "config.json").write_text(json.dumps(hf_config_dict(spec, dtype), indent=2) + "\n")
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in hf_state_dict(spec, weights).items()}
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path
