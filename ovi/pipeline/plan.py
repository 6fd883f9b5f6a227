"""plan(): one request + the engine's config, model spec and codecs -> the Plan of one clip. A pure function.

A Plan holds the request as submitted (the sidecar's `request` record), the *resolved* request (every
per-clip field set to the value this generation uses: the config's defaults filled in, the Lightning
profile's steps/solver/shift/guidance applied, height_width snapped to the model's area) and the
geometry derived from it (latent shapes, token counts, the sigma grid). Nothing else: engine facts
(backend, dims, timings) are the Engine's, and the sidecar is the resolved request's `to_dict()` plus
the geometry plus those facts (`Engine.sidecar`), so no field is listed twice.

What needs IO comes in through the readers the caller hands over (the Engine: `load_image` for the i2v
image, `lightning_profile` for the Lightning profile in the LoRA set's headers); with the defaults plan()
reads nothing: an i2v image must then already be a [3, H, W] tensor, and Lightning uses its default profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ovi.errors import InputError
from ovi.lora.presets import LightningProfile
from ovi.pipeline.images import resize_image, snap_to_area
from ovi.pipeline.prompts import format_prompt
from ovi.request import GenerateRequest
from ovi.specs import ModelSpec
from ovi.pipeline.objective import video_tokens
from ovi.pipeline.windows import EXTEND_INHERITS, WindowLayout, layout


@dataclass
class Plan:
    """One generation: the submitted request, the resolved one, and the geometry derived from them.
    A resolved field reads as an attribute (`plan.steps`, `plan.seed`, ...)."""
    request: GenerateRequest               # as submitted (recorded verbatim in the sidecar)
    resolved: GenerateRequest              # every per-clip field as this generation uses it
    formatted_prompt: str
    num_frames: int
    video_latent_shape: tuple
    audio_latent_shape: tuple
    lightning_profile: dict | None = None  # the Lightning profile used (what it replaced), when asked for
    sigmas: tuple | None = None            # an explicit unshifted sigma grid (Lightning), else the solver's own
    image: torch.Tensor | None = field(default=None, repr=False)  # the i2v image at (height, width)
    windows: WindowLayout | None = None    # continuation windows (a `duration` or an `extend`), else one window
    prior: tuple | None = field(default=None, repr=False)  # (video, audio) latents of the clip being extended

    def __getattr__(self, name):
        # Only reached for names that are not Plan's own: the resolved request's fields.
        if name.startswith("__") or name == "resolved":
            raise AttributeError(name)
        return getattr(self.resolved, name)

    @property
    def height(self) -> int:
        return self.resolved.height_width[0]

    @property
    def width(self) -> int:
        return self.resolved.height_width[1]

    @property
    def slg_layer(self) -> int | None:
        """The block skipped in the negative pass, None when SLG is off (False, 0 or -1)."""
        slg = self.resolved.slg_layer
        return None if slg is False or slg <= 0 else int(slg)

    @property
    def video_negative_prompt(self) -> str:
        return self.resolved.negative_prompt

    @property
    def vid_seq_len(self) -> int:
        return video_tokens(self.video_latent_shape)

    @property
    def audio_seq_len(self) -> int:
        return self.audio_latent_shape[0]


def _given_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise InputError(f"plan() got a {type(image).__name__} as the i2v image and no reader; pass "
                         f"read_image=ovi.pipeline.images.load_image (or the image as a [3, H, W] tensor)")
    return image


def _frame_shape(video_latent_shape) -> tuple:
    """[C, F, h, w] -> (C, h, w): what every window of a clip shares."""
    c, _, h, w = tuple(video_latent_shape)
    return c, h, w


def _no_prior(path, model_name):
    raise InputError(f"plan() got extend={path!r} and no reader; pass read_prior=ovi.pipeline.windows.read_prior")


def plan(request: GenerateRequest, config, spec: ModelSpec, codecs, *,
         read_image: Callable = _given_image, read_lightning: Callable = lambda lora_paths: LightningProfile(),
         read_prior: Callable = _no_prior) -> Plan:
    """The Plan of `request` under `config` (an OviConfig: its per-clip defaults and prompt style), `spec`
    (the model's frames, area, audio length) and `codecs` (anything with `video_codec` / `audio_codec`,
    e.g. Components: their latent geometry). `read_image(image) -> [3, H, W] tensor` reads the i2v image;
    `read_lightning(lora_paths) -> LightningProfile` the profile of the request's LoRA set."""
    prior = None
    if request.extend:
        # An extension continues the clip's own settings: fields the request leaves unset take the extended
        # clip's resolved values (its sidecar) before the config's.
        prior = read_prior(request.extend, config.model_name)
        if request.mode not in (None, "t2v"):
            raise InputError(f"extend continues a clip from its latents; mode {request.mode} does not apply "
                             f"(leave mode out)")
        inherited = {k: v for k, v in prior.settings.items() if k in EXTEND_INHERITS}
        request = request.fill(GenerateRequest.from_dict({"prompt": request.prompt, **inherited}))
    r = request.fill(config.request_defaults())
    if prior is not None:
        r = r.replace(mode="t2v", image=None)
    if r.n != 1:
        raise InputError(f"n={r.n} asks for {r.n} clips; generate() makes one: iterate over "
                         f"request.expand(seed) (ovi generate and the queue do this for you)")
    changes, profile, sigmas = {}, None, None
    if r.lightning:
        # The profile is Euler on its sigma grid with guidance off (one forward per step): it replaces the
        # solver and guidance scales whatever the request says (recorded); a step count or shift the request
        # itself sets still applies (another step count gets a uniform grid).
        light = read_lightning([entry["path"] for entry in r.loras])
        steps = request.steps if request.steps is not None else light.steps
        shift = request.shift if request.shift is not None else light.shift
        fixed = {"solver": light.solver, "video_guidance_scale": light.guidance, "audio_guidance_scale": light.guidance}
        replaced = {k: getattr(request, k) for k, v in fixed.items() if getattr(request, k) not in (None, v)}
        sigmas = light.grid(steps)
        changes.update(fixed, steps=steps, shift=shift)
        profile = {**light.to_dict(), "used": {"steps": steps, "solver": fixed["solver"], "shift": shift,
                                               "sigmas": list(sigmas), **{k: fixed[k] for k in fixed if k != "solver"}},
                   "replaced": replaced}
    if r.mode == "i2v":
        image = read_image(r.image)
        height, width = snap_to_area(image.shape[1], image.shape[2], spec.area)
        image = resize_image(image, height, width)
    else:
        height, width = snap_to_area(*r.height_width, spec.area)
        image = None
    changes["height_width"] = (height, width)
    resolved = r.replace(**changes)
    video_shape = codecs.video_codec.latent_shape(spec.num_frames, height, width)
    audio_shape = (spec.audio_latent_length, codecs.audio_codec.latent_channels)
    if prior is not None and (_frame_shape(prior.video.shape) != _frame_shape(video_shape)
                              or prior.audio.shape[1] != audio_shape[1]):
        raise InputError(f"extend: the clip's latents {list(prior.video.shape)} do not fit this model's window "
                         f"{list(video_shape)} at {height}x{width}; leave height_width out (the clip's own is used)")
    audio = codecs.audio_codec
    windows = layout(r.duration, window_video_frames=video_shape[1], window_audio_tokens=audio_shape[0],
                     fps=spec.fps, audio_tokens_per_second=audio.sample_rate / audio.samples_per_latent,
                     prior_video_frames=0 if prior is None else prior.video.shape[1],
                     prior_audio_tokens=0 if prior is None else prior.audio.shape[0])
    return Plan(request=request, resolved=resolved, formatted_prompt=format_prompt(r.prompt, config.model_name),
                num_frames=spec.num_frames if windows is None else windows.num_frames,
                video_latent_shape=video_shape, audio_latent_shape=audio_shape,
                lightning_profile=profile, sigmas=sigmas, image=image, windows=windows,
                prior=None if prior is None else (prior.video, prior.audio))
