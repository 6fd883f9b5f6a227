"""Clean-prefix training samples (issue 18): the prefix is pinned in x_t, left out of the loss and read at
t=0 by the model; a short run lowers the continuation loss; turn samples (an extension's new direction)."""

import torch

from ovi.checkpoint.loading import read_state_dict
from ovi.errors import CheckpointError
from ovi.pipeline.objective import hold_prefix, masked_mse, pin
from ovi.specs import FUSION_DIR, MODEL_SPECS
from ovi.train.train import (Dataset, TrainConfig, Trainer, continuation_turns, continuation_windows, make_specs,
                             train)

SHIPPED = "ovi/weights/tiny_trained"


def test_hold_prefix_pins_the_prefix_and_leaves_it_out_of_the_loss():
    codec_mask = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    codec_mask[3] = True
    fixed = (codec_mask, torch.full((4, 3, 2, 2), 7.0))
    clean = torch.randn(2, 4, 3, 2, 2)
    held = hold_prefix(fixed, clean, 1, dim=1)
    noisy = pin(torch.randn(2, 4, 3, 2, 2), held)
    assert torch.equal(noisy[:, :3, :1], clean[:, :3, :1])      # the prefix frame is the clean latent
    assert (noisy[:, 3] == 7.0).all()                           # the codec's fixed channel still wins
    assert not torch.equal(noisy[:, :3, 1:], clean[:, :3, 1:])
    target = torch.randn(2, 4, 3, 2, 2)
    pred = target.clone()
    pred[:, :, :1] += 100.0                                      # wrong only on the prefix: no loss
    assert masked_mse(pred, target, held) == 0
    pred[:, :3, 1:] += 1.0
    assert masked_mse(pred, target, held) > 0
    audio = hold_prefix(None, torch.randn(2, 6, 5), 2, dim=0)
    assert audio[0].shape == (6, 5) and audio[0][:2].all() and not audio[0][2:].any()
    assert hold_prefix(fixed, clean, 0, dim=1) is fixed


def _prefix_loss(tr, ds, prefix):
    gen = torch.Generator().manual_seed(321)
    idx = ds.prefix_groups[prefix][:4]
    with torch.no_grad():
        lv, la, _ = tr.loss(ds, idx, gen, prefix=prefix)
    return float(lv + la)


def test_init_from_starts_from_the_shipped_weights(tmp_path):
    start = Trainer(TrainConfig(init_from=SHIPPED, threads=torch.get_num_threads()), tmp_path)
    shipped = read_state_dict(f"{SHIPPED}/{FUSION_DIR}/{MODEL_SPECS['tiny_trained'].checkpoint_file}")
    assert all(torch.equal(v, shipped[k].float()) for k, v in start.model.state_dict().items())
    assert all(torch.equal(v, start.model.state_dict()[k]) for k, v in start.ema_model.state_dict().items())


def test_a_short_run_with_clean_prefixes_lowers_the_continuation_loss(tmp_path, monkeypatch):
    """From the training init (the shipped weights already continue clips, so a few steps from them need
    not move the loss): 12 steps of continuation batches lower it."""
    cfg = TrainConfig(num_clips=8, steps=12, batch=4, lr=3e-3, warmup=2, eval_every=0, ckpt_every=1000,
                      curriculum_steps=0, prefix_frac=1.0, sequence_windows=3, threads=torch.get_num_threads())
    start = Trainer(cfg, tmp_path)
    specs = make_specs(cfg)
    windows = continuation_windows(cfg, len(specs))
    assert set(windows) <= {1, 2} and windows == continuation_windows(cfg, len(specs))  # seeded
    ds = Dataset(specs, start.tokenizer, start.vcodec, start.acodec, windows)
    prefix = max(ds.prefix_groups, key=lambda k: len(ds.prefix_groups[k]))
    assert prefix[0] == 1 and prefix[1] >= 1

    # the model reads the prefix tokens at t=0: the clean-prefix flag reaches every call
    seen = []
    original = type(start.model).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("first_frame_is_clean"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(start.model), "forward", spy)
    before = _prefix_loss(start, ds, prefix)
    assert seen == [prefix]
    monkeypatch.undo()

    tr = train(cfg, tmp_path / "run", progress=False)
    after = _prefix_loss(tr, ds, prefix)
    assert after < 0.9 * before, (before, after)
    logged = (tmp_path / "run" / "loss.jsonl").read_text().splitlines()
    assert len(logged) == 12 and all('"prefix": [1,' in line for line in logged)


