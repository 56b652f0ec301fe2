"""Parameter profiles: one validated schema for every pipeline step.

A profile is a YAML file under ``params/`` (or any path). It is validated with
pydantic before any work starts: unknown keys, wrong types, out-of-range widths or
sparsities, layer indices outside a model and missing files are rejected with a
:class:`ProfileError` whose message names the key and what was expected.
Command-line overrides (``--set key=value``, dotted keys, YAML values) are applied to
the raw mapping and go through the same validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from geowall.bayes import SamplerSettings

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"


class ProfileError(ValueError):
    """A profile, override or input file is invalid. The message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)  # no inf or nan anywhere


SourceName = Literal[
    "minilm",
    "minilm-random",
    "mpnet",
    "mpnet-random",
    "gemma3",
    "gemma3-random",
    "smollm2",
    "smollm2-random",
    "synthetic",
    "hf",
]


class ModelSpec(_Strict):
    """One network (or synthetic zoo) whose residual stream we study."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="label used in paths and tables")
    source: SourceName
    layers: list[int] | Literal["all"] = "all"
    hf_model: str | None = Field(None, description="hf source: Hugging Face id or local folder")
    zoo: Literal["a", "b"] | None = Field(None, description="synthetic source: which zoo")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sae_source: Literal["trained", "gemma-scope"] = "trained"
    sae_release: str | None = Field(None, description="gemma-scope: sae-lens release name")
    sae_local_dir: Path | None = Field(None, description="gemma-scope: local mirror <release>/<sae_id>/params.npz")
    sae_mirror: Path | None = Field(
        None,
        description="gemma-scope: fetch from this folder (<release>/<sae_id>/params.npz, "
        "e.g. a network mount) through the SAE cache instead of the hub",
    )
    ks: list[PositiveInt] | None = Field(
        None, min_length=1, description="trained SAEs: this model's k grid (default: sae.ks)"
    )
    steps: PositiveInt | None = Field(
        None, description="trained SAEs: this model's training steps (default: sae.steps)"
    )
    lr_scale: PositiveFloat | None = Field(
        None, description="trained SAEs: this model's learning-rate multiplier (default: sae.lr_scale)"
    )

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSpec:
        if self.source == "hf" and not self.hf_model:
            raise ValueError("source 'hf' needs hf_model (a Hugging Face id or a local folder)")
        if self.source == "synthetic" and self.zoo is None:
            raise ValueError("source 'synthetic' needs zoo ('a' or 'b')")
        if self.sae_source == "gemma-scope" and not self.sae_release:
            raise ValueError("sae_source 'gemma-scope' needs sae_release (e.g. gemma-scope-2b-pt-res)")
        if self.sae_local_dir is not None and not Path(self.sae_local_dir).is_dir():
            raise ValueError(f"sae_local_dir: folder not found: {self.sae_local_dir}")
        if self.sae_mirror is not None and not Path(self.sae_mirror).is_dir():
            raise ValueError(f"sae_mirror: folder not found: {self.sae_mirror}")
        if isinstance(self.layers, list):
            if not self.layers:
                raise ValueError("layers must list at least one layer index, or be 'all'")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers has duplicates: {self.layers}")
        return self


class CorpusSpec(_Strict):
    kind: Literal["stdlib", "files", "folder", "hf"] = "stdlib"
    files: list[Path] = Field(default_factory=list, description="kind 'files': UTF-8 text files")
    folder: Path | None = Field(None, description="kind 'folder': every *.txt / *.md file under it (recursively)")
    dataset: str | None = Field(
        None, description="kind 'hf': a Hugging Face dataset id (needs the hub) or local folder"
    )
    dataset_config: str | None = Field(None, description="kind 'hf': the dataset's configuration name")
    split: str = Field("train", description="kind 'hf': the split to read (streamed)")
    text_field: str = Field("text", description="kind 'hf': the column holding the text")
    max_docs: PositiveInt = Field(20000, description="kind 'hf': documents read (before the train/eval split)")
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    min_words: PositiveInt = 8

    @model_validator(mode="after")
    def _files(self) -> CorpusSpec:
        if self.kind == "files" and not self.files:
            raise ValueError("kind 'files' needs at least one path in files")
        if self.kind == "folder":
            from geowall.corpus import folder_files

            if self.folder is None:
                raise ValueError("kind 'folder' needs folder (a directory of .txt / .md files)")
            try:
                folder_files(self.folder)
            except ValueError as e:
                raise ValueError(f"folder: {e}") from None
        if self.kind == "hf" and not self.dataset:
            raise ValueError("kind 'hf' needs dataset (a Hugging Face dataset id or a local dataset folder)")
        from geowall.corpus import read_text_file

        for i, f in enumerate(self.files):
            if not Path(f).is_file():
                raise ValueError(f"files.{i}: corpus file not found: {f} (expected a UTF-8 text file)")
            try:
                read_text_file(f)
            except ValueError as e:
                raise ValueError(f"files.{i}: {e}") from None
        return self


class ActivationsSpec(_Strict):
    n_train: int = Field(ge=2, description="train tokens per layer")
    n_eval: int = Field(ge=2, description="held-out evaluation tokens per layer (fvu needs at least 2)")
    max_seq_len: int = Field(128, ge=8, le=8192)
    batch_size: PositiveInt = 32


class BudgetCheckSpec(_Strict):
    """Is a width exponent a property of the layer or of the training budget? Step 01 retrains
    each pretrained model's showcase layers and ``thin_layers`` of its other layers with every
    step count multiplied by ``factor`` and compares the exponents (geowall.sae.budget_change)."""

    factor: float = Field(2.0, gt=1, le=16, description="step budget multiple of the retrained SAEs")
    thin_layers: int = Field(2, ge=0, description="non-showcase layers per pretrained model, spread over depth")
    max_change: PositiveFloat = Field(0.05, description="criterion: median relative change of the layer exponents")
    min_spearman: float = Field(0.9, ge=-1, le=1, description="criterion: rank agreement of the layer exponents")


class SaeSpec(_Strict):
    width_multiples: list[PositiveFloat] = Field(min_length=1, description="widths as multiples of d")
    ks: list[PositiveInt] = Field(min_length=1)
    showcase_layers: dict[str, list[int]] = Field(default_factory=dict, description="model name -> layers")
    showcase_width_multiples: list[PositiveFloat] = Field(default_factory=list)
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 1024
    lr: PositiveFloat | None = Field(
        None, description="fixed Adam learning rate; None: lr_scale x 2e-4 / sqrt(W / 2^14)"
    )
    steps_width_exponent: float = Field(
        0.0, ge=0, le=1, description="steps at width W: steps x (W/d)^exponent (wider SAEs train longer)"
    )
    lr_scale: PositiveFloat = Field(
        1.0, description="multiplier on Gao et al.'s width-scaled learning rate (short CPU runs like 4)"
    )
    lr_warmup: float = Field(
        0.0, ge=0, lt=1, description="fraction of steps with a linear learning-rate warm-up from 0"
    )
    lr_decay: float = Field(0.0, ge=0, le=1, description="fraction of steps (at the end) with a linear decay to 0")
    bf16: bool = Field(
        False,
        description="train with bfloat16 encoder matmuls (3.5x to 4x a float32 matmul on CPUs with "
        "AVX512-BF16 or AMX and on recent GPUs, emulated and slower elsewhere; held-out fvu within 1% of "
        "float32: tests/benchmarks/bench_sae.py --grid); evaluation stays float32",
    )
    curve_points: int = Field(10, ge=2, le=200, description="held-out fvu measurements per SAE (its learning curve)")
    plateau_tol: PositiveFloat = Field(
        0.02,
        description="plateau criterion: held-out fvu may fall by at most this "
        "fraction over the last plateau_window of training",
    )
    plateau_window: float = Field(0.2, gt=0, lt=1, description="fraction of training the plateau criterion looks at")
    cache_budget_gb: PositiveFloat | None = Field(
        None,
        description="released SAEs: disk cap of the download cache in GB (None: no cap); a run refuses to "
        "start if the largest SAE it streams does not fit",
    )
    keep_downloads: bool = Field(
        False,
        description="released SAEs: keep downloads (evicted only when the budget "
        "needs room) instead of deleting each after evaluation",
    )
    cache_dir: Path | None = Field(
        None,
        description="released SAEs: download cache folder (default <run_dir>/sae_cache; "
        "on a cluster, a machine-local disk)",
    )
    budget_check: BudgetCheckSpec | None = Field(
        None,
        description="retrain some pretrained layers at a multiple of the step budget and compare their "
        "width exponents (step 01's budget_check.parquet); null skips it",
    )
    monotone_slack: NonNegativeFloat | None = Field(
        0.02,
        description="step 01 sanity check: allowed relative fvu increase between neighbouring widths "
        "(real networks); null switches the width checks off",
    )

    @field_validator("width_multiples", "ks", "showcase_width_multiples")
    @classmethod
    def _sorted_unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return sorted(v)


class GeometrySpec(_Strict):
    n_points: int = Field(2000, ge=4, description="points per layer (at most activations.n_train are available)")
    n_boot: int = Field(20, ge=2, description="document-block half-samples, each rerunning every estimator")
    k_neighbors: int | None = Field(
        None, ge=3, description="neighbours per curvature / local-residual patch; None: geometry.PATCH_K (64)"
    )
    n_base: PositiveInt = 200
    tangent_tol: float = Field(
        0.1, gt=0, lt=1, description="local axis is tangent if its variance >= this x the leading"
    )
    near_dup_tol: float = Field(0.1, ge=0, lt=1, description="near-duplicate: r1 < this x median r1")


class Stage1Spec(SamplerSettings):
    forms: list[Literal["additive", "joint"]] = Field(default_factory=lambda: ["additive", "joint"])
    primary_form: Literal["additive", "joint"] = Field("additive", description="form whose exponents feed Stage 2")

    @model_validator(mode="after")
    def _primary_fitted(self) -> Stage1Spec:
        if self.primary_form not in self.forms:
            raise ValueError(f"primary_form {self.primary_form!r} must be one of forms {self.forms}")
        return self


class WalkthroughSpec(_Strict):
    """The walkthrough's training knobs when the pipeline runs it (the notebook's own defaults)."""

    steps: PositiveInt = 600
    n_points: int = Field(8000, ge=500)


class Profile(_Strict):
    """A whole run: which models, how many tokens, which grids, how long to sample."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps|auto)$")
    models: list[ModelSpec] = Field(min_length=1)
    corpus: CorpusSpec = Field(default_factory=CorpusSpec)
    activations: ActivationsSpec
    sae: SaeSpec
    geometry: GeometrySpec = Field(default_factory=GeometrySpec)
    stage1: Stage1Spec = Field(default_factory=Stage1Spec)
    stage2: SamplerSettings = Field(default_factory=SamplerSettings)
    transfer: list[tuple[str, str]] = Field(default_factory=list, description="pairs of model names")
    walkthrough: WalkthroughSpec = Field(default_factory=WalkthroughSpec)

    @model_validator(mode="after")
    def _name_sampler_sections(self) -> Profile:
        """The sampler settings know their profile key, for the advice of a failed check."""
        self.stage1.named("stage1")
        self.stage2.named("stage2")
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Profile:
        from geowall.sources import model_info  # local import: sources import torch lazily

        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        for i, m in enumerate(self.models):
            info = model_info(m)
            if isinstance(m.layers, list):
                bad = [layer for layer in m.layers if not 0 <= layer < info.n_layers]
                if bad:
                    raise ProfileError(
                        f"models.{i}.layers: {bad} outside model '{m.name}' "
                        f"(expected 0..{info.n_layers - 1}, {info.n_layers} residual points)"
                    )
            width_min = min(self.sae.width_multiples) * info.d
            ks = self.ks_of(m)
            if m.sae_source == "trained" and max(ks) >= width_min:
                raise ProfileError(
                    f"{'sae.ks' if m.ks is None else f'models.{i}.ks'}: k={max(ks)} must be < the smallest width "
                    f"({min(self.sae.width_multiples)} x d={info.d} = {int(width_min)}) for model '{m.name}'"
                )
        for model, layers in self.sae.showcase_layers.items():
            if model not in names:
                raise ProfileError(f"sae.showcase_layers: unknown model '{model}' (expected one of {names})")
            spec = self.models[names.index(model)]
            n = model_info(spec).n_layers
            bad = [layer for layer in layers if not 0 <= layer < n]
            if bad:
                raise ProfileError(f"sae.showcase_layers.{model}: {bad} outside 0..{n - 1}")
        if self.sae.showcase_layers and len(self.sae.showcase_width_multiples) < 6:
            raise ProfileError("sae.showcase_width_multiples: showcase layers need at least 6 widths")
        for a, b in self.transfer:
            for x in (a, b):
                if x not in names:
                    raise ProfileError(f"transfer: unknown model '{x}' (expected one of {names})")
        return self

    def showcase(self) -> list[tuple[str, int]]:
        """The showcase layers as ``(model, layer)`` pairs, in profile order (the layers
        with the rich width grid that can identify a floor)."""
        return [(m, layer) for m, layers in self.sae.showcase_layers.items() for layer in layers]

    def layers_of(self, model: ModelSpec) -> list[int]:
        """The layer indices to process for ``model`` (resolving 'all')."""
        from geowall.sources import model_info

        if model.layers == "all":
            return list(range(model_info(model).n_layers))
        return sorted(model.layers)

    def ks_of(self, model: ModelSpec) -> list[int]:
        """The k grid of a model's trained SAEs."""
        return sorted(model.ks) if model.ks else self.sae.ks

    def steps_of(self, model: ModelSpec, width: int, d: int) -> int:
        """Training steps of a model's SAE of ``width`` latents on a d-dimensional layer:
        the model's (else ``sae.steps``) x (width / d) ** ``sae.steps_width_exponent``."""
        steps = model.steps if model.steps is not None else self.sae.steps
        return max(1, round(steps * (width / d) ** self.sae.steps_width_exponent))

    def lr_scale_of(self, model: ModelSpec) -> float:
        """The learning-rate multiplier of a model's trained SAEs."""
        return model.lr_scale if model.lr_scale is not None else self.sae.lr_scale

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in profile {self.name!r}")


