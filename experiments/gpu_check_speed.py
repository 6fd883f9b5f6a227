"""Speed section of the GPU check (called by experiments/gpu_check.py; never by CI; written without a
GPU to run it on: unverified until a lent GPU runs it).

The real architecture with random bf16 weights at the 720x720 5 s token count: seconds per denoising
step (a positive and a negative pass, as guidance runs them) eager, with the fused block compiled
(ovi.pipeline.compile) and compiled plus TeaCache at its default threshold (ovi.pipeline.step_cache),
a few steps each; compile seconds; the compiled output's distance to eager.
"""

from __future__ import annotations

import time

import torch

STEPS = 4


def run(emit, out, device: torch.device) -> None:
    import ovi
    from random_weights import random_fusion_model  # beside this script
    from ovi.pipeline.compile import compile_fused_block
    from ovi.pipeline.footprint import latent_shape, sequence_lengths
    from ovi.pipeline.step_cache import install_step_cache
    cfg = ovi.load_config("ovi_720x720_5s")
    video_tokens, audio_tokens = sequence_lengths(cfg.model_name, cfg.height_width)
    _, f, h, w = latent_shape(cfg.model_name, cfg.height_width)
    model = random_fusion_model("ovi", device, torch.bfloat16)
    g = torch.Generator(device).manual_seed(0)
    vid = torch.randn(48, f, h, w, device=device, generator=g)
    aud = torch.randn(audio_tokens, 20, device=device, generator=g)
    pos, neg = (torch.randn(120, 4096, device=device, generator=g) for _ in range(2))
    timesteps = torch.linspace(999, 100, STEPS, device=device)

    def denoise():
        """STEPS steps of two passes; the latents move a little each step, as a sampler's would."""
        v, a, outs = vid.clone(), aud.clone(), []
        for t in timesteps:
            for ctx in (pos, neg):
                ov, oa = model([v], [a], t.reshape(1), [ctx], [ctx], video_tokens, audio_tokens)
                outs.append(ov[0])
            v, a = v - 0.05 * ov[0].float(), a - 0.05 * oa[0].float()
        return outs

    reference = None
    for mode in ("eager", "compiled", "compiled+teacache"):
        cache = install_step_cache(model, "teacache" if mode.endswith("teacache") else "none")
        compiled = compile_fused_block(model, mode != "eager", device)
        with torch.no_grad():
            cache.reset(STEPS)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = denoise()  # first run: compiles
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            cache.reset(STEPS)
            t0 = time.perf_counter()
            outs = denoise()
            torch.cuda.synchronize()
            steady = (time.perf_counter() - t0) / STEPS
        reference = outs if reference is None else reference
        rel = float((outs[-1].float() - reference[-1].float()).norm() / reference[-1].float().norm())
        emit({"check": "speed", "mode": mode, "video_tokens": video_tokens, "steps": STEPS,
              "step_seconds": steady, "first_run_seconds": first, "compile": compiled.record(),
              "forwards": cache.forwards, "rel_diff_vs_eager_last_output": rel}, out)
