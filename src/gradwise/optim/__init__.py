"""Optimizers of the seed papers, each a ``torch.optim.Optimizer`` with a multi-tensor step."""
from gradwise.optim._base import GradTransform, GradwiseOptimizer
from gradwise.optim.adabelief import AdaBelief
from gradwise.optim.adamp import SGDP, AdamP
from gradwise.optim.lion import Lion

__all__ = ["GradwiseOptimizer", "GradTransform", "AdaBelief", "AdamP", "SGDP", "Lion"]
from gradwise.optim.diffgrad import DiffGrad  # noqa: E402

__all__ += ["DiffGrad"]
from gradwise.optim.orthograd import OrthoAdamW, OrthoGrad, PerpendicularGrad  # noqa: E402
from gradwise.optim.sgd_sai import SGDSaI  # noqa: E402

__all__ += ["SGDSaI", "OrthoAdamW", "OrthoGrad", "PerpendicularGrad"]
from gradwise.optim.spam import SPAM, SpikeClip  # noqa: E402

__all__ += ["SPAM", "SpikeClip"]
from gradwise.optim.stable_spam import StableSPAM  # noqa: E402

__all__ += ["StableSPAM"]
from gradwise.optim.lion_k import LionK  # noqa: E402

__all__ += ["LionK"]
from gradwise.optim.factory import create, param_groups  # noqa: E402

__all__ += ["create", "param_groups"]
