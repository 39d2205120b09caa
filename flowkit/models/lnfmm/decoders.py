r"""LNFMM decoders: the LSTM text decoder, the image decoders and the discriminator.

* :class:`TextDecoder`: 1-layer LSTM whose input at every step is the word embedding
  concatenated with the latent [z_s, z'_t] (official code); teacher forcing with word dropout.
* :class:`FeatureDecoder`: an MLP back to the image features ("features" encoder).
* :class:`Generator64`: a SAGAN-style 64x64 generator (upsampling residual blocks, spectral
  norm, conditional batch norm on z_s, one self-attention block).
* :class:`Discriminator64`: a hinge-loss discriminator with residual downsampling blocks and a
  projection on z_s (an unconditional logit plus the projection, as StackGAN++ pairs an
  unconditional and a conditional score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["TextDecoder", "DecodingStepper", "FeatureDecoder", "Generator64", "Discriminator64", "SelfAttention", "ConditionalBatchNorm2d"]

PAD, START, END, UNK = 0, 1, 2, 3


class TextDecoder(nn.Module):
    r"""LSTM text decoder :math:`p(x_t | z_s, z'_t)`.

    Arguments:
        vocab_size: The number of tokens.
        latent_dim: The size of the latent [z_s, z'_t] fed at every step.
        embedding_dim: The word embedding size (official: 512).
        hidden: The LSTM hidden size (A.1: 512).
        word_dropout: Probability of replacing an input word (not start/pad) by unk in training.
        embedding_dropout: Dropout on the input word embeddings.

    Example:
        >>> dec = TextDecoder(10, 6, 8, 16)
        >>> dec(torch.tensor([[1, 5, 2]]), torch.randn(1, 6)).shape
        torch.Size([1, 3, 10])
    """

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        embedding_dim: int = 512,
        hidden: int = 512,
        word_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.word_dropout = float(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.lstm = nn.LSTM(embedding_dim + latent_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, inputs: Tensor, latent: Tensor) -> Tensor:
        r"""Teacher forcing: returns the logits (B, T, V) of the next token at every step.

        No packing is needed: the LSTM is causal, so outputs at valid steps never see the
        padding behind them; the loss masks the padded targets.
        """
        if self.training and self.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
            drop &= (inputs != PAD) & (inputs != START)
            inputs = torch.where(drop, torch.full_like(inputs, UNK), inputs)
        emb = self.embedding_dropout(self.embedding(inputs))
        latent_steps = latent.unsqueeze(1).expand(-1, inputs.shape[1], -1)
        h, _ = self.lstm(torch.cat([emb, latent_steps], dim=-1))
        return self.out(h)

    def step(self, tokens: Tensor, latent: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        r"""One decoding step for N sequences: returns log-probabilities (N, V) and the new state.

        No dropout here, so sampling is deterministic in train and eval mode alike.
        """
        emb = self.embedding(tokens).unsqueeze(1)
        h, state = self.lstm(torch.cat([emb, latent.unsqueeze(1)], dim=-1), state)
        return F.log_softmax(self.out(h.squeeze(1)), dim=-1), state

    def stepper(self, latent: Tensor) -> DecodingStepper:
        r"""The decoding fast path for the latents (N, Z): see :class:`DecodingStepper`."""
        return DecodingStepper(self, latent)


class DecodingStepper:
    r"""What greedy, sampled and beam decoding run per step, with per-sequence work hoisted out.

    The LSTM's input weight splits into a word-embedding part and a latent part. The latent's
    share of the gates plus both biases, :math:`W_{ih}^{lat} z + b_{ih} + b_{hh}` (N, 4H), is
    computed once per sequence (``lat``); each step is then one matmul of
    :math:`[e(w_{t-1}), h_{t-1}]` with :math:`[W_{ih}^{emb}, W_{hh}]` for the gates, the LSTM
    cell's pointwise maths, and one matmul of :math:`[h_t, 1]` with :math:`[W_{out}, b_{out}]`
    for the logits (the bias rides in the matmul: no separate pass over the N x V logits).
    Outputs are written into buffers allocated once (no fresh N x V tensor per step). Equals
    :meth:`TextDecoder.step` (an ``nn.LSTM`` call) to float tolerance.

    Example:
        >>> dec = TextDecoder(10, 6, 8, 16)
        >>> run = dec.stepper(torch.randn(3, 6))
        >>> h = c = torch.zeros(3, 16)
        >>> logits, h, c = run(torch.ones(3, dtype=torch.long), run.lat, h, c)
        >>> logits.shape, h.shape
        (torch.Size([3, 10]), torch.Size([3, 16]))
    """

    @torch.no_grad()
    def __init__(self, decoder: TextDecoder, latent: Tensor) -> None:
        lstm = decoder.lstm
        e, n, hidden = decoder.embedding.embedding_dim, latent.shape[0], decoder.hidden
        w_ih = lstm.weight_ih_l0
        dtype, device = w_ih.dtype, w_ih.device
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0 if lstm.bias else None
        self.hidden, self.e = hidden, e
        self.embedding = decoder.embedding.weight
        #: the latent's share of the gates plus both biases (N, 4H), constant per sequence
        self.lat = F.linear(latent.to(dtype), w_ih[:, e:], bias)
        self.w_step = torch.cat([w_ih[:, :e], lstm.weight_hh_l0], dim=1)  # (4H, E + H)
        out_b = decoder.out.bias if decoder.out.bias is not None else w_ih.new_zeros(decoder.vocab_size)
        self.w_out = torch.cat([decoder.out.weight, out_b.unsqueeze(1)], dim=1)  # (V, H + 1)
        self._x = torch.empty(n, e + hidden, dtype=dtype, device=device)
        self._h1 = torch.empty(n, hidden + 1, dtype=dtype, device=device)
        self._h1[:, hidden] = 1.0
        self._gates = torch.empty(n, 4 * hidden, dtype=dtype, device=device)
        self._logits = torch.empty(n, decoder.vocab_size, dtype=dtype, device=device)

    @torch.no_grad()
    def __call__(self, tokens: Tensor, lat: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""One step (inference only, no gradients) for M <= N rows: ``lat`` holds those rows of :attr:`lat`.

        Returns:
            The logits (M, V) and the new (h, c). The logits and h live in buffers that the
            next call overwrites: use or copy them first.
        """
        m, e, n = tokens.shape[0], self.e, self.hidden
        x = self._x[:m]
        x[:, :e] = self.embedding[tokens]
        x[:, e:] = h
        gates = torch.addmm(lat, x, self.w_step.t(), out=self._gates[:m])
        g = torch.tanh(gates[:, 2 * n : 3 * n])
        s = gates.sigmoid_()  # i, f, (g: unused), o
        c = torch.addcmul(s[:, n : 2 * n] * c, s[:, :n], g)
        h1 = self._h1[:m]
        torch.mul(s[:, 3 * n :], torch.tanh(c), out=h1[:, :n])
        logits = torch.mm(h1, self.w_out.t(), out=self._logits[:m])
        return logits, h1[:, :n], c


class FeatureDecoder(nn.Module):
    r"""An MLP :math:`[z_s, z'_v] \mapsto` image features (the "features" encoder's target).

    Example:
        >>> FeatureDecoder(6, 16, 8)(torch.randn(2, 6)).shape
        torch.Size([2, 16])
    """

    def __init__(self, code_dim: int, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))

    def forward(self, code: Tensor, shared: Tensor | None = None) -> Tensor:
        return self.net(code)


