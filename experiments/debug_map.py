import sys, json, torch
from pathlib import Path
from ovi.train import train as T
out = Path(sys.argv[1])
cfg = T.TrainConfig(**{**json.load(open(out / "config.json")), "eval_guidance": (4.0, 3.0)})
tr = T.Trainer(cfg, out); tr.load(out / "ckpt.pt"); print("step", tr.step)
model, t5 = tr.model.eval(), tr.t5
mask, values = tr.vfixed
torch.set_printoptions(precision=1, linewidth=200, sci_mode=False)
for d in ("left", "right"):
    prompt = f"A red square moves {d}. <AUDCAP>a low tone<ENDAUDCAP>"
    ids, mk = tr.tokenizer([prompt]); ctx = tr.encode_text(t5, ids, mk)
    acc = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        xv = torch.where(mask, values, torch.randn(tr.vshape, generator=g)); xa = torch.randn(22, 20, generator=g)
        with torch.no_grad():
            ov, _ = model([xv], [xa], torch.tensor([999.0]), ctx, ctx, vid_seq_len=320, audio_seq_len=22)
        acc = acc + (xv - 0.999 * ov[0])[:12].reshape(4, 3, 5, 16, 16).mean(0)
    x0 = acc / 8
    print(d, "R channel frame 0 (rows every 2)"); print(x0[0, 0, ::2, ::2])
    print(d, "R channel frame 4"); print(x0[0, 4, ::2, ::2])
