"""Object-weighted video loss (`object_weight`): the cells at and next to the object weigh more, and the
weighted loss is a weighted mean of the same squared errors."""

import random

import torch

from ovi.pipeline.objective import masked_mse
from ovi.train import data
from ovi.train.train import TrainConfig, Trainer


def test_weighted_masked_mse_is_a_weighted_mean_over_the_unfixed_entries():
    pred, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    fixed = (torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 4))
    fixed[0][2] = True                      # row 2 is a codec's fixed entry: never in the loss
    pred[:, 0] = 1.0                        # error 1 on row 0, 0 on row 1
    pred[:, 2] = 100.0
    assert masked_mse(pred, target, fixed) == 0.5
    assert masked_mse(pred, target, fixed, torch.ones(3, 1)) == 0.5
    weight = torch.tensor([[3.0], [1.0], [1.0]])   # row 0 weighs 3: (3 * 1) / (3 + 1)
    assert masked_mse(pred, target, fixed, weight) == 0.75
    assert masked_mse(pred, target, None) == masked_mse(pred, target, None, torch.ones(())) == 100.0 ** 2 / 3 + 1 / 3


def test_object_weights_cover_the_object_and_its_neighbours_only(tmp_path):
    tr = Trainer(TrainConfig(object_weight=4.0, threads=torch.get_num_threads()), tmp_path)
    spec = data.sample_spec(("red", "square", "down", "low"), random.Random(0))
    x0 = tr.vcodec.encode(torch.from_numpy(data.render_video(spec)))[None]
    w = tr.object_weights(x0)
    assert w.shape == (1, 1, *x0.shape[2:]) and set(w.unique().tolist()) == {1.0, 5.0}
    # the cell holding the object's centre in frame 0 is weighted; a corner cell of the frame far from it is not
    cx, cy = (int(v // 8) for v in data.track(spec)[0])
    assert w[0, 0, 0, cy, cx] == 5.0
    far_y, far_x = (0 if cy > 7 else 15), (0 if cx > 7 else 15)
    assert w[0, 0, 0, far_y, far_x] == 1.0
    # a few cells per latent frame, not the frame: the object is ~3x3 cells, moving over 4 frames, dilated
    assert 9 <= (w[0, 0] > 1).sum(dim=(-1, -2)).min() and (w[0, 0] > 1).float().mean() < 0.35
    assert Trainer(TrainConfig(threads=torch.get_num_threads()), tmp_path).object_weights(x0) is None
