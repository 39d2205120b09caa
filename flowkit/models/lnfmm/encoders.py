r"""LNFMM encoders: images -> [z_s^v, z'_v], captions -> [z_s^t, z'_t].

Each encoder returns the posterior mean of the whole code and, with ``learned_variance``, its
log-variance; the model adds the reparameterized noise.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from flowkit.data.classifier import AttributeClassifier, cell_crops

__all__ = ["FeatureEncoder", "ConvEncoder", "CellEncoder", "VGG16Encoder", "TextEncoder", "load_torchvision"]


def load_torchvision():  # -> module
    r"""Imports torchvision lazily, with a clear message when it is missing or broken.

    The registry's torchvision is a CUDA build that fails at import with the CPU torch
    (``operator torchvision::nms does not exist``), so nothing imports it at module level.
    """
    try:
        import torchvision  # noqa: PLC0415
    except Exception as e:  # ImportError, or RuntimeError from a CUDA build on a CPU torch
        raise ImportError(
            "image_encoder='vgg16' needs a torchvision that matches your torch "
            f"({torch.__version__}); importing it failed with: {type(e).__name__}: {e}. Install the "
            "matching CPU wheel, or use image_encoder='features' (pre-extracted fc7 features) or 'conv'."
        ) from e
    return torchvision


class _Head(nn.Module):
    r"""``hidden -> code`` (mean) and, optionally, ``hidden -> code`` (log-variance)."""

    def __init__(self, in_features: int, code_dim: int, learned_variance: bool) -> None:
        super().__init__()
        self.mean = nn.Linear(in_features, code_dim)
        self.logvar = nn.Linear(in_features, code_dim) if learned_variance else None
        if self.logvar is not None:
            # start at a small variance (~ the official fixed noise) so early KLs are sane
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, -6.0)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.mean(h), (None if self.logvar is None else self.logvar(h))


class FeatureEncoder(nn.Module):
    r"""Pre-extracted image features (VGG-16 fc7, 4096) -> FC 2048 ReLU -> FC code (A.1).

    Arguments:
        feature_dim: The input feature size F.
        hidden: The hidden width (A.1: 2048).
        code_dim: The code size (A.1: 1056).
        learned_variance: Also predict the log-variance.

    Example:
        >>> enc = FeatureEncoder(16, 8, 6)
        >>> enc(torch.randn(2, 16))[0].shape
        torch.Size([2, 6])
    """

    def __init__(self, feature_dim: int, hidden: int, code_dim: int, learned_variance: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.head = _Head(hidden, code_dim, learned_variance)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.head(self.body(x))


class ConvEncoder(nn.Module):
    r"""A small CNN for 64x64 RGB images: four stride-2 convolutions -> MLP -> code.

    Arguments:
        channels: The width of the first convolution (doubles at each stride).
        hidden: The width of the MLP's hidden layer.
        code_dim: The code size.
        learned_variance: Also predict the log-variance.

    Example:
        >>> enc = ConvEncoder(4, 16, 6)
        >>> enc(torch.rand(2, 3, 64, 64))[0].shape
        torch.Size([2, 6])
    """

    def __init__(self, channels: int, hidden: int, code_dim: int, learned_variance: bool = False) -> None:
        super().__init__()
        c = channels
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1),
            nn.LeakyReLU(0.2),  # 32x32
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            nn.LeakyReLU(0.2),  # 16x16
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1),
            nn.LeakyReLU(0.2),  # 8x8
            nn.Conv2d(4 * c, 8 * c, 4, 2, 1),
            nn.LeakyReLU(0.2),  # 4x4
        )
        self.body = nn.Sequential(nn.Linear(8 * c * 16, hidden), nn.LeakyReLU(0.2))
        self.head = _Head(hidden, code_dim, learned_variance)

    def trunk(self, x: Tensor) -> Tensor:
        r"""The hidden features (B, hidden) under the code head: convolutions, then the MLP."""
        # images come in [0, 1]; centre them so the first layer sees zero-mean input
        h = self.convs(x * 2.0 - 1.0)
        return self.body(rearrange(h, "b c h w -> b (c h w)"))

    def trunk_state_dict(self) -> dict[str, Tensor]:
        r"""The trunk's weights (``convs.*`` and ``body.*``), e.g. from a pre-training run."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("convs.", "body."))}

    def load_trunk_state_dict(self, state: dict[str, Tensor]) -> None:
        r"""Loads :meth:`trunk_state_dict` weights; the code head is left as it is."""
        expected = set(self.trunk_state_dict())
        if set(state) != expected:
            raise ValueError(
                f"trunk weights do not fit this ConvEncoder: missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]}"
            )
        self.load_state_dict(state, strict=False)

    def freeze_trunk(self) -> None:
        r"""Keeps the trunk (convolutions and hidden layer) fixed; the code head still trains."""
        self.convs.requires_grad_(False)
        self.body.requires_grad_(False)

    def from_trunk(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        r"""The code from :meth:`trunk`'s features (reused when they are computed anyway)."""
        return self.head(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.from_trunk(self.trunk(x))


class CellEncoder(nn.Module):
    r"""A per-cell CNN for 64x64 shapes images -> MLP -> code.

    The image is cut into the 3x3 grid's 9 overlapping cell crops; one shared CNN (the
    architecture of the shapes attribute classifier, :class:`flowkit.data.classifier.AttributeClassifier`,
    without its read-out) gives 64 features per cell, 576 in all, the input of the same MLP as
    :class:`FeatureEncoder`'s. Loaded with the pre-trained shapes trunk
    (``image_encoder_init="shapes-trunk"``) and frozen, it computes in the model exactly the
    features that :func:`flowkit.data.features.shapes_trunk_features` extracts into a file,
    while the data stay pixels, which the image decoder needs as its target.

    Arguments:
        hidden: The MLP's hidden width.
        code_dim: The code size.
        learned_variance: Also predict the log-variance.
        width: Channels of the cell CNN's first convolution (the trunk's: 16).

    Example:
        >>> enc = CellEncoder(16, 6)
        >>> enc(torch.rand(2, 3, 64, 64))[0].shape
        torch.Size([2, 6])
    """

    def __init__(self, hidden: int, code_dim: int, learned_variance: bool = False, width: int = 16) -> None:
        super().__init__()
        self.cells = AttributeClassifier(width).net[:-1]  # all but the read-out
        self.body = nn.Sequential(nn.Linear(9 * 64, hidden), nn.ReLU())
        self.head = _Head(hidden, code_dim, learned_variance)
        self.trunk_frozen = False

    def freeze_trunk(self) -> None:
        r"""Keeps the cell CNN fixed, batch norm statistics included; the MLP still trains."""
        self.cells.requires_grad_(False)
        self.trunk_frozen = True
        self.cells.eval()

    def train(self, mode: bool = True) -> CellEncoder:
        super().train(mode)
        if self.trunk_frozen:
            self.cells.eval()  # a frozen trunk is a fixed function: running statistics always
        return self

    def trunk(self, x: Tensor) -> Tensor:
        r"""The cell features ``(B, 576)`` of ``(B, 3, 64, 64)`` images in [0, 1]."""
        return self.cells(cell_crops(x).flatten(0, 1)).reshape(len(x), -1)

    def from_trunk(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        r"""The code from :meth:`trunk`'s cell features (reused when they are computed anyway)."""
        return self.head(self.body(h))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.from_trunk(self.trunk(x))


class VGG16Encoder(nn.Module):
    r"""torchvision VGG-16 up to fc7 (4096) -> FC 2048 ReLU -> FC code (A.1).

    torchvision is imported when the encoder is built; ``weights`` is a local state-dict file of
    ``torchvision.models.vgg16`` (nothing is downloaded). Inputs are RGB in [0, 1]; they are
    normalized with the ImageNet statistics.

    Arguments:
        hidden: The hidden width (A.1: 2048).
        code_dim: The code size (A.1: 1056).
        learned_variance: Also predict the log-variance.
        weights: A path to VGG-16 weights, or None for a random initialization.
    """

    def __init__(self, hidden: int, code_dim: int, learned_variance: bool = False, weights: str | None = None) -> None:
        super().__init__()
        tv = load_torchvision()
        vgg = tv.models.vgg16(weights=None)
        if weights:
            vgg.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        self.fc7 = nn.Sequential(*list(vgg.classifier.children())[:5])  # fc6-ReLU-drop-fc7-ReLU
        self.register_buffer("mean_rgb", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std_rgb", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.body = nn.Sequential(nn.Linear(4096, hidden), nn.ReLU())
        self.head = _Head(hidden, code_dim, learned_variance)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.avgpool(self.features((x - self.mean_rgb) / self.std_rgb))
        h = self.fc7(rearrange(h, "b c h w -> b (c h w)"))
        return self.head(self.body(h))


class TextEncoder(nn.Module):
    r"""Word embedding -> multi-layer BiGRU (packed) -> mean over valid steps -> FC code.

    Padding (id 0) is excluded with packed sequences, so the backward direction starts at
    each caption's last token, and the mean runs over the valid steps only.

    Arguments:
        vocab_size: The number of tokens.
        embedding_dim: The word embedding size (official: 300).
        hidden: The GRU hidden size per direction (A.1: 1024).
        layers: The number of GRU layers (A.1: 2).
        code_dim: The code size (A.1: 1024).
        learned_variance: Also predict the log-variance.

    Example:
        >>> enc = TextEncoder(10, 8, 16, 2, 6)
        >>> enc(torch.tensor([[1, 5, 2, 0], [1, 4, 4, 2]]))[0].shape
        torch.Size([2, 6])
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden: int, layers: int, code_dim: int, learned_variance: bool = False
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.gru = nn.GRU(embedding_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.head = _Head(2 * hidden, code_dim, learned_variance)

    def forward(self, captions: Tensor) -> tuple[Tensor, Tensor | None]:
        mask = captions != 0
        lengths = mask.sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(self.embedding(captions), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=captions.shape[1])
        # padded steps are zero after pad_packed_sequence, so a sum / length is the masked mean
        h = reduce(out, "b t h -> b h", "sum") / lengths.unsqueeze(1).to(out.dtype)
        return self.head(h)
