"""The scheduler: builds a run's plan from (model, workload, hardware, policy).

Called by `inf2sim.simulate` and the real engine (`inf2hw`). `PlanBuilder` is the
FlexGen zig-zag skeleton shared by every policy: for each step, for each layer,
weights are loaded once (prefetched into one of two GPU buffers while the previous
layer computes), then each micro-batch runs qkv -> attention -> post. A policy
subclass fills in only where the KV lives and where attention runs:

    prefill_store(b, L, m, qkv)            -> ops storing the prompt's KV / X
    decode_attention(b, L, m, qkv)         -> names of ops `post` waits for

Sizes: bytes for transfers (`dtype_bytes` per value), FLOP for compute.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .layout import Layout, make_layout, x_cache_alpha
from .plan import Attention, DenseCompute, Op, Plan, StepPlan, Transfer
from .specs import HardwareProfile, ModelSpec, Policy, SpecError, Workload


class StepOps:
    """Collects one step's ops; names are s{step}.L{layer}.m{mb}.{tag}.

    `add` is the convenient way to emit an op; hot loops (one op per CSD per layer)
    build ops positionally and `put` them, naming them `prefix(layer, mb) + tag`
    (the f-string and keyword handling cost more than the op itself)."""

    __slots__ = ("step", "ops", "_prefix", "last")

    def __init__(self, step: int):
        self.step = step
        self.ops: List[Op] = []
        self.last: Dict[str, str] = {}  # queue (e.g. a copy stream) -> its last op so far, for FIFO chains
        self._prefix: Dict[Tuple[int, int], str] = {}

    def prefix(self, layer: int, mb: int) -> str:
        """`s{step}.L{layer}.m{mb}.` of this step (cached)."""
        p = self._prefix.get((layer, mb))
        if p is None:
            p = self._prefix[(layer, mb)] = f"s{self.step}.L{layer}.m{mb}."
        return p

    def name(self, layer: int, mb: int, tag: str, step: Optional[int] = None) -> str:
        if step is None or step == self.step:
            return self.prefix(layer, mb) + tag
        return f"s{step}.L{layer}.m{mb}.{tag}"

    def add(self, cls, layer: int, mb: int, tag: str, what: str, deps, **kw) -> str:
        n = self.prefix(layer, mb) + tag
        self.ops.append(cls(n, tuple(d for d in deps if d), self.step, layer, mb, what, **kw))
        return n

    def put(self, op: Op) -> str:
        self.ops.append(op)
        return op.name


class PlanBuilder:
    """Base plan builder (FlexGen zig-zag). Subclasses implement the two hooks."""

    policy_name = "base"
    kv_on = ""  # gpu | host | ssd | csd; empty: from policy.kv_on
    attention_on = ""  # gpu | cpu | csd; empty: from policy.attention_on

    def __init__(self, model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy):
        self.model, self.work, self.hw, self.policy = model, workload, hw, policy
        self.kv_on = self.kv_on or policy.kv_on
        self.attention_on = self.attention_on or policy.attention_on
        if self.kv_on == "csd" and hw.csd_count < 1:
            raise SpecError(f"hardware.csd_count={hw.csd_count} is not allowed with policy {self.policy_name}; "
                            f"it keeps KV on CSDs, use 1..{hw.csd.max_count}")
        if self.kv_on == "ssd" and hw.ssd_count < 1:
            raise SpecError(f"hardware.ssd_count={hw.ssd_count} is not allowed with policy {self.policy_name}; use >= 1")
        self.dt = model.dtype_bytes
        self.alpha = self.resolve_alpha()
        self.layout: Layout = make_layout(model, workload, hw, policy, self.alpha, self.kv_on, self.wb_c())

    # ------------------------------------------------------------------ hooks
    def resolve_alpha(self) -> float:
        return 0.0

    def wb_c(self) -> int:
        """Tokens buffered on the host before a spill (1 = written every token)."""
        return 1

    def prefill_store(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        raise NotImplementedError

    def decode_attention(self, b: StepOps, L: int, m: int, qkv: str) -> List[str]:
        raise NotImplementedError

    def memory_needs(self) -> Dict[str, Tuple[float, float]]:
        """{memory: (needed_bytes, available_bytes)}; the run is `oom` if any exceeds."""
        return self._base_memory_needs(kv_gpu=0.0, kv_host=0.0)

    # ----------------------------------------------------------------- public
    def plan(self) -> Plan:
        meta = {
            "policy": self.policy_name,
            "alpha": self.alpha,
            "layout": self.layout,
            "num_layers": self.model.num_layers,
            "num_micro_batches": self.work.num_micro_batches,
        }
        return Plan(meta=meta, _builder=self, num_steps=self.work.gen_len)

    def oom(self) -> Optional[str]:
        for mem, (need, have) in self.memory_needs().items():
            if need > have:
                return f"{mem}: needs {need / 1e9:.1f} GB, has {have / 1e9:.1f} GB"
        return None

    def build_step(self, s: int) -> StepPlan:
        b = StepOps(s)
        ops = b.ops
        md, wl = self.model, self.work
        nl, nm = md.num_layers, wl.num_micro_batches
        prefill = s == 0
        q_len = wl.prompt_len if prefill else 1
        ctx = wl.prompt_len + s
        # the same for every layer and micro-batch of the step
        seqs, toks = (0, wl.micro_batch), (ctx - q_len, ctx)
        qkv_flops, qkv_bytes = self._qkv_flops(q_len), self._qkv_bytes(q_len)
        post_flops, post_bytes = self._post_flops(q_len), self._post_bytes(q_len)
        x = [self._embed(b, m, q_len) for m in range(nm)]
        for L in range(nl):
            w = self._weights(b, L)
            for m in range(nm):
                p = b.prefix(L, m)
                qkv = p + "qkv"
                ops.append(DenseCompute(qkv, (x[m], w) if w else (x[m],), s, L, m, "qkv", "gpu", qkv_flops,
                                        qkv_bytes, seqs, toks))
                if prefill:
                    att = [self._prefill_attention(b, L, m, qkv)]
                    self.prefill_store(b, L, m, qkv)
                else:
                    att = self.decode_attention(b, L, m, qkv)
                x[m] = p + "post"
                ops.append(DenseCompute(x[m], (qkv, *[a for a in att if a]), s, L, m, "post", "gpu", post_flops,
                                        post_bytes, seqs, toks))
        head_flops = wl.micro_batch * md.dense_flops_per_token("head")
        for m in range(nm):
            b.add(DenseCompute, -1, m, "head", "head", [x[m]], device="gpu", flops=head_flops,
                  nbytes=md.embed_bytes(), seqs=seqs, tokens=(ctx - 1, ctx))
        return StepPlan(s, "prefill" if prefill else "decode", ctx, q_len, tuple(ops))

    # ------------------------------------------------------------ skeleton
    def _embed(self, b: StepOps, m: int, q_len: int) -> str:
        prev_head = b.name(-1, m, "head", step=b.step - 1) if b.step > 0 else None
        ctx = self.work.prompt_len + b.step
        return b.add(DenseCompute, -1, m, "embed", "embed", [prev_head], device="gpu", flops=0.0,
                     nbytes=self.work.micro_batch * q_len * self.model.hidden * self.dt,
                     seqs=(0, self.work.micro_batch), tokens=(ctx - q_len, ctx))

    def weight_sources(self) -> List[str]:
        if self.hw.ssd_count > 0:
            return [f"ssd{i}" for i in range(self.hw.ssd_count)]
        return [f"csd{i}.ssd" for i in range(self.hw.csd_count)]

    def _weights(self, b: StepOps, L: int) -> Optional[str]:
        """Stream layer L's non-resident weights to the GPU into one of two buffers:
        the load waits for the layer that last used that buffer (L-2)."""
        wp = self.policy.weights
        nbytes = self.model.layer_weight_bytes()
        off_gpu = int(nbytes * (wp.host + wp.storage))
        if off_gpu == 0:
            return None
        nl, last = self.model.num_layers, self.work.num_micro_batches - 1
        if not self.policy.prefetch_weights:
            buf_free = b.name(L - 1, last, "post") if L >= 1 else (
                b.name(nl - 1, last, "post", step=b.step - 1) if b.step > 0 else None)
        elif L >= 2:
            buf_free = b.name(L - 2, last, "post")
        else:
            buf_free = b.name(nl - 2 + L, last, "post", step=b.step - 1) if b.step > 0 and nl >= 2 else None
        deps = [buf_free]
        st = int(nbytes * wp.storage)
        if st > 0:
            srcs = self.weight_sources()
            for i, src in enumerate(srcs):
                deps.append(b.add(Transfer, L, 0, f"wload{i}", "weights", [buf_free], src=src, dst="dram",
                                  nbytes=st // len(srcs), req_bytes=0))
        return b.add(Transfer, L, 0, "w", "weights", deps, src="dram", dst="gpu", nbytes=off_gpu)

    def _prefill_attention(self, b: StepOps, L: int, m: int, qkv: str) -> str:
        P, md = self.work.prompt_len, self.model
        rows = self.layout.rows_total
        return b.add(Attention, L, m, "attn", "attn_out", [qkv], device="gpu", rows=(0, rows), tokens=(0, P),
                     stored_len=0, q_len=P, group=md.group_size, head_dim=md.head_dim,
                     flops=2.0 * rows * md.group_size * P * P * md.head_dim,  # causal: half of 4*P*P*d
                     kv_bytes=rows * P * 2 * md.head_dim * self.dt)

    # --------------------------------------------------------- size helpers
    def _qkv_flops(self, q_len: int) -> float:
        return self.work.micro_batch * q_len * self.model.dense_flops_per_token("qkv")

    def _qkv_bytes(self, q_len: int) -> int:
        md = self.model
        return md.hidden * (md.q_dim + 2 * md.kv_dim) * self.dt

    def _post_flops(self, q_len: int) -> float:
        return self.work.micro_batch * q_len * self.model.dense_flops_per_token("post")

    def _post_bytes(self, q_len: int) -> int:
        md = self.model
        return (md.q_dim * md.hidden + md.mlp_weight_params()) * self.dt

    def kv_bytes_total(self) -> float:
        seq = self.work.prompt_len + self.work.gen_len
        return float(self.work.batch) * seq * self.model.num_layers * self.model.kv_bytes_per_token_layer()

    def _base_memory_needs(self, kv_gpu: float, kv_host: float, extra_host: float = 0.0) -> Dict[str, Tuple[float, float]]:
        md, wp, w = self.model, self.policy.weights, self.work
        weights = md.layer_weight_bytes() * md.num_layers
        # activations: the prefill's peak for one sequence (a prefill larger than memory is run in chunks)
        act = w.prompt_len * max(md.hidden, md.ffn_dim) * self.dt * 4
        gpu_need = weights * wp.gpu + 2 * md.layer_weight_bytes() * (wp.host + wp.storage) + md.embed_bytes() + act + kv_gpu
        host_need = weights * (wp.host + wp.storage) + kv_host + extra_host
        return {"gpu": (gpu_need, self.hw.gpu.memory_gb * 1e9), "host": (host_need, self.hw.host.memory_gb * 1e9)}


def build_plan(model: ModelSpec, workload: Workload, hw: HardwareProfile, policy: Policy) -> Tuple[Plan, PlanBuilder]:
    from .registry import get_policy

    builder = get_policy(policy.name)(model, workload, hw, policy)
    return builder.plan(), builder


__all__ = ["PlanBuilder", "StepOps", "build_plan", "x_cache_alpha"]
