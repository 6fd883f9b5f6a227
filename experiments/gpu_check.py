"""CUDA-path checks for a lent GPU machine (run by experiments/gpu_check.sh, never by CI).

Checks what cannot run on the CPU machines and records numbers as JSON lines:
  - attention backend resolution on this GPU, and flash vs SDPA agreement when flash is installed;
  - the fusion model in bf16 (and fp8 storage) on CUDA vs the fp32 CPU reference (relative error);
  - denoising-step time of the mid preset in bf16 with SDPA, TF32 on/off (use_tensor_cores);
  - a full tiny generation through the Engine on CUDA;
  - eager vs compiled vs step-cached s/step at 720x720 5 s (experiments/gpu_check_speed.py);
  - FSDP on nccl and the memory model at real size (experiments/gpu_check_fsdp.py).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch


def emit(record: dict, out):
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    out.write(line + "\n")


def timed(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main(path: str) -> int:
    import ovi
    from ovi.checkpoint.loading import FP8, load_fusion_model
    from ovi.model.attention import attention, resolve_backend
    from ovi.pipeline.random_checkpoint import make_random_checkpoint

    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    with open(path, "w") as out:
        emit({"check": "device", "name": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
              "torch": torch.__version__}, out)
        backend, note = resolve_backend("auto", dev, torch.bfloat16)
        emit({"check": "attention_backend", "auto": backend, "note": note}, out)
        q, k, v = (torch.randn(1, 1024, 8, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
        lens = torch.tensor([900], device=dev)
        ref = attention(q, k, v, k_lens=lens, backend="sdpa")
        for name in ("flash3", "flash2"):
            if resolve_backend(name, dev, torch.bfloat16)[0] == name:
                err = (attention(q, k, v, k_lens=lens, backend=name) - ref).abs().max().item()
                emit({"check": "flash_vs_sdpa", "backend": name, "max_abs_diff": err}, out)

        root = tempfile.mkdtemp()
        for arch in ("tiny", "mid"):
            ckpt = make_random_checkpoint(f"{root}/{arch}", arch, fp8=True)
            file = ckpt / "Ovi" / "model.safetensors"
            cpu = load_fusion_model(file, arch)
            g = torch.Generator().manual_seed(0)
            vid, aud = torch.randn(48, 5, 16, 28, generator=g), torch.randn(22, 20, generator=g)
            ctx = torch.randn(40, 64, generator=g)
            args = ([vid], [aud], torch.tensor([900]), [ctx], [ctx], 5 * 8 * 14, 22)
            with torch.no_grad():
                want = cpu(*args)[0][0]
                for storage in (torch.bfloat16, FP8):
                    model = load_fusion_model(file, arch, storage=storage, compute=torch.bfloat16, device=dev)
                    model.set_attention_backend(backend)
                    dev_args = ([vid.to(dev)], [aud.to(dev)], args[2].to(dev), [ctx.to(dev)], [ctx.to(dev)], *args[5:])
                    got = model(*dev_args)[0][0].float().cpu()
                    rel = ((got - want).norm() / want.norm()).item()
                    secs = timed(lambda m=model: m(*dev_args))
                    emit({"check": "fusion_forward", "arch": arch, "storage": str(storage), "backend": backend,
                          "rel_err_vs_cpu_fp32": rel, "forward_seconds": secs}, out)
                    del model
        for tensor_cores in (False, True):
            cfg = ovi.load_config(model_name="tiny", ckpt_dir=f"{root}/tiny", device="cuda", dtype="bf16", use_tensor_cores=tensor_cores)
            engine = ovi.Engine.from_config(cfg)
            clip = engine.generate("a red ball bounces")
            emit({"check": "engine_generate", "use_tensor_cores": tensor_cores, "timings": clip.meta["timings"],
                  "attention_backend": clip.meta["attention_backend"], "tensor_cores": clip.meta["tensor_cores"]}, out)
        import gpu_check_speed  # beside this script: eager vs compiled vs cached s/step at 720x720 5 s
        try:
            gpu_check_speed.run(emit, out, dev)
        except Exception as exc:  # keep the records above; go on to the FSDP section
            emit({"check": "speed", "error": f"{type(exc).__name__}: {exc}"}, out)
        torch.cuda.empty_cache()
        import gpu_check_fsdp  # beside this script
        try:
            gpu_check_fsdp.run(emit, out, dev)
        except Exception as exc:  # keep the records above; say what failed
            emit({"check": "fsdp", "error": f"{type(exc).__name__}: {exc}"}, out)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("OUT", "."), "gpu_check.jsonl")))
