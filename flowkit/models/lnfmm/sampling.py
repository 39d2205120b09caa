r"""Caption decoding for LNFMM: batched greedy and beam search, and id -> string helpers.

Both decoders run all N = B * S latents in one batch (no Python loop over samples; the only
loop is over time steps) and return token ids in the data's format
``[start, w_1, ..., w_n, end, pad, ...]`` of length ``max_len``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from einops import rearrange, repeat
from torch import Tensor

from flowkit.models.lnfmm.decoders import END, PAD, START, TextDecoder

__all__ = ["greedy_decode", "sample_decode", "beam_search", "ids_to_strings"]


class _Decodes(Protocol):
    def decode(self, ids: Any) -> str: ...


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
    n = latent.shape[0]
    out = torch.full((n, max_len), PAD, dtype=torch.long, device=latent.device)
    out[:, 0] = START
    done = torch.zeros(n, dtype=torch.bool, device=latent.device)
    state = None
    tokens = out[:, 0]
    for t in range(1, max_len):
        logp, state = decoder.step(tokens, latent, state)
        logp[:, PAD] = -torch.inf  # pad is never a word; it only fills after end
        if t == max_len - 1:
            nxt = torch.full_like(tokens, END)  # truncate: every caption ends within max_len
        elif temperature == 0:
            nxt = logp.argmax(dim=-1)
        else:
            probs = torch.softmax(logp / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
        done |= nxt == END
        tokens = nxt
        if bool(done.all()):
            break
    return out


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
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    n, k, device = latent.shape[0], beam_width, latent.device
    lat = repeat(latent, "n z -> (n k) z", k=k)
    seqs = torch.full((n, k, max_len), PAD, dtype=torch.long, device=device)
    seqs[:, :, 0] = START
    # only the first beam is live at the start, so the K beams do not duplicate one prefix
    scores = torch.full((n, k), -torch.inf, device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(n, k, dtype=torch.bool, device=device)
    state: tuple[Tensor, Tensor] | None = None
    tokens = seqs[:, :, 0].reshape(-1)
    for t in range(1, max_len):
        logp, state = decoder.step(tokens, lat, state)
        logp = rearrange(logp, "(n k) v -> n k v", k=k).clone()
        v = logp.shape[-1]
        logp[..., PAD] = -torch.inf
        if t == max_len - 1:
            forced = torch.full_like(logp, -torch.inf)
            forced[..., END] = 0.0
            logp = forced
        # a finished beam continues with pad only, at no cost
        finished = torch.full_like(logp, -torch.inf)
        finished[..., PAD] = 0.0
        logp = torch.where(done.unsqueeze(-1), finished, logp)
        cand = rearrange(scores.unsqueeze(-1) + logp, "n k v -> n (k v)")
        scores, idx = cand.topk(k, dim=-1)
        beam, token = idx // v, idx % v
        seqs = torch.gather(seqs, 1, repeat(beam, "n k -> n k l", l=max_len))
        seqs[:, :, t] = token
        done = torch.gather(done, 1, beam) | (token == END)
        flat = rearrange(beam + torch.arange(n, device=device).unsqueeze(1) * k, "n k -> (n k)")
        state = (state[0][:, flat], state[1][:, flat])
        tokens = rearrange(token, "n k -> (n k)")
        if bool(done.all()):
            break
    return seqs[:, 0]  # topk returns the best first


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
