"""Long clips: continuation windows that carry video *and* audio across each seam.

A clip longer than the model's window is made of windows of the model's own length. Window w+1 starts
from the last `overlap` video latent frames and the last `k_a` audio latent tokens of what came before,
held clean (their tokens at timestep 0, rewritten after every solver update so the update leaves them
as given) while the rest denoises: Ovi's i2v first-frame mechanism (`first_frame_is_clean`) generalised
to a prefix of either tower. Latents pass between windows (never decoded and re-encoded: a lossy round
trip); the whole latent sequence is decoded once at the end, so the decoder adds no seam.

Time alignment. The video VAE is causal: latent frame 0 is one pixel frame, every later latent frame four.
A carried tail latent sits in the new window's first slot, which the model reads as one frame at the
window's time 0; that frame is the last pixel frame of the carried group, global pixel frame
4 * start. So window w's audio starts at the global audio token nearest that time, and its audio prefix
`k_a` is whatever of the audio already made lies at or after that token (about 1 token per carried
frame group for Ovi's rates): sound and picture stay aligned to the token across any number of windows.

`layout()` is pure (the Plan holds its result); `denoise_windows()` runs the windows on an Engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ovi.errors import InputError

DEFAULT_OVERLAP = 1  # video latent frames carried into the next window (the i2v mechanism's own size)


@dataclass(frozen=True)
class WindowLayout:
    """Where each window sits in the clip's global latent sequence.

    Global video latent frames: window w covers [video_starts[w], video_starts[w] + window_video_frames);
    its first `overlap` frames are the carried prefix (for window 0 only when it continues a prior clip).
    Global audio tokens: window w covers [audio_starts[w], audio_starts[w] + window_audio_tokens), its first
    `audio_prefix[w]` tokens carried."""
    windows: int
    overlap: int
    window_video_frames: int
    window_audio_tokens: int
    video_starts: tuple[int, ...]
    audio_starts: tuple[int, ...]
    audio_prefix: tuple[int, ...]
    prior_video_frames: int = 0   # latent frames of the clip being extended (0: a new clip)
    prior_audio_tokens: int = 0
    fps: float = 24.0

    @property
    def video_prefix(self) -> tuple[int, ...]:
        """Carried video latent frames per window (0 for a new clip's first window)."""
        return tuple(0 if (w == 0 and not self.prior_video_frames) else self.overlap for w in range(self.windows))

    @property
    def total_video_frames(self) -> int:
        return self.video_starts[-1] + self.window_video_frames

    @property
    def total_audio_tokens(self) -> int:
        return self.audio_starts[-1] + self.window_audio_tokens

    @property
    def num_frames(self) -> int:
        """Pixel frames of the whole clip (the causal VAE: 1 + 4 per later latent frame)."""
        return 1 + 4 * (self.total_video_frames - 1)

    @property
    def seams(self) -> list[int]:
        """Global pixel frame where each window's new content begins (not window 0 of a new clip)."""
        return [4 * (self.video_starts[w] + self.overlap) - 3 for w in range(self.windows)
                if self.video_prefix[w]]

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def to_dict(self) -> dict:
        """The sidecar's `windows` record."""
        return {"windows": self.windows, "overlap_latent_frames": self.overlap,
                "audio_overlap_tokens": list(self.audio_prefix), "seams_frames": self.seams,
                "video_starts": list(self.video_starts), "audio_starts": list(self.audio_starts),
                "extended_from_frames": 1 + 4 * (self.prior_video_frames - 1) if self.prior_video_frames else None,
                "num_frames": self.num_frames, "duration_s": round(self.duration_s, 4)}


def frames_added_per_window(window_video_frames: int, overlap: int = DEFAULT_OVERLAP) -> int:
    """Pixel frames each continuation window adds: its latent frames less the carried overlap, 4 each."""
    return 4 * (window_video_frames - overlap)


def layout(duration: float | None, *, window_video_frames: int, window_audio_tokens: int, fps: float,
           audio_tokens_per_second: float, overlap: int = DEFAULT_OVERLAP, prior_video_frames: int = 0,
           prior_audio_tokens: int = 0) -> WindowLayout | None:
    """The windows that cover `duration` seconds (None: one window of the model's length, no layout; with
    a prior clip, `duration` is what is added to it, default one window's new content)."""
    f, length = window_video_frames, window_audio_tokens
    if not 0 < overlap < f:
        raise InputError(f"overlap {overlap}: must be between 1 and {f - 1} video latent frames (a window has {f})")
    if duration is None and not prior_video_frames:
        return None
    new_frames_per_window = frames_added_per_window(f, overlap)
    window_frames = 1 + 4 * (f - 1)
    if prior_video_frames:
        wanted = round(duration * fps) if duration is not None else new_frames_per_window
        windows = max(1, math.ceil(wanted / new_frames_per_window))
        base = prior_video_frames - overlap
    else:
        wanted = round(duration * fps)
        windows = 1 + max(0, math.ceil((wanted - window_frames) / new_frames_per_window))
        base = 0
    video_starts = tuple(base + w * (f - overlap) for w in range(windows))
    audio_starts, prefix = [], []
    end = prior_audio_tokens
    for w, start in enumerate(video_starts):
        if w == 0 and not prior_video_frames:
            a = 0
        else:
            a = round(4 * start / fps * audio_tokens_per_second)
            if a > end:  # no audio left to carry: start where the audio ends (never leave a gap)
                a = end
        audio_starts.append(a)
        prefix.append(end - a if (w or prior_video_frames) else 0)
        end = a + length
    return WindowLayout(windows=windows, overlap=overlap, window_video_frames=f, window_audio_tokens=length,
                        video_starts=video_starts, audio_starts=tuple(audio_starts), audio_prefix=tuple(prefix),
                        prior_video_frames=prior_video_frames, prior_audio_tokens=prior_audio_tokens, fps=fps)


def spec_layout(spec, duration: float | None, *, prior_video_frames: int = 0) -> WindowLayout | None:
    """`layout()` from a ModelSpec's own geometry, with no codec loaded: what a server limit or the Studio's
    Duration list counts before anything is queued (the same windows the engine's Plan will run)."""
    from ovi.codecs.base import AudioCodec  # every codec's audio latent rate (16 kHz / 512)

    return layout(duration, window_video_frames=spec.video_latent_frames, window_audio_tokens=spec.audio_latent_length,
                  fps=spec.fps, audio_tokens_per_second=spec.sample_rate / AudioCodec.samples_per_latent,
                  prior_video_frames=prior_video_frames)


def window_seed(seed: int, window: int) -> int:
    """Window 0 uses the clip's seed (a one-window clip is the ordinary clip); later windows their own
    stream derived from it (not seed + w, which the next clip of `n` uses)."""
    return seed if window == 0 else (seed * 1_000_003 + window) % (2 ** 63)


def denoise_windows(engine, plan, contexts, progress=None, *, prior=None, carry: bool = True):
    """Run `plan.windows` on `engine` -> the whole clip's (video [C, T, h, w], audio [A, C]) latents.

    `prior`: (video, audio) latents of the clip being extended (they lead the result unchanged).
    `carry=False` is the `independent` baseline: every window denoises from its own noise with no prefix
    (same seeds), stitched at the same places. Progress counts steps across all windows."""
    lay = plan.windows
    video_prefix_frames, audio_prefix_tokens = lay.video_prefix, lay.audio_prefix
    total = plan.steps * lay.windows
    if prior is not None:
        video_all, audio_all = prior[0].to(engine.device).float(), prior[1].to(engine.device).float()
    else:
        video_all = audio_all = None
    window_latents = []
    for w in range(lay.windows):
        video, audio = engine.initial_latents(plan, seed=window_seed(plan.seed, w))
        k_v, k_a = (video_prefix_frames[w], audio_prefix_tokens[w]) if carry else (0, 0)
        video_prefix = video_all[:, video_all.shape[1] - k_v:] if k_v else None
        audio_prefix = audio_all[audio_all.shape[0] - k_a:] if k_a else None
        if w == 0 and plan.image is not None:  # i2v: the first window starts from the image
            video_prefix = engine.first_frame_latent(plan, plan.image)

        def window_progress(step, steps, info, w=w):
            if progress is not None:
                progress(w * plan.steps + step, total, {**info, "window": w, "windows": lay.windows})

        video, audio = engine.denoise(plan, contexts, video, audio, video_prefix, window_progress,
                                      audio_prefix=audio_prefix)
        window_latents.append((video.cpu(), audio.cpu()))  # kept off the device: W windows must not grow it
        # The window's own carried prefix is already in the sequence: append only what is new.
        k_v, k_a = video_prefix_frames[w], audio_prefix_tokens[w]
        if video_all is None:
            video_all, audio_all = video, audio
        else:
            video_all = torch.cat([video_all, video[:, k_v:]], dim=1)
            audio_all = torch.cat([audio_all, audio[k_a:]], dim=0)
    engine.last_windows = window_latents  # per-window final latents (tests check the carried prefixes)
    return video_all, audio_all


# The extended clip's resolved settings an extension keeps unless its request sets them.
EXTEND_INHERITS = ("seed", "negative_prompt", "audio_negative_prompt", "steps", "solver", "shift",
                   "video_guidance_scale", "audio_guidance_scale", "slg_layer", "height_width", "loras", "lightning")


@dataclass
class PriorClip:
    """A clip to extend: its saved final latents and its sidecar's resolved settings."""
    path: str
    video: torch.Tensor   # [C, T, h, w]
    audio: torch.Tensor   # [A, C]
    settings: dict        # the sidecar (its top level holds the resolved per-clip fields)


def clip_files(clip: str | Path) -> tuple[Path, Path]:
    """CLIP.mp4 (or its stem) -> (<stem>.latents.safetensors, <stem>.json)."""
    path = Path(clip).expanduser()
    stem = path.with_suffix("") if path.suffix in (".mp4", ".wav", ".json") else path
    return stem.parent / (stem.name + ".latents.safetensors"), stem.parent / (stem.name + ".json")


def read_prior(clip: str | Path, model_name: str) -> PriorClip:
    """Load a clip to extend, refusing (InputError) one that cannot be continued by this model."""
    from safetensors.torch import load_file

    latents_path, sidecar_path = clip_files(clip)
    if not Path(clip).expanduser().exists() and not sidecar_path.exists():
        raise InputError(f"extend {clip}: no such clip; give the path of an mp4 that ovi generate wrote")
    if not latents_path.is_file():
        raise InputError(f"extend {clip}: its latents are not saved beside it ({latents_path.name} is missing); "
                         f"make the clip again with --save-latents (queued jobs keep them by themselves)")
    if not sidecar_path.is_file():
        raise InputError(f"extend {clip}: its sidecar {sidecar_path.name} is missing; the clip's settings are needed "
                         f"to continue it")
    settings = json.loads(sidecar_path.read_text())
    made_by = settings.get("model_name")
    if made_by != model_name:
        raise InputError(f"extend {clip}: it was made by model_name {made_by!r} but this engine runs {model_name!r}; "
                         f"extend it under a config with model_name: {made_by}")
    tensors = load_file(str(latents_path))
    if "video" not in tensors or "audio" not in tensors:
        raise InputError(f"extend {clip}: {latents_path.name} holds {sorted(tensors)}, not video and audio latents")
    return PriorClip(str(clip), tensors["video"].float(), tensors["audio"].float(), settings)
