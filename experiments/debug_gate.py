"""Look inside a gate / training run: generated tracks and the pure-noise x0 prediction."""
import sys, json, torch, numpy as np
from pathlib import Path
from ovi.train import train as T, data, metrics
from ovi.pipeline.images import to_uint8_frames
out = Path(sys.argv[1]); steps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
cfg = T.TrainConfig(**{"copies": 3, **json.load(open(out / "config.json")), "eval_guidance": (4.0, 3.0)})
tr = T.Trainer(cfg, out); tr.load(out / "ckpt.pt")
specs = T.make_specs(T.TrainConfig(**{**cfg.__dict__, "num_clips": 2})) if cfg.data == "gate" else data.held_out_specs()[:4]
for g in [(1.0, 1.0), (4.0, 3.0)]:
    eng = T.make_engine(tr.ema_model, tr.ema_t5, tr.tokenizer, tr.vcodec, tr.acodec, steps=steps, guidance=g)
    for spec in specs[:2]:
        for seed in (0, 1):
            clip = eng.generate(spec.prompt, seed=seed)
            m = metrics.measure(clip.video, clip.audio)
            tr_ = np.array(m.track)
            print(g, spec.motion, seed, "->", m.motion, m.color, m.pitch, "x:", np.round(tr_[::4, 0]).tolist(), "y:", np.round(tr_[::4, 1]).tolist(), "fgpix", int(metrics.object_mask(clip.video).sum()))
# the data itself
ds = T.Dataset(specs[:2], tr.tokenizer, tr.vcodec, tr.acodec)
for i, spec in enumerate(specs[:2]):
    lat = tr.video_latents(ds.video[i:i+1])[0]
    m = metrics.measure(to_uint8_frames(tr.vcodec.decode(lat)), np.zeros(11264, np.float32))
    print("data", spec.motion, m.motion, np.round(np.array(m.track)[::4, 0]).tolist())
print(T.noise_probe(tr, tr.ema_model, tr.ema_t5, specs[:2]))
# x0 prediction at sigma=1 centroid per latent frame for each prompt
g = torch.Generator().manual_seed(0)
xv = torch.randn(tr.vshape, generator=g); mask, values = tr.vfixed; xv = torch.where(mask, values, xv)
xa = torch.randn(22, 20, generator=g)
for spec in specs[:2]:
    ids, mk = tr.tokenizer([spec.prompt]); ctx = tr.encode_text(tr.ema_t5, ids, mk)
    with torch.no_grad():
        ov, oa = tr.ema_model([xv], [xa], torch.tensor([999.0]), ctx, ctx, vid_seq_len=320, audio_seq_len=22)
    x0 = (xv - 0.999 * ov[0])[:tr.vcodec.content_channels].reshape(tr.vcodec.copies, 4, 3, 5, 16, 16).mean(0)  # [sub, colour, F, h, w]
    red = x0[:, 0].mean(0)  # [F, h, w]
    w = red.clamp(min=0)
    xs = [(w[f].sum(0) * torch.arange(16)).sum() / w[f].sum() for f in range(5)]
    print(spec.motion, "x0 red centroid per latent frame", [round(float(v), 2) for v in xs], "max", float(red.max()))