# ---------------------------------------------------------------------------- loading


def profile_path(profile: str | Path) -> Path:
    """Resolve a profile name (``smoke``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in {".yaml", ".yml"}:
        if not p.is_file():
            raise ProfileError(f"profile file not found: {p}")
        return p
    cand = PARAMS_DIR / f"{profile}.yaml"
    if not cand.is_file():
        known = sorted(x.stem for x in PARAMS_DIR.glob("*.yaml"))
        raise ProfileError(f"unknown profile {str(profile)!r}: expected one of {known} or a path to a .yaml file")
    return cand


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'sae.ks=[8,16]'`` -> (['sae', 'ks'], [8, 16]); values are parsed as YAML."""
    if "=" not in item:
        raise ProfileError(f"--set {item!r}: expected key=value (e.g. sae.steps=200)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ProfileError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ProfileError(f"--set {key}: value {raw!r} is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str] | dict | None) -> dict:
    """Apply dotted-key overrides to a raw profile mapping (a copy is returned)."""
    import copy

    raw = copy.deepcopy(raw)
    if not overrides:
        return raw
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node: Any = raw
        for j, part in enumerate(parts[:-1]):
            where = ".".join(parts[: j + 1])
            if isinstance(node, list):
                node = _list_item(node, part, where)
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ProfileError(f"--set {'.'.join(parts)}: {where} is not a mapping or list")
        last = parts[-1]
        if isinstance(node, list):
            idx = _list_index(node, last, ".".join(parts))
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ProfileError(f"--set {'.'.join(parts)}: parent is not a mapping or list")
    return raw


