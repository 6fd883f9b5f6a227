"""A generated clip and how it is written: mp4 (H.264 + AAC via PyAV), wav, json sidecar, latents.

Outputs are durable state, so every file goes to a temp file in the target directory and is renamed into
place only after all of the clip's files were written; on any failure nothing of the clip remains.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

VIDEO_CRF = "18"


@dataclass
class Clip:
    """One generated clip: video uint8 [F, H, W, 3], audio float32 [samples] in [-1, 1]."""

    video: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    meta: dict = field(default_factory=dict)
    latents: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        self.video = np.asarray(self.video)
        self.audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)
        if self.video.dtype != np.uint8 or self.video.ndim != 4 or self.video.shape[-1] != 3:
            raise ValueError(f"Clip.video must be uint8 [frames, H, W, 3], got {self.video.dtype} "
                             f"{list(self.video.shape)}")
        if self.video.shape[0] < 1:
            raise ValueError("Clip.video has no frames")
        if not self.fps > 0 or not self.sample_rate > 0:
            raise ValueError(f"Clip needs fps > 0 and sample_rate > 0, got {self.fps} and {self.sample_rate}")

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def duration(self) -> float:
        """Video duration in seconds; the muxed audio is cut or padded to this length."""
        return self.num_frames / self.fps

    def save(self, path_stem: str | Path, save_latents: bool = False) -> dict[str, Path]:
        """Write `<stem>.mp4`, `<stem>.wav`, `<stem>.json` (and `<stem>.latents.safetensors` with
        `save_latents`) atomically; return {"mp4", "wav", "json"[, "latents"]} -> path."""
        stem = Path(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        writers = {"mp4": (".mp4", self._write_mp4), "wav": (".wav", self._write_wav),
                   "json": (".json", self._write_json)}
        if save_latents:
            if not self.latents:
                raise ValueError("save_latents=True but this clip carries no latents")
            writers["latents"] = (".latents.safetensors", self._write_latents)

        finals = {key: Path(f"{stem}{suffix}") for key, (suffix, _) in writers.items()}
        temps = {key: stem.parent / f".{stem.name}{suffix}.{uuid.uuid4().hex[:8]}.tmp"
                 for key, (suffix, _) in writers.items()}
        placed: list[Path] = []
        try:
            for key, (_, write) in writers.items():
                write(temps[key])
            for key in writers:
                os.replace(temps[key], finals[key])
                placed.append(finals[key])
        except BaseException:
            for p in [*temps.values(), *placed]:
                p.unlink(missing_ok=True)
            raise
        return finals

    # -- writers (each writes one complete file at `path`) -----------------------------------------

    def _audio_for_video(self) -> np.ndarray:
        """Audio clipped to [-1, 1] and cut or zero-padded to the video's duration."""
        n = round(self.num_frames / self.fps * self.sample_rate)
        audio = np.clip(np.nan_to_num(self.audio), -1.0, 1.0)[:n]
        return np.pad(audio, (0, n - audio.shape[0])).astype(np.float32)

    def _write_mp4(self, path: Path) -> None:
        video = self.video
        # yuv420p needs even sides: replicate the last row/column when one is odd.
        pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
        if pad_h or pad_w:
            video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        rate = Fraction(self.fps).limit_denominator(1001)
        with av.open(str(path), "w", format="mp4") as container:
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = video.shape[2], video.shape[1]
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": VIDEO_CRF}
            astream = container.add_stream("aac", rate=self.sample_rate)
            astream.layout = "mono"
            for i, image in enumerate(video):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts, frame.time_base = i, 1 / rate
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
            audio = av.AudioFrame.from_ndarray(self._audio_for_video()[None], format="flt", layout="mono")
            # A pts lets the muxer write the AAC priming delay as an edit list, so players and probes
            # see the true audio duration.
            audio.sample_rate, audio.pts, audio.time_base = self.sample_rate, 0, Fraction(1, self.sample_rate)
            container.mux(astream.encode(audio))
            container.mux(astream.encode())

    def _write_wav(self, path: Path) -> None:
        pcm = np.round(np.clip(np.nan_to_num(self.audio), -1.0, 1.0) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(self.sample_rate))
            w.writeframes(pcm.tobytes())

    def _write_json(self, path: Path) -> None:
        sidecar = {**self.meta, "fps": self.fps, "sample_rate": self.sample_rate, "frames": self.num_frames,
                   "height": int(self.video.shape[1]), "width": int(self.video.shape[2]),
                   "audio_samples": int(self.audio.shape[0])}
        path.write_text(json.dumps(to_jsonable(sidecar), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def _write_latents(self, path: Path) -> None:
        from safetensors.torch import save_file
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.latents.items()}
        save_file(tensors, str(path), metadata={"fps": str(self.fps), "sample_rate": str(self.sample_rate)})


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays, paths, dataclasses, sets and tuples into
    plain JSON types (anything else unknown becomes its str)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_jsonable(value.tolist())
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)


def probe_media(path: str | Path) -> dict[str, Any]:
    """What a player sees in `path`: video frames (decoded), fps, size, durations, audio format."""
    info: dict[str, Any] = {}
    with av.open(str(path)) as container:
        info["format"] = container.format.name
        if container.streams.video:
            vs = container.streams.video[0]
            frames = sum(1 for _ in container.decode(vs))
            fps = float(vs.average_rate) if vs.average_rate else None
            duration = float(vs.duration * vs.time_base) if vs.duration else (frames / fps if fps else None)
            info.update(video_codec=vs.codec_context.name, video_frames=frames, fps=fps,
                        width=vs.codec_context.width, height=vs.codec_context.height, video_duration=duration)
    with av.open(str(path)) as container:
        if container.streams.audio:
            aus = container.streams.audio[0]
            samples = sum(f.samples for f in container.decode(aus))
            rate = aus.codec_context.sample_rate
            # The stream duration honours the edit list (AAC priming and padding excluded); decoded
            # samples include the final frame's padding.
            duration = float(aus.duration * aus.time_base) if aus.duration else samples / rate
            info.update(audio_codec=aus.codec_context.name, sample_rate=rate,
                        audio_channels=aus.codec_context.layout.nb_channels, audio_duration=duration,
                        audio_samples_decoded=samples)
    return info
