"""Preflight: the preconditions the steps assert, checked on a profile before any step runs.

The schema (:mod:`geowall.config`) checks each key on its own: types, ranges, non-empty
grids, known model names. Some preconditions tie keys together, depend on the models
(their width ``d``, their layer count) or on the library's own rules (the patch size of a
quadratic fit, the fewest layers a Stage 2 law accepts, the ESS threshold of the
convergence checks). They live here, one registered :class:`Check` per precondition,
each naming the key a user changes to satisfy it and the steps whose library calls would
otherwise fail after minutes of work. ``geowall check`` runs every check;
``geowall run`` runs those of the steps it is about to execute, before it writes
anything. A failure raises :class:`PreflightError` (a :class:`~geowall.config.ProfileError`)
whose message names the key and what was expected.

Adding a precondition (e.g. for a new key): write a function ``cfg -> iterable of
(key, message)`` and decorate it with :func:`register`, naming the key, the steps that
need it and the library function whose own check it mirrors (``where``). Checks read
the library's rules from the library where it exposes them (``geometry.PATCH_K``, the
defaults of ``scaling.exponents``); where a rule is inline in a library function
(``law.min_training_layers``, ``law.scopes``) it imports the rule instead of restating it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from geowall.config import ModelSpec, Profile, ProfileError

ALL_STEPS = ("activations", "sae_grid", "geometry", "stage1", "stage2", "transfer", "floor", "walkthrough")


@dataclass(frozen=True)
class Problem:
    key: str  # the dotted profile key to change (e.g. "stage2.draws", "models.2.ks")
    message: str  # what was found and what is expected
    steps: tuple[str, ...]  # the steps that would fail


@dataclass(frozen=True)
class Check:
    key: str  # the key (pattern) the check is about, e.g. "models.<i>.ks"
    steps: tuple[str, ...]  # steps whose library calls assert this precondition
    where: str  # the library function / notebook assertion it mirrors
    fn: Callable[[Profile], Iterable[tuple[str, str]]]
    machine: bool = False  # depends on this machine (device, installed packages), not on the profile alone
    advisory: bool = False  # the steps run, but the design cannot answer a question: warn, don't fail


class DesignWarning(UserWarning):
    """The profile runs, but its design cannot test one of the claims (e.g. too few showcase
    layers to rank floors); ``geowall check`` and ``geowall run`` show it."""


CHECKS: list[Check] = []


class PreflightError(ProfileError):
    """One or more preconditions failed; ``problems`` lists them, the message names each key."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [
            f"{p.key}: {p.message} (needed by step{'s' if len(p.steps) > 1 else ''} {', '.join(p.steps)})"
            for p in problems
        ]
        more = "".join(f"\n  also {line}" for line in lines[1:])
        super().__init__(lines[0] + more)


def register(key: str, *, steps: Iterable[str], where: str, machine: bool = False, advisory: bool = False):
    """Decorator: add ``fn(cfg) -> [(key, message), ...]`` to :data:`CHECKS` (``advisory``:
    a :class:`DesignWarning`, not a failure)."""
    steps = tuple(steps)
    unknown = set(steps) - set(ALL_STEPS)
    if unknown:
        raise ValueError(f"register({key!r}): unknown step(s) {sorted(unknown)}")

    def deco(fn):
        CHECKS.append(Check(key, steps, where, fn, machine, advisory))
        return fn

    return deco


def problems(
    cfg: Profile, steps: Iterable[str] | None = None, *, machine: bool = True, advisory: bool = False
) -> list[Problem]:
    """Every failed precondition of ``steps`` (default: all). ``machine=False`` skips the
    checks that depend on this machine rather than on the profile (``geowall check``
    validates a profile that may be meant for another machine). ``advisory=True`` returns
    the design warnings instead of the preconditions."""
    wanted = set(ALL_STEPS if steps is None else steps)
    out: list[Problem] = []
    for c in CHECKS:
        if not wanted & set(c.steps) or (c.machine and not machine) or c.advisory != advisory:
            continue
        needed = tuple(s for s in c.steps if s in wanted)
        out.extend(Problem(key, msg, needed) for key, msg in c.fn(cfg))
    return out


def check(cfg: Profile, steps: Iterable[str] | None = None, *, machine: bool = True) -> None:
    """Raise :class:`PreflightError` if any precondition of ``steps`` fails; warn
    (:class:`DesignWarning`) for each design warning of ``steps``."""
    import warnings

    found = problems(cfg, steps, machine=machine)
    if found:
        raise PreflightError(found)
    for p in problems(cfg, steps, machine=machine, advisory=True):  # only once the profile is valid
        warnings.warn(f"{p.key}: {p.message}", DesignWarning, stacklevel=2)


