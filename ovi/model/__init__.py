"""Pure-PyTorch Ovi model: WanModel backbones, FusionModel, attention dispatch, rope.

No torch.distributed here: parallelism is applied from outside by ovi.parallel.
"""

from ovi.model import configs
from ovi.model.fusion import FusionModel
from ovi.model.wan import WanModel

__all__ = ["FusionModel", "WanModel", "configs"]
