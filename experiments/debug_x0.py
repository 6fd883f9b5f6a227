"""x0-prediction from pure noise (sigma ~ 1) per direction word: where does the model put the object?"""
import sys, json, torch
from pathlib import Path
from ovi.train import train as T
out = Path(sys.argv[1]); which = sys.argv[2] if len(sys.argv) > 2 else "ema"
cfg = T.TrainConfig(**{**json.load(open(out / "config.json")), "eval_guidance": (4.0, 3.0)})
tr = T.Trainer(cfg, out); tr.load(out / "ckpt.pt"); print("step", tr.step)
model, t5 = (tr.ema_model, tr.ema_t5) if which == "ema" else (tr.model, tr.t5)
model.eval()
mask, values = tr.vfixed
for t in (999.0, 700.0):
  for d in ("left", "right", "up", "down"):
    prompt = f"A red square moves {d}. <AUDCAP>a low tone<ENDAUDCAP>"
    ids, mk = tr.tokenizer([prompt]); ctx = tr.encode_text(t5, ids, mk)
    acc = 0
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        xv = torch.where(mask, values, torch.randn(tr.vshape, generator=g)); xa = torch.randn(22, 20, generator=g)
        s = t / 1000
        with torch.no_grad():
            ov, _ = model([xv], [xa], torch.tensor([t]), ctx, ctx, vid_seq_len=320, audio_seq_len=22)
        acc = acc + (xv - s * ov[0])[:12].reshape(4, 3, 5, 16, 16).mean(0)
    x0 = acc / 4
    red = (x0[0] - 0.5 * (x0[1] + x0[2])).clamp(min=0)  # [F, h, w] "redness"
    cx = [(red[f].sum(0) * torch.arange(16)).sum() / red[f].sum() for f in range(5)]
    cy = [(red[f].sum(1) * torch.arange(16)).sum() / red[f].sum() for f in range(5)]
    print(t, d, "cx", [round(float(v), 1) for v in cx], "cy", [round(float(v), 1) for v in cy], "max", round(float(red.max()), 2))
