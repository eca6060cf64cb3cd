"""Run stock FlexGen 0.1.8 here: a stand-in tokenizer (no model hub) and, on a machine
without CUDA, redirections of FlexGen's CUDA-only calls to the CPU. Used by
`benchmarks/engine_vs_flexgen.py` through `run_flexgen.py` (one FlexGen run per process)."""