# ---------------------------------------------------------------------------- helpers


def _trained(cfg: Profile) -> Iterator[tuple[int, ModelSpec]]:
    return ((i, m) for i, m in enumerate(cfg.models) if m.sae_source == "trained")


def _d(m: ModelSpec) -> int:
    from geowall.sources import model_info

    return model_info(m).d


def _widths(mults: list[float], d: int) -> list[int]:
    from geowall.plan import widths_of

    return widths_of(mults, d)


def _ks_key(cfg: Profile, i: int) -> str:
    return "sae.ks" if cfg.models[i].ks is None else f"models.{i}.ks"


# ---------------------------------------------------------------------------- SAE grid


@register(
    "sae.showcase_width_multiples", steps=("sae_grid",), where="sae.model.TopKConfig / sae.train.grid_pairs: k <= width"
)
def _showcase_widths_above_k(cfg):
    """The schema checks k < the smallest ordinary width; showcase layers use another grid."""
    names = set(cfg.sae.showcase_layers)
    for i, m in _trained(cfg):
        if m.name not in names or not cfg.sae.showcase_layers[m.name] or not cfg.sae.showcase_width_multiples:
            continue
        d, kmax = _d(m), max(cfg.ks_of(m))
        wmin = min(cfg.sae.showcase_width_multiples) * d
        if kmax >= wmin:
            yield (
                "sae.showcase_width_multiples",
                f"smallest showcase width {min(cfg.sae.showcase_width_multiples)} x d={d} = {wmin:g} must exceed "
                f"the largest k={kmax} of model '{m.name}' ({_ks_key(cfg, i)}); expected multiples > {kmax / d:g}",
            )


# ---------------------------------------------------------------------------- geometry


@register(
    "geometry.k_neighbors",
    steps=("geometry",),
    where="geometry.estimators._check_patch_args: a patch needs at least MIN_PATCH_K neighbours (the tangent "
    "scores of real layers take 20 to 30 of them; the mean-curvature fit needs residual degrees of freedom)",
)
def _patch_k_large_enough(cfg):
    from geowall.geometry import MIN_PATCH_K

    g = cfg.geometry
    if g.k_neighbors is not None and g.k_neighbors < MIN_PATCH_K:
        yield (
            "geometry.k_neighbors",
            f"a patch of {g.k_neighbors} neighbours leaves the curvature fit too few points beyond the tangent "
            f"scores; expected >= {MIN_PATCH_K}, or null (automatic: geometry.PATCH_K)",
        )


def geometry_min_points(g) -> int:
    """The fewest points per layer the geometry step can use: every half-sample replicate
    (``geometry.summaries`` keeps half the documents) must hold more points than the patch
    of ``k_neighbors`` (default ``geometry.PATCH_K``) neighbours (``estimators._check_patch_args``;
    ``geometry.sensitivity`` calls it on all points without catching, at up to twice the
    patch size, where it skips settings too large for the points)."""
    from geowall import geometry

    return 2 * ((g.k_neighbors or geometry.PATCH_K) + 1)


@register(
    "geometry.n_points",
    steps=("geometry",),
    where="geometry.estimators._check_patch_args: patch size <= distinct points - 1, in every half-sample "
    "(else NaN curvature, which step 02 asserts against, or an uncaught error in geometry.sensitivity)",
)
def _enough_points(cfg):
    g = cfg.geometry
    need = geometry_min_points(g)
    have = min(g.n_points, cfg.activations.n_train)
    if have < need:
        key = "geometry.n_points" if g.n_points <= cfg.activations.n_train else "activations.n_train"
        how = f"geometry.k_neighbors={g.k_neighbors}" if g.k_neighbors else "geometry.PATCH_K"
        yield (
            key,
            f"{have} points per layer (the smaller of geometry.n_points={g.n_points} and activations.n_train="
            f"{cfg.activations.n_train}) are too few: each half-sample replicate needs more points than the "
            f"patch of {need // 2 - 1} neighbours ({how}); expected >= {need} points, or a smaller "
            f"geometry.k_neighbors",
        )


# ---------------------------------------------------------------------------- Bayesian fits


def _sampling(section: str, spec):
    if spec.chains < 2:
        yield (
            f"{section}.chains",
            f"{spec.chains} chain cannot pass the R-hat check (bayes.check_fit); expected >= 2",
        )
    need = spec.checks.ess_min
    if spec.chains * spec.draws < need:
        draws = math.ceil(need / max(spec.chains, 1))
        yield (
            f"{section}.draws",
            f"{spec.chains} chains x {spec.draws} draws = {spec.chains * spec.draws} samples cannot reach the "
            f"bulk and tail ESS threshold {section}.checks.ess_min={need:g}; expected {section}.draws >= {draws} "
            f"(with {spec.chains} chains; more draws than that in practice) or a lower {section}.checks.ess_min",
        )


