r"""Caption tokenization and the word vocabulary.

:func:`tokenize` follows pycocoevalcap's ``PTBTokenizer`` (Stanford PTB tokenizer with
``-lowerCase``, then removal of its punctuation tokens) without Java: it lowercases, splits the
clitics ``'s 're 've 'll 'd 'm n't`` off as PTB does, keeps hyphenated words and numbers such as
``t-shirt`` or ``3.5`` whole, and drops punctuation. So what the model learns is what the
metrics see. One deliberate difference: PTBTokenizer turns brackets into ``-LRB-``/``-RRB-``
and, after ``-lowerCase``, its removal list (which holds the upper-case forms) misses them, so
pycocoevalcap keeps ``-lrb-``/``-rrb-`` tokens; flowkit drops brackets like other punctuation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["tokenize", "Vocabulary", "PAD", "START", "END", "UNK", "SPECIALS"]

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = ("<pad>", "<start>", "<end>", "<unk>")

# A word: letters/digits, with inner hyphens, periods (3.5, u.s), slashes or ampersands kept
# as PTB keeps them; or a clitic. Everything else (punctuation, quotes, brackets) is dropped.
_CLITIC = r"n't|'s|'re|'ve|'ll|'d|'m"
_TOKEN = re.compile(rf"(?:{_CLITIC}|[a-z0-9]+(?:[-./&][a-z0-9]+)*?(?=n't\b)|[a-z0-9]+(?:[-./&][a-z0-9]+)*)")


def tokenize(caption: str) -> list[str]:
    r"""PTB-style tokens of a caption: lowercase, clitics split, punctuation removed.

    Arguments:
        caption: A caption string.

    Example:
        >>> tokenize("A man's T-shirt, isn't it red?")
        ['a', 'man', "'s", 't-shirt', 'is', "n't", 'it', 'red']
    """
    text = caption.lower().replace("\u2019", "'")
    return _TOKEN.findall(text)


class Vocabulary:
    r"""A word <-> id map with ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3.

    Arguments:
        words: The regular words, in id order (ids start at 4).

    Example:
        >>> v = Vocabulary.build(["a red circle", "a blue circle"], threshold=1)
        >>> ids = v.encode("a red star", max_len=6)
        >>> ids, v.decode(ids)
        ([1, 4, 7, 3, 2, 0], 'a red <unk>')
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = list(SPECIALS)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
        for w in words:
            if w in self.stoi:
                raise ValueError(f"duplicate word {w!r} in vocabulary")
            self.stoi[w] = len(self.itos)
            self.itos.append(w)

    pad, start, end, unk = PAD, START, END, UNK

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> Vocabulary:
        r"""The vocabulary of the words occurring at least ``threshold`` times.

        Words are ordered by decreasing count, ties alphabetically (deterministic).

        Arguments:
            captions: Caption strings (tokenized with :func:`tokenize`).
            threshold: The minimum count of a kept word (4 as in the official LNFMM code).
        """
        counts: Counter[str] = Counter()
        for c in captions:
            counts.update(tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= threshold and w not in SPECIALS), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, caption: str, max_len: int) -> list[int]:
        r"""``[<start>, words..., <end>]`` padded with ``<pad>`` (or truncated) to ``max_len``.

        A truncated caption keeps its ``<end>`` as the last id. Unknown words map to ``<unk>``.

        Arguments:
            caption: A caption string.
            max_len: The length of the returned list (>= 2).
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        ids = [self.stoi.get(w, UNK) for w in tokenize(caption)][: max_len - 2]
        ids = [START, *ids, END]
        return ids + [PAD] * (max_len - len(ids))

    def encode_tensor(self, caption: str, max_len: int) -> torch.Tensor:
        r""":meth:`encode` as a ``LongTensor`` of shape ``(max_len,)``."""
        return torch.tensor(self.encode(caption, max_len), dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        r"""The caption of a sequence of ids: stops at ``<end>``, skips ``<pad>``/``<start>``.

        Arguments:
            ids: Token ids (a list or a 1-d tensor).
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else SPECIALS[UNK])
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        r"""A JSON-able description (saved with a model); inverse of :meth:`from_dict`."""
        return {"format": "flowkit.vocab/1", "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        r"""The vocabulary saved by :meth:`to_dict`."""
        itos = list(d["itos"])
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"not a flowkit vocabulary: the first tokens must be {SPECIALS}, got {itos[:4]}")
        return cls(itos[4:])
