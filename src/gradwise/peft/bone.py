"""Bone (block-affine adaptation) as HF PEFT's MiSS with ``init_weights="bat"``: a config helper, no new math.

Paper: "Bone: Block Affine Transformation as Parameter Efficient Fine-tuning Methods for Large Language Models",
Kang, Yin, arXiv 2409.15371 (the later revisions of the same arXiv entry call the method MiSS). HF PEFT 0.21.2 has
no ``BoneConfig``; the block-affine update lives on as ``peft.MissConfig(init_weights="bat")``, which is what
:func:`bone_config` returns, so a Bone adapter saves and loads with plain PEFT (``save_pretrained`` /
``PeftModel.from_pretrained``) and nothing of gradwise is needed to use it.

The update, as PEFT's ``MissLinear`` computes it (``peft/tuners/miss/layer.py``, ``get_delta_weight``): the
weight ``W`` (``out × in``, both divisible by ``r``) is cut into ``r × r`` blocks ``W[i, j] =
W[i r:(i+1) r, j r:(j+1) r]``; the trainable tensor ``B`` has one ``r × r`` block per *output* block row
(shape ``out/r × r × r``, zeros at start, so the adapted model starts as the base model), and::

    W'[i, j] = W[i, j] + W[i, j] · B[i] + B[i]

The forward pass uses ``x W'ᵀ + b``; merging writes ``W'`` into the base layer; unmerging inverts it block by
block, ``W = (W' − B) (I + B)⁻¹``; PEFT computes that inverse in float32 whatever the weights' dtype, so a
float64 merge/unmerge round trip returns ``W`` to about 1e-7, not to float64 precision. ``tests/peft_tests/test_bone.py`` checks PEFT's forward, merge and the
merge/unmerge round trip against this formula in float64.
"""
from __future__ import annotations

from typing import Any

from gradwise._validate import check_int
from gradwise.registry import register

__all__ = ["bone_config"]

_PAPER = "Bone: Block Affine Transformation as Parameter Efficient Fine-tuning Methods for Large Language Models"
_CODE = "https://github.com/huggingface/peft@v0.21.2"


@register(kind="adapter", name="Bone", paper=_PAPER, year=2024, arxiv="2409.15371", code=_CODE,
          summary="Bone block-affine adapter W + W_blk·B + B, as HF PEFT's MissConfig(init_weights='bat')",
          aliases=("bone", "miss-bat"))
def bone_config(r: int, **kw: Any):
    """A ``peft.MissConfig`` for Bone (arXiv 2409.15371): block size ``r``, ``init_weights="bat"``.

    The adapted weight is ``W'[i, j] = W[i, j] + W[i, j] · B[i] + B[i]`` on ``r × r`` blocks (module docstring).

    ``kw`` passes through to ``MissConfig`` (``target_modules``, ``miss_dropout``, ``task_type``, ...); setting
    ``init_weights`` there is refused, since any other value is not Bone. Every targeted layer needs its
    ``in_features`` and ``out_features`` divisible by ``r`` (PEFT raises otherwise when the model is wrapped).
    Needs ``peft`` (extra ``gradwise[peft]``), imported here, not when ``gradwise.peft`` is.
    """
    r = check_int("r", r, 1)
    if "init_weights" in kw:
        raise ValueError(f"Invalid init_weights: {kw['init_weights']!r} (accepted: not given; Bone is "
                         f"init_weights='bat')")
    try:
        from peft import MissConfig
    except ImportError as e:  # peft, or one of its dependencies, is missing
        raise ImportError(f"gradwise.peft.bone_config needs HF PEFT: pip install 'gradwise[peft]' ({e})") from e
    return MissConfig(r=r, init_weights="bat", **kw)