@register("stage1.draws", steps=("stage1",), where="bayes.check_fit: >= 2 chains, ESS >= checks.ess_min")
def _stage1_sampling(cfg):
    yield from _sampling("stage1", cfg.stage1)


@register("stage2.draws", steps=("stage2", "transfer"), where="bayes.check_fit: >= 2 chains, ESS >= checks.ess_min")
def _stage2_sampling(cfg):
    yield from _sampling("stage2", cfg.stage2)


@register("sae.width_multiples", steps=("stage1",), where="width exponent alpha = -dlog(L-E)/dlog W: two widths")
def _two_widths(cfg):
    for _i, m in _trained(cfg):
        d = _d(m)
        ws = _widths(cfg.sae.width_multiples, d)
        if len(ws) < 2:
            yield (
                "sae.width_multiples",
                f"model '{m.name}' (d={d}) gets the width grid {ws}: a width exponent needs at least 2 distinct "
                f"widths; expected at least two multiples that differ after rounding to whole latents",
            )


@register(
    "sae.showcase_width_multiples",
    steps=("stage1",),
    where="scaling.FLOOR_GRID_RULE: a floor term only with >= min_widths widths spanning >= min_width_span",
)
def _showcase_grid_spans_floor_rule(cfg):
    from geowall import scaling

    min_widths, min_span = scaling.FLOOR_GRID_RULE["min_widths"], scaling.FLOOR_GRID_RULE["min_width_span"]
    names = set(cfg.sae.showcase_layers)
    for _, m in _trained(cfg):
        if m.name not in names or not cfg.sae.showcase_layers[m.name]:
            continue
        d = _d(m)
        ws = _widths(cfg.sae.showcase_width_multiples, d)
        span = ws[-1] / ws[0] if ws and ws[0] > 0 else 0.0
        if len(ws) < min_widths or span < min_span:
            yield (
                "sae.showcase_width_multiples",
                f"showcase layers of model '{m.name}' (d={d}) get widths {ws} ({len(ws)} widths spanning "
                f"{span:.3g}x): the floor rule needs >= {min_widths} distinct widths spanning >= {min_span:g}x",
            )


def _n_layers(cfg: Profile, name: str) -> int:
    return len(cfg.layers_of(cfg.model(name)))


@register(
    "models",
    steps=("stage2",),
    where="law.scopes: a scope with >= law.SCOPE_MIN_LAYERS layers; law.fit_law: >= law.min_training_layers",
)
def _stage2_layers(cfg):
    from geowall import law

    P = max(map(len, law.DEFAULT_LAW_SETS.values()))
    kinds = law.model_kinds(cfg.models)
    n_layers = {m.name: len(cfg.layers_of(m)) for m in cfg.models}
    fitted = law.scopes(kinds, n_layers)  # as notebook 04
    for scope, models in fitted.items():
        have = sum(n_layers[m] for m in models)
        need = law.min_training_layers(P, len(models))
        if have < need:
            yield (
                "models",
                f"the {scope} models have {have} layers: a Stage 2 law with {P} predictors and "
                f"{len(models)} model intercepts needs >= {need}; expected more layers in "
                f"models.<i>.layers (or 'all') or fewer models",
            )
    if not fitted:
        yield (
            "models",
            f"no scope (real or synthetic models) has >= {law.SCOPE_MIN_LAYERS} layers for "
            f"Stage 2; expected more layers in models.<i>.layers (or 'all')",
        )


@register(
    "sae.showcase_layers",
    steps=("floor",),
    where="verdicts.floor_verdict: ranking floors needs floors.MIN_LAYERS floor-capable layers in a pretrained model",
    advisory=True,
)
def _floors_rankable(cfg):
    from geowall.floors import MIN_LAYERS
    from geowall.law import model_kind

    real = [m for m in cfg.models if model_kind(m.source) == "pretrained"]
    if not real:
        return
    per = {m.name: len(set(cfg.sae.showcase_layers.get(m.name, [])) & set(cfg.layers_of(m))) for m in real}
    if max(per.values()) < MIN_LAYERS:
        got = ", ".join(f"{k}: {v}" for k, v in per.items())
        yield (
            "sae.showcase_layers",
            f"the profile cannot rank floors: showcase layers per pretrained model ({got}), and ranking needs "
            f">= {MIN_LAYERS} identified floors in one model; the floor verdict will read 'not testable with this "
            f"profile'. Expected >= {MIN_LAYERS} showcase layers spread over depth for a pretrained model",
        )


