"""The policy example of docs/policies.md is complete, under 50 lines, and runs."""
import re
from pathlib import Path

from inf2sim import simulate

DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"


def test_doc_policy_is_complete_and_runs():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    assert len(code.strip().splitlines()) < 50
    exec(compile(code, "docs/policies.md", "exec"), {})
    kw = {"model": "opt-6.7b", "workload.batch": 8, "workload.prompt_len": 256, "workload.gen_len": 4}
    quarter = simulate(policy="flexgen_dram", **{**kw, "policy.name": "split_gpu_dram", "policy.params": {"gpu_rows": 0.25}})
    plain = simulate(policy="flexgen_dram", **kw)
    assert quarter.status == "ok" and quarter.policy == "split_gpu_dram"
    # moving a quarter of the rows to the GPU takes work off the CPU, the baseline's bottleneck
    assert quarter.throughput["decode_tok_s"] > plain.throughput["decode_tok_s"]
