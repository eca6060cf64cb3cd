"""The engine with the HLS kernel: emulated CSDs computing with the g++-built library
(`csd.compute=hls`) and the SmartSSD backend's own code over the pyxrt emulation
produce the same greedy tokens as the reference model (fp16 storage, fp32 accumulate)."""
import shutil
from dataclasses import replace

import pytest
import torch

from inf2hw import model as M
from inf2hw.run import EngineOptions, load_prompts, run_engine
from inf2sim.config import default_config, specs_from_config

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the kernel library")


def _spec(policy, **extra):
    kw = {"workload.batch": 4, "workload.prompt_len": 12, "workload.gen_len": 6, "hardware.csd_count": 2, **extra}
    r = specs_from_config(default_config(model="opt-125m", policy=policy, **kw))
    return replace(r, model=replace(r.model, num_layers=2))


def _ref(r):
    # the plain in-memory reference model with the same fp16 weights and dtype
    w = M.init_random(r.model, seed=r.workload.seed, dtype=torch.float16)
    return M.reference_generate(r.model, w, load_prompts(r), r.workload.gen_len)


@pytest.mark.parametrize("policy, extra", [("ans", {}), ("ans_wb", {"policy.wb.c": 2, "policy.wb.variant": "v2"}),
                                           ("inf2", {"policy.xcache.alpha": 0.25})])
def test_hls_compute_same_tokens(policy, extra, tmp_path):
    r = _spec(policy, **extra)
    tokens, logits, _, _ = run_engine(r, EngineOptions(dtype="fp16", compute="hls"), out_dir=str(tmp_path))
    ref_tokens, ref_logits = _ref(r)
    assert tokens == ref_tokens.tolist()
    assert (logits - ref_logits).abs().max() < 0.05 * ref_logits.abs().max()


def test_smartssd_backend_over_pyxrt_emulation_same_tokens(tmp_path):
    r = _spec("ans_wb", **{"policy.wb.c": 2})
    mounts = [tmp_path / f"ssd{i}" for i in range(2)]
    for p in mounts:
        p.mkdir()
    xclbin = tmp_path / "inf2.xclbin"
    xclbin.write_bytes(b"placeholder: pyxrt_emu loads no bitstream")
    opts = EngineOptions(dtype="fp16", csd_backend="smartssd", pyxrt_emulation=True, xclbin=str(xclbin),
                         smartssd=tuple((f"0000:0{i}:00.1", str(m)) for i, m in enumerate(mounts)))
    tokens, _, _, _ = run_engine(r, opts, out_dir=str(tmp_path / "run"))
    assert tokens == _ref(r)[0].tolist()
