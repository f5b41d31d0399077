"""Scale → size → tokens invariants and budget fitting, property-tested."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resadapt.errors import BudgetError
from resadapt.geometry import Geometry, fit_budget, size_ladder, smart_resize

FACTORS = st.sampled_from([28, 32])


@st.composite
def geometries(draw):
    f = draw(FACTORS)
    min_tokens = draw(st.sampled_from([1, 4, 16]))
    max_tokens = draw(st.sampled_from([36, 100, 768]))
    return Geometry(factor=f, min_pixels=min_tokens * f * f, max_pixels=max_tokens * f * f)


@st.composite
def frames(draw):
    h = draw(st.integers(16, 2160))
    w = draw(st.integers(16, 3840))
    if max(h, w) / min(h, w) > 50:
        w = h
    return h, w


@given(FACTORS, frames())
def test_smart_resize_invariants(f, hw):
    h, w = hw
    min_px, max_px = 4 * f * f, 768 * f * f
    rh, rw = smart_resize(h, w, f, min_px, max_px)
    assert rh % f == 0 and rw % f == 0
    assert min_px <= rh * rw <= max_px
    # aspect kept to within one factor step on each side: rh = h·β + dh and rw = w·β + dw with
    # |dh|, |dw| < f, so |rh/rw − h/w| = |dh·w − h·dw| / (rw·w) < f·(h + w) / (rw·w)
    assert abs(rh / rw - h / w) <= f * (h + w) / (rw * w) + 1e-9


def test_smart_resize_matches_qwen_vl_utils():
    from qwen_vl_utils.vision_process import smart_resize as reference

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(x) for x in rng.integers(30, 3000, 2))
        if max(h, w) / min(h, w) > 100:
            continue
        for f in (28, 32):
            kw = {"factor": f, "min_pixels": 4 * f * f, "max_pixels": 768 * f * f}
            assert smart_resize(h, w, **kw) == reference(h, w, **kw)


@given(geometries(), frames())
def test_ladder_is_consistent(geometry, hw):
    base = geometry.base_size(*hw)
    assert geometry.scaled_size(*base, 1.0) == base
    ladder = size_ladder(geometry, *base)
    assert ladder[-1].scale == 1.0 and (ladder[-1].height, ladder[-1].width) == base
    tokens = [s.tokens for s in ladder]
    assert tokens == sorted(set(tokens))
    for step in ladder:
        assert geometry.scaled_size(*base, step.scale) == (step.height, step.width)
        assert step.tokens == geometry.tokens(step.height, step.width)


@settings(max_examples=200, deadline=None)
@given(
    geometries(),
    frames(),
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=40),
    st.floats(0.01, 1.0),
)
def test_fit_budget_contract(geometry, hw, scales, retention):
    base = geometry.base_size(*hw)
    scales = np.array(scales)
    k = len(scales)
    ladder = size_ladder(geometry, *base)
    vanilla = k * ladder[-1].tokens
    cap = int(retention * vanilla)
    if cap < k * ladder[0].tokens:
        with pytest.raises(BudgetError, match="below the minimum"):
            fit_budget(scales, geometry, *base, cap)
        return
    out = fit_budget(scales, geometry, *base, cap)
    sizes = [geometry.scaled_size(*base, s) for s in out]
    spent = sum(geometry.tokens(*hw) for hw in sizes)
    # a hard ceiling
    assert spent <= cap
    # the policy's order of preference is kept
    for i in range(k):
        for j in range(k):
            if scales[i] > scales[j]:
                assert out[i] >= out[j]
    # the budget is used: >= 90 %, or no chunk can climb one rung without breaking ceiling/order
    if spent < 0.9 * cap:
        rung = {(s.height, s.width): n for n, s in enumerate(ladder)}
        levels = np.array([rung[hw] for hw in sizes])
        for i in range(k):
            nxt = levels[i] + 1
            if nxt >= len(ladder):
                continue
            extra = ladder[nxt].tokens - ladder[levels[i]].tokens
            preferred = scales > scales[i]
            blocked = preferred.any() and levels[preferred].min() < nxt
            assert spent + extra > cap or blocked


def test_fit_budget_uses_most_of_a_fine_budget():
    geometry = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=768 * 28 * 28)
    base = geometry.base_size(720, 1280)
    rng = np.random.default_rng(0)
    for retention in (0.1, 0.25, 0.5):
        scales = rng.uniform(0.2, 1.0, 16)
        cap = int(retention * 16 * geometry.tokens(*base))
        out = fit_budget(scales, geometry, *base, cap)
        spent = sum(geometry.tokens(*geometry.scaled_size(*base, s)) for s in out)
        assert 0.9 * cap <= spent <= cap


def test_uniform_scale_halves_the_sides():
    geometry = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=168 * 168)
    assert geometry.base_size(168, 168) == (168, 168)
    assert geometry.scaled_size(168, 168, 0.5) == (84, 84)
    assert geometry.tokens(84, 84) == 9


def test_bad_scale_and_tiny_budget_are_boundary_errors():
    geometry = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=168 * 168)
    with pytest.raises(BudgetError, match="positive"):
        geometry.scaled_size(168, 168, 0.0)
    with pytest.raises(BudgetError, match="below the minimum of 16"):
        fit_budget(np.ones(4), geometry, 168, 168, 10)
