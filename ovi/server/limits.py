"""Per-request bounds a server enforces; a module of its own so the `ovi` parser can show the
defaults without importing the web stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Per-request bounds a server enforces (`ovi queue serve --max-steps ...`)."""

    max_steps: int = 100
    max_pixels: int = 960 * 960          # frame height x width
    max_frames: int = 241                # frames per clip (upstream's 10 s model)
    max_prompt_chars: int = 2000         # each of prompt and the negative prompts
    max_clips: int = 8                   # n (clips per request)
    max_upload_bytes: int = 10 * 2**20   # one image

    @property
    def max_body_bytes(self) -> int:
        # An image may come base64-encoded inside a JSON body: 4/3 of its size, plus the rest.
        return self.max_upload_bytes * 4 // 3 + 64 * 1024
