"""Tests of geowall.sae: sparse vs dense paths, training, evaluation, sae-lens interop, resume."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from quantiser import lloyd_fvu, manifold

from geowall import sae as S
from geowall.sae import grid as sae_grid
from geowall.sae import sparse_ops as K


def sparse_features(n: int, d: int, n_features: int = 48, active: int = 3, seed: int = 0) -> np.ndarray:
    """Tokens that are sparse non-negative sums of ``n_features`` random unit directions."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(n_features, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    code = np.zeros((n, n_features))
    for i in range(n):
        code[i, rng.choice(n_features, size=active, replace=False)] = rng.uniform(0.5, 2.0, size=active)
    x = code @ D + 0.01 * rng.normal(size=(n, d)) + 3.0
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = sparse_features(2400, 16)
    return x[:2000], x[2000:]


@pytest.fixture(scope="module")
def grid(data) -> list[S.TrainedSAE]:
    train, _ = data
    return S.train_grid(train, [8, 96], [4], steps=150, seed=3, batch_size=256, lr=1e-2, progress=False)


# ------------------------------------------------------------- sparse == dense


def _forward_and_grads(sae: S.TopKSAE, x: torch.Tensor, dead: torch.Tensor | None):
    sae.zero_grad(set_to_none=True)
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize(
    "B,d,W,k,n_dead,dtype",
    [
        (32, 8, 24, 3, 0, torch.float64),
        (64, 16, 48, 5, 20, torch.float64),
        (50, 12, 40, 4, 2, torch.float64),  # fewer dead latents than k_aux
        (128, 32, 256, 8, 100, torch.float32),
    ],
)
def test_sparse_path_matches_dense_reference(monkeypatch, B, d, W, k, n_dead, dtype):
    gen = torch.Generator().manual_seed(B + W)
    sae = S.TopKSAE(S.TopKConfig(d_in=d, width=W, k=k, k_aux=6), dtype=dtype, generator=gen)
    with torch.no_grad():
        sae.b_enc.normal_(generator=gen)
        sae.b_dec.normal_(generator=gen)
    x = torch.randn(B, d, generator=gen, dtype=dtype)
    dead = None
    if n_dead:
        dead = torch.zeros(W, dtype=torch.bool)
        dead[torch.randperm(W, generator=gen)[:n_dead]] = True
    monkeypatch.setenv(S.DENSE_ENV, "0")
    fast, g_fast = _forward_and_grads(sae, x, dead)
    monkeypatch.setenv(S.DENSE_ENV, "1")
    ref, g_ref = _forward_and_grads(sae, x, dead)
    for name in ("sae_out", "fvu", "auxk_loss", "loss"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name))
    if n_dead:
        assert float(fast.auxk_loss.detach()) > 0
    order_f, order_r = fast.latent_indices.argsort(1), ref.latent_indices.argsort(1)
    torch.testing.assert_close(fast.latent_indices.gather(1, order_f), ref.latent_indices.gather(1, order_r))
    torch.testing.assert_close(fast.latent_acts.gather(1, order_f), ref.latent_acts.gather(1, order_r))
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], msg=f"gradient of {name}")


@pytest.mark.parametrize("B,W,d,k", [(7, 10, 5, 3), (256, 512, 64, 16)])
def test_sparse_decode_matches_dense(B, W, d, k):
    gen = torch.Generator().manual_seed(W)
    W_dec = torch.randn(W, d, generator=gen, dtype=torch.float64, requires_grad=True)
    acts = torch.rand(B, k, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(W, generator=gen)[:k] for _ in range(B)])
    g = torch.randn(B, d, generator=gen, dtype=torch.float64)
    outs = []
    for fn in (K.sparse_decode, K.dense_decode):
        y = fn(acts, idx, W_dec)
        ga, gw = torch.autograd.grad(y, (acts, W_dec), g)
        outs.append((y, ga, gw))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_scatter_rows_matches_index_add():
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 30, (40, 5), generator=gen)
    w = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    src = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    want = torch.zeros(30, 7, dtype=torch.float64).index_add_(
        0, idx.reshape(-1), (w[..., None] * src[:, None, :]).reshape(-1, 7)
    )
    torch.testing.assert_close(K.scatter_rows(idx, w, src, 30), want)


