"""Profile validation: every bad input is rejected before work, naming the key."""

import pytest

from geowall import config
from geowall.config import ProfileError, load_profile


@pytest.mark.parametrize("name", ["smoke", "default", "full", "gemma-2", "decoders"])
def test_shipped_profiles_validate(name):
    cfg = load_profile(name)
    assert cfg.name == name == config.profile_path(name).stem and cfg.description
    names = [m.name for m in cfg.models]
    assert names and len(set(names)) == len(names)
    # what the runner injects into a notebook validates back to the same profile
    assert config.validate(cfg.model_dump(mode="json")) == cfg
    # transfer pairs and showcase layers refer to models of the profile
    assert all(a in names and b in names and a != b for a, b in cfg.transfer)
    assert set(cfg.sae.showcase_layers) <= set(names)
    if name != "gemma-2":  # layer counts of the offline models (Gemma's needs its config in the HF cache)
        for m in cfg.models:
            layers = cfg.layers_of(m)
            assert layers == sorted(set(layers)) and layers, m.name
            assert set(cfg.sae.showcase_layers.get(m.name, [])) <= set(layers), m.name
            assert min(cfg.ks_of(m)) >= 1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("foo=1", "foo: unknown key"),
        ("sae.stepz=3", "sae.stepz: unknown key"),
        ("sae.steps=abc", "sae.steps: Input should be a valid integer"),
        ("sae.width_multiples=[-2, 1]", "sae.width_multiples.0: Input should be greater than 0"),
        ("sae.ks=[0]", "sae.ks.0: Input should be greater than 0"),
        ("sae.ks=[400]", "sae.ks: k=400 must be < the smallest width"),
        ("models.0.layers=[7]", "models.0.layers: [7] outside model 'minilm' (expected 0..6"),
        ("models.2.layers=[-1]", "models.2.layers: [-1] outside model 'synth-a'"),
        ("corpus.kind=files", "corpus: kind 'files' needs at least one path"),
        ("corpus.files=[/no/such/file.txt]", "corpus: files.0: corpus file not found: /no/such/file.txt"),
        ("activations.n_train=-5", "activations.n_train: Input should be greater than or equal to 2"),
        ("device=tpu", "device: String should match pattern"),
        ("transfer=[[minilm, nope]]", "transfer: unknown model 'nope'"),
        ("sae.showcase_layers={minilm: [99]}", "sae.showcase_layers.minilm: [99] outside"),
        # preconditions of the steps that the schema now carries (issue 15)
        ("sae.ks=[]", "sae.ks: List should have at least 1 item"),
        ("sae.width_multiples=[]", "sae.width_multiples: List should have at least 1 item"),
        ("models.2.ks=[]", "models.2.ks: List should have at least 1 item"),
        ("models=[]", "models: List should have at least 1 item"),
        ("geometry.n_boot=1", "geometry.n_boot: Input should be greater than or equal to 2"),
        ("geometry.n_points=3", "geometry.n_points: Input should be greater than or equal to 4"),
        ("activations.n_eval=1", "activations.n_eval: Input should be greater than or equal to 2"),
        # found by the property test (tests/test_preflight.py): YAML escapes can make lone surrogates
        ('transfer=[[synth-a, "\\udc54"]]', "transfer.0.1: not Unicode text"),
        ('sae.showcase_layers={"\\udc54": [1]}', "sae.showcase_layers.\\udc54: not Unicode text"),
        (
            "sae.width_multiples=[.inf]",
            "sae.width_multiples.0: Input should be a finite number",
        ),  # was an OverflowError
        ('stage1.checks.ess_min="1e999"', "stage1.checks.ess_min: Input should be a finite number"),
        ("stage2.target_accept=.nan", "stage2.target_accept: Input should be a finite number"),
    ],
)
def test_bad_override_is_rejected_with_the_key(override, needle):
    with pytest.raises(ProfileError) as e:
        load_profile("smoke", [override])
    assert needle in str(e.value)


def test_missing_corpus_file_is_named(tmp_path):
    missing = tmp_path / "absent.txt"
    with pytest.raises(ProfileError, match=f"corpus file not found: {missing}"):
        load_profile("smoke", ["corpus.kind=files", f"corpus.files=[{missing}]"])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(
        ProfileError,
        match=r"unknown profile 'nope': expected one of \['decoders', 'default', 'full', 'gemma-2', 'smoke'\]",
    ):
        load_profile("nope")


@pytest.mark.parametrize(
    "bad, needle", [("sae.steps", "expected key=value"), ("models.9.layers=[1]", "index 9 out of range")]
)
def test_malformed_overrides(bad, needle):
    with pytest.raises(ProfileError, match=needle):
        load_profile("smoke", [bad])


def test_overrides_apply_with_yaml_values():
    cfg = load_profile("smoke", ["sae.steps=7", "models.0.layers=[1, 3]", "geometry.n_boot=3"])
    assert cfg.sae.steps == 7 and cfg.models[0].layers == [1, 3] and cfg.geometry.n_boot == 3
    assert cfg.layers_of(cfg.models[2]) == list(range(8))  # synth-a: all 8 zoo layers


def test_hf_layer_count_read_offline_for_gemma():
    cfg = load_profile("gemma-2")
    assert [len(cfg.layers_of(m)) for m in cfg.models] == [26, 42]
    with pytest.raises(ProfileError, match="outside model 'gemma-2-2b' \\(expected 0..25"):
        load_profile("gemma-2", ["models.0.layers=[26]"])


def test_yaml_file_path_profiles(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text((config.PARAMS_DIR / "smoke.yaml").read_text().replace("name: smoke", "name: mine"))
    assert load_profile(p).name == "mine"
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(tmp_path / "bad.yaml")


def test_per_model_steps_and_lr_scale_reach_the_trainer(build_synthetic_profile, tmp_path, monkeypatch):
    """A model's own ``steps`` and ``lr_scale`` override the ``sae`` section's for that model
    only, in the trainer (the metrics' train_tokens) and in the plan."""
    from geowall import executors, layers, sae
    from geowall.plan import build

    path = build_synthetic_profile("permodel", "a", [0], sae={"steps": 5, "lr_scale": 2})
    base = load_profile(path)
    both = base.model_dump(mode="json")
    both["models"].append({**both["models"][0], "name": "synth-a2", "steps": 7, "lr_scale": 3.0})
    cfg = load_profile(path, {"models": both["models"]})
    a, a2 = cfg.models
    assert (cfg.steps_of(a, 10, 10), cfg.lr_scale_of(a)) == (5, 2)
    assert (cfg.steps_of(a2, 10, 10), cfg.lr_scale_of(a2)) == (7, 3)
    seen = {}
    real = sae.run_grid

    def spy(train, evl, train_cfg, *, model, **kw):
        seen[model] = (train_cfg.steps, train_cfg.lr_scale)
        return real(train, evl, train_cfg, model=model, **kw)

    monkeypatch.setattr(sae, "run_grid", spy)
    layers.harvest_models(cfg, tmp_path, None, executor=executors.LocalExecutor())
    table = layers.sae_grid(cfg, tmp_path, progress=False, executor=executors.LocalExecutor())
    assert seen == {"synth-a": (5, 2), "synth-a2": (7, 3)}
    tokens = table.groupby("model").train_tokens.unique()
    assert tokens["synth-a"].tolist() == [5 * 64] and tokens["synth-a2"].tolist() == [7 * 64]
    p = build(cfg)
    sae_flops = {t.model: t.flops for t in p.tasks if t.task == "sae-train"}
    assert sae_flops["synth-a2"] > sae_flops["synth-a"]
