"""Depth growth (`--grow`): a deeper model started from exported weights computes what they computed,
and its new blocks keep learnt features behind zeroed residual outputs."""

import pytest
import torch

from ovi.checkpoint.loading import read_state_dict
from ovi.errors import CheckpointError
from ovi.specs import FUSION_DIR, MODEL_SPECS
from ovi.train.train import RESIDUAL_OUTPUTS, Dataset, TrainConfig, Trainer, count_blocks, make_specs

SHIPPED = "ovi/weights/tiny_trained"


def _loss(tr, ds, prefix=None):
    gen = torch.Generator().manual_seed(5)
    idx = ds.prefix_groups[prefix][:3] if prefix else torch.tensor([0, 1, 2])
    with torch.no_grad():
        lv, la, _ = tr.loss(ds, idx, gen, prefix=prefix)
    return lv, la


def test_a_grown_model_computes_what_the_checkpoint_computed(tmp_path):
    shipped = read_state_dict(f"{SHIPPED}/{FUSION_DIR}/{MODEL_SPECS['tiny_trained'].checkpoint_file}")
    have = count_blocks(shipped)
    base_cfg = TrainConfig(init_from=SHIPPED, num_clips=6, sequence_windows=3, prefix_frac=1.0,
                           num_layers=have, threads=torch.get_num_threads())
    base = Trainer(base_cfg, tmp_path / "base")
    grown = Trainer(TrainConfig(**{**base_cfg.__dict__, "num_layers": have + 2, "grow": True}), tmp_path / "grown")
    assert count_blocks(grown.model.state_dict()) == have + 2

    specs = make_specs(base_cfg)
    ds = Dataset(specs, base.tokenizer, base.vcodec, base.acodec, [1] * len(specs))
    prefix = next(iter(ds.prefix_groups))
    for p in (None, prefix):
        for a, b in zip(_loss(base, ds, p), _loss(grown, ds, p)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (p, a, b)

    # the two new blocks follow the middle one: copies of it, their residual outputs zero
    middle, sd = have // 2, grown.model.state_dict()
    for new in (middle + 1, middle + 2):
        for tower in ("video_model", "audio_model"):
            for name, value in sd.items():
                prefix_ = f"{tower}.blocks.{new}."
                if not name.startswith(prefix_):
                    continue
                rest = name[len(prefix_):]
                source = shipped[f"{tower}.blocks.{middle}.{rest}"].float()
                if rest.startswith(RESIDUAL_OUTPUTS):
                    assert not value.any(), name
                else:
                    assert torch.equal(value, source), name
    # blocks after the insertion moved down by two
    assert torch.equal(sd[f"video_model.blocks.{have + 1}.ffn.2.weight"],
                       shipped[f"video_model.blocks.{have - 1}.ffn.2.weight"].float())


def test_a_depth_mismatch_without_grow_is_refused_with_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="--grow"):
        Trainer(TrainConfig(init_from=SHIPPED, num_layers=9, threads=torch.get_num_threads()), tmp_path)