class ConditionalBatchNorm2d(nn.Module):
    r"""Batch norm whose gain and bias are linear functions of a condition (BigGAN / SAGAN).

    Example:
        >>> ConditionalBatchNorm2d(4, 6)(torch.randn(2, 4, 8, 8), torch.randn(2, 6)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = spectral_norm(nn.Linear(cond_dim, channels))
        self.bias = spectral_norm(nn.Linear(cond_dim, channels))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = rearrange(1.0 + self.gain(cond), "b c -> b c 1 1")
        bias = rearrange(self.bias(cond), "b c -> b c 1 1")
        return self.bn(x) * gain + bias


class SelfAttention(nn.Module):
    r"""SAGAN self-attention over the spatial positions; starts as the identity (gamma = 0).

    Example:
        >>> SelfAttention(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = max(channels // 8, 1)
        v = max(channels // 2, 1)
        self.theta = spectral_norm(nn.Conv2d(channels, k, 1, bias=False))
        self.phi = spectral_norm(nn.Conv2d(channels, k, 1, bias=False))
        self.g = spectral_norm(nn.Conv2d(channels, v, 1, bias=False))
        self.o = spectral_norm(nn.Conv2d(v, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q = rearrange(self.theta(x), "b c h w -> b (h w) c")
        k = rearrange(F.max_pool2d(self.phi(x), 2), "b c h w -> b c (h w)")
        v = rearrange(F.max_pool2d(self.g(x), 2), "b c h w -> b (h w) c")
        attn = torch.softmax(q @ k, dim=-1)  # (b, hw, hw/4): pooled keys as in SAGAN
        out = rearrange(attn @ v, "b (h w) c -> b c h w", h=h, w=w)
        return x + self.gamma * self.o(out)


class _GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(cin, cond_dim)
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.bn2 = ConditionalBatchNorm2d(cout, cond_dim)
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        # a 1x1 conv commutes with nearest upsampling: run it at the low resolution (4x cheaper)
        return h + F.interpolate(self.skip(x), scale_factor=2.0, mode="nearest")


class Generator64(nn.Module):
    r"""SAGAN-style generator :math:`[z_s, z'_v] \mapsto` a 64x64 RGB image in [0, 1].

    A spectral-norm linear map to 4x4, four upsampling residual blocks (4 -> 64) with
    conditional batch norm on :math:`z_s`, self-attention at 16x16 (SAGAN places it at 32x32;
    16x16 keeps the attention matrix small on a CPU), then BN-ReLU-conv-sigmoid.

    Arguments:
        code_dim: The size of the full code [z_s, z'_v].
        cond_dim: The size of z_s (the first ``cond_dim`` entries of the code).
        channels: The base width (official g_conv_dim: 32); widths 8c, 4c, 2c, c, c.

    Example:
        >>> g = Generator64(10, 8, channels=4)
        >>> g(torch.randn(2, 10)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, code_dim: int, cond_dim: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.cond_dim = cond_dim
        self.fc = spectral_norm(nn.Linear(code_dim, 16 * 8 * c))
        self.block1 = _GBlock(8 * c, 4 * c, cond_dim)  # 8x8
        self.block2 = _GBlock(4 * c, 2 * c, cond_dim)  # 16x16
        self.attention = SelfAttention(2 * c)
        self.block3 = _GBlock(2 * c, c, cond_dim)  # 32x32
        self.block4 = _GBlock(c, c, cond_dim)  # 64x64
        self.bn = nn.BatchNorm2d(c)
        self.to_rgb = spectral_norm(nn.Conv2d(c, 3, 3, 1, 1))

    def forward(self, code: Tensor, shared: Tensor | None = None) -> Tensor:
        cond = code[:, : self.cond_dim] if shared is None else shared
        h = rearrange(self.fc(code), "b (c h w) -> b c h w", h=4, w=4)
        # channels-last: oneDNN's convolutions with few channels run ~2x faster on CPU
        h = h.contiguous(memory_format=torch.channels_last)
        h = self.block2(self.block1(h, cond), cond)
        h = self.block4(self.block3(self.attention(h), cond), cond)
        return torch.sigmoid(self.to_rgb(F.relu(self.bn(h))))


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, preactivation: bool = True) -> None:
        super().__init__()
        self.preactivation = preactivation
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + F.avg_pool2d(self.skip(x), 2)


class Discriminator64(nn.Module):
    r"""Hinge-loss discriminator for 64x64 images conditioned on z_s by projection.

    :math:`D(x, c) = w^\top \phi(x) + \langle e(c), \phi(x) \rangle` with residual downsampling
    blocks :math:`\phi` (64 -> 4, spatial sum) and spectral norm everywhere.

    Arguments:
        cond_dim: The size of the condition z_s.
        channels: The base width (official d_conv_dim: 32); widths c, 2c, 4c, 8c.

    Example:
        >>> d = Discriminator64(8, channels=4)
        >>> d(torch.rand(2, 3, 64, 64), torch.randn(2, 8)).shape
        torch.Size([2])
    """

    def __init__(self, cond_dim: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.blocks = nn.Sequential(_DBlock(3, c, preactivation=False), _DBlock(c, 2 * c), _DBlock(2 * c, 4 * c), _DBlock(4 * c, 8 * c))
        self.linear = spectral_norm(nn.Linear(8 * c, 1))
        self.embed = spectral_norm(nn.Linear(cond_dim, 8 * c))

    def forward(self, images: Tensor, cond: Tensor) -> Tensor:
        h = reduce(F.relu(self.blocks(images * 2.0 - 1.0)), "b c h w -> b c", "sum")
        return self.linear(h).squeeze(1) + (self.embed(cond) * h).sum(dim=1)
