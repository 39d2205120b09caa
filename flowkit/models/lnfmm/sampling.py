r"""Caption decoding for LNFMM: batched greedy and beam search, and id -> string helpers.

Both decoders run all N = B * S latents in one batch (no Python loop over samples; the only
loop is over time steps) and return token ids in the data's format
``[start, w_1, ..., w_n, end, pad, ...]`` of length ``max_len``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from flowkit._validation import check_positive_int
from flowkit.models.lnfmm.decoders import END, PAD, START, TextDecoder

__all__ = ["greedy_decode", "sample_decode", "beam_search", "ids_to_strings"]


class _Decodes(Protocol):
    def decode(self, ids: Any) -> str: ...


def _block_maxes(x: Tensor, block: int) -> Tensor:
    n, v = x.shape
    full = v // block * block
    maxes = x[:, :full].view(n, -1, block).amax(dim=-1)
    if full < v:
        maxes = torch.cat([maxes, x[:, full:].amax(dim=-1, keepdim=True)], dim=1)
    return maxes


def _argmax_in_block(x: Tensor, maxes: Tensor, block: int) -> Tensor:
    start = maxes.argmax(dim=-1) * block
    # past the end, columns repeat the last one: the first maximum is still found first
    cols = (start.unsqueeze(1) + torch.arange(block, device=x.device)).clamp_(max=x.shape[1] - 1)
    return start + x.gather(1, cols).argmax(dim=-1)


def _argmax(x: Tensor, block: int = 128) -> Tensor:
    r"""``x.argmax(-1)`` of a (N, V) tensor, the same index (first maximum, NaN first) in ~1/4
    of the time on CPU: a vectorized max over blocks of ``block`` columns, then the argmax
    inside the first block that holds the maximum."""
    if x.shape[1] < 4 * block or not x.is_contiguous():
        return x.argmax(dim=-1)
    return _argmax_in_block(x, _block_maxes(x, block), block)


def _blocked(x: Tensor, k: int = 1, block: int = 128) -> bool:
    r"""Whether :func:`_topk` takes the block path for this (N, V) tensor."""
    return k <= 4 and x.shape[1] >= 4 * block and x.is_contiguous()


def _topk(x: Tensor, k: int, block: int = 128, maxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""``x.topk(k, dim=-1)`` of a (N, V) tensor for small k, first index among equal values:
    one pass for the block maxima (or ``maxes``, already computed), then k rounds of
    :func:`_argmax`'s second stage, each masking its pick and updating its block's maximum.
    Overwrites ``x`` (and ``maxes``)."""
    n, v = x.shape
    if not _blocked(x, k, block):
        return x.topk(k, dim=-1)
    rows = torch.arange(n, device=x.device)
    maxes = _block_maxes(x, block) if maxes is None else maxes
    vals, ids = [], []
    for r in range(k):
        i = _argmax_in_block(x, maxes, block)
        vals.append(x[rows, i])
        ids.append(i)
        if r < k - 1:
            x[rows, i] = -torch.inf
            blk = i // block
            cols = (blk.unsqueeze(1) * block + torch.arange(block, device=x.device)).clamp_(max=v - 1)
            maxes[rows, blk] = x.gather(1, cols).amax(dim=-1)
    return torch.stack(vals, dim=1), torch.stack(ids, dim=1)


@torch.no_grad()
def greedy_decode(decoder: TextDecoder, latent: Tensor, max_len: int) -> Tensor:
    r"""Greedy decoding of N latents (:func:`sample_decode` at temperature 0).

    Arguments:
        decoder: The text decoder.
        latent: The latents [z_s, z'_t], shape (N, Z).
        max_len: The output length, start and end tokens included (>= 2).

    Returns:
        Token ids (N, max_len).

    Example:
        >>> dec = TextDecoder(10, 4, 8, 16)
        >>> greedy_decode(dec, torch.randn(3, 4), 6).shape
        torch.Size([3, 6])
    """
    return sample_decode(decoder, latent, max_len, temperature=0.0)


