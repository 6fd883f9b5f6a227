"""Engine: config -> components -> `generate(request)` (text encoding, flow-matching sampling with dual
guidance and skip-layer guidance, decoding) -> Clip.

One Engine class serves one process and every rank of a parallel group: parallelism is applied to its
model from outside (ovi.parallel), and the runtime hands it what differs per rank: the `predictor`
(how the guided velocity of one step is computed, e.g. CFG-parallel), `dims`, and whether this rank
decodes. A request's unset fields take the config's values (`GenerateRequest.fill`).

LoRAs are per request: `generate` makes the request's `loras` the model's active set (ovi.lora; only
layers whose adapters change are touched, the base is never reloaded), so every rank of a group
applies the same set. `lightning` switches to the few-step Lightning profile (Euler on an explicit sigma
grid, guidance off, the LoRA's shift); a step count or shift the request sets still applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import time
from pathlib import Path

import diffusers
import torch
import transformers
from torch.profiler import record_function

from ovi.config import OviConfig, load_config
from ovi.errors import InputError
from ovi.lora import LoRAManager
from ovi.lora.presets import lightning_profile
from ovi.model.attention import resolve_backend
from ovi.parallel.dims import ParallelDims
from ovi.pipeline.components import Components, codec_family, load_components
from ovi.pipeline.compile import compile_fused_block
from ovi.pipeline.images import FluxImageGenerator, ToyImageGenerator, load_image, resize_image, to_uint8_frames
from ovi.pipeline.memory_profiles import MemorySettings, apply_memory_settings, resolve_memory_settings
from ovi.pipeline.objective import pin
from ovi.pipeline.output import Clip
from ovi.pipeline.plan import Plan, plan
from ovi.pipeline.profiling import generation_profiler
from ovi.pipeline.prompts import clean_text
from ovi.pipeline.solvers import make_solver
from ovi.pipeline.step_cache import install_step_cache
from ovi.pipeline.windows import denoise_windows, read_prior
from ovi.request import GenerateRequest
from ovi.specs import FLUX_DIR, MODEL_SPECS
from ovi.version import __version__

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{name}' requested but CUDA is not available here; set device: auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def configure_tensor_cores(enabled: bool, device: torch.device) -> dict:
    """Seed-fork key `use_tensor_cores`: TF32 for fp32 matmuls/convs on CUDA. A no-op on the CPU."""
    if device.type != "cuda":
        return {"use_tensor_cores": enabled, "tf32": False, "note": "no-op on CPU"}
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return {"use_tensor_cores": enabled, "tf32": enabled}


class GuidedPredictor:
    """One step's guided velocities on one rank: the positive pass, then the negative pass (with SLG),
    combined per modality. CFG-parallel (ovi.runtime) swaps this for one that splits the passes."""

    def __call__(self, engine: "Engine", plan: Plan, video, audio, t, contexts, first_frame_is_clean):
        pos, vneg, aneg = contexts
        positive = engine.model_pass(plan, video, audio, t, pos, pos, first_frame_is_clean)
        if engine.guidance_off(plan):
            return positive  # scale 1 everywhere: the negative pass cannot change the result
        negative = engine.model_pass(plan, video, audio, t, vneg, aneg, first_frame_is_clean,
                                     plan.slg_layer or False)
        return engine.guide(plan, positive, negative)


class Engine:
    """`Engine.from_config(cfg)` for one process; the runtime builds one per rank with its `dims`,
    `predictor` and `decodes` flag (only the output rank decodes and returns the Clip)."""

    def __init__(self, config: OviConfig, components: Components, device: torch.device, dtype: torch.dtype, *,
                 dims: ParallelDims | None = None, predictor=None, decodes: bool = True, model_scope=None,
                 self_placed: tuple = (), loras: LoRAManager | None = None, trace_worker: str = "engine",
                 parallel_info: dict | None = None, load_seconds: float | None = None,
                 memory_settings: MemorySettings | None = None):
        self.config, self.components, self.device, self.dtype = config, components, device, dtype
        self.model = components.model
        self.spec = MODEL_SPECS[config.model_name]
        self.dims = dims or ParallelDims(world_size=1)
        self.predictor = predictor or GuidedPredictor()
        self.decodes = decodes
        self.loras = loras or LoRAManager()
        # The denoising loop runs inside model_scope(): by default cpu_offload moves the DiT on and off the
        # device; an FSDP-sharded DiT brings its own (ovi.parallel.fsdp: frees gathered units after).
        self.model_scope = model_scope or (lambda: self.on_device(self.model))
        self.self_placed = tuple(self_placed)  # modules that place their own shards (FSDP: fsdp_cpu_offload)
        self.parallel_info = dict(parallel_info or {})  # what the runtime applied (ovi.parallel), for the sidecar
        self.load_seconds = load_seconds
        self.attention_backend, self.attention_note = resolve_backend(config.attention_backend, device, dtype)
        self.model.set_attention_backend(self.attention_backend)
        # Speed (ovi.pipeline.step_cache): skips forwards and counts those that ran (sidecar `forwards`).
        self.step_cache = install_step_cache(self.model, config.step_cache, config.step_cache_threshold, self.dims.sp)
        self.compiled = compile_fused_block(self.model, config.compile, device)  # regional torch.compile
        self.tensor_cores = configure_tensor_cores(config.use_tensor_cores, device)
        self.defaults = config.request_defaults()
        self.image_generator = None
        # One GPU (ovi.pipeline.memory_profiles): quantise and place the DiT (block swap), umT5, VAE tiling.
        # from_config / the rank builder resolve the settings before loading (a bad profile fails in seconds).
        self.memory_settings = memory_settings or resolve_memory_settings(config, device, dtype)
        self.memory_profile = apply_memory_settings(components, self.memory_settings, device,
                                                   cpu_offload=config.cpu_offload)
        self.trace_worker = trace_worker  # trace file name under profile_dir (rank<N> on a parallel group)
        self.last_profile = None      # the profiler of the last generate() when it was profiled
        self.last_windows = None      # per-window final latents of the last long clip (ovi.pipeline.windows)

    @property
    def world_size(self) -> int:
        return self.dims.world_size

    @property
    def sp_size(self) -> int:
        return self.dims.sp

    @classmethod
    def from_config(cls, cfg: OviConfig | dict | str | None = None, *, dims: ParallelDims | None = None) -> "Engine":
        """One process's engine. `dims`: the launch's resolved degrees (resolved here when not given)."""
        cfg = cfg if isinstance(cfg, OviConfig) else load_config(cfg)
        cfg.require_available()
        dims = dims or ParallelDims.from_config(cfg)
        if dims.world_size > 1:
            raise InputError(f"sp_size {cfg.sp_size} / cfg_parallel {cfg.cfg_parallel} / world_size {cfg.world_size} "
                             f"need {dims.world_size} ranks: "
                             "run them with ovi.runtime.WorkerGroup (or `ovi generate --sp N`), not a single-process "
                             "Engine")
        if dims.needs_process_group:
            raise InputError(f"fsdp_sharding_strategy {cfg.fsdp_sharding_strategy} shards the model through a process "
                             "group: run it with ovi.runtime.WorkerGroup(cfg, world_size=1) (or `ovi generate "
                             "--fsdp ...`), not a single-process Engine")
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        memory_settings = resolve_memory_settings(cfg, device, dtype)  # before loading: refusals come first
        t0 = time.perf_counter()
        components = load_components(cfg, device=device, dtype=dtype)
        loras = preload_loras(cfg, components.model)
        return cls(cfg, components, device, dtype, dims=dims, loras=loras, load_seconds=time.perf_counter() - t0,
                   memory_settings=memory_settings)

    # ---- settings ------------------------------------------------------------------------------
    def check_engine_settings(self, request: GenerateRequest) -> None:
        """A request that asks for other engine settings than this engine runs is refused (the Runner
        picks the engine by them; a direct caller gets told)."""
        for key, wanted in request.engine.items():
            have = getattr(self.config, key, None)
            if have != wanted:
                raise InputError(f"the request asks for engine setting {key}={wanted!r} but this engine runs "
                                 f"{key}={have!r}; build an engine with that setting (or submit the request to a "
                                 f"queue, whose Runner loads a matching engine)")

    def plan(self, request: GenerateRequest | str, /, **fields) -> Plan:
        """Resolve a request (or the keyword form) against the config's defaults -> every setting of the
        generation (ovi.pipeline.plan; this method does the IO the pure function leaves out: reading the
        i2v image and the LoRA files' Lightning headers)."""
        request = GenerateRequest.coerce(request, **fields)
        return self._plan(request)

    def _plan(self, request: GenerateRequest) -> Plan:
        self.check_engine_settings(request)
        planned = plan(request, self.config, self.spec, self.components, read_image=load_image,
                       read_lightning=lightning_profile, read_prior=read_prior)
        for entry in planned.loras:
            if not Path(entry["path"]).expanduser().is_file():
                raise InputError(f"LoRA '{entry['name']}': file not found: {entry['path']}; fix the path (loras "
                                 f"take PATH[:WEIGHT], relative paths from where the engine runs)")
        asked = planned.request.height_width or self.defaults.height_width
        if planned.mode != "i2v" and abs(asked[0] * asked[1] - self.spec.area) > 0.1 * self.spec.area:
            log.warning("requested %s is %.0f%% off the model's trained area; generating %dx%d", list(asked),
                        100 * (asked[0] * asked[1] / self.spec.area - 1), planned.height, planned.width)
        return planned

    # ---- component placement (cpu_offload) -----------------------------------------------------
    @contextlib.contextmanager
    def on_device(self, module: torch.nn.Module | None):
        """With cpu_offload, keep `module` on the accelerator only while it is used (an FSDP-sharded
        module places its own shards: fsdp_cpu_offload)."""
        if module is None or not self.config.cpu_offload or self.device.type == "cpu" \
                or any(module is placed for placed in self.self_placed):
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ---- stages --------------------------------------------------------------------------------
    def encode_text(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder = self.components.text_encoder
        with self.on_device(encoder.model), record_function("text_encoder"):
            pos, vneg, aneg = encoder.encode(
                [plan.formatted_prompt, plan.video_negative_prompt, plan.audio_negative_prompt])
        return pos.to(self.device), vneg.to(self.device), aneg.to(self.device)

    def first_frame_latent(self, plan: Plan, image: torch.Tensor) -> torch.Tensor:
        """Encode an image as a one-frame video -> [48, 1, h, w] latent."""
        codec = self.components.video_codec
        # toy codecs have no weights to move (no `module`)
        with self.on_device(getattr(codec, "module", None)), record_function("codec/video_encode"):
            return codec.encode(image[:, None].to(self.device)).float()

    def initial_latents(self, plan: Plan, seed: int | None = None):
        """Noise from CPU generators seeded `seed` (default the plan's; one per modality): the same on
        every device."""
        seed = plan.seed if seed is None else seed
        g = torch.Generator("cpu").manual_seed(seed)
        video = torch.randn(plan.video_latent_shape, generator=g)
        g = torch.Generator("cpu").manual_seed(seed)
        audio = torch.randn(plan.audio_latent_shape, generator=g)
        return video.to(self.device), audio.to(self.device)

    def model_pass(self, plan: Plan, video, audio, t, video_context, audio_context, first_frame_is_clean,
                   slg_layer=False):
        """One fused forward -> (video velocity, audio velocity) in fp32."""
        tt = torch.as_tensor(t, device=self.device).reshape(1)
        v, a = self.model([video], [audio], tt, [video_context], [audio_context], vid_seq_len=plan.vid_seq_len,
                          audio_seq_len=plan.audio_seq_len, first_frame_is_clean=first_frame_is_clean,
                          slg_layer=slg_layer)
        return v[0].float(), a[0].float()

    @staticmethod
    def guidance_off(plan: Plan) -> bool:
        return plan.video_guidance_scale == 1.0 and plan.audio_guidance_scale == 1.0

    @staticmethod
    def guide(plan: Plan, pos, neg):
        """Per-modality classifier-free guidance: neg + g * (pos - neg)."""
        scales = (plan.video_guidance_scale, plan.audio_guidance_scale)
        return tuple(n + g * (p - n) for p, n, g in zip(pos, neg, scales))

    def predict(self, plan: Plan, video, audio, t, contexts, first_frame_is_clean):
        """Guided velocities for both modalities at timestep t (the predictor decides how)."""
        return self.predictor(self, plan, video, audio, t, contexts, first_frame_is_clean)

    @torch.no_grad()
    def denoise(self, plan: Plan, contexts, video, audio, image_latent=None, progress=None, *, audio_prefix=None):
        """Sample one window. `image_latent` [C, k_v, h, w] / `audio_prefix` [k_a, C]: latents held clean at
        the start of the window: i2v's encoded image (one frame), or a continuation window's carried tail
        (ovi.pipeline.windows). They are written in before every model call (their tokens at t=0) and after
        every update, so the solver's update never changes them."""
        video_solver = make_solver(plan.solver, plan.steps, plan.shift, sigmas=plan.sigmas)
        audio_solver = make_solver(plan.solver, plan.steps, plan.shift, sigmas=plan.sigmas)
        k_v = 0 if image_latent is None else image_latent.shape[1]
        k_a = 0 if audio_prefix is None else audio_prefix.shape[0]
        # upstream's i2v flag when only one video frame is held; per tower (frames, tokens) otherwise
        clean = bool(k_v) if k_v <= 1 and not k_a else (k_v, k_a)
        timesteps = video_solver.timesteps
        video_fixed = self.fixed_latents(self.components.video_codec, video)
        audio_fixed = self.fixed_latents(self.components.audio_codec, audio)
        self.step_cache.reset(plan.steps)

        def hold(video, audio):
            if k_v:
                video[:, :k_v] = image_latent
            if k_a:
                audio[:k_a] = audio_prefix
            return pin(video, video_fixed), pin(audio, audio_fixed)

        with self.model_scope():
            for i, t in enumerate(timesteps):
                with record_function(f"denoise_step/{i}"):
                    video, audio = hold(video, audio)
                    v, a = self.predict(plan, video, audio, t, contexts, clean)
                    video = video_solver.step(v[None], t, video[None])[0]
                    audio = audio_solver.step(a[None], t, audio[None])[0]
                if progress is not None:
                    progress(i + 1, len(timesteps), {"timestep": float(t), "stage": "denoise"})
        return hold(video, audio)

    def fixed_latents(self, codec, latent: torch.Tensor):
        """The codec's fixed latent entries (e.g. coordinate channels) on this latent's device, or None."""
        fixed = codec.fixed_latents(tuple(latent.shape))
        if fixed is None:
            return None
        mask, values = fixed
        return mask.to(latent.device), values.to(latent.device, latent.dtype)

    @torch.no_grad()
    def decode(self, plan: Plan, video_latent, audio_latent):
        if not self.decodes:
            return None, None  # a non-output rank of a parallel group
        video_codec, audio_codec = self.components.video_codec, self.components.audio_codec
        with self.on_device(getattr(video_codec, "module", None)), record_function("codec/video_decode"):
            video = video_codec.decode(video_latent)
        with self.on_device(getattr(audio_codec, "module", None)), record_function("codec/audio_decode"):
            audio = audio_codec.decode(audio_latent)
        return to_uint8_frames(video), audio.float().cpu().numpy()

    # ---- the public call -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, request: GenerateRequest | str | None = None, /, *, progress=None, **fields) -> Clip | None:
        """One clip: `generate(GenerateRequest(...))`, or the keyword form `generate("prompt", seed=1, ...)`.
        `progress(step, total, info)` is called after every denoising step. Returns the Clip (None on a
        rank that does not decode). With `profile_dir` (or `profile_comms`, or `profile_memory` on a CPU)
        set, it runs under torch.profiler (ovi.pipeline.profiling) and `last_profile` holds the profiler."""
        request = GenerateRequest.coerce(request, **fields)
        self.last_profile = None
        with generation_profiler(self.config.profile_dir, self.trace_worker, self.device,
                                 enabled=self.config.profile_comms,
                                 memory=self.config.profile_memory and self.device.type == "cpu") as prof:
            clip = self._generate(request, progress)
        self.last_profile = prof
        return clip

    def _generate(self, request: GenerateRequest, progress) -> Clip | None:
        timings = {}
        t0 = time.perf_counter()
        plan = self._plan(request)
        lora_records = self.loras.activate(self.model, plan.loras)
        timings["lora"] = time.perf_counter() - t0
        if plan.mode == "t2i2v":
            plan.image = self.text_to_image(plan)
        contexts = self.encode_text(plan)
        timings["text"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        self.step_cache.start_clip()  # the sidecar's forwards: every window of this clip
        if plan.windows is not None:  # a long clip or an extension: continuation windows
            video, audio = denoise_windows(self, plan, contexts, progress, prior=plan.prior)
        else:
            video, audio = self.initial_latents(plan)
            image_latent = self.first_frame_latent(plan, plan.image) if plan.image is not None else None
            video, audio = self.denoise(plan, contexts, video, audio, image_latent, progress)
        timings["denoise"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        frames, wave = self.decode(plan, video, audio)
        timings["decode"] = time.perf_counter() - t2
        if frames is None:
            return None
        timings["total"] = time.perf_counter() - t0
        return Clip(video=frames, audio=wave, fps=self.spec.fps, sample_rate=self.spec.sample_rate,
                    meta=self.sidecar(plan, timings, lora_records), latents={"video": video.cpu(), "audio": audio.cpu()})

    def text_to_image(self, plan: Plan) -> torch.Tensor:
        if self.image_generator is None:
            if codec_family(self.config) != "real":  # toy worlds: no FLUX
                self.image_generator = ToyImageGenerator()
            else:
                self.image_generator = FluxImageGenerator(Path(self.config.ckpt_dir) / FLUX_DIR, self.device)
        image = self.image_generator.generate(clean_text(plan.prompt), plan.height, plan.width, plan.seed)
        return resize_image(image, plan.height, plan.width)

    def sidecar(self, plan: Plan, timings: dict, loras: list[dict] | None = None) -> dict:
        """The clip's json: the submitted request (`request`), the resolved request's per-clip fields (its
        `to_dict()` less where the job runs: `per_clip_settings`; `config` is the engine's whole config),
        the plan's geometry and this engine's facts. Three resolved fields are recorded in
        the richer form they took: `loras` (what was applied: name, weight, merged), `lightning` (the
        profile used, or None) and `slg_layer` (the block skipped, None when SLG is off); the video negative
        prompt is also under its config key name, `video_negative_prompt`."""
        return {
            "request": _request_record(plan.request),
            **_request_record(plan.resolved, per_clip=True),
            "video_negative_prompt": plan.video_negative_prompt, "slg_layer": plan.slg_layer,
            "formatted_prompt": plan.formatted_prompt, "num_frames": plan.num_frames,
            "windows": None if plan.windows is None else plan.windows.to_dict(),
            "loras": list(loras or []), "lightning": plan.lightning_profile,
            "fps": self.spec.fps, "sample_rate": self.spec.sample_rate,
            "model_name": self.config.model_name, "architecture": self.config.model,
            "checkpoint": str(self.components.checkpoint),
            "storage_dtype": str(self.components.storage_dtype).replace("torch.", ""),
            "compute_dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "attention_backend": self.attention_backend, "attention_backend_note": self.attention_note,
            "tensor_cores": self.tensor_cores, "cpu_offload": self.config.cpu_offload,
            "world_size": self.world_size, "sp": self.sp_size, "cfg": self.dims.cfg, "fsdp": None,
            "cfg_parallel": self.dims.cfg == 2, **self.parallel_info,
            "memory_profile": self.memory_profile,
            "components": self.components.describe(), "timings": timings,
            **self.step_cache.record(), "compile": self.compiled.record(),
            "versions": {"ovi": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
            "config": self.config.to_dict(),
        }


def preload_loras(cfg: OviConfig, model: torch.nn.Module) -> LoRAManager:
    """A LoRAManager with the config's LoRA set (`lora:`) already applied: done when the engine loads, before
    anything wraps or shards the model, so merging sees whole weights (requests with that set then change
    nothing)."""
    manager = LoRAManager()
    if cfg.lora:
        manager.activate(model, cfg.lora)
    return manager


def _request_record(request: GenerateRequest, *, per_clip: bool = False) -> dict:
    """The request as JSON (an in-memory image is recorded by its kind, not its pixels); with `per_clip` only
    its per-clip settings."""
    if request.image is not None and not isinstance(request.image, str):
        request = dataclasses.replace(request, image=f"<in-memory {type(request.image).__name__}>")
    return request.per_clip_settings if per_clip else request.to_dict()