def test_bad_continuation_settings_are_refused(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="at least 2 windows"):
        continuation_windows(TrainConfig(prefix_frac=0.5, sequence_windows=1), 4)
    with pytest.raises(CheckpointError, match="--init-from"):
        Trainer(TrainConfig(init_from=str(tmp_path), threads=torch.get_num_threads()), tmp_path)


def test_training_cli_refuses_a_bad_init_folder_with_exit_2(tmp_path, capsys):
    """The training CLI says what to pass instead, in one line, and exits 2 as the ovi CLI does."""
    import pytest

    from ovi.train.train import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "nowhere"), "--threads", "1"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --init-from") and "--export" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # refused before anything is written
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "empty"), "--export", str(tmp_path / "weights")])
    assert exit_info.value.code == 2 and "train first" in capsys.readouterr().err


def test_turn_windows_keep_the_carried_frames_and_then_move_the_new_way():
    """An extension may change the prompt's direction: a turn sample carries the old motion's tail and
    continues from exactly there the new way, trained with the new direction's prompt."""
    import pytest

    from ovi.codecs.shapes import ShapesAudioCodec, ShapesVideoCodec
    from ovi.pipeline.images import to_uint8_frames
    from ovi.train import data, metrics

    vcodec, acodec = ShapesVideoCodec(), ShapesAudioCodec()
    spec = next(s for s in data.held_out_specs() if s.motion == "left")
    kept, audio, k_v, _ = data.encode_window(spec, 2, vcodec, acodec)
    turned, turned_audio, _, _ = data.encode_window(spec, 2, vcodec, acodec, turn="right")
    assert torch.equal(turned[:, :k_v], kept[:, :k_v]) and torch.equal(turned_audio, audio)  # tail and tone held
    frames = to_uint8_frames(vcodec.decode(vcodec.assemble(turned)))
    track = metrics.centroid_track(metrics.object_mask(frames))
    assert metrics.classify_motion(track[4:])[0] == "right"
    assert metrics.classify_motion(metrics.centroid_track(metrics.object_mask(
        to_uint8_frames(vcodec.decode(vcodec.assemble(kept)))))[4:])[0] == "left"
    assert abs(track[5, 0] - track[4, 0]) <= 1.5 * spec.speed  # no jump at the seam: it starts where it was
    with pytest.raises(ValueError, match="linear motion"):
        data.turned_spec(spec, 1, "bounce")

    cfg = TrainConfig(num_clips=40, prefix_frac=0.5, turn_frac=0.5, sequence_windows=3)
    specs = make_specs(cfg)
    turns = continuation_turns(cfg, specs)
    assert turns == continuation_turns(cfg, specs)  # seeded
    assert any(turns) and all(t is None or (s.motion in data.LINEAR_MOTIONS and t in data.LINEAR_MOTIONS
                                            and t != s.motion) for s, t in zip(specs, turns))
    assert not any(t for s, t in zip(specs, turns) if s.motion == "bounce")
    assert continuation_turns(TrainConfig(prefix_frac=0.5), specs) is None
    few = [i for i, t in enumerate(turns) if t][:2] + [i for i, t in enumerate(turns) if not t][:1]
    tr_specs = [specs[i] for i in few]
    tr_turns = [turns[i] for i in few]
    from ovi.codecs.text import WordTokenizer
    tokenizer = WordTokenizer(data.vocabulary(), cfg.text_len)
    ds = Dataset(tr_specs, tokenizer, vcodec, acodec, [1, 2, 1], tr_turns)
    for i, (s, t) in enumerate(zip(tr_specs, tr_turns)):
        want = tokenizer([data.caption(s.color, s.shape, t or s.motion, s.pitch, s.caption_variant)])[0][0]
        assert torch.equal(ds.cont_ids[i], want) and (torch.equal(ds.ids[i], ds.cont_ids[i]) == (t is None))
