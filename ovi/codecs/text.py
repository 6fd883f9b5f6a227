"""Text encoder: umT5 (transformers' UMT5EncoderModel) loaded from Wan's .pth by Wan key names.

The real model is umT5-XXL with Google's sentencepiece tokenizer; the tiny model uses the same
class with small dims and a byte-level tokenizer (no vocabulary file to ship), and the trained tiny
model a word-level tokenizer whose vocabulary ships as a json file in the tokenizer folder. All run
through the same loading code (`ovi.checkpoint.adapter.wan_t5_to_hf`).
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

import torch

from ovi.checkpoint.adapter import unwrap_container, wan_t5_to_hf
from ovi.checkpoint.loading import read_rows_from
from ovi.checkpoint.quantize import quiet_torchao_import
from ovi.errors import CheckpointError
from ovi.specs import BYTE_TOKENIZER_FILE, T5_DIR, T5_FILE, TOKENIZER_DIR, WORD_TOKENIZER_FILE

log = logging.getLogger(__name__)

T5_CONFIGS = {
    "ovi": dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, max_length=512),
    "tiny": dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, max_length=256),
}
T5_CONFIGS["mid"] = T5_CONFIGS["tiny"]  # the benchmark preset shares the tiny text encoder
# The trained tiny model's encoder: trained with the DiT, over a 50-word vocabulary (ovi.train.vocabulary).
T5_CONFIGS["tiny_trained"] = dict(vocab_size=50, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                  max_length=32)


def clean_prompt_text(text: str) -> str:
    """Wan's cleanup: fix mojibake (ftfy, when installed), unescape HTML twice, collapse spaces."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0 pad, 1 eos, 2 unk, 3..258 bytes. For the tiny model only."""

    pad_id, eos_id = 0, 1

    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            tokens = [b + 3 for b in text.encode("utf-8")][: self.max_length - 1] + [self.eos_id]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
        return ids, mask