def _list_index(node: list, part: str, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ProfileError(f"--set {where}: expected a list index, got {part!r}") from None
    if not 0 <= idx < len(node):
        raise ProfileError(f"--set {where}: index {idx} out of range (list has {len(node)} items)")
    return idx


def _list_item(node: list, part: str, where: str) -> Any:
    return node[_list_index(node, part, where)]


def validate(raw: dict, *, origin: str = "profile") -> Profile:
    """Validate a raw mapping; raise :class:`ProfileError` naming each bad key."""
    if not isinstance(raw, dict):
        raise ProfileError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    _check_text(raw, "", origin)
    try:
        return Profile.model_validate(raw)
    except ValidationError as e:
        raise ProfileError(f"{origin}: invalid parameters\n" + _format_errors(e)) from None


def _check_text(node: Any, where: str, origin: str) -> None:
    """Refuse strings that are not Unicode text (lone surrogates, which YAML's \\u escapes can
    make): the schema's validator cannot even read them. Keys and values, at any depth."""

    def bad(x) -> bool:
        return isinstance(x, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in x)

    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{where}.{k}" if where else str(k)
        if bad(k) or bad(v):
            shown = (k if bad(k) else v).encode("utf-8", "backslashreplace").decode()
            raise ProfileError(
                f"{origin}: invalid parameters\n  {key.encode('utf-8', 'backslashreplace').decode()}: "
                f"not Unicode text ({shown!r} holds a lone surrogate); expected UTF-8 text"
            )
        _check_text(v, key, origin)


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<top>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema; check the spelling)"
        got = err.get("input")
        shown = "" if err["type"] in {"missing", "extra_forbidden"} or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}" if err["loc"] else f"  {msg}{shown}")
    return "\n".join(lines)


def load_profile(profile: str | Path, overrides: list[str] | dict | None = None) -> Profile:
    """Read, override and validate a profile. Nothing else happens before this passes."""
    path = profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({e})") from None
    raw = apply_overrides(raw or {}, overrides)
    return validate(raw, origin=str(path))


def resolve(profile: str, params: dict | None) -> Profile:
    """For notebooks: the injected parameters if the runner gave them, else the named profile."""
    if params:
        return validate(params, origin=f"injected parameters ({profile})")
    return load_profile(profile)
