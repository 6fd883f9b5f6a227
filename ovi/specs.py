"""Model-name specs and upstream's file layout, in one place low in the stack.

`MODEL_SPECS`: which checkpoint file, latent lengths, pixel area and prompt style each `model_name`
implies (the three real entries are upstream Ovi's; `tiny` and `mid` are ours). The path constants
below are where upstream's download script puts each component under `ckpt_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    checkpoint_file: str          # under <ckpt_dir>/Ovi/
    video_latent_frames: int      # F_lat; pixel frames = 4 * (F_lat - 1) + 1
    audio_latent_length: int      # audio tokens (31.25 per second)
    area: int                     # target pixel area for t2v
    audio_caption_style: str      # "audcap" (<AUDCAP>..<ENDAUDCAP>) or "audio_colon" ("Audio: ...")
    architecture: str             # key into ovi.model.configs.ARCHITECTURES
    codecs: str = "real"          # "real" (Wan2.2 VAE + MMAudio), "toy" (ovi.codecs.toy), "shapes" (ovi.codecs.shapes)
    bundled: bool = False         # weights ship inside the package (ckpt_dir: bundled)
    fps: int = 24
    sample_rate: int = 16000

    @property
    def num_frames(self) -> int:
        return 4 * (self.video_latent_frames - 1) + 1


MODEL_SPECS: dict[str, ModelSpec] = {
    "720x720_5s": ModelSpec("720x720_5s", "model.safetensors", 31, 157, 720 * 720, "audcap", "ovi"),
    "960x960_5s": ModelSpec("960x960_5s", "model_960x960.safetensors", 31, 157, 960 * 960, "audio_colon", "ovi"),
    "960x960_10s": ModelSpec("960x960_10s", "model_960x960_10s.safetensors", 61, 314, 960 * 960, "audio_colon", "ovi"),
    # Tiny: 17 frames (0.71 s) at 24 fps, 22 audio latents (0.704 s), ~128x128 pixels.
    "tiny": ModelSpec("tiny", "model.safetensors", 5, 22, 128 * 128, "audcap", "tiny", codecs="toy"),
    # The embedded default: tiny Ovi trained on synthetic coloured-shape clips with tones (ovi.train,
    # DESIGN §5); same clip length, 128x128 px through the shapes codecs (8x8-px latents, 320 video tokens).
    "tiny_trained": ModelSpec("tiny_trained", "model.safetensors", 5, 22, 128 * 128, "audcap", "tiny_trained",
                              codecs="shapes", bundled=True),
    # Benchmark preset: 33 frames (1.4 s), 44 audio latents, ~256x448 px -> 9 x 8 x 14 = 1008 video tokens.
    "mid": ModelSpec("mid", "model.safetensors", 9, 44, 256 * 448, "audcap", "mid", codecs="toy"),
}

# ---- upstream's checkpoint layout (relative to ckpt_dir) ----------------------------------------
FUSION_DIR = "Ovi"                                         # fusion DiT files (MODEL_SPECS[...].checkpoint_file)
FP8_CHECKPOINT_FILE = "model_fp8_e4m3fn.safetensors"       # under FUSION_DIR
T5_DIR = "Wan2.2-TI2V-5B"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"                # under T5_DIR
TOKENIZER_DIR = "google/umt5-xxl"                          # under T5_DIR
BYTE_TOKENIZER_FILE = "ovi_byte_tokenizer.json"            # ours: the tiny model's tokenizer, under TOKENIZER_DIR
WORD_TOKENIZER_FILE = "ovi_word_tokenizer.json"            # ours: the trained tiny model's vocabulary, same place
# `ckpt_dir: bundled` -> the weights that ship inside the package, in upstream's layout, one folder per
# model_name: <ovi package>/weights/<model_name>/{Ovi, Wan2.2-TI2V-5B}/...
BUNDLED_CKPT_DIR = "bundled"
BUNDLED_WEIGHTS_DIR = "weights"
WAN_VAE_FILE = "Wan2.2-TI2V-5B/Wan2.2_VAE.pth"
MMAUDIO_VAE_FILE = "MMAudio/ext_weights/v1-16.pth"
MMAUDIO_VOCODER_FILE = "MMAudio/ext_weights/best_netG.pt"
FLUX_DIR = "FLUX.1-Krea-dev"                               # t2i2v's image model
