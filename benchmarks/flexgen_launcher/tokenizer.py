"""A stand-in for the OPT tokenizer FlexGen loads from the model hub.

FlexGen's benchmark (`flexgen.flex_opt.run_flexgen`) only calls
`AutoTokenizer.from_pretrained("facebook/opt-30b", padding_side="left")` and then
`tokenizer(["Paris is the capital city of"], padding="max_length", max_length=N).input_ids`
(plus `batch_decode` when real weights are used). This object returns the ids the
real OPT tokenizer gives for that prompt (BOS 2 first), left-padded with OPT's pad id 1,
so FlexGen sees the same inputs without network access. Other prompts are encoded as
one id per whitespace-separated word (a stable hash), which only matters for the
sequence length.
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace
from typing import List

OPT_BOS, OPT_PAD, OPT_VOCAB = 2, 1, 50272
KNOWN = {"Paris is the capital city of": [2, 32826, 16, 5, 812, 343, 9]}  # facebook/opt-* tokenizer output


class StandInTokenizer:
    pad_token_id = OPT_PAD
    bos_token_id = OPT_BOS
    eos_token_id = OPT_BOS

    def __init__(self, padding_side: str = "left"):
        self.padding_side = padding_side

    def encode(self, text: str) -> List[int]:
        if text in KNOWN:
            return list(KNOWN[text])
        return [OPT_BOS] + [3 + zlib.crc32(w.encode()) % (OPT_VOCAB - 3) for w in text.split()]

    def __call__(self, texts, padding=None, max_length=None, **_):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.encode(t) for t in texts]
        if padding == "max_length" and max_length:
            pad = [[OPT_PAD] * max(0, max_length - len(x)) for x in ids]
            ids = [p + x if self.padding_side == "left" else x + p for p, x in zip(pad, ids)]
        return SimpleNamespace(input_ids=ids)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row if not (skip_special_tokens and int(t) in (OPT_PAD, OPT_BOS)))
                for row in ids]


def install() -> None:
    """Make `transformers.AutoTokenizer.from_pretrained` return the stand-in (before
    flexgen.flex_opt is imported or used; it looks the class up at call time)."""
    import transformers

    transformers.AutoTokenizer.from_pretrained = staticmethod(
        lambda *a, padding_side="left", **k: StandInTokenizer(padding_side))
