"""Linear probes of codes against the exact scenes: an informative code scores near 1, a constant
or random one near the chance rate, and bad input is a clear error."""

from __future__ import annotations

import pytest
import torch

from flowkit.data import load_caption_data
from flowkit.data.shapes import Scene, SceneObject
from flowkit.evaluation.probes import linear_probe_accuracy, probe_image_codes, probe_scene_attributes, probe_text_codes
from flowkit.models import LNFMM, LNFMMConfig

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")


def _scenes(n: int, seed: int) -> list[Scene]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 3, (1,), generator=g))
        objs = tuple(
            SceneObject(
                shape=SHAPES[int(torch.randint(3, (1,), generator=g))],
                color=COLORS[int(torch.randint(4, (1,), generator=g))],
                size=("small", "large")[int(torch.randint(2, (1,), generator=g))],
                row=j,
                col=int(torch.randint(3, (1,), generator=g)),
            )
            for j in range(k)
        )
        out.append(Scene(objects=objs))
    return out


def _one_hot_codes(scenes: list[Scene], noise: float, seed: int) -> torch.Tensor:
    # A code that states the first object's colour and the object count, plus noise.
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in scenes:
        v = torch.zeros(len(COLORS) + 1)
        v[COLORS.index(s.objects[0].color)] = 1.0
        v[-1] = len(s.objects)
        rows.append(v)
    x = torch.stack(rows)
    return x + noise * torch.randn(x.shape, generator=g)


def test_informative_codes_score_high_and_noise_scores_chance() -> None:
    tr, te = _scenes(400, 0), _scenes(200, 1)
    good = probe_scene_attributes(_one_hot_codes(tr, 0.1, 0), tr, _one_hot_codes(te, 0.1, 1), te)
    assert good["color"]["accuracy"] > 0.95 and good["count"]["accuracy"] > 0.95
    assert good["color"]["chance"] < 0.45
    noise = probe_scene_attributes(torch.randn(400, 5), tr, torch.randn(200, 5), te)
    for attribute in ("color", "shape", "count"):
        assert noise[attribute]["accuracy"] < noise[attribute]["chance"] + 0.15, (attribute, noise[attribute])
    # the one-object attributes use only one-object scenes
    singles = sum(len(s.objects) == 1 for s in te)
    assert good["color"]["test"] == singles and good["count"]["test"] == len(te)


def test_linear_probe_accuracy_on_separable_data_and_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 1] - x[:, 2] > 0).long() + (x[:, 0] > 1).long()
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.85
    with pytest.raises(ValueError, match=r"\(N, F\) and \(M, F\)"):
        linear_probe_accuracy(x[:200], y[:200], x[200:, :3], y[200:])
    with pytest.raises(ValueError, match="one label"):
        linear_probe_accuracy(x[:200], y[:100], x[200:], y[200:])
    with pytest.raises(ValueError, match="unknown attribute 'hue'"):
        probe_scene_attributes(x[:2], _scenes(2, 0), x[:2], _scenes(2, 1), attributes=["hue"])


def test_probe_image_codes_runs_on_a_model() -> None:
    data = load_caption_data("shapes", sizes={"train": 60, "val": 4, "test": 30}, seed=0)
    torch.manual_seed(0)
    model = LNFMM(LNFMMConfig.small(vocab_size=len(data.vocab)))
    result = probe_image_codes(model, data, num_train=60, num_test=30)
    assert set(result) <= {"count", "shape", "color", "size", "row", "col"} and "count" in result
    for v in result.values():
        assert 0.0 <= v["accuracy"] <= 1.0 and 0.0 < v["chance"] <= 1.0
    # a probe of another code: the pixels themselves carry the colour
    pixels = probe_image_codes(model, data, num_train=60, num_test=30, code=lambda m, x: x.flatten(1)[:, ::97])
    assert "color" in pixels


class _ColourReader(torch.nn.Module):
    r"""A stand-in text encoder whose shared code is the one-hot of the colour words in a caption."""

    def __init__(self, vocab, max_len: int) -> None:
        super().__init__()
        from flowkit.data.grammar import COLORS

        self.config = LNFMMConfig.small(vocab_size=len(vocab), max_caption_len=max_len)
        self.ids = torch.tensor([vocab.encode(c, 3)[1] for c in COLORS])

    def encode_captions(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shared": (tokens[:, :, None] == self.ids).any(1).double() + 0.01 * torch.randn(len(tokens), len(self.ids))}


def test_probe_text_codes_scores_what_the_captions_state() -> None:
    data = load_caption_data("shapes", sizes={"train": 80, "val": 4, "test": 40}, seed=0)
    torch.manual_seed(0)
    reader = _ColourReader(data.vocab, 20)
    result = probe_text_codes(reader, data, num_train=80, num_test=40)
    assert result["color"]["accuracy"] == 1.0 and result["color"]["chance"] < 0.5
    assert result["shape"]["accuracy"] < 0.8  # the code knows colours only
    # only captions that state an attribute are scored: fewer for size than for colour
    assert result["size"]["test"] < result["color"]["test"] <= 5 * 40
    model = LNFMM(LNFMMConfig.small(vocab_size=len(data.vocab)))
    assert set(probe_text_codes(model, data, num_train=40, num_test=20)) <= {"count", "shape", "color", "size", "row", "col"}
