r"""Text-to-image metrics (the paper's Table 6): Inception score, IvOM, LPIPS diversity.

``lpips`` (and the torchvision it imports) is optional and imported lazily; on machines where
it cannot load (a CUDA torchvision build beside a CPU torch, or no AlexNet/VGG weights offline)
:func:`lpips_diversity` raises a clear error and :func:`pixel_diversity` gives a weight-free
pixel-space diversity number, which is *not* LPIPS. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowkit._validation import check_positive_int

__all__ = ["inception_score", "ivom", "lpips_diversity", "pixel_diversity"]


def _as_probabilities(out: Tensor, logits: bool | None) -> Tensor:
    out = out.detach().to(torch.float64)
    if out.dim() != 2:
        raise ValueError(f"expected class scores of shape (N, K), got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError("class scores contain NaN or inf")
    if logits is None:
        in_unit = bool((out >= 0).all() and (out <= 1).all())
        logits = not (in_unit and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-3))
    if logits:
        return torch.softmax(out, dim=1)
    if (out < 0).any():
        raise ValueError("logits=False but the scores have negative entries; they are not probabilities")
    return out / out.sum(1, keepdim=True)


@torch.no_grad()
def inception_score(
    probs_or_images: Tensor | np.ndarray,
    classifier: Callable[[Tensor], Tensor] | None = None,
    splits: int = 10,
    *,
    batch_size: int = 100,
    logits: bool | None = None,
) -> tuple[float, float]:
    r"""Inception score (Salimans et al., 2016) with any classifier.

    .. math:: \mathrm{IS} = \exp\Big(\mathbb{E}_x \, \mathrm{KL}\big(p(y \mid x) \,\|\, p(y)\big)\Big),
              \qquad p(y) = \mathbb{E}_x\, p(y \mid x)

    computed on each of ``splits`` near-equal consecutive chunks (``torch.tensor_split``); the
    mean and the (population) standard deviation over chunks are returned, as in the original
    code. Uniform predictions give 1; confident predictions spread evenly over K classes give K.

    Arguments:
        probs_or_images: Class probabilities or logits (N, K) when ``classifier`` is None,
            else images fed to ``classifier`` in batches.
        classifier: A callable or module mapping images (B, ...) to logits or probabilities
            (B, K), e.g. the embedded dataset's attribute classifier. It is run under no_grad and
            its train/eval mode is left as is.
        splits: Number of chunks.
        batch_size: Images per classifier call.
        logits: Whether the scores are logits (softmax applied) or probabilities; None decides:
            rows in [0, 1] summing to 1 are probabilities.

    Example:
        >>> inception_score(torch.eye(4).repeat(5, 1), splits=1)
        (4.0, 0.0)
    """
    x = torch.as_tensor(probs_or_images)
    if classifier is None:
        out = x
    else:
        if x.shape[0] == 0:
            raise ValueError("no images")
        out = torch.cat([torch.as_tensor(classifier(x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])
    p = _as_probabilities(out, logits)
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, {n}] (the number of samples), got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, py.expand_as(part))).sum(1)
        scores.append(math.exp(kl.mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


def ivom(
    generator: Callable[..., Tensor],
    target_images: Tensor,
    init_codes: Tensor | None = None,
    *,
    latent_dim: int | None = None,
    code_fn: Callable[..., Tensor] | None = None,
    context: Tensor | None = None,
    restarts: int = 3,
    steps: int = 200,
    lr: float = 0.05,
    init_std: float = 1.0,
    batch_size: int = 64,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    r"""Inference via Optimisation (IvOM; Srivastava et al., 2017): how close the generator gets.

    For each target :math:`x` the free variable :math:`\epsilon` (the image-specific code, or
    the base noise of a flow prior through ``code_fn``) is optimised with Adam so that
    :math:`G(\mathrm{code\_fn}(\epsilon))` reconstructs :math:`x`:

    .. math:: \mathrm{IvOM}(x) = \min_{\text{restarts, steps}} \frac{1}{D} \lVert \tilde G - \tilde x \rVert^2,
              \qquad \tilde{\cdot} = \frac{\cdot - lo}{hi - lo} \in [0, 1]

    Every step's per-image error is tracked and the best over steps and restarts is kept.
    Targets are optimised in batches; each image's loss term has its own variables, so the
    batch does not couple them. Only :math:`\epsilon` gets gradients (``torch.autograd.grad``),
    the generator's ``.grad`` fields stay untouched; an ``nn.Module`` generator runs in eval
    mode and gets its mode back.

    Flow-noise variant: pass ``code_fn`` mapping the base noise to the code, e.g. for LNFMM's
    image prior :math:`z'_v = f_v^{-1}(\epsilon; z_s)`:
    ``code_fn=lambda eps, z_s: model.f_v.transform.inverse(eps, context=z_s)[0]`` (with
    ``context`` the shared codes of the targets' captions), so restarts draw
    :math:`\epsilon \sim \mathcal{N}(0, \mathrm{init\_std}^2)` in the base space.

    Arguments:
        generator: ``code (B, D) -> images (B, ...)``, or ``(code, context) -> images`` when
            ``context`` is given (e.g. the LNFMM decoder bound to the caption's shared code).
        target_images: (N, ...) images in ``value_range``.
        init_codes: Start of the first restart, (N, D); or one start per restart, (restarts, N, D).
            Other restarts draw :math:`\mathcal{N}(0, \mathrm{init\_std}^2)`.
        latent_dim: D, needed when ``init_codes`` is None.
        code_fn: Maps the optimised variable to the generator's code; identity when None.
            Called as ``code_fn(eps)`` or ``code_fn(eps, context)``.
        context: Per-target conditioning (N, ...), sliced with the batches.
        restarts: Random restarts per target.
        steps: Adam steps per restart.
        lr: Adam learning rate.
        init_std: Standard deviation of random starts.
        batch_size: Targets optimised together.
        value_range: (lo, hi) of the generator's and the targets' pixels.
        seed: Seed of the random starts.
        progress: Show a progress bar over batches (None: only on a terminal).

    Returns:
        ``{"mse": mean over images, "per_image": (N,), "best_codes": (N, ...) codes,
        "best_eps": (N, D) optimised variables}``.

    Example:
        >>> W = torch.randn(2, 12)
        >>> out = ivom(lambda z: torch.sigmoid(z @ W), torch.sigmoid(torch.randn(3, 2) @ W), latent_dim=2)
        >>> out["mse"] < 1e-4
        True
    """
    targets = torch.as_tensor(target_images)
    restarts = _check_ivom_arguments(targets, context, restarts, steps, value_range)
    inits = _ivom_starts(init_codes, latent_dim, restarts, targets.shape[0], init_std, seed)
    dtype = targets.dtype if targets.is_floating_point() else torch.float32
    best = _BestReconstructions(targets.shape[0], inits[0].shape[-1], dtype)
    with _eval_mode(generator):
        settings = {"steps": steps, "lr": lr, "value_range": value_range, "batch_size": batch_size, "progress": progress}
        _ivom_batches(generator, code_fn, targets, context, inits, best, **settings)
    return best.result()


def _check_ivom_arguments(targets: Tensor, context: Tensor | None, restarts: int, steps: int, value_range: tuple[float, float]) -> int:
    r"""Checks :func:`ivom`'s targets and settings; returns ``restarts``."""
    n = targets.shape[0]
    if n == 0:
        raise ValueError("no target images")
    restarts = check_positive_int("restarts", restarts)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    if context is not None and context.shape[0] != n:
        raise ValueError(f"context has {context.shape[0]} rows for {n} targets")
    return restarts


def _ivom_starts(init_codes: Tensor | None, latent_dim: int | None, restarts: int, n: int, init_std: float, seed: int) -> list[Tensor]:
    r"""The start of every restart, each (N, D): ``init_codes`` where given, the others drawn
    from :math:`\mathcal{N}(0, \mathrm{init\_std}^2)` up front, so they do not depend on the batch size."""
    if init_codes is not None:
        init = torch.as_tensor(init_codes)
        if init.dim() == 2 and init.shape[0] == n:
            starts: list[Tensor | None] = [init] + [None] * (restarts - 1)
        elif init.dim() == 3 and init.shape[:2] == (restarts, n):
            starts = list(init.unbind(0))  # type: ignore[assignment]  # list[Tensor] fits
        else:
            raise ValueError(f"init_codes must be (N, D) or (restarts, N, D) with N={n}, got {tuple(init.shape)}")
        dim = init.shape[-1]
    elif latent_dim is not None:
        starts, dim = [None] * restarts, latent_dim
    else:
        raise ValueError("give init_codes or latent_dim (the size of the optimised code)")
    gen = torch.Generator().manual_seed(seed)
    return [s if s is not None else torch.randn((n, dim), generator=gen) * init_std for s in starts]


class _BestReconstructions:
    r"""IvOM's best per-image error so far, with its optimised variable and code (on the CPU)."""

    def __init__(self, n: int, dim: int, dtype: torch.dtype) -> None:
        self.err = torch.full((n,), math.inf, dtype=torch.float64)
        self.eps = torch.zeros((n, dim), dtype=dtype)
        self.codes: Tensor | None = None  # allocated once the code's shape is known

    @torch.no_grad()
    def update(self, sl: slice, err: Tensor, eps: Tensor, code: Tensor) -> None:
        r"""Keeps, for the targets ``sl``, the errors ``err`` that beat the best so far."""
        e64 = err.detach().to(torch.float64).cpu()
        better = e64 < self.err[sl]
        if better.any():
            if self.codes is None:
                self.codes = torch.zeros((self.err.shape[0], *code.shape[1:]), dtype=code.dtype)
            idx = torch.arange(sl.start, sl.stop)[better]
            self.err[idx] = e64[better]
            self.eps[idx] = eps.detach().cpu()[better]
            self.codes[idx] = code.detach().cpu()[better]

    def result(self) -> dict[str, Any]:
        r""":func:`ivom`'s result; raises when no reconstruction error was finite."""
        if not torch.isfinite(self.err).all():
            raise RuntimeError("IvOM found no finite reconstruction error; the generator returns NaN/inf")
        return {"mse": float(self.err.mean()), "per_image": self.err, "best_codes": self.codes, "best_eps": self.eps}


@contextlib.contextmanager
def _eval_mode(generator: Callable[..., Tensor]) -> Iterator[None]:
    r"""An ``nn.Module`` generator in eval mode inside the block, its own mode back after it."""
    module = generator if isinstance(generator, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        yield
    finally:
        if module is not None:
            module.train(was_training)


def _ivom_batches(
    generator: Callable[..., Tensor],
    code_fn: Callable[..., Tensor] | None,
    targets: Tensor,
    context: Tensor | None,
    inits: list[Tensor],
    best: _BestReconstructions,
    *,
    steps: int,
    lr: float,
    value_range: tuple[float, float],
    batch_size: int,
    progress: bool | None,
) -> None:
    r"""Optimises every start of every batch of targets, keeping the best in ``best``."""
    n, lo, hi = targets.shape[0], value_range[0], value_range[1]
    device, dtype = targets.device, best.eps.dtype
    for b0 in tqdm(range(0, n, batch_size), desc="IvOM", disable=None if progress is None else not progress):
        sl = slice(b0, min(b0 + batch_size, n))
        tgt = (targets[sl].to(dtype) - lo) / (hi - lo)
        extra = () if context is None else (context[sl],)
        for start in inits:
            eps = start[sl].detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
            opt = torch.optim.Adam([eps], lr=lr)
            for step in range(steps + 1):
                code = code_fn(eps, *extra) if code_fn is not None else eps
                out = generator(code, *extra)
                if out.shape != tgt.shape:
                    raise ValueError(f"the generator made images of shape {tuple(out.shape)} for targets of shape {tuple(tgt.shape)}")
                err = ((out - lo) / (hi - lo) - tgt).pow(2).flatten(1).mean(1)
                best.update(sl, err, eps, code)
                if step == steps:
                    break
                (grad,) = torch.autograd.grad(err.sum(), [eps])
                eps.grad = grad
                opt.step()


def _check_samples(samples: Tensor) -> Tensor:
    x = torch.as_tensor(samples)
    if x.dim() < 3:
        raise ValueError(f"expected samples of shape (N captions, S samples, ...), got {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"diversity needs at least 2 samples per caption, got {x.shape[1]}")
    return x


def _load_lpips(net: str) -> Any:
    try:
        import lpips
    except Exception as e:  # ImportError, or RuntimeError from a CUDA torchvision beside a CPU torch
        raise ImportError(
            f"lpips_diversity needs the `lpips` package and the torchvision it imports; importing lpips failed with "
            f"{type(e).__name__}: {e}. Fix: install a torchvision build that matches torch {torch.__version__} "
            "(CPU: pip install torchvision --index-url https://download.pytorch.org/whl/cpu) and `pip install lpips` "
            "(or 'flowkit[lpips]'). For a weight-free number use pixel_diversity, which is not LPIPS."
        ) from e
    try:
        return lpips.LPIPS(net=net, verbose=False)
    except Exception as e:
        raise RuntimeError(
            f"lpips could not build its '{net}' network: {type(e).__name__}: {e}. The backbone's ImageNet weights "
            "come from torchvision's download on first use (impossible offline); put them in the torch hub cache "
            "(~/.cache/torch/hub/checkpoints, see torch.hub.get_dir()) on a machine with network access first."
        ) from e


@torch.no_grad()
def lpips_diversity(
    samples_per_caption: Tensor, net: str = "alex", *, device: str | torch.device | None = None, batch_size: int = 64
) -> float:
    r"""LPIPS diversity (Zhang et al., 2018): mean pairwise LPIPS between samples of one caption.

    .. math:: \frac{1}{N} \sum_{n=1}^{N} \binom{S}{2}^{-1} \sum_{i < j} \mathrm{LPIPS}(x_{n,i}, x_{n,j})

    Needs the ``lpips`` package with its backbone weights; raises ``ImportError`` (package or
    torchvision missing or broken) or ``RuntimeError`` (weights unavailable) naming the fix.

    Arguments:
        samples_per_caption: (N, S, 3, H, W) images in [0, 1] (mapped to [-1, 1] for LPIPS).
        net: LPIPS backbone, ``"alex"`` (the usual choice), ``"vgg"`` or ``"squeeze"``.
        device: Where to run the network; default the samples' device.
        batch_size: Image pairs per network call.

    Example (not run as a doctest: LPIPS needs torchvision and downloads its backbone weights):

    .. code-block:: python

        lpips_diversity(torch.rand(2, 4, 3, 64, 64))  # 0.4...
    """
    x = _check_samples(samples_per_caption)
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"expected (N, S, 3, H, W) images, got {tuple(x.shape)}")
    model = _load_lpips(net)
    device = torch.device(device) if device is not None else x.device
    model = model.to(device).eval()
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
    per_caption = []
    for n in range(x.shape[0]):
        imgs = x[n].to(device=device, dtype=torch.float32) * 2 - 1
        d = [model(imgs[i[b : b + batch_size]], imgs[j[b : b + batch_size]]).flatten() for b in range(0, len(i), batch_size)]
        per_caption.append(torch.cat(d).mean().item())
    return float(np.mean(per_caption))


@torch.no_grad()
def pixel_diversity(samples_per_caption: Tensor, p: str = "l2") -> float:
    r"""Pixel-space diversity: mean pairwise distance between samples of one caption (NOT LPIPS).

    A weight-free stand-in for machines where LPIPS cannot load; report it under its own name.
    With :math:`D` pixels per image, ``"l2"`` is the root mean squared difference
    :math:`\sqrt{\lVert a - b \rVert^2 / D}` and ``"l1"`` the mean absolute difference
    :math:`\lVert a - b \rVert_1 / D`, averaged over pairs :math:`i < j` and then over captions.

    Arguments:
        samples_per_caption: (N, S, ...) images, e.g. (N, S, 3, H, W) in [0, 1].
        p: ``"l2"`` or ``"l1"``.

    Example:
        >>> pixel_diversity(torch.stack([torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)], dim=1))
        1.0
    """
    x = _check_samples(samples_per_caption)
    if p not in ("l1", "l2"):
        raise ValueError(f"p must be 'l1' or 'l2', got {p!r}")
    flat = x.flatten(2).to(torch.float64)
    d = flat.shape[-1]
    dist = torch.cdist(flat, flat, p=2.0) / math.sqrt(d) if p == "l2" else torch.cdist(flat, flat, p=1.0) / d
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
    return float(dist[:, i, j].mean(1).mean())
