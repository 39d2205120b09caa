"""Fault injection on tensors: hypothesis-generated bad inputs (dtype, shape, NaN/inf, empty
batch, a context where none belongs) against every registered layer, ``Flow`` and the LNFMM
entry points. Each must raise a clear ``ValueError`` (flowkit's ``InputError`` /
``LNFMMInputError``) that names the problem, never a raw torch error or a silent result."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowkit
from flowkit.testing.registry import registered_layers
from flowkit.transforms.base import InputError, param_dtype

LAYERS = sorted(registered_layers())
BAD_KINDS = ("int64", "float16", "bfloat16", "float64", "nan", "inf", "empty", "features", "rank1", "rank3", "context")


def _build(name: str, features: int = 4):
    spec = registered_layers()[name]
    c = 3 if spec.needs_context else 0
    return spec.build(features, c, seed=0), c


def _bad_input(kind: str, batch: int, features: int, c: int, row: int):
    x = torch.randn(batch, features)
    context = torch.randn(batch, c) if c else None
    if kind in ("int64", "float16", "bfloat16", "float64"):
        x = (x * 3).to(getattr(torch, kind))
    elif kind in ("nan", "inf"):
        x[row % batch, row % features] = float(kind)
    elif kind == "empty":
        x, context = x[:0], None if context is None else context[:0]
    elif kind == "features":
        x = torch.randn(batch, features + 1)
    elif kind == "rank1":
        x = x[0]
    elif kind == "rank3":
        x = x.unsqueeze(0)
    elif kind == "context":
        context = torch.randn(batch, 2) if not c else torch.randn(batch + 1, c)
    return x, context


_WORDS = {
    "int64": "floating-point",
    "float16": "parameters are",
    "bfloat16": "parameters are",
    "float64": "parameters are",
    "nan": "NaN or inf",
    "inf": "NaN or inf",
    "empty": "empty batch",
    "features": "shape",
    "rank1": "shape",
    "rank3": "shape",
    "context": "context",
}


@pytest.mark.parametrize("name", LAYERS)
@settings(max_examples=12)
@given(kind=st.sampled_from(BAD_KINDS), batch=st.integers(2, 6), row=st.integers(0, 20), inverse=st.booleans())
def test_every_registered_layer_refuses_bad_tensors(name, kind, batch, row, inverse):
    t, c = _build(name)
    x, context = _bad_input(kind, batch, 4, c, row)
    call = t.inverse if inverse else t
    if kind in ("float16", "bfloat16", "float64") and param_dtype(t) is None:
        # a layer without parameters (a permutation) is exact in any float dtype
        y, ladj = call(x, context)
        assert y.dtype == ladj.dtype == x.dtype and torch.equal(y.float().sort(dim=1).values, x.float().sort(dim=1).values)
        return
    with pytest.raises(ValueError) as e:
        call(x, context)
    assert isinstance(e.value, InputError), f"{name} {kind}: {type(e.value).__name__}: {e.value}"
    assert _WORDS[kind] in str(e.value), str(e.value)


def test_int64_and_half_inputs_name_the_fix():
    # Case 6 of issue 11: Invertible1x1 returned zeros for int64; an initialised ActNorm a truncated log-det.
    t = flowkit.Invertible1x1(4, seed=0)
    with pytest.raises(InputError, match=r"floating-point tensor, got torch.int64; convert it with x.float\(\)"):
        t(torch.arange(8).reshape(2, 4))
    a = flowkit.ActNorm(4)
    a(torch.randn(8, 4))
    with pytest.raises(InputError, match="floating-point"):
        a(torch.arange(8).reshape(2, 4))
    with pytest.raises(InputError, match=r"x is torch.float64 but the layer's parameters are torch.float32"):
        a(torch.randn(2, 4, dtype=torch.float64))
    # the fix it names works
    y, ladj = a.double()(torch.randn(2, 4, dtype=torch.float64))
    assert ladj.dtype == torch.float64


def test_a_context_for_an_unconditional_layer_or_flow_is_refused():
    with pytest.raises(InputError, match="unconditional .*context=None"):
        flowkit.ActNorm(3)(torch.randn(4, 3), torch.randn(4, 2))
    flow = flowkit.Flow(flowkit.Sequential(flowkit.AffineCoupling(4, hidden_features=8), flowkit.Switch(4)), flowkit.StandardNormal(4))
    with pytest.raises(InputError, match="unconditional"):
        flow.log_prob(torch.randn(3, 4), context=torch.randn(3, 2))
    with pytest.raises(InputError, match="unconditional"):
        flow.sample(2, context=torch.randn(3, 2))
    # a conditional chain still hands the context to its unconditional children
    cond = flowkit.Sequential(flowkit.ActNorm(4), flowkit.AffineCoupling(4, 2, hidden_features=8), flowkit.Switch(4))
    assert cond(torch.randn(3, 4), torch.randn(3, 2))[1].shape == (3,)


def test_flow_with_mismatched_base_is_refused():
    # Case 7: Flow(transform on 4 features, StandardNormal(3)).log_prob returned finite, wrong numbers.
    with pytest.raises(ValueError, match="transform works on 4 features but the base distribution on 3"):
        flowkit.Flow(flowkit.ActNorm(4), flowkit.StandardNormal(3))


@settings(max_examples=20)
@given(kind=st.sampled_from(BAD_KINDS), batch=st.integers(2, 5), row=st.integers(0, 20), sample=st.booleans())
def test_flow_refuses_bad_tensors(kind, batch, row, sample):
    flow = flowkit.glow(4, 3, num_layers=2, hidden_features=8)
    x, context = _bad_input(kind, batch, 4, 3, row)
    with pytest.raises(ValueError) as e:
        if sample:
            # only the context reaches sample(): give it the bad tensor
            flow.sample(2, context=x if kind != "context" else context)
        else:
            flow.log_prob(x, context=context)
    assert isinstance(e.value, InputError), f"{kind}: {type(e.value).__name__}: {e.value}"


# -- LNFMM ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lnfmm():
    from flowkit.models import LNFMM, LNFMMConfig

    cfg = LNFMMConfig.small(
        vocab_size=12,
        max_caption_len=6,
        shared_dim=8,
        image_specific_dim=4,
        text_specific_dim=4,
        image_encoder_hidden=16,
        conv_encoder_channels=4,
        word_embedding_dim=8,
        text_encoder_hidden=8,
        text_encoder_layers=1,
        decoder_hidden=16,
        decoder_embedding_dim=8,
        generator_channels=4,
        fs_layers=2,
        fs_hidden=16,
        fv_layers=2,
        fv_hidden=16,
        ft_layers=2,
        ft_hidden=16,
        image_encoder_init="random",
    )
    torch.manual_seed(0)
    return LNFMM(cfg).eval()


def _bad_images(kind: str, batch: int, row: int) -> torch.Tensor:
    x = torch.rand(batch, 3, 64, 64)
    if kind in ("int64", "float16", "bfloat16", "float64"):
        return (x * 255).to(getattr(torch, kind))
    if kind in ("nan", "inf"):
        x[row % batch, 0, 0, row % 64] = float(kind)
    return {"empty": x[:0], "pixels255": x * 255, "negative": x - 1, "shape": x[:, :2], "rank3": x[0]}.get(kind, x)


def _bad_captions(kind: str, batch: int) -> torch.Tensor:
    ids = torch.randint(4, 12, (batch, 6))
    return {"float": ids.float(), "empty": ids[:0], "too_big": ids + 100, "negative": -ids, "rank1": ids[0], "padding": ids * 0}[kind]


@settings(max_examples=20)
@given(
    kind=st.sampled_from(["int64", "float16", "bfloat16", "float64", "nan", "inf", "empty", "pixels255", "negative", "shape", "rank3"]),
    batch=st.integers(1, 3),
    row=st.integers(0, 30),
    entry=st.sampled_from(["forward", "sample_captions"]),
)
def test_lnfmm_image_entry_points_refuse_bad_images(lnfmm, kind, batch, row, entry):
    images = _bad_images(kind, batch, row)
    captions = torch.randint(4, 12, (max(batch, 1), 6))
    with pytest.raises(ValueError) as e:
        if entry == "forward":
            lnfmm(images, captions[: images.shape[0]] if images.dim() == 4 else captions)
        else:
            lnfmm.sample_captions(images, 2)
    assert type(e.value).__name__ == "LNFMMInputError", f"{kind}: {type(e.value).__name__}: {e.value}"


def test_lnfmm_refuses_8bit_pixels_with_the_fix(lnfmm):
    with pytest.raises(ValueError, match=r"pixels must be in \[0, 1\].*divide 8-bit pixels by 255"):
        lnfmm.sample_captions(torch.rand(2, 3, 64, 64) * 255, 2)


@settings(max_examples=12)
@given(
    kind=st.sampled_from(["float", "empty", "too_big", "negative", "rank1", "padding"]),
    batch=st.integers(1, 3),
    entry=st.sampled_from(["forward", "sample_images"]),
)
def test_lnfmm_caption_entry_points_refuse_bad_captions(lnfmm, kind, batch, entry):
    captions = _bad_captions(kind, batch)
    with pytest.raises(ValueError) as e:
        if entry == "forward":
            lnfmm(None, captions)
        else:
            lnfmm.sample_images(captions, 2)
    assert type(e.value).__name__ == "LNFMMInputError", f"{kind}: {type(e.value).__name__}: {e.value}"
