"""Prompts: upstream Ovi's tag conventions, prompt files and output file names.

Tags: `<S>words<E>` marks spoken words and reaches the text encoder verbatim. The audio caption is
`<AUDCAP>caption<ENDAUDCAP>` for the 720x720 model and a trailing `Audio: caption` for the 960x960
(Ovi 1.1) models; a prompt in the other style makes the model speak the caption (upstream issues #23/#42),
so `format_prompt` rewrites it for the chosen model. Negative prompts are never formatted.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ovi.errors import ConfigError, InputError
from ovi.specs import MODEL_SPECS

if TYPE_CHECKING:
    from ovi.config import OviConfig

log = logging.getLogger(__name__)

SPEECH_RE = re.compile(r"<S>(.*?)<E>", re.S)
AUDCAP_RE = re.compile(r"<AUDCAP>(.*?)<ENDAUDCAP>", re.S)
AUDIO_COLON_RE = re.compile(r"Audio:\s*")
STRAY_TAG_RE = re.compile(r"</?(S|E|AUDCAP|ENDAUDCAP)>")
PROMPT_FILE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
STEM_PROMPT_CHARS = 50


def _audio_colon(text: str) -> re.Match | None:
    """The first `Audio:` that is not inside a `<S>…<E>` speech span (spoken words stay verbatim)."""
    speech = [m.span() for m in SPEECH_RE.finditer(text)]
    for m in AUDIO_COLON_RE.finditer(text):
        if not any(a <= m.start() < b for a, b in speech):
            return m
    return None


def format_prompt(prompt: str, model_name: str) -> str:
    """Rewrite the audio caption into the style `model_name` was trained on (as upstream's per-model
    formatter does): `Audio: x` -> `<AUDCAP>x<ENDAUDCAP>` for "audcap" models, and back for the others."""
    spec = MODEL_SPECS.get(model_name)
    if spec is None:
        raise ConfigError(f"model_name {model_name!r}: unknown model; choose one of {', '.join(MODEL_SPECS)}")
    if spec.audio_caption_style == "audcap":
        m = _audio_colon(prompt)
        if m is None:
            return prompt
        out = f"{prompt[:m.start()]}<AUDCAP>{prompt[m.end():]}<ENDAUDCAP>"
    else:
        out = AUDCAP_RE.sub(lambda m: f"Audio: {m.group(1)}", prompt)
    if out != prompt:
        log.info("prompt audio caption rewritten to the %s style that model %s expects",
                 spec.audio_caption_style, model_name)
    return out


def clean_text(prompt: str) -> str:
    """The prompt without tags: speech tags unwrapped (their words kept), audio captions (both styles)
    removed. Used for file names and for the text-to-image prompt of t2i2v."""
    m = _audio_colon(prompt)
    text = prompt[:m.start()] if m else prompt
    text = AUDCAP_RE.sub(" ", text)
    text = SPEECH_RE.sub(lambda s: s.group(1), text)
    text = STRAY_TAG_RE.sub(" ", text)
    return " ".join(text.split())


def clip_stem(prompt: str, height: int, width: int, seed: int, index: int = 0) -> str:
    """Output file stem like upstream's: the first 50 characters of the cleaned prompt, made safe for
    file systems, then `_{H}x{W}_{seed}_{index}`."""
    safe = re.sub(r"[^\w.-]+", "_", clean_text(prompt)[:STEM_PROMPT_CHARS]).strip("._-") or "clip"
    return f"{safe}_{height}x{width}_{seed}_{index}"


def read_prompt_file(path: str | Path, mode: str = "t2v") -> list[tuple[str, str | None]]:
    """Rows of an upstream prompt file (.csv or .tsv with a header) as (prompt, image_path) pairs.

    `text_prompt` is required; `image_path` is read only in i2v mode (empty cell -> None), and each named
    image must exist (as given, or relative to the prompt file's folder). Empty cells read as "".
    """
    path = Path(path)
    delimiter = PROMPT_FILE_SUFFIXES.get(path.suffix.lower())
    if delimiter is None:
        raise InputError(f"prompt file {str(path)!r}: must end in .csv or .tsv")
    if not path.is_file():
        raise InputError(f"prompt file {str(path)!r} not found; fix the path")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "text_prompt" not in columns:
            raise InputError(f"prompt file {str(path)!r}: missing required column 'text_prompt' "
                             f"(found: {', '.join(columns) or 'no header'}); add a header row naming it")
        reader.fieldnames = columns
        jobs = []
        for row_number, row in enumerate(reader, start=1):
            prompt = row.get("text_prompt") or ""
            image = (row.get("image_path") or "").strip() if mode == "i2v" else ""
            jobs.append((prompt, _resolve_image(image, path, row_number) if image else None))
    return jobs


def _resolve_image(image: str, prompt_file: Path, row_number: int) -> str:
    for candidate in (Path(image).expanduser(), prompt_file.parent / image):
        if candidate.is_file():
            return str(candidate)
    raise InputError(f"prompt file {str(prompt_file)!r}, row {row_number}: image_path {image!r} does not "
                     f"exist; fix the path (relative paths are tried from the working directory and from "
                     f"the prompt file's folder)")


def expand_prompts(cfg: "OviConfig") -> list[tuple[str, str | None]]:
    """All (prompt, image_path) jobs of a config: `text_prompt` is a .csv/.tsv prompt file or a literal
    prompt; each job is repeated `each_example_n_times` times in a row (upstream seeds repeat k with
    `seed + k`, i.e. job i uses `seed + i % each_example_n_times`). In i2v, `image_path` is the image of a
    literal prompt and the fallback for file rows without one."""
    text = (cfg.text_prompt or "").strip()
    if not text:
        raise InputError("text_prompt is empty; pass --prompt TEXT or set text_prompt to a prompt or a "
                         ".csv/.tsv prompt file")
    default_image = None
    if cfg.mode == "i2v" and cfg.image_path:
        default_image = cfg.image_path
        if not Path(default_image).expanduser().is_file():
            raise InputError(f"image_path {default_image!r} does not exist; fix the path or use mode t2v")
    looks_like_file = "\n" not in text and Path(text).suffix.lower() in PROMPT_FILE_SUFFIXES
    if looks_like_file:
        if not Path(text).is_file():
            raise InputError(f"text_prompt {text!r} looks like a prompt file but does not exist; fix the "
                             f"path, or write the prompt itself")
        base = [(p, img or default_image) for p, img in read_prompt_file(text, cfg.mode)]
    else:
        base = [(cfg.text_prompt, default_image)]
    return [job for job in base for _ in range(cfg.each_example_n_times)]
