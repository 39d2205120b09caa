r"""Pre-training of the small conv image encoder on the shapes data, the analogue of the paper's
ImageNet-pre-trained VGG-16.

Trained from scratch inside LNFMM, the conv encoder's codes collapse and carry no image content
(``docs/lnfmm.md``: linear probes at chance). Pre-trained for a minute on a multi-label task
("which colours and which shapes does the image show, one object or two?") on shapes images
of another seed, its trunk carries that content from the first LNFMM step.

.. code-block:: python

    from flowkit.models.lnfmm.pretraining import pretrain_shapes_encoder

    trunk = pretrain_shapes_encoder(channels=16, hidden=128)  # cached after the first call
    model.image_encoder.load_trunk_state_dict(trunk)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowkit.io import atomic_write, cache_dir, read_cache

__all__ = ["pretrain_shapes_encoder", "initialize_image_encoder", "attribute_targets"]


def attribute_targets(scene: Any, colors: tuple[str, ...], shapes: tuple[str, ...]) -> Tensor:
    r"""The multi-label target of a scene: colours present, shapes present, two objects.

    Example:
        >>> from flowkit.data.shapes import Scene, SceneObject
        >>> attribute_targets(Scene((SceneObject("circle", "red", "small", 0, 0),)), ("red", "blue"), ("circle",)).tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    v = torch.zeros(len(colors) + len(shapes) + 1)
    for obj in scene.objects:
        v[colors.index(obj.color)] = 1.0
        v[len(colors) + shapes.index(obj.shape)] = 1.0
    v[-1] = float(len(scene.objects) > 1)
    return v


def pretrain_shapes_encoder(
    channels: int = 16,
    hidden: int = 128,
    steps: int = 1500,
    images: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 7,
    cache: bool = True,
    progress: bool = False,
) -> dict[str, Tensor]:
    r"""Pre-trains a :class:`~flowkit.models.lnfmm.encoders.ConvEncoder` trunk; returns its weights.

    The trunk (four stride-2 convolutions and an MLP layer of width ``hidden``) and a linear
    read-out are trained with binary cross-entropy on :func:`attribute_targets` of
    ``images`` training images of the shapes data with seed ``seed`` (the LNFMM data uses
    seed 0; whatever its seed, these are training-split images, so never test images). The
    global RNG is left untouched. The result is cached atomically under
    :func:`flowkit.io.cache_dir` (``$FLOWKIT_CACHE``), keyed by every argument.

    Arguments:
        channels: The conv encoder's ``image_encoder.conv_channels``.
        hidden: Its ``image_encoder.hidden``.
        steps: Adam steps.
        images: Training images.
        batch_size: Images per step.
        lr: The Adam learning rate.
        seed: The seed of the images, the initialization and the batches.
        cache: Read and write the cache.
        progress: Show a progress bar.

    Returns:
        The trunk's state dict (``ConvEncoder.load_trunk_state_dict`` loads it).
    """
    from flowkit.data.grammar import COLORS, SHAPES
    from flowkit.data.shapes import ShapesCaptions
    from flowkit.models.lnfmm.encoders import ConvEncoder

    args = dict(channels=channels, hidden=hidden, steps=steps, images=images, batch_size=batch_size, lr=lr, seed=seed, version=1)
    for name in ("channels", "hidden", "steps", "images", "batch_size"):
        if not isinstance(args[name], int) or isinstance(args[name], bool) or args[name] < 1:
            raise ValueError(f"pretrain_shapes_encoder: {name} must be a positive int, got {args[name]!r}")
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"shapes_encoder-{key}.pt"
    blob = read_cache(path) if cache else None
    if blob is not None and "trunk" in blob:
        return dict(blob["trunk"])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = ShapesCaptions("train", size=images, seed=seed, captions_per_image=1)
        x = torch.stack([data[i]["image"] for i in range(len(data))])
        colors, shapes = tuple(COLORS), tuple(SHAPES)
        y = torch.stack([attribute_targets(data[i]["scene"], colors, shapes) for i in range(len(data))])
        encoder = ConvEncoder(channels, hidden, 1)
        readout = nn.Linear(hidden, y.shape[1])
        params = [p for n, p in encoder.named_parameters() if not n.startswith("head.")] + list(readout.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in tqdm(range(steps), desc="pre-train image encoder", disable=not progress):
            batch = torch.randint(0, len(x), (batch_size,), generator=gen)
            loss = F.binary_cross_entropy_with_logits(readout(encoder.trunk(x[batch])), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    trunk = {k: v.detach().clone() for k, v in encoder.trunk_state_dict().items()}
    if cache:
        atomic_write(path, lambda f: torch.save({"trunk": trunk, "args": args, "loss": float(loss.detach())}, f))
    return trunk


def initialize_image_encoder(model: nn.Module, progress: bool = False) -> bool:
    r"""Applies ``model.config.image_encoder.init`` to a fresh LNFMM; returns whether it did.

    ``"shapes-attributes"`` loads :func:`pretrain_shapes_encoder` weights (for the model's
    ``image_encoder.conv_channels``, ``image_encoder.hidden`` and ``image_encoder.init_steps``) into
    the conv encoder's trunk; ``"shapes-trunk"`` loads the cells encoder's CNN from
    :func:`flowkit.data.features.shapes_trunk`; ``"random"`` does nothing. :func:`flowkit.recipes.train` calls
    it for new runs (not when resuming: the checkpoint holds the weights).
    """
    cfg = model.config
    if cfg.image_encoder.init == "random":
        return False
    if cfg.image_encoder.init == "shapes-trunk":
        from flowkit.data.features import shapes_trunk

        cells = shapes_trunk(progress=progress).net[:-1]
        model.image_encoder.cells.load_state_dict(cells.state_dict())
        model.image_trunk_initialized = True
        return True
    if cfg.image_encoder.kind != "conv":
        raise ValueError(f"image_encoder.init={cfg.image_encoder.init!r} needs the 'conv' image encoder, not {cfg.image_encoder.kind!r}")
    trunk = pretrain_shapes_encoder(
        cfg.image_encoder.conv_channels, cfg.image_encoder.hidden, steps=cfg.image_encoder.init_steps, progress=progress
    )
    device = next(model.image_encoder.parameters()).device
    model.image_encoder.load_trunk_state_dict({k: v.to(device) for k, v in trunk.items()})
    model.image_trunk_initialized = True
    return True