# ---------------------------------------------------------------- training


def test_training_lowers_fvu_and_wider_is_better(data, grid):
    _, held_out = data
    narrow, wide = grid
    untrained = S.TopKSAE(S.TopKConfig(d_in=16, width=96, k=4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        untrained.b_dec.copy_(torch.from_numpy(data[0].mean(0)))
    fvu0 = S.evaluate(untrained, held_out)["fvu"]
    m_narrow, m_wide = S.evaluate(narrow, held_out), S.evaluate(wide, held_out)
    assert wide.fvu_history[-1] < 0.5 * wide.fvu_history[0]
    assert m_wide["fvu"] < 0.5 * fvu0
    assert m_wide["fvu"] < 0.8 * m_narrow["fvu"]
    assert 0 < m_wide["fvu"] <= 1 and 0 < m_narrow["fvu"] <= 1


def test_measured_l0_equals_k(data, grid):
    # l0 counts latents that are really nonzero; after the ReLU a TopK SAE can fire
    # fewer than k on a token only when fewer than k pre-activations are positive,
    # which a trained SAE of reasonable width does not do.
    narrow, wide = grid
    assert S.evaluate(wide, data[1])["l0"] == wide.k
    assert wide.k - 0.05 <= S.evaluate(narrow, data[1])["l0"] <= narrow.k


def test_train_grid_order_and_seeds(grid):
    assert [(t.width, t.k) for t in grid] == [(8, 4), (96, 4)]
    assert [t.seed for t in grid] == [S.derive_seed(3, 8, 4), S.derive_seed(3, 96, 4)]
    assert grid[0].train_tokens == 150 * 256
    for t in grid:
        torch.testing.assert_close(t.sae.W_dec.norm(dim=1), torch.ones(t.width))


def test_deterministic_on_cpu(data):
    runs = [S.train_sae(data[0], 32, 3, steps=20, seed=11, batch_size=128, progress=False) for _ in range(2)]
    other = S.train_sae(data[0], 32, 3, steps=20, seed=12, batch_size=128, progress=False)
    for name, p in runs[0].sae.state_dict().items():
        assert torch.equal(p, runs[1].sae.state_dict()[name]), name
    assert not torch.equal(runs[0].sae.W_dec, other.sae.W_dec)


def test_config_object_and_keyword_overrides_train_the_same_sae(data):
    cfg = S.TrainConfig(steps=20, batch_size=128)
    by_object = S.train_sae(data[0], 32, 3, cfg, seed=11, progress=False)
    by_keywords = S.train_sae(data[0], 32, 3, steps=20, batch_size=128, seed=11, progress=False)
    overridden = S.train_sae(data[0], 32, 3, cfg, seed=11, progress=False, steps=5)
    for name, p in by_object.sae.state_dict().items():
        assert torch.equal(p, by_keywords.sae.state_dict()[name]), name
    assert (by_object.steps, overridden.steps) == (20, 5)
    assert S.TrainConfig(epochs=2.0, batch_size=100).total_steps(250) == 5  # ceil(2 * 250 / 100)
    with pytest.raises(TypeError, match=r"unknown training setting\(s\) \['stepz'\]"):
        S.train_sae(data[0], 32, 3, stepz=20, progress=False)


def test_bad_inputs_raise_clear_errors(data):
    with pytest.raises(ValueError, match="k must not exceed width"):
        S.train_grid(data[0], [4], [8], steps=1, seed=0, progress=False)
    bad = data[0].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        S.train_sae(bad, 8, 2, steps=1, progress=False)
    with pytest.raises(ValueError, match="exactly one of steps"):
        S.train_sae(data[0], 8, 2, progress=False)
    sae = S.TopKSAE(S.TopKConfig(d_in=16, width=8, k=2))
    with pytest.raises(ValueError, match="d_in=16"):
        S.evaluate(sae, np.zeros((10, 5), np.float32))


# -------------------------------------------------------------- evaluation


def _identity_sae(d: int = 2) -> S.TopKSAE:
    sae = S.TopKSAE(S.TopKConfig(d_in=d, width=d, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_fvu_against_hand_computed_value(offset):
    # k=1 identity SAE keeps the largest coordinate: errors 0, 1, 0, 1 -> sse = 2;
    # mean (1, 1.5), sum of squared deviations 2.25 + 1.25 + 3.25 + 0.25 = 7.
    x = np.array([[1, 0], [2, 1], [0, 3], [1, 2]], dtype=np.float64) + offset
    sae = _identity_sae()
    with torch.no_grad():
        sae.b_dec.fill_(offset)
    m = S.evaluate(sae, x.astype(np.float32), batch_size=3)  # batches of 3 and 1
    assert m["fvu"] == pytest.approx(2 / 7, rel=1e-6)
    assert m["mse"] == pytest.approx(2 / 8, rel=1e-6)
    assert m["l0"] == 1 and m["dead_frac"] == 0 and m["n_tokens"] == 4


def test_dead_frac_on_constructed_case():
    # latents 0..3 read coordinates 0..3; latents 4..7 can never win the top-1.
    sae = S.TopKSAE(S.TopKConfig(d_in=4, width=8, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(4), -torch.ones(4, 4)]))
        sae.b_enc.copy_(torch.tensor([0, 0, 0, 0, -100, -100, -100, -100.0]))
        sae.b_dec.zero_()
    rng = np.random.default_rng(0)
    x = np.zeros((50, 4), np.float32)
    x[np.arange(50), rng.integers(0, 2, 50)] = rng.uniform(1, 2, 50)  # only coords 0 and 1
    m = S.evaluate(sae, x, batch_size=7)
    assert m["dead_frac"] == pytest.approx(6 / 8)
    assert m["l0"] == 1.0


# ------------------------------------------------------------ sae-lens interop


def test_save_load_roundtrip_via_sae_lens(tmp_path, data, grid):
    import sae_lens

    trained = grid[1]
    folder = S.save_sae(trained, tmp_path / "w96_k4", metadata={"model_name": "toy"})
    S.save_sae(trained, folder, metadata={"model_name": "toy"})  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w96_k4"]
    loaded = sae_lens.SAE.load_from_disk(str(folder))
    assert isinstance(loaded, sae_lens.TopKSAE) and loaded.cfg.k == 4
    x = torch.from_numpy(data[1][:200])
    with torch.no_grad():
        ours = trained.sae.decode(*trained.sae.encode(x)[:2])
        theirs = loaded.decode(loaded.encode(x))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    m_ours, m_theirs = S.evaluate(trained, data[1]), S.evaluate(loaded, data[1])
    for key in m_ours:
        assert m_theirs[key] == pytest.approx(m_ours[key], rel=1e-5, abs=1e-7)
    back = S.load_sae(folder)
    for name, p in trained.sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], p)


# --------------------------------------------------------------- run_grid


def _run(tmp, data, **kw):
    return S.run_grid(
        data[0],
        data[1],
        model="toy",
        layer=2,
        widths=[8, 16],
        ks=[2, 4],
        steps=8,
        seed=5,
        sae_dir=tmp / "saes",
        metrics_path=tmp / "sae_metrics.parquet",
        batch_size=256,
        progress=False,
        **kw,
    )


def test_run_grid_resumes_to_the_same_table(tmp_path, data, monkeypatch, caplog):
    full = _run(tmp_path / "a", data)
    assert list(full.columns) == [*S.METRIC_COLUMNS, "plateau_change", "plateaued"]
    assert list(zip(full.width, full.k)) == [(8, 2), (8, 4), (16, 2), (16, 4)]
    assert (full.l0 <= full.k).all() and (full.train_tokens == 8 * 256).all()
    assert (tmp_path / "a/saes/toy/layer_02/w16_k4/cfg.json").is_file()

    real_evaluate, calls = sae_grid.evaluate, []

    def dying_evaluate(*args, **kwargs):  # the third SAE "crashes" before its row lands
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(sae_grid, "evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", data)
    monkeypatch.setattr(sae_grid, "evaluate", real_evaluate)
    assert len(pd.read_parquet(tmp_path / "b/sae_metrics.parquet")) == 2
    with caplog.at_level(logging.INFO, logger="geowall.sae"):
        resumed = _run(tmp_path / "b", data)
    assert "2 of 4 SAEs already in" in caplog.text
    pd.testing.assert_frame_equal(resumed, full)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b/sae_metrics.parquet"), full)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="geowall.sae"):
        again = _run(tmp_path / "b", data)
    assert "4 of 4 SAEs already in" in caplog.text
    pd.testing.assert_frame_equal(again, full)


def test_width_trend_on_a_constructed_table():
    rows = [("m", 0, 4, w, f) for w, f in [(10, 0.4), (20, 0.2), (40, 0.1)]]  # fvu = 4 / W: slope -1
    rows += [("m", 1, 4, w, f) for w, f in [(10, 0.4), (20, 0.5), (40, 0.3)]]  # one step up by 25%
    rows += [("m", 2, 4, 10, 0.4)]  # a single width: no trend
    t = S.width_trend(pd.DataFrame(rows, columns=["model", "layer", "k", "width", "fvu"]))
    assert list(t.layer) == [0, 1]
    a, b = t.iloc[0], t.iloc[1]
    assert a.slope == pytest.approx(-1) and a.max_step_increase == pytest.approx(-0.5)
    assert a.end_change == pytest.approx(-0.75)
    assert b.max_step_increase == pytest.approx(0.25) and b.end_change == pytest.approx(-0.25) and b.n_widths == 3


def test_check_width_trend_real_strict_synthetic_typical():
    def group(model, layer, fvus):
        return [(model, layer, 4, w, f) for w, f in zip((10, 20, 40, 80), fvus)]

    def trend(*groups):
        rows = [r for g in groups for r in g]
        return S.width_trend(pd.DataFrame(rows, columns=["model", "layer", "k", "width", "fvu"]))

    good = group("net", 0, [0.4, 0.3, 0.25, 0.2])
    wobbly = group("net", 1, [0.4, 0.3, 0.36, 0.2])  # +20% step
    synth_ok = group("zoo", 0, [0.04, 0.03, 0.02, 0.01]) + group("zoo", 1, [0.02, 0.007, 0.03, 0.01])
    synth_flat = group("zoo", 0, [0.01, 0.02, 0.03, 0.04]) + group("zoo", 1, [0.02, 0.007, 0.03, 0.04])
    out = S.check_width_trend(trend(good, synth_ok), slack=0.15, synthetic=["zoo"])
    assert list(zip(out.model, out.layer)) == [("zoo", 1)]  # reported, not fatal
    assert S.check_width_trend(trend(good, wobbly), slack=0.25).empty
    with pytest.raises(ValueError, match="beyond the 15% slack"):
        S.check_width_trend(trend(good, wobbly), slack=0.15)
    with pytest.raises(ValueError, match="not better on the typical synthetic layer"):
        S.check_width_trend(trend(good, synth_flat), slack=0.15, synthetic=["zoo"])
    with pytest.raises(ValueError, match="beyond"):  # the zoo's leniency is for synthetic models only
        S.check_width_trend(trend(good, synth_ok), slack=0.15)


def test_safetensors_for_the_wrong_width(tmp_path):
    x = torch.randn(256, 8)
    trained = S.train_sae(x, 16, 2, steps=2, seed=0, batch_size=64)
    S.save_sae(trained, tmp_path / "w16", metadata={})
    other = S.train_sae(x, 32, 2, steps=2, seed=0, batch_size=64)
    S.save_sae(other, tmp_path / "w32", metadata={})
    # weights of the width-32 SAE under the width-16 SAE's cfg.json
    weights = "sae_weights.safetensors"
    (tmp_path / "w16" / weights).write_bytes((tmp_path / "w32" / weights).read_bytes())
    wrong = r"sae_weights.safetensors: key 'W_enc' has shape \(8, 32\), expected \(8, 16\)"
    with pytest.raises(ValueError, match=wrong):
        S.load_sae(tmp_path / "w16")


# ----------------------------------------------------------- the grouped grid trainer


def _group_from_trainer(tr, shapes_trainers, steps):
    """A GroupTrainer started from the very same SAEs, scale and data as ``TopKTrainer``s."""
    from geowall.sae.group import GroupTrainer

    x = tr.x_all * tr.scale
    inits = [(t.sae.W_dec.detach().clone(), t.sae.W_enc.detach().clone()) for t in shapes_trainers]
    return GroupTrainer(
        x,
        [(t.sae.width, t.sae.k) for t in shapes_trainers],
        inits,
        [t.lr for t in shapes_trainers],
        tr.sae.b_dec.detach().clone(),
        steps=steps,
        batch_size=x.shape[0],
        generator=torch.Generator().manual_seed(0),
        dead_tokens=tr.dead_tokens,
    )


@pytest.mark.parametrize(
    "dead_tokens,aux_dense", [(10**9, 8), (0, 8), (0, 0)]
)  # without AuxK; with AuxK on every latent, as dense matmuls and as gathers
def test_group_step_equals_autograd_trainer(dead_tokens, aux_dense, monkeypatch):
    """Hand-written gradients and the stacked Adam of the grid trainer take the same step as
    the autograd trainer (itself checked against the dense reference above), per SAE."""
    from geowall.sae import TopKTrainer
    from geowall.sae import group as group_mod

    monkeypatch.setattr(group_mod, "AUX_DENSE_FACTOR", aux_dense)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 12, generator=g) @ torch.randn(12, 12, generator=g) + 0.3
    shapes = [(16, 2), (16, 4), (40, 3)]
    trs = [
        TopKTrainer(x, w, k, steps=3, seed=i, batch_size=96, dead_tokens=dead_tokens, lr=1e-2 * (i + 1))
        for i, (w, k) in enumerate(shapes)
    ]
    group = _group_from_trainer(trs[0], trs, 3)
    for _ in range(3):
        for t in trs:
            t.step()
        group.step()
    for s, t in enumerate(trs):
        sl = group.sae_slice(s)
        for name in ("W_enc", "W_dec", "b_enc"):
            torch.testing.assert_close(
                getattr(group.state, name)[sl], getattr(t.sae, name).detach(), atol=2e-5, rtol=1e-4
            )
        torch.testing.assert_close(group.state.b_dec[s], t.sae.b_dec.detach(), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(group.fvus[:, s], t.fvus, atol=1e-5, rtol=1e-5)
        assert group.n_dead[:, s].tolist() == t.n_dead.tolist()
    if dead_tokens == 0:
        assert group.n_dead[1:, 2].min() > 0  # AuxK was exercised (the widest SAE has dead latents)


def test_lr_schedule_and_plateau_change():
    from geowall.sae.group import plateau_change
    from geowall.sae.train import lr_factor

    f = [lr_factor(i, 100, 0.1, 0.2) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0 and f[80] == 1.0 and f[99] == pytest.approx(0.05)
    assert all(lr_factor(i, 50, 0.0, 0.0) == 1.0 for i in range(50))
    steps = list(range(10, 110, 10))
    flat = [1.0, 0.6, 0.5, 0.45, 0.42, 0.41, 0.405, 0.401, 0.4, 0.4]
    assert plateau_change(steps, flat) == pytest.approx((0.401 - 0.4) / 0.4)  # last fifth: steps 80..100
    falling = [1.0 / s for s in steps]
    assert plateau_change(steps, falling) == pytest.approx((1 / 80 - 1 / 100) / (1 / 100))
    assert np.isnan(plateau_change([10], [0.5]))


def test_train_group_matches_layout_and_learns(tmp_path):
    """train_group: SAEs in sae-lens-compatible form acting on raw inputs, learning curves
    that fall, an fvu like the one-at-a-time trainer's, and the same init as train_sae."""
    from geowall.sae import evaluate, train_sae
    from geowall.sae.group import train_group

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(24, 16, generator=g)
    codes = torch.relu(torch.randn(1200, 24, generator=g) - 1.0)
    x = 5.0 * (codes @ basis) + 2.0
    tr, ev = x[:1000], x[1000:]
    shapes = [(32, 4), (48, 4)]
    saes = train_group(
        tr, shapes, steps=60, batch_size=200, seed=1, eval_acts=ev, curve_points=3, lr_scale=4, progress=False
    )
    assert [(s.width, s.k) for s in saes] == shapes
    for s, (w, _k) in zip(saes, shapes):
        assert s.curve_steps == [20, 40, 60] and len(s.curve_fvu) == 3
        assert s.curve_fvu[-1] < s.curve_fvu[0]
        fvu_group = evaluate(s, ev)["fvu"]
        assert abs(s.curve_fvu[-1] - fvu_group) < 1e-6  # the curve's last point is the held-out fvu
        torch.testing.assert_close(s.sae.W_dec.norm(dim=1), torch.ones(w))
    one = train_sae(tr, 48, 4, steps=60, batch_size=200, seed=saes[1].seed, lr_scale=4, progress=False)
    assert fvu_group == pytest.approx(evaluate(one, ev)["fvu"], rel=0.25)  # same recipe, other batch order


def test_bf16_encoder_rounds_the_preactivations_and_trains_as_well():
    """``bf16``: the grouped trainer's encoder runs in bfloat16 (its pre-activations carry
    bfloat16 rounding, ~2^-9 relative, not float32's), and training reaches the float32
    trainer's held-out fvu within 2% on the same batches."""
    from geowall.sae import evaluate
    from geowall.sae.group import train_group

    g = torch.Generator().manual_seed(5)
    basis = torch.randn(64, 32, generator=g)
    codes = torch.relu(torch.randn(3000, 64, generator=g) - 1.2)
    x = codes @ basis + 0.5
    tr, ev = x[:2500], x[2500:]
    shapes = [(64, 4), (128, 8)]
    kw = dict(steps=150, batch_size=250, seed=2, lr_scale=4, progress=False)
    f32 = train_group(tr, shapes, **kw)
    b16 = train_group(tr, shapes, bf16=True, eval_acts=ev, curve_points=3, **kw)
    for a, b in zip(f32, b16):
        assert not torch.equal(a.sae.W_enc, b.sae.W_enc)  # the flag changes the arithmetic
        fa, fb = evaluate(a, ev)["fvu"], evaluate(b, ev)["fvu"]
        assert fa < 0.8 and abs(fb - fa) / fa < 0.02, (fa, fb)
        # the learning curve is measured with the bf16 encoder too: close to, not equal to, float32
        assert b.curve_fvu[-1] != fb and abs(b.curve_fvu[-1] - fb) / fb < 0.01

    from geowall.sae.group import GroupTrainer

    gt = GroupTrainer(
        tr[:250],
        [(64, 4)],
        [(torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=1),) * 2],
        [1e-3],
        tr.mean(0),
        steps=1,
        batch_size=250,
        generator=torch.Generator().manual_seed(0),
        dead_tokens=10**9,
    )
    exact = gt.pre_acts(tr[:250])
    rounded = gt.pre_acts(tr[:250], bf16=True)
    assert rounded.dtype == torch.bfloat16
    rel = ((rounded.float() - exact).abs() / exact.abs().clamp_min(1e-3)).median()
    assert 1e-4 < rel < 2e-2


# ---------------------------------------------------------------- k = 1: the quantiser limit


@pytest.mark.parametrize("kind,dim", [("sphere", 2), ("sphere", 4), ("torus", 2)])
def test_k1_sae_reaches_the_zador_exponent_and_the_lloyd_error(kind, dim):
    """With k = 1 a TopK SAE is a gain-shape quantiser: its error falls as W^(-2/d) (Zador) on a
    d-dimensional manifold. Data-seeded (gain-shape k-means++, tied encoder), the trainer reaches
    that exponent within 15% over a 16x width range and Lloyd's error within 1.3x at every width.
    (Tori above 2 dimensions and spheres above 6 are not in the asymptotic regime at widths a
    test can afford: Lloyd itself reads 0.40 on the 4-torus at W 16..256.)"""
    X, Xe = manifold(kind, dim, 16000, 0), manifold(kind, dim, 6000, 1)
    widths = [16, 32, 64, 128, 256]
    saes = S.train_group(
        torch.from_numpy(X), [(w, 1) for w in widths], seed=0, steps=1000, batch_size=1024,
        init="kmeans++", lr_scale=0.1, progress=False,
    )  # fmt: skip
    fvu = np.array([S.evaluate(s, torch.from_numpy(Xe))["fvu"] for s in saes])
    lloyd = np.array([lloyd_fvu(X, Xe, w) for w in widths])
    alpha = -np.polyfit(np.log(widths), np.log(fvu), 1)[0]
    assert abs(alpha - 2 / dim) <= 0.15 * 2 / dim, (alpha, fvu)
    assert (fvu <= 1.3 * lloyd).all(), fvu / lloyd


# ---------------------------------------------------------------- the budget check


def _power_law_grid(alphas: dict[int, float], *, scale: float = 1.0, widths=(64, 256, 1024), ks=(8, 16)):
    """A metrics table whose fvu is exactly scale * 0.8 * (W / 64) ** -alpha per layer."""
    return pd.DataFrame(
        [
            {"model": "m", "layer": layer, "width": w, "k": k, "fvu": scale * 0.8 * (w / 64) ** -a, "plateaued": True}
            for layer, a in alphas.items()
            for w in widths
            for k in ks
        ]
    )


def test_budget_change_recovers_planted_exponent_changes():
    base = {0: 0.2, 1: 0.3, 2: 0.4, 3: 0.25}
    # a 3% steeper exponent at every layer passes; 20% does not; a reordering does not
    small = S.budget_change(_power_law_grid(base), _power_law_grid({i: a * 1.03 for i, a in base.items()}))
    assert np.allclose(small.alpha_base, [base[i] for i in small.layer])
    assert np.allclose(small.rel_change, 0.03)
    v = S.budget_summary(small)
    assert v["passes"] and v["spearman"] == pytest.approx(1.0) and v["median_change"] == pytest.approx(0.03)
    big = S.budget_summary(
        S.budget_change(_power_law_grid(base), _power_law_grid({i: a * 1.2 for i, a in base.items()}))
    )
    assert not big["passes"] and big["median_change"] == pytest.approx(0.2) and big["spearman"] == pytest.approx(1)
    shuffled = {0: 0.4, 1: 0.3, 2: 0.2, 3: 0.25}  # same values, median change 0, order reversed
    flip = S.budget_summary(S.budget_change(_power_law_grid(base), _power_law_grid(shuffled)))
    assert not flip["passes"] and flip["spearman"] < 0
    # null: a uniformly lower error (a longer budget that helps every width alike) moves no exponent
    null = S.budget_change(_power_law_grid(base), _power_law_grid(base, scale=0.9))
    assert np.allclose(null.rel_change, 0, atol=1e-9) and np.allclose(null.fvu_ratio, 0.9)
    assert S.budget_summary(null)["passes"]
    # groups present at only one budget are left out
    part = S.budget_change(_power_law_grid(base), _power_law_grid({0: 0.2}))
    assert set(part.layer) == {0}


def test_budget_check_retrains_at_twice_the_steps_and_resumes(build_synthetic_profile, tmp_path, monkeypatch):
    """The check retrains the chosen layers with doubled steps in their own folder (the main
    grid untouched), writes budget_check.parquet, and a rerun trains nothing."""
    from geowall import executors, law, layers
    from geowall.config import load_profile

    monkeypatch.setattr(law, "model_kind", lambda source: "pretrained")  # the zoo stands in for a real model
    path = build_synthetic_profile(
        "budget", "a", [0, 2, 4, 6], sae={"steps": 6, "width_multiples": [0.5, 2], "budget_check": {"thin_layers": 2}}
    )
    cfg = load_profile(path)
    assert layers.budget_layers(cfg) == [("synth-a", 2), ("synth-a", 4)]
    ex = executors.LocalExecutor()
    layers.harvest_models(cfg, tmp_path, None, executor=ex)
    metrics = layers.sae_grid(cfg, tmp_path, progress=False, executor=ex)
    main = layers.sae_work_dir(cfg, tmp_path) / "metrics.parquet"
    before = main.read_bytes()
    table, verdict = layers.budget_check(cfg, tmp_path, metrics, progress=False, executor=ex)
    assert main.read_bytes() == before
    assert set(zip(table.model, table.layer)) == {("synth-a", 2), ("synth-a", 4)}
    assert (table.steps_base == 6).all() and (table.steps_long == 12).all()
    long = S.read_metrics(layers.sae_work_dir(layers.longer_budget(cfg, 2), tmp_path) / "metrics.parquet")
    assert set(long.train_tokens) == {12 * 64} and set(metrics.train_tokens) == {6 * 64}
    assert verdict["n_layers"] == 2 and np.isnan(verdict["spearman"])  # fewer than 3 layers: no rank test
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "budget_check.parquet"), table)
    calls = []
    monkeypatch.setattr(sae_grid, "train_group", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(sae_grid, "train_sae", lambda *a, **k: calls.append(1))
    again, _ = layers.budget_check(cfg, tmp_path, metrics, progress=False, executor=ex)
    assert not calls
    pd.testing.assert_frame_equal(again, table)
