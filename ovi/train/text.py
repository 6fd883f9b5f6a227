"""Word-level tokenizer for the trained tiny model's text encoder (a small umT5 trained with the DiT).

The real model keeps umT5-XXL's sentencepiece vocabulary; a 4-colour, 3-shape world needs a few dozen
words, and a word per token lets a 2-layer encoder tell "left" from "right" from the first step. The
vocabulary ships as a json file in the tokenizer folder of the upstream layout, next to the encoder
weights, so loading goes through the same `T5TextEncoder.from_checkpoint_dir` path as the real model.
"""

from __future__ import annotations

import re

import torch

from ovi.train import data

SPECIALS = ("<pad>", "</s>", "<unk>")
TAGS = ("<AUDCAP>", "<ENDAUDCAP>", "<S>", "<E>")
TOKEN_RE = re.compile(r"<AUDCAP>|<ENDAUDCAP>|<S>|<E>|[A-Za-z0-9]+|[.,!?]")


def default_vocabulary() -> list[str]:
    """Every word the captions and the default negative prompts use, plus a few synonyms people type."""
    words = ["a", "an", "the", "moves", "move", "moving", "bounces", "bouncing", "bounce", "tone", "and",
             "clicks", "click", "to", "of", "on", "floor", "ball", "."]
    words += list(data.COLORS) + list(data.SHAPES) + ["left", "right", "up", "down"] + list(data.PITCHES)
    words += "jitter bad hands blur distortion robotic muffled echo distorted ,".split()
    out = []
    for w in list(TAGS) + words:
        if w not in out:
            out.append(w)
    return list(SPECIALS) + out


class WordTokenizer:
    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, vocabulary: list[str], max_length: int):
        if list(vocabulary[:3]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        self.vocabulary = list(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        self.max_length = max_length

    def tokens(self, text: str) -> list[str]:
        return [tok if tok in TAGS else tok.lower() for tok in TOKEN_RE.findall(text)]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            toks = [self.index.get(t, self.unk_id) for t in self.tokens(text)][: self.max_length - 1]
            toks.append(self.eos_id)
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return ids, mask
