"""The engine's attention on the host CPU: FlexGen's CPU attention over the host KV store
(`host_attention`), over the drives' token-major read buffers (`attend_drive_buffer`), and
the emulated CSD workers' attention in pieces of rows (`cpu_attention`).

Called by `inf2hw.ops.OpRunner` (its CPU-attention thread), `inf2hw.csd.worker`, the
calibration (`inf2hw.calibrate_dense`, which times these very calls) and the benchmarks.
q is unscaled; K, V are [rows, ctx, d] in any float dtype, strided views allowed; results
are partials (out fp32 [rows, G, t, d], lse fp32 [rows, G, t]) as in `inf2hw.attention`.
fp32 (the exactness mode) always takes the reference functions of `inf2hw.attention`;
fp16 / bf16 take torch's fused CPU flash kernel where the call allows it.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from . import attention as A

CPU_ATTN_ROWS = 16  # rows per piece of CPU attention: a piece's fp32 copies of K and V stay in cache


class AttnWorkspace:
    """Reused fp32 buffers for `cpu_attention`'s pieces: allocating a fresh fp32 copy of
    K and V for every piece (tens of MB) costs page faults on every call."""

    def __init__(self):
        self.bufs: Dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        t = self.bufs.get(name)
        if t is None or t.numel() < n:
            t = self.bufs[name] = torch.empty(n, dtype=torch.float32)
        return t[:n].view(shape)


def cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows_per_piece: int = CPU_ATTN_ROWS,
                  ws: Optional[AttnWorkspace] = None, scores_tail: Optional[torch.Tensor] = None,
                  v_tail: Optional[torch.Tensor] = None):
    """Exact attention of q [rows, G, t, d] over k, v [rows, ctx, d] (any float dtype,
    strided views allowed), in pieces of rows whose fp32 copies of K and V go into
    reused buffers small enough to stay in cache, instead of one fresh fp32 copy of the
    whole history. The same operations as `inf2hw.attention.attend_partial`, row by row.

    With `scores_tail` [rows, G, t, tail] (scaled fp32 scores of keys after the history,
    `inf2hw.attention.tail_scores`) and `v_tail` [rows, tail, d]: one softmax over history
    and tail, the same operations as `inf2hw.attention.attend_with_scores` row by row
    (the tail's V is copied after the history's in the piece's V buffer, so one bmm).

    fp32 K and V, or no more rows than one piece, take the reference functions
    themselves (bit-for-bit the same results as before pieces existed)."""
    tail = scores_tail is not None
    rows = q.shape[0]
    if rows <= rows_per_piece or (k.dtype == torch.float32 and v.dtype == torch.float32):
        if tail:
            return A.attend_with_scores(q, k, v, scores_tail, v_tail)
        return A.attend_partial(q, k, v)
    ws = ws or AttnWorkspace()
    g, t, d = q.shape[1:]
    ctx = k.shape[1]
    n_all = ctx + (v_tail.shape[1] if tail else 0)  # keys per row: history, then tail
    out = torch.empty(rows, g, t, d, dtype=torch.float32)
    lse = torch.empty(rows, g, t, dtype=torch.float32)
    scale = 1.0 / math.sqrt(d)
    for r in range(0, rows, rows_per_piece):
        s = slice(r, min(r + rows_per_piece, rows))
        n = s.stop - s.start
        kf = ws.get("k", (n, ctx, d))
        kf.copy_(k[s])
        sc = torch.bmm(q[s].float().reshape(n, g * t, d), kf.transpose(1, 2)) * scale  # [n, g*t, ctx]
        sc = sc.reshape(n, g, t, ctx)
        if tail:
            sc = torch.cat([sc, scores_tail[s].float()], dim=-1)  # [n, g, t, ctx + tail]
        l_ = torch.logsumexp(sc, dim=-1)  # [n, g, t]
        m = torch.where(torch.isfinite(l_), l_, torch.zeros_like(l_))
        p = torch.exp(sc - m.unsqueeze(-1)).reshape(n, g * t, n_all)
        vf = ws.get("v", (n, n_all, d))
        vf[:, :ctx].copy_(v[s])
        if tail:
            vf[:, ctx:].copy_(v_tail[s])
        out[s] = torch.bmm(p, vf).reshape(n, g, t, d)
        lse[s] = l_
    return out, lse


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
FLASH_CPU = True  # tests switch it off to run the pieces path in fp16


def flash_cpu_ok(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Reduced-precision K, V on the host with torch's fused CPU flash kernel available
    (fp32, the exactness mode, keeps `cpu_attention`: the reference functions themselves)."""
    return (FLASH_CPU and _FLASH is not None and k.dtype in (torch.float16, torch.bfloat16) and k.device.type == "cpu"
            and k.stride(-1) == 1 and v.stride(-1) == 1)


def attend_drive_buffer(q: torch.Tensor, rbuf: torch.Tensor, t1: int, kn: torch.Tensor, vn: torch.Tensor,
                        ws: Optional[AttnWorkspace] = None):
    """One drive's rows over the history read into its buffer rbuf [capacity, rows_i, 2, d]
    (token-major: positions [0, t1)), with the new token kn, vn [rows_i, 1, d]: fp16 / bf16
    write it into the buffer's next slot and attend through the fused flash kernel; fp32
    attends the strided views with the new token as the softmax tail (`cpu_attention`)."""
    k, v = rbuf[:t1, :, 0].permute(1, 0, 2), rbuf[:t1, :, 1].permute(1, 0, 2)  # [rows_i, t1, d]
    if flash_cpu_ok(k, v) and t1 < rbuf.shape[0]:
        rbuf[t1, :, 0], rbuf[t1, :, 1] = kn[:, 0], vn[:, 0]
        return flash_cpu_attention(q, rbuf[:t1 + 1, :, 0].permute(1, 0, 2), rbuf[:t1 + 1, :, 1].permute(1, 0, 2))
    return cpu_attention(q, k, v, ws=ws, scores_tail=A.tail_scores(q, kn), v_tail=vn)


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ws: Optional[AttnWorkspace] = None):
    """The engine's attention over a host KV store (FlexGen's CPU attention): the fused flash
    kernel over an fp16 / bf16 store, `cpu_attention` (the reference functions) over fp32."""
    if flash_cpu_ok(k, v):
        return flash_cpu_attention(q, k, v)
    return cpu_attention(q, k, v, ws=ws)


def flash_cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """`attend_partial` through torch's fused CPU flash-attention kernel (fp32 accumulation
    over blocks of K, V converted in cache: K, V are read once, in their own dtype, where the
    pieces path writes and re-reads an fp32 copy). q [rows, G, t, d] -> the G*t queries of a
    row against its K, V [rows, ctx, d] (any row stride). Returns (out fp32 [rows, G, t, d],
    lse fp32 [rows, G, t]); out is rounded once to K's dtype by the kernel."""
    rows, g, t, d = q.shape
    qq = q.reshape(rows, 1, g * t, d).to(k.dtype)  # [rows, 1, G*t, d]
    out, lse = _FLASH(qq, k.unsqueeze(1), v.unsqueeze(1), 0.0, False, scale=1.0 / math.sqrt(d))
    return out.reshape(rows, g, t, d).float(), lse.reshape(rows, g, t).float()