@register("transfer", steps=("transfer",), where="law.run_transfer -> fit_law(models=[A]): enough layers of A")
def _transfer_layers(cfg):
    from geowall import law

    need = law.min_training_layers(len(law.SUMMARIES))
    seen = set()
    for j, (a, b) in enumerate(cfg.transfer):
        for x in (a, b):  # step 05 runs both directions: each model of a pair trains a law
            n = _n_layers(cfg, x)
            if n < need and x not in seen:
                seen.add(x)
                i = [m.name for m in cfg.models].index(x)
                yield (
                    f"transfer.{j}",
                    f"model '{x}' has {n} layers (models.{i}.layers); a law trained on it needs "
                    f">= {need}; expected more layers or another pair",
                )


@register(
    "sae.showcase_layers",
    steps=("sae_grid",),
    where="layers.widths_for: a showcase layer gets its grid only if it is processed",
)
def _showcase_processed(cfg):
    names = [m.name for m in cfg.models]
    for model, layers in cfg.sae.showcase_layers.items():
        if model not in names:
            continue  # the schema names it
        fitted = set(cfg.layers_of(cfg.model(model)))
        out = sorted(set(layers) - fitted)
        if out:
            yield (
                f"sae.showcase_layers.{model}",
                f"{out} not among the layers of model '{model}' (models.{names.index(model)}.layers); "
                f"expected showcase layers that are processed",
            )


# ---------------------------------------------------------------------------- sources and machine


@register("models.<i>.sae_release", steps=("sae_grid",), where="gemma_scope.run_manifest: layers in the release")
def _gemma_scope_layers(cfg):
    for i, m in enumerate(cfg.models):
        if m.sae_source != "gemma-scope":
            continue
        from geowall.sources import gemma_scope

        try:
            man = gemma_scope.manifest((m.sae_release,))
        except ModuleNotFoundError:
            yield (f"models.{i}.sae_source", "gemma-scope needs the sae-lens package; expected it installed")
            continue
        except (ValueError, KeyError, FileNotFoundError) as e:
            yield (f"models.{i}.sae_release", f"{e}; expected a release of the sae-lens registry")
            continue
        missing = sorted(set(cfg.layers_of(m)) - {int(x) for x in man.layer})
        if missing:
            yield (
                f"models.{i}.layers",
                f"layers {missing} have no residual SAEs in release {m.sae_release!r}; "
                f"expected layers among {sorted({int(x) for x in man.layer})}",
            )


@register(
    "models.<i>.source",
    steps=("activations",),
    where="sources.decoders.model_dir: GGUF package installed (hash-checked), gguf reader for the conversion",
    machine=True,
)
def _decoder_sources(cfg):
    from geowall.sources import DECODER_SOURCES

    for i, m in enumerate(cfg.models):
        if m.source not in DECODER_SOURCES:
            continue
        from geowall.sources import decoders

        rel = decoders.release(m.source)
        if (decoders.CACHE / rel.folder / decoders.RECORD).is_file():
            continue  # converted already: neither the package nor gguf is read again
        try:
            decoders.gguf_pieces(rel)
        except decoders.DecoderUnavailable as e:
            yield (f"models.{i}.source", f"{e}")
            continue
        try:
            import gguf  # noqa: F401
        except ImportError:
            yield (
                f"models.{i}.source",
                f"{m.source!r}: dequantising {rel.gguf} needs the gguf package; expected it installed "
                "(pip install gguf)",
            )


@register(
    "sae.cache_budget_gb",
    steps=("sae_grid",),
    where="plan.check_budget / gemma_scope.check_budget: the largest streamed SAE fits the download cache",
)
def _cache_budget(cfg):
    from geowall.diskcache import BudgetError
    from geowall.plan import check_budget

    try:
        check_budget(cfg)
    except BudgetError as e:
        yield ("sae.cache_budget_gb", str(e).removeprefix("sae.cache_budget_gb: "))
    except (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError):
        pass  # an unknown release or a missing sae-lens: reported by the models.<i>.sae_release check


@register("device", steps=("activations", "sae_grid", "geometry"), where="transformer.resolve_device", machine=True)
def _device_available(cfg):
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            yield ("device", f"{cfg.device!r}: CUDA is not available on this machine; expected cpu or auto")
        elif ":" in cfg.device and int(cfg.device.split(":")[1]) >= torch.cuda.device_count():
            yield ("device", f"{cfg.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif cfg.device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            yield ("device", "'mps' is not available on this machine; expected cpu or auto")


def inventory() -> list[dict]:
    """The registered checks as rows (key, steps, where, machine): the README's table."""
    return [{"key": c.key, "steps": ", ".join(c.steps), "where": c.where, "machine": c.machine} for c in CHECKS]
