"""Exact attention over KV *rows*, in pieces that merge by log-sum-exp.

Called by the emulated CSD workers (their slice of rows or of the sequence), by the
host (write-back v2 tail scores, merging partials) and by the GPU (the X-cache share
and the reference model in `inf2hw.model`). Pure torch, device-agnostic: everything
runs on the device its inputs are on.

Conventions, shared by every caller:

* **Rows.** A KV row is one (sequence, KV head) pair: ``row = seq * num_kv_heads +
  kv_head``. K and V of a row are ``[ctx, head_dim]``; a batch of rows is
  ``[rows, ctx, head_dim]``. The query heads that share a KV head (GQA: query head
  ``h`` reads KV head ``h // group``) travel with that row: ``q`` is
  ``[rows, group, q_len, head_dim]``. `q_to_rows` / `kv_to_rows` / `rows_to_heads`
  convert from and to the model's ``[batch, heads, seq, head_dim]`` layout.
* **q is unscaled.** Every function here applies ``scale = 1/sqrt(head_dim)`` to
  ``q·kᵀ`` itself; `inf2hw.model.qkv` returns unscaled q for every family.
* **Partials.** A partial result is ``(out, lse)``: ``out`` fp32
  ``[rows, group, q_len, head_dim]`` is softmax-weighted V over the keys seen, ``lse``
  fp32 ``[rows, group, q_len]`` is the natural-log log-sum-exp of the *scaled* scores
  over those keys (``-inf`` and ``out = 0`` when no key was visible). Partials over
  disjoint key sets merge exactly with `merge_partials`.
* Arithmetic is fp32 whatever the input dtype (fp16 K/V from disk are upcast), so
  a CSD, the host and the GPU agree to fp32 rounding. One exception: on a CUDA GPU, fp16
  or bf16 attention without a mask (decode) runs FlashAttention's fused kernel
  (`_fused_partial`: fp32 accumulation, the probabilities in the input dtype), which
  agrees to fp16 rounding; the reference model (`attend_heads`) keeps the fp32 path.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Tuple

import torch

Partial = Tuple[torch.Tensor, torch.Tensor]  # (out [rows, group, q_len, d] fp32, lse [rows, group, q_len] fp32)


# ------------------------------------------------------------------ layout helpers
def row_index(seq: int, kv_head: int, num_kv_heads: int) -> int:
    """The KV row holding (sequence `seq`, KV head `kv_head`)."""
    return seq * num_kv_heads + kv_head


def q_to_rows(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[batch, heads, q_len, d] -> [batch * kv_heads, group, q_len, d] (query heads of a KV head together)."""
    b, h, t, d = q.shape
    return q.reshape(b * num_kv_heads, h // num_kv_heads, t, d)


def kv_to_rows(k: torch.Tensor) -> torch.Tensor:
    """[batch, kv_heads, ctx, d] -> [batch * kv_heads, ctx, d]."""
    b, kvh, t, d = k.shape
    return k.reshape(b * kvh, t, d)


def rows_to_kv(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch * kv_heads, ctx, d] -> [batch, kv_heads, ctx, d]."""
    r, t, d = rows.shape
    return rows.reshape(batch, r // batch, t, d)


def rows_to_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Attention output or lse from rows back to heads.

    [batch * kv_heads, group, q_len, d] -> [batch, heads, q_len, d], or
    [batch * kv_heads, group, q_len]    -> [batch, heads, q_len].
    """
    r, g = x.shape[:2]
    return x.reshape(batch, (r // batch) * g, *x.shape[2:])


# ----------------------------------------------------------------- core attention
def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled scores, fp32: q [rows, group, q_len, d], k [rows, ctx, d] -> [rows, group, q_len, ctx]."""
    rows, g, t, d = q.shape
    qf = q.float().reshape(rows, g * t, d)  # [rows, group*q_len, d]
    s = torch.bmm(qf, k.float().transpose(1, 2))  # [rows, group*q_len, ctx]
    return (s * (1.0 / math.sqrt(d))).reshape(rows, g, t, k.shape[1])


def _softmax_out(s: torch.Tensor, v: torch.Tensor) -> Partial:
    """Scores [rows, group, q_len, ctx] (masked keys at -inf), v [rows, ctx, d] -> partial."""
    rows, g, t, n = s.shape
    lse = torch.logsumexp(s, dim=-1) if n else s.new_full((rows, g, t), -math.inf)  # [rows, group, q_len]
    m = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # fully masked rows: exp(-inf) = 0
    p = torch.exp(s - m.unsqueeze(-1)).reshape(rows, g * t, n)  # [rows, group*q_len, ctx]
    out = torch.bmm(p, v.float()).reshape(rows, g, t, v.shape[-1])  # [rows, group, q_len, d]
    return out, lse


def causal_mask(q_len: int, ctx: int, q_start: Optional[int] = None, device=None) -> torch.Tensor:
    """Bool [q_len, ctx], True where key j is visible to query i: j <= q_start + i.

    `q_start` is the position of the first query counted from key 0 of this key
    block; the default puts the queries on the last `q_len` keys (plain prefill).
    """
    start = ctx - q_len if q_start is None else q_start
    qpos = torch.arange(q_len, device=device).unsqueeze(1) + start  # [q_len, 1]
    return torch.arange(ctx, device=device).unsqueeze(0) <= qpos  # [q_len, ctx]


def _fused_ok(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `_fused_partial` takes these inputs: CUDA, fp16 / bf16 throughout, a head
    dim FlashAttention supports, at least one key, a GPU of compute capability 8.0 or later."""
    d = q.shape[-1]
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype and d % 8 == 0
            and d <= 256 and k.shape[1] > 0 and torch.cuda.get_device_capability(q.device)[0] >= 8)


def _fused_partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Partial:
    """Unmasked attention in one FlashAttention launch, with its log-sum-exp (natural log of
    the scaled scores, as here): a row is one head whose group * q_len queries all see
    every key. q [rows, group, q_len, d], k, v [rows, ctx, d] in fp16 / bf16 on a CUDA GPU.
    The materialised path launches ~17 kernels (fp32 copies of K and V, scores, softmax);
    issuing them held the engine's thread 0.7-1.5 ms a call, longer than the GPU took
    (qwen2.5-32b-4l's X-cache rows on the H100: benchmarks/issue_profile.py)."""
    rows, g, t, d = q.shape
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q.reshape(rows, 1, g * t, d), k.unsqueeze(1), v.unsqueeze(1), scale=1.0 / math.sqrt(d))[:2]
    return out.reshape(rows, g, t, d).float(), lse.reshape(rows, g, t)  # out [rows, 1, g*t, d] in q's dtype


def attend_partial(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_len: Optional[int] = None,
    causal: bool = False,
    q_start: Optional[int] = None,
    fused: bool = True,
) -> Partial:
    """Softmax attention of unscaled q over one block of keys.

    q [rows, group, q_len, d]; k, v [rows, ctx, d]. `mask_len`: only the first
    `mask_len` keys are real (a preallocated cache); None means all. `causal`:
    query i sees key j only if j <= q_start + i (see `causal_mask`; for a sequence
    split of a prefill pass the block's offset through `q_start`). `fused`: without a
    mask, run FlashAttention's kernel where it applies (`_fused_ok`). Returns
    (out fp32 [rows, group, q_len, d], lse fp32 [rows, group, q_len]).
    """
    if mask_len is not None:
        k, v = k[:, :mask_len], v[:, :mask_len]
    if fused and not causal and _fused_ok(q, k):
        return _fused_partial(q, k, v)
    s = _scores(q, k)  # [rows, group, q_len, ctx]
    if causal:
        vis = causal_mask(q.shape[2], k.shape[1], q_start, device=s.device)
        s = s.masked_fill(~vis, -math.inf)
    return _softmax_out(s, v)


def merge_partials(parts: Sequence[Partial]) -> Partial:
    """Exact merge of partials over disjoint key sets (e.g. sequence chunks, disk + tail).

    out = Σ_i exp(lse_i - lse) · out_i with lse = log Σ_i exp(lse_i). Keys never
    seen by any part give out = 0, lse = -inf.
    """
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([p[1] for p in parts])  # [parts, rows, group, q_len]
    lse = torch.logsumexp(lses, dim=0)  # [rows, group, q_len]
    m = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w = torch.exp(lses - m)  # [parts, rows, group, q_len]; 0 for empty parts
    out = sum(w[i].unsqueeze(-1) * p[0] for i, p in enumerate(parts))  # [rows, group, q_len, d]
    return out, lse


# ----------------------------------------------- X-cache rows: history plus a slot
def kv_with_slot(k_hist: torch.Tensor, v_hist: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Regenerated history k, v [b, kv_heads, ctx-1, d] (any strides: a projection's
    transposed view) -> contiguous K, V [b, kv_heads, ctx, d] whose last position is a
    free slot for the step's new token (`attend_slot` fills it). The one copy the
    cooperative attention needs happens here, where the history is made."""
    b, kvh, t, d = k_hist.shape
    K = torch.empty(b, kvh, t + 1, d, dtype=k_hist.dtype, device=k_hist.device)
    V = torch.empty_like(K)
    K[:, :, :t].copy_(k_hist)
    V[:, :, :t].copy_(v_hist)
    return K, V


def attend_slot(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> Partial:
    """Decode attention of q [b, heads, 1, d] over `kv_with_slot`'s K, V [b, kv_heads, ctx, d]
    with the new token's k_new, v_new [b, kv_heads, 1, d] written into the slot: the same
    keys in the same order as attending over cat(history, new), without the copy."""
    K[:, :, -1:].copy_(k_new)
    V[:, :, -1:].copy_(v_new)
    return attend_partial(q_to_rows(q, K.shape[1]), kv_to_rows(K), kv_to_rows(V))


# -------------------------------------------------------- delayed write-back (v2)
def tail_scores(q: torch.Tensor, k_tail: torch.Tensor) -> torch.Tensor:
    """Host side of write-back v2: scaled scores of q against the buffered tail keys.

    q [rows, group, q_len, d] unscaled, k_tail [rows, tail, d] -> fp32 [rows, group, q_len, tail].
    The tail keys are the newest tokens, so decode queries see all of them.
    """
    return _scores(q, k_tail)


def attend_with_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scores_tail: torch.Tensor,
    v_tail: torch.Tensor,
    mask_len: Optional[int] = None,
) -> Partial:
    """Device side of write-back v2: attention over stored keys plus a shipped tail.

    q [rows, group, q_len, d], k/v [rows, ctx, d] (the stored part, first `mask_len`
    valid), scores_tail [rows, group, q_len, tail] from `tail_scores`, v_tail
    [rows, tail, d]. One softmax over ctx + tail, so the result equals
    `attend_partial` over the concatenated keys (tail after the stored ones).
    """
    if mask_len is not None:
        k, v = k[:, :mask_len], v[:, :mask_len]
    s = torch.cat([_scores(q, k), scores_tail.float()], dim=-1)  # [rows, group, q_len, ctx+tail]
    return _softmax_out(s, torch.cat([v.float(), v_tail.float()], dim=1))


def attend_scores_only(scores: torch.Tensor, v: torch.Tensor) -> Partial:
    """A partial from precomputed scaled scores [rows, group, q_len, n] and v [rows, n, d]
    (the tail alone, when it is merged on the host instead of shipped)."""
    return _softmax_out(scores.float(), v)


# ------------------------------------------------------------- model-layout wrapper
def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Whole-context attention in the model's layout (the reference path).

    q [batch, heads, q_len, d] unscaled, k/v [batch, kv_heads, ctx, d] ->
    out fp32 [batch, heads, q_len, d]. Causal puts queries on the last q_len keys.
    """
    b, kvh = k.shape[:2]
    out, _ = attend_partial(q_to_rows(q, kvh), kv_to_rows(k), kv_to_rows(v), causal=causal, fused=False)
    return rows_to_heads(out, b)


def split_rows(n_rows: int, n_parts: int) -> Iterable[slice]:
    """Contiguous, as-even-as-possible row slices for `n_parts` workers (first ones one larger)."""
    base, extra = divmod(n_rows, n_parts)
    start = 0
    for i in range(n_parts):
        stop = start + base + (1 if i < extra else 0)
        yield slice(start, stop)
        start = stop
