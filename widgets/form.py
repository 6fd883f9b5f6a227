"""The generation form: every per-clip field of a GenerateRequest as a widget.

`GenerateForm(cfg, config_name, engine)` starts from the config's per-clip defaults;
`request(upload_dir)` returns the GenerateRequest the form shows (RequestError names a bad field).
Every field the form shows is written into the request, so a stored job says exactly what was asked
for, whatever the config's defaults become later.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Callable

import ipywidgets as w

from ovi.config import OviConfig
from ovi.request import SOLVERS, GenerateRequest, RequestError
from widgets.catalog import CATEGORIES, durations, insert_template, long_durations, resolutions, templates

MODES = (("T2V", "t2v"), ("I2V", "i2v"), ("T2I2V", "t2i2v"))
IMAGE_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp"}
LIGHTNING_STEPS = 4  # the Lightning preset is a few-step sampler
SEED_MAX = 2**31 - 1
WIDE = w.Layout(width="100%")


class GenerateForm:
    def __init__(self, cfg: OviConfig, *, config_name: str | None = None, engine: dict | None = None,
                 on_error: Callable[[Exception], None] | None = None):
        self.cfg = cfg
        self.on_error = on_error
        self.config_name = config_name
        self.engine = dict(engine or {})
        d = cfg.request_defaults()
        self.mode = w.ToggleButtons(options=MODES, value=d.mode, description="Mode")
        self.image = w.FileUpload(accept="image/*", multiple=False, description="Image (I2V)")
        self.category = w.Dropdown(options=CATEGORIES, description="Templates")
        self.template = w.Dropdown(description="")
        self.insert = w.Button(description="Insert", tooltip="put the template into the prompt")
        self.prompt = w.Textarea(value=d.prompt if cfg.text_prompt else "", description="Prompt", rows=3,
                                 placeholder="A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>", layout=WIDE)
        self.negative_prompt = w.Text(value=d.negative_prompt, description="Video neg.", layout=WIDE)
        self.audio_negative_prompt = w.Text(value=d.audio_negative_prompt, description="Audio neg.", layout=WIDE)
        sizes = resolutions(d.height_width)
        self.resolution = w.Dropdown(options=list(sizes.items()), value=tuple(d.height_width), description="Size")
        lengths = durations(cfg.model_name)
        self.window = w.Dropdown(options=list(lengths.items()), value=cfg.model_name, description="Window",
                                 layout=w.Layout(width="200px"),
                                 tooltip="the model's own clip length (its checkpoint)", disabled=len(lengths) == 1)
        self.duration = w.Dropdown(description="Duration", layout=w.Layout(width="360px"),
                                   tooltip="the clip's length: 1, 2, 3, ... continuation windows of the model's clip "
                                           "(a gallery card's Extend adds that many windows)")
        self.video_guidance = w.FloatSlider(value=d.video_guidance_scale, min=0.0, max=15.0, step=0.1,
                                            description="Video CFG")
        self.audio_guidance = w.FloatSlider(value=d.audio_guidance_scale, min=0.0, max=15.0, step=0.1,
                                            description="Audio CFG")
        self.solver = w.Dropdown(options=SOLVERS, value=d.solver, description="Solver")
        self.steps = w.IntSlider(value=d.steps, min=1, max=100, description="Steps")
        self.seed = w.BoundedIntText(value=d.seed, min=0, max=SEED_MAX, description="Seed")
        self.randomise = w.Button(description="Randomise", icon="random", tooltip="draw a new seed now")
        self.random_each = w.Checkbox(value=False, description="new seed per submit")
        self.lora_path = w.Text(description="LoRA", placeholder="path/to/adapter.safetensors")
        self.lora_weight = w.FloatSlider(value=1.0, min=-2.0, max=2.0, step=0.05, description="weight")
        self.lora_add = w.Button(description="Add LoRA", icon="plus")
        self.lora_list = w.SelectMultiple(options=[], description="LoRAs", rows=3)
        self.lora_remove = w.Button(description="Remove selected")
        self.lightning = w.Checkbox(value=bool(cfg.lightning), description=f"Lightning ({LIGHTNING_STEPS} steps)")
        self.priority = w.IntText(value=0, description="Priority")
        self.submit = w.Button(description="Submit", button_style="primary", icon="plus",
                               tooltip="add to the queue")
        self.extend_with_prompt = w.Checkbox(value=False, description="Extend with this prompt",
                                             tooltip="a gallery card's Extend uses this prompt (else the clip's own)")
        self.generate_now = w.Button(description="Generate now", button_style="success", icon="play",
                                     tooltip="put it first in the queue and start the runner")

        self.category.observe(self._fill_templates, "value")
        self.mode.observe(self._show_image, "value")
        self.insert.on_click(lambda _: self._guarded(self.insert_template))
        self.randomise.on_click(lambda _: self._guarded(self.new_seed))
        self.lora_add.on_click(lambda _: self._guarded(self.add_lora))
        self.lora_remove.on_click(lambda _: self._guarded(self.remove_loras))
        self.lightning.observe(self._lightning, "value")
        self.window.observe(self._fill_durations, "value")
        self._fill_templates()
        self._fill_durations()
        self._show_image()

        self.widget = w.VBox([
            self.mode, self.image,
            w.HBox([self.category, self.template, self.insert]),
            self.prompt, self.negative_prompt, self.audio_negative_prompt,
            self.resolution,
            w.HBox([self.window, self.duration]),
            w.HBox([self.video_guidance, self.audio_guidance]),
            w.HBox([self.solver, self.steps]),
            w.HBox([self.seed, self.randomise, self.random_each]),
            w.HBox([self.lora_path, self.lora_weight, self.lora_add]),
            w.HBox([self.lora_list, self.lora_remove, self.lightning]),
            w.HBox([self.priority, self.submit, self.generate_now]),
            self.extend_with_prompt,
        ])

    # ---- actions ---------------------------------------------------------------------------------
    def insert_template(self, title: str | None = None) -> None:
        chosen = next(t for t in templates() if t.label == (title or self.template.value))
        self.category.value = chosen.category
        self.template.value = chosen.label
        self.prompt.value = insert_template(self.prompt.value, chosen, replaceable=(self.cfg.text_prompt,))

    def new_seed(self) -> int:
        self.seed.value = random.randint(0, SEED_MAX)
        return self.seed.value

    def add_lora(self, path: str | None = None, weight: float | None = None) -> None:
        path = (path if path is not None else self.lora_path.value).strip()
        if not path:
            raise RequestError("loras", "type the adapter's file path first")
        weight = float(self.lora_weight.value if weight is None else weight)
        self.lora_list.options = [*self.lora_list.options, (f"{path} x {weight:g}", (path, weight))]
        self.lora_path.value = ""

    def remove_loras(self) -> None:
        chosen = set(self.lora_list.value)
        self.lora_list.options = [o for o in self.lora_list.options if o[1] not in chosen]

    # ---- the request -----------------------------------------------------------------------------
    def request(self, upload_dir: str | Path) -> GenerateRequest:
        """The request the form shows; with "new seed per submit" a fresh seed is drawn first. An
        uploaded I2V image is stored under `upload_dir` (named by its content) and referenced by path."""
        if self.random_each.value:
            self.new_seed()
        engine = dict(self.engine)
        if self.window.value != self.cfg.model_name:
            engine["model_name"] = self.window.value
        image = self._saved_image(Path(upload_dir)) if self.mode.value == "i2v" else None
        return GenerateRequest(
            self.prompt.value, mode=self.mode.value, image=image, seed=int(self.seed.value),
            negative_prompt=self.negative_prompt.value, audio_negative_prompt=self.audio_negative_prompt.value,
            steps=int(self.steps.value), solver=self.solver.value,
            # a slider moved in the browser reports e.g. 3.9999999999999996: keep its step's precision
            video_guidance_scale=round(float(self.video_guidance.value), 6),
            audio_guidance_scale=round(float(self.audio_guidance.value), 6), height_width=tuple(self.resolution.value),
            loras=tuple({"path": p, "weight": wt} for _, (p, wt) in self.lora_list.options),
            lightning=bool(self.lightning.value), duration=self.duration.value, config=self.config_name,
            engine=engine)

    def _saved_image(self, upload_dir: Path) -> str:
        if not self.image.value:
            raise RequestError("image", "mode I2V needs an image: upload one with the Image button")
        item = self.image.value[0]
        data = bytes(item["content"])
        suffix = Path(item.get("name") or "").suffix.lower() or IMAGE_SUFFIXES.get(item.get("type"), ".png")
        upload_dir.mkdir(parents=True, exist_ok=True)
        path = upload_dir / f"{hashlib.sha1(data).hexdigest()[:16]}{suffix}"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a half-written image never sits under the final name
        return str(path.resolve())

    def _guarded(self, action: Callable) -> None:
        try:
            action()
        except Exception as exc:
            if self.on_error is None:
                raise
            self.on_error(exc)

    # ---- reactions -------------------------------------------------------------------------------
    def _fill_templates(self, *_):
        self.template.options = [t.label for t in templates(self.category.value)]

    def _fill_durations(self, *_):
        """Multiples of the chosen window's clip; the same multiple stays chosen when the window changes."""
        index = self.duration.index or 0
        options = long_durations(self.window.value)
        self.duration.options = options
        self.duration.index = min(index, len(options) - 1)

    def _show_image(self, *_):
        self.image.layout.display = "" if self.mode.value == "i2v" else "none"

    def _lightning(self, change):
        if change["new"]:
            self.steps.value = LIGHTNING_STEPS