class WordTokenizer:
    """One token per word (lower-cased), per punctuation mark and per prompt tag (<AUDCAP> ...); ids 0 pad,
    1 eos, 2 unknown word. For the trained tiny model, whose world has a few dozen words: a word per token
    lets a 2-layer encoder tell "left" from "right" from its first training step."""

    SPECIALS = ("<pad>", "</s>", "<unk>")
    TAGS = ("<AUDCAP>", "<ENDAUDCAP>", "<S>", "<E>")
    TOKEN_RE = re.compile(r"<AUDCAP>|<ENDAUDCAP>|<S>|<E>|[A-Za-z0-9]+|[.,!?]")
    pad_id, eos_id, unk_id = 0, 1, 2

    def __init__(self, vocabulary: list[str], max_length: int):
        if tuple(vocabulary[:3]) != self.SPECIALS:
            raise CheckpointError(f"word vocabulary must start with {list(self.SPECIALS)}, got {list(vocabulary[:3])}")
        self.vocabulary = list(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        self.max_length = max_length

    def tokens(self, text: str) -> list[str]:
        return [tok if tok in self.TAGS else tok.lower() for tok in self.TOKEN_RE.findall(text)]

    def unknown_words(self, text: str) -> list[str]:
        return [t for t in self.tokens(text) if t not in self.index]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            toks = [self.index.get(t, self.unk_id) for t in self.tokens(text)][: self.max_length - 1]
            toks.append(self.eos_id)
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return ids, mask

    def to_json(self) -> str:
        return json.dumps({"type": "words", "max_length": self.max_length, "vocabulary": self.vocabulary}, indent=0)


def read_tokenizer(tok_dir: Path, architecture: str):
    """The tokenizer in `tok_dir`: ours (word or byte json) if present, else a Hugging Face tokenizer folder."""
    if (tok_dir / WORD_TOKENIZER_FILE).is_file():
        spec = json.loads((tok_dir / WORD_TOKENIZER_FILE).read_text())
        return WordTokenizer(spec["vocabulary"], int(spec["max_length"]))
    if (tok_dir / BYTE_TOKENIZER_FILE).is_file():
        spec = json.loads((tok_dir / BYTE_TOKENIZER_FILE).read_text())
        return ByteTokenizer(int(spec["max_length"]))
    if tok_dir.is_dir():
        return HFTokenizer(tok_dir, T5_CONFIGS[architecture]["max_length"])
    raise CheckpointError(f"tokenizer folder not found at {tok_dir} (upstream layout <ckpt_dir>/{T5_DIR}/{TOKENIZER_DIR}/)")


class HFTokenizer:
    def __init__(self, path: Path, max_length: int):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.max_length = max_length

    def __call__(self, texts):
        enc = self.tok(texts, padding="max_length", truncation=True, max_length=self.max_length,
                       add_special_tokens=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask


def make_t5(architecture: str | dict):
    """A umT5 encoder for an architecture preset (or a T5_CONFIGS-style dict), randomly initialised."""
    with quiet_torchao_import():  # transformers' model classes load their torchao integration
        from transformers import UMT5Config, UMT5EncoderModel
    c = T5_CONFIGS[architecture] if isinstance(architecture, str) else architecture
    config = UMT5Config(vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
                        num_layers=c["num_layers"], num_heads=c["num_heads"], relative_attention_num_buckets=32,
                        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                        layer_norm_epsilon=1e-6, tie_word_embeddings=False)
    return UMT5EncoderModel(config)


def _check_fits(weights: Path, architecture: str, model, sd: dict[str, torch.Tensor]) -> None:
    """What load_state_dict(strict=True) checks, for a sharded load that copies rows instead."""
    want = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    problems = [f"missing {k}" for k in want if k not in sd] + [f"unexpected {k}" for k in sd if k not in want]
    problems += [f"{k}: {tuple(sd[k].shape)} in the file, {shape} in the model" for k, shape in want.items()
                 if k in sd and tuple(sd[k].shape) != shape]
    if problems:
        raise CheckpointError(f"{weights} does not fit the '{architecture}' umT5 encoder: {'; '.join(problems[:8])}")


class T5TextEncoder:
    """encode(texts) -> list of [true_len, d_model] embeddings (trimmed; the DiT re-pads them)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.reads = None  # RowReads of a sharded load

    @property
    def device(self) -> torch.device:
        """Where the weights are now (cpu_offload moves them), so inputs follow."""
        return next(self.model.parameters()).device

    @classmethod
    def from_checkpoint_dir(cls, ckpt_dir, architecture: str, dtype=torch.float32, device="cpu", *, place=None):
        """The encoder of `architecture` from upstream's layout under `ckpt_dir`, in `dtype` on `device`.

        `place(meta_model) -> {name: (destination, first_row)}` loads it sharded instead: the model is
        built on the meta device, `place` shards it and gives it empty local tensors, and only those rows
        of each tensor are read from the memory-mapped file (`reads` records them)."""
        base = Path(ckpt_dir) / T5_DIR
        weights, tok_dir = base / T5_FILE, base / TOKENIZER_DIR
        if not weights.is_file():
            raise CheckpointError(f"text encoder weights not found at {weights} (upstream layout "
                                  f"<ckpt_dir>/{T5_DIR}/{T5_FILE})")
        tokenizer = read_tokenizer(tok_dir, architecture)
        try:
            sd = wan_t5_to_hf(unwrap_container(torch.load(weights, map_location="cpu", weights_only=True, mmap=True)))
        except KeyError as exc:
            raise CheckpointError(f"{weights}: unexpected key {exc} for Wan's umT5 encoder") from exc
        with torch.device("meta"):
            model = make_t5(architecture).to(dtype)
        if place is not None:
            _check_fits(weights, architecture, model, sd)
            model.requires_grad_(False)
            with torch.no_grad():
                reads = read_rows_from(sd, place(model))
            encoder = cls(model.eval(), tokenizer)
            encoder.reads = reads
            return encoder
        try:
            model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{weights} does not fit the '{architecture}' umT5 encoder: {str(exc)[:400]}") from exc
        return cls(model.to(device).eval().requires_grad_(False), tokenizer)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        texts = [clean_prompt_text(t) for t in texts]
        unknown = sorted({w for t in texts for w in getattr(self.tokenizer, "unknown_words", lambda _: [])(t)})
        if unknown:
            log.warning("words outside the text encoder's vocabulary (read as <unk>): %s", ", ".join(unknown))
        ids, mask = self.tokenizer(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return [h[: int(n)] for h, n in zip(hidden, mask.sum(1))]
