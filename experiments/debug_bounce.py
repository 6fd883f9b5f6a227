import sys, json, torch, numpy as np
from pathlib import Path
from ovi.train import train as T, data, metrics
out = Path(sys.argv[1]); steps = int(sys.argv[2]) if len(sys.argv) > 2 else 16
cfg = T.TrainConfig(**{**json.load(open(out / "config.json")), "eval_guidance": (4.0, 3.0)})
tr = T.Trainer(cfg, out); tr.load(out / "ckpt.pt"); print("step", tr.step)
torch.set_printoptions(precision=2, linewidth=220, sci_mode=False)
for g in [(4.0, 3.0), (1.0, 1.0), (4.0, 1.0)]:
    eng = T.make_engine(tr.ema_model, tr.ema_t5, tr.tokenizer, tr.vcodec, tr.acodec, steps=steps, guidance=g)
    for prompt in ["A red square bounces. <AUDCAP>a middle tone and clicks<ENDAUDCAP>", "A blue circle bounces. <AUDCAP>a high tone<ENDAUDCAP>"]:
        for seed in (0, 1):
            clip = eng.generate(prompt, seed=seed)
            m = metrics.measure(clip.video, clip.audio)
            lat = clip.latents["audio"]  # [22, 20]
            tone = torch.tensor([k in tr.acodec.TONES for k in tr.acodec.CYCLES])
            bb = lat[:, ~tone].mean(1)
            print(g, seed, m.motion, "contacts", m.contacts, "clicks", [round(c, 1) for c in m.clicks], "y", [round(v[1]) for v in m.track])
            print("   broadband latent per frame", bb)