@torch.no_grad()
def sample_decode(
    decoder: TextDecoder, latent: Tensor, max_len: int, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    r"""Ancestral sampling of N captions, each word drawn from :math:`p(w_t | w_{<t}, z)^{1/T}`.

    Temperature 0 takes the most likely word (greedy decoding); 1 samples the decoder's own
    distribution. This is how a captioner *without* a latent gets diverse captions.

    Arguments:
        decoder: The text decoder.
        latent: The latents, shape (N, Z).
        max_len: The output length, start and end tokens included (>= 2).
        temperature: The word temperature T >= 0.
        generator: An optional RNG for the word draws.

    Returns:
        Token ids (N, max_len).

    Example:
        >>> dec = TextDecoder(10, 4, 8, 16)
        >>> sample_decode(dec, torch.randn(3, 4), 6, temperature=0.5).shape
        torch.Size([3, 6])
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (start and end), got {max_len}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    n, device = latent.shape[0], latent.device
    out = torch.full((n, max_len), PAD, dtype=torch.long, device=device)
    out[:, 0] = START
    # constant per sequence: the latent's share of the gates, computed once
    run = decoder.stepper(latent)
    lat = run.lat
    h = lat.new_zeros(n, decoder.hidden)
    c = lat.new_zeros(n, decoder.hidden)
    rows = torch.arange(n, device=device)  # the sequences still being decoded
    tokens = out[:, 0]
    for t in range(1, max_len - 1):  # the last position is a forced end: no step needed
        logits, h, c = run(tokens, lat, h, c)
        if temperature == 0:
            logits[:, PAD] = -torch.inf  # pad is never a word; it only fills after end
            nxt = _argmax(logits)
        else:
            logp = F.log_softmax(logits, dim=-1)
            logp[:, PAD] = -torch.inf
            probs = torch.softmax(logp / temperature, dim=-1)
            # torch.multinomial(probs, 1) is argmax(probs / q), q ~ Exp(1) over (N, V); the
            # draw covers all N rows, finished ones too, so the tokens for a seed are those
            # of a decoder that keeps every row in the batch
            q = torch.empty((n, probs.shape[1]), dtype=probs.dtype, device=device).exponential_(1, generator=generator)
            nxt = (probs / q[rows]).argmax(dim=-1)
        out[rows, t] = nxt
        live = nxt != END
        if not bool(live.all()):  # drop finished sequences from the batch
            rows, nxt, lat, h, c = rows[live], nxt[live], lat[live], h[live], c[live]
            if rows.numel() == 0:
                return out
        tokens = nxt
    out[rows, max_len - 1] = END  # truncate: every caption ends within max_len
    return out


def _log_normalizer(x: Tensor, scratch: Tensor, maxes: Tensor | None = None) -> Tensor:
    r""":math:`\log \sum_v \exp x_{nv}` of (N, V) logits, with the row maximum subtracted
    (from the block maxima ``maxes`` when given). The exponentials go through ``scratch``
    (C, V), a few rows at a time that stay in cache: about half the time of a log-softmax,
    which would also write an N x V result that beam search reads only k values of."""
    top = x.amax(dim=1) if maxes is None else maxes.amax(dim=1)
    total = torch.empty_like(top)
    for i in range(0, x.shape[0], scratch.shape[0]):
        rows = x[i : i + scratch.shape[0]]
        e = torch.sub(rows, top[i : i + rows.shape[0], None], out=scratch[: rows.shape[0]]).exp_()
        torch.sum(e, dim=1, out=total[i : i + rows.shape[0]])
    return total.log_().add_(top)


def _best_words(logits: Tensor, k: int, scratch: Tensor, block: int = 128) -> tuple[Tensor, Tensor]:
    r"""The ``k`` most likely next words of each row of (M, V) logits other than pad, as
    log-probabilities and ids. Their log-probabilities are their logits minus the row's log
    normalizer, so no M x V log-softmax is formed. Overwrites ``logits``."""
    maxes = _block_maxes(logits, block) if _blocked(logits, k, block) else None
    norm = _log_normalizer(logits, scratch, maxes)
    logits[:, PAD] = -torch.inf  # pad is never a word (but counts in the normalizer)
    if maxes is not None:
        b = PAD // block
        maxes[:, b] = logits[:, b * block : (b + 1) * block].amax(dim=1)
    val, tok = _topk(logits, k, block, maxes)
    return val.sub_(norm.unsqueeze(1)), tok


def _beam_step(
    run: Any, tokens: Tensor, lat: Tensor, h: Tensor, c: Tensor, live: Tensor, scratch: Tensor, val: Tensor, tok: Tensor, kk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""One decoder step of :func:`beam_search` for the ``live`` beams: the best ``kk`` next
    words of each, as log-probabilities ``val`` and ids ``tok`` (the rows of the other beams keep
    their filler), and the new LSTM state ``h``, ``c``."""
    every = bool(live.all())  # the common case: no gathers and scatters of the state
    idx = None if every else live.nonzero().squeeze(1)
    if every:
        logits, h, c = run(tokens, lat, h, c)
    else:
        logits, h_new, c_new = run(tokens[idx], lat[idx], h[idx], c[idx])
    if every:
        val, tok = _best_words(logits, kk, scratch)
    else:
        val[idx], tok[idx] = _best_words(logits, kk, scratch)
        h[idx], c[idx] = h_new, c_new
    return val, tok, h, c


@torch.no_grad()
def beam_search(decoder: TextDecoder, latent: Tensor, max_len: int, beam_width: int = 2) -> Tensor:
    r"""Beam search over N latents at once; returns the best beam of each (official width: 2).

    Scores are summed log-probabilities (no length normalization, as in the official code);
    finished beams keep their score and are padded.

    Arguments:
        decoder: The text decoder.
        latent: The latents (N, Z).
        max_len: The output length (>= 2).
        beam_width: The number of beams K.

    Returns:
        Token ids (N, max_len).

    Example:
        >>> dec = TextDecoder(10, 4, 8, 16)
        >>> beam_search(dec, torch.randn(3, 4), 6, beam_width=3).shape
        torch.Size([3, 6])
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (start and end), got {max_len}")
    beam_width = check_positive_int("beam_width", beam_width)
    n, k, device = latent.shape[0], beam_width, latent.device
    run = decoder.stepper(repeat(latent, "n z -> (n k) z", k=k))
    lat = run.lat  # the latent is constant per sequence and beam
    out = torch.full((n, max_len), PAD, dtype=torch.long, device=device)
    seqs = torch.full((n, k, max_len), PAD, dtype=torch.long, device=device)
    seqs[:, :, 0] = START
    # only the first beam is live at the start, so the K beams do not duplicate one prefix
    scores = torch.full((n, k), -torch.inf, device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(n, k, dtype=torch.bool, device=device)
    h = lat.new_zeros(n * k, decoder.hidden)
    c = lat.new_zeros(n * k, decoder.hidden)
    tokens = seqs[:, :, 0].reshape(-1)
    ns = torch.arange(n, device=device)  # the sequences still being searched
    v = decoder.vocab_size
    scratch = torch.empty(min(n * k, max(1, 2**17 // v)), v, dtype=lat.dtype, device=device)  # ~0.5 MB of exponentials
    kk = min(k, v)  # the best K continuations of all K beams are among each beam's best K
    for t in range(1, max_len):
        m = ns.numel()
        flat_done = done.reshape(-1)
        # each beam's candidates: a finished beam continues with pad only, at no cost; a
        # filler (-inf) candidate is an end, never better than a real one
        val = torch.full((m * k, kk), -torch.inf, device=device)
        tok = torch.full((m * k, kk), END, dtype=torch.long, device=device)
        if t == max_len - 1:
            val[:, 0] = 0.0  # truncate: force end
        else:
            # the decoder runs only for beams that can still matter: not finished and with a
            # finite score (a -inf beam stays -inf)
            live = ~flat_done & torch.isfinite(scores).reshape(-1)
            val, tok, h, c = _beam_step(run, tokens, lat, h, c, live, scratch, val, tok, kk)
        val[:, 0] = torch.where(flat_done, 0.0, val[:, 0])
        tok[:, 0] = torch.where(flat_done, PAD, tok[:, 0])
        cand = rearrange(scores.unsqueeze(-1) + val.view(m, k, kk), "n k c -> n (k c)")
        scores, ix = cand.topk(k, dim=-1)
        beam, token = ix // kk, tok.view(m, k * kk).gather(1, ix)
        seqs = torch.gather(seqs, 1, repeat(beam, "n k -> n k l", l=max_len))
        seqs[:, :, t] = token
        done = torch.gather(done, 1, beam) | (token == END)
        flat = rearrange(beam + torch.arange(m, device=device).unsqueeze(1) * k, "n k -> (n k)")
        h, c = h[flat], c[flat]
        tokens = rearrange(token, "n k -> (n k)")
        finished = done.all(dim=1)
        if bool(finished.any()):  # drop finished sequences: their best beam is final
            out[ns[finished]] = seqs[finished, 0]  # topk returns the best first
            keep = ~finished
            ns, seqs, scores, done = ns[keep], seqs[keep], scores[keep], done[keep]
            rows = keep.repeat_interleave(k)
            h, c, lat, tokens = h[rows], c[rows], lat[rows], tokens[rows]
            if ns.numel() == 0:
                break
    return out


def ids_to_strings(ids: Tensor | list, vocab: _Decodes) -> Any:
    r"""Decodes token ids to strings, nested like the input.

    A (L,) tensor gives a string, (B, L) a list of strings, (B, S, L) a list of lists.

    Arguments:
        ids: Token ids whose last dimension is time.
        vocab: Anything with ``decode(ids) -> str`` (e.g. :class:`flowkit.data.vocab.Vocabulary`).

    Example:
        >>> class V:
        ...     def decode(self, ids): return " ".join(str(i) for i in ids if i > 2)
        >>> ids_to_strings(torch.tensor([[[1, 5, 2]], [[1, 6, 2]]]), V())
        [['5'], ['6']]
    """
    if isinstance(ids, Tensor):
        if ids.dim() == 0:
            raise ValueError("ids must have a time dimension, got a scalar tensor")
        if ids.dim() == 1:
            return vocab.decode(ids.tolist())
        return [ids_to_strings(row, vocab) for row in ids]
    if ids and isinstance(ids[0], (list, tuple, Tensor)):
        return [ids_to_strings(row, vocab) for row in ids]
    return vocab.decode(list(ids))
