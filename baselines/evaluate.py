"""Score a baseline on a split through the package's scorer (``dambench evaluate``).

    python -m baselines.evaluate run --model background --dataset era5-sample --out results/bg
    python -m baselines.evaluate run --model threedvar --out results/threedvar
    python -m baselines.evaluate run --checkpoint runs/a/checkpoints/best.pt runs/b/... --out ...
    python -m baselines.evaluate run --checkpoint runs/sda/checkpoints/best.pt --members 8 ...
    python -m baselines.evaluate leaderboard results/*/results.json --out leaderboard.md

``run`` builds the model from the registry (fitting it on the train split when its
``ModelInfo.needs_fit``) or from checkpoints (one per seed), streams its analyses cycle by cycle
into a prediction store (``OUT/predictions/seed<k>.zarr``, with a ``member`` dim for ensembles)
and scores the stores with :func:`dambench.evaluate_predictions`: Table 3 (the ensemble mean
for sampling models), fair CRPS and spread/skill for ensembles, block-bootstrap intervals, a tidy
``scores.parquet``, ``summary.json`` and figures. ``results.json`` adds the model's provenance,
its analysis cost and, for models that log them (SDA, SLAMS: ``model.innovations``), the
normalised innovations ``(member - y) / sigma_o`` per channel and seed
(:func:`innovation_summary`). Nothing here names a model: dispatch is on ``ModelInfo``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from baselines.interface import DABatch
from baselines.registry import create_model, model_info
from dambench import schema
from dambench.exceptions import DambenchInputError

DEFAULT_MEMBERS = 8
"""Members drawn from an ensemble model when ``--members`` is not given (the paper's 8)."""


def build_models(args: argparse.Namespace, ds: xr.Dataset, stats: xr.Dataset) -> list:
    """One model per seed: from checkpoints, or the registered ``--model`` (fitted when needed)."""
    from dambench.load import open_dataset

    channels = [str(c) for c in ds[schema.CHANNEL].values]
    if args.checkpoint:
        from baselines.checkpoint import model_from_checkpoint

        return [model_from_checkpoint(path, channels=channels) for path in args.checkpoint]
    info = model_info(args.model)
    if info.trainable:
        raise DambenchInputError(
            f"{args.model} is trainable: evaluate a checkpoint of it (--checkpoint), written by "
            f"`python -m baselines.train --config baselines/configs/{args.model}.yaml`."
        )
    model = create_model(args.model, in_chans=len(channels))
    if info.needs_fit:
        model.fit(open_dataset(args.dataset, split="train"), stats)
    return [model]


def _members(model, requested: int | None) -> int | None:
    if model.info.output == "ensemble":
        return requested or DEFAULT_MEMBERS
    if requested is not None and model.info.output != "gaussian":
        raise DambenchInputError(
            f"{model.model_name} is {model.info.output}: it has no members to draw; leave out "
            "--members."
        )
    return requested


def _cycle_seed(sample_seed: int, cycle: int) -> int:
    """Seed of one cycle's members: a function of (sample_seed, cycle index) only."""
    return int(np.random.SeedSequence([sample_seed, cycle]).generate_state(1)[0])


def _denormalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(..., C, H, W) normalised -> physical units."""
    return values * std[:, None, None] + mean[:, None, None]


def withhold_modalities(batch: DABatch, names: list[str], keep: list[str] | None) -> DABatch:
    """``batch`` with every modality not in ``keep`` marked absent (values 0, presence 0), so a
    multi-modal model is scored without it; ``keep=None`` keeps all."""
    if keep is None or batch.modalities is None or not names:
        return batch
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise DambenchInputError(f"--modalities {unknown} are not among the loader's {names}.")
    kept = torch.tensor([name in keep for name in names], dtype=batch.modalities.dtype)
    cells = kept[None, :, None, None]
    mask = getattr(batch, "modality_mask", None)
    return replace(
        batch,
        modalities=batch.modalities * cells,
        modality_present=None if batch.modality_present is None else batch.modality_present * kept,
        modality_mask=None if mask is None else mask * cells,
    )


def without_target(batch: DABatch) -> DABatch:
    """The batch a model's analysis step is given: everything but the target, so no model can
    read the truth it is scored against."""
    return replace(batch, target=None)


INNOVATION_DEFINITION = (
    "(member - y) / sigma_o at the observed points, per channel over every cycle and member: "
    "rms (about 1 or below when the sampler samples the posterior), beyond_5 (share of values "
    "beyond 5 in magnitude; 0 when it works), points (observed points)"
)


def innovation_summary(records: list[dict], channels: list[str]) -> dict[str, dict]:
    """Per-channel normalised innovations over cycles from the per-batch records a model keeps
    in ``model.innovations`` (:func:`baselines.layers.diffusion.normalised_innovations`:
    ``rms``, ``beyond_5`` and ``count`` lists in channel order).

    Each batch weighs by its observed points (every batch has the same members): ``rms`` is
    the root of the point-weighted mean square, ``beyond_5`` the point-weighted share;
    ``points`` the total. A channel never observed gets ``None`` for both.

    Raises
    ------
    DambenchInputError
        A record whose lists do not have one value per channel.
    """
    if not records:
        return {}
    arrays = {}
    for key in ("rms", "beyond_5", "count"):
        values = np.array([r[key] for r in records], dtype=np.float64)  # (batches, C)
        if values.shape[1:] != (len(channels),):
            raise DambenchInputError(
                f"model.innovations[{key!r}] has {values.shape[1:]} values per batch; expected "
                f"one per channel ({len(channels)}: {', '.join(channels)})."
            )
        arrays[key] = values
    points = arrays["count"].sum(axis=0)
    weights = arrays["count"]
    square = np.where(weights > 0, arrays["rms"] ** 2 * weights, 0.0).sum(axis=0)
    beyond = np.where(weights > 0, arrays["beyond_5"] * weights, 0.0).sum(axis=0)
    out = {}
    for c, channel in enumerate(channels):
        seen = points[c] > 0
        out[channel] = {
            "rms": float(np.sqrt(square[c] / points[c])) if seen else None,
            "beyond_5": float(beyond[c] / points[c]) if seen else None,
            "points": int(points[c]),
        }
    return out


def predict_to_store(
    model,
    ds,
    stats,
    path: Path,
    *,
    members,
    sample_seed,
    batch_size,
    attrs,
    modalities=None,
    keep=None,
    innovations: list | None = None,
):
    """Stream ``model``'s analyses of every cycle of ``ds`` to a prediction store.

    The model's ``analyse`` owns its grad mode (nothing here wraps it in ``no_grad``); each
    batch's members are drawn from a seed of ``(sample_seed, first cycle index)``. ``modalities``
    selects the loader's modalities (as in training), ``keep`` withholds the others
    (:func:`withhold_modalities`). When ``innovations`` is a list, the ``model.innovations``
    record each analysis leaves (a new one per call; models without it leave none) is appended
    to it. Returns the wall seconds per cycle.
    """
    from dambench.batching import make_dataloader
    from dambench.scoring import PredictionWriter

    channels = [str(c) for c in ds[schema.CHANNEL].values]
    mean = stats["mean"].sel({schema.CHANNEL: channels}).values.astype(np.float64)
    std = stats["std"].sel({schema.CHANNEL: channels}).values.astype(np.float64)
    times = ds[schema.TIME].values
    writer = PredictionWriter.like(ds, path, members=members, attrs=attrs, overwrite=True)
    info = getattr(model, "info", None)
    loader = make_dataloader(
        ds, batch_size=batch_size, train=False, stats=stats, model_info=info, modalities=modalities
    )
    names = list(getattr(loader.dataset, "modality_names", []))
    model.eval()
    started, cycle = time.perf_counter(), 0
    for raw in loader:
        batch = without_target(withhold_modalities(DABatch.from_loader(raw), names, keep))
        before = getattr(model, "innovations", None)
        analysis = model.analyse(batch, members=members, seed=_cycle_seed(sample_seed, cycle))
        after = getattr(model, "innovations", None)
        if innovations is not None and after and after is not before:
            innovations.append(after)
        values = analysis.members if members else analysis.mean  # (B, [N,] C, H, W)
        values = _denormalise(values.detach().double().cpu().numpy(), mean, std)
        for row in values:
            writer.write(times[cycle], row)
            cycle += 1
    return (time.perf_counter() - started) / max(cycle, 1)


def _provenance(model, checkpoint: str | None) -> dict:
    meta = {"model_name": model.model_name, "model_info": model.info.to_dict()}
    if checkpoint:
        from baselines.checkpoint import checkpoint_metadata

        meta["checkpoint"] = checkpoint_metadata(checkpoint)
        config = meta["checkpoint"].pop("config", None)
        meta["config_digest"] = config_digest(config)
        meta["recipe"] = recipe(config)
        recorded = meta["checkpoint"].get("modalities") or {}
        meta["task_modalities"] = recorded.get("names")  # the loader's modalities in training
    if hasattr(model, "sampling_cost"):
        meta["sampling"] = model.sampling_cost()
    if hasattr(model, "analysis_settings"):
        meta["analysis_settings"] = model.analysis_settings()
    return meta


RUN_SPECIFIC_KEYS = (("train", "seed"), ("train", "out"), ("model", "init_from"))
"""Config keys in which seeds of one method may differ: the training seed, the run folder and
the checkpoint a seed was fine-tuned from (its host's run of the same seed)."""


def recipe(config: dict | None) -> dict | None:
    """A training config without its :data:`RUN_SPECIFIC_KEYS`: what seeds of one method share."""
    if config is None:
        return None
    out = json.loads(json.dumps(config, default=str))
    for section, key in RUN_SPECIFIC_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def config_digest(config: dict | None) -> str | None:
    """sha256 of a config's :func:`recipe` (canonical JSON): equal for seeds of one method."""
    if config is None:
        return None
    text = json.dumps(recipe(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_seeds_of_one_method(metas: list[dict]) -> None:
    """Refuse checkpoints that are not seeds of one method: every one must have the same model
    name and config digest (all but :data:`RUN_SPECIFIC_KEYS`), and their training seeds, which
    label the prediction stores and the rows, must differ."""
    from baselines.checkpoint import config_differences

    first = metas[0]
    for meta in metas[1:]:
        if meta["model"] != first["model"]:
            raise DambenchInputError(
                f"--checkpoint {first['checkpoint']} holds {first['model']} and "
                f"{meta['checkpoint']} holds {meta['model']}: seeds of one method must be one "
                "model; evaluate each model in its own run."
            )
        if config_digest(meta["config"]) != config_digest(first["config"]):
            changed = config_differences(recipe(first["config"]), recipe(meta["config"]))
            raise DambenchInputError(
                f"--checkpoint {first['checkpoint']} and {meta['checkpoint']} were trained with "
                f"other configs ({'; '.join(changed)}): seeds of one method differ only in "
                "train.seed; evaluate them as separate methods."
            )
    seeds = [meta["seed"] for meta in metas]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        paths = [m["checkpoint"] for m in metas if m["seed"] in repeated]
        raise DambenchInputError(
            f"--checkpoint {paths} were all trained with train.seed={repeated[0]}: each seed "
            "must be a different training run (train.seed labels the rows and the prediction "
            "stores); retrain with another train.seed."
        )


def _kept_modalities(text: str | None) -> list[str] | None:
    """``--modalities``: None (all), ``"none"`` (withhold all) or ``"a,b"``. A group name keeps
    every variable of its group (``precip`` keeps ``precip`` and its gauge-count channel
    ``precip_gauges``); a variable name keeps that variable only."""
    from dambench.modalities import names_for_groups

    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    kept: list[str] = []
    for token in (n.strip() for n in text.split(",") if n.strip()):
        group = names_for_groups([token]) if token in schema.MODALITY_GROUPS else []
        kept += [name for name in group or [token] if name not in kept]
    return kept


def modality_labels(ds: xr.Dataset, keep: list[str] | None) -> dict:
    """What a multi-modal result used: the modality variables kept and withheld, and each
    group's recorded source."""
    from dambench.modalities import stored_modalities

    recorded = ds.attrs.get("modalities") or "{}"
    sources = json.loads(recorded) if isinstance(recorded, str) else dict(recorded)
    available = stored_modalities(ds)
    used = available if keep is None else [name for name in available if name in keep]
    withheld = [name for name in available if name not in used]
    return {"used": used, "withheld": withheld, "sources": sources}


def _predict_all(args, ds, stats, models, out: Path, name: str) -> dict:
    """Stream each seed's analyses to ``OUT/predictions/seed<k>.zarr``; ``innovations`` maps
    each seed that logged them to its :func:`innovation_summary`."""
    stores, seeds, provenance, seconds, innovations = [], [], [], [], {}
    channels = [str(c) for c in ds[schema.CHANNEL].values]
    keep = _kept_modalities(args.modalities)
    for k, model in enumerate(models):
        meta = _provenance(model, args.checkpoint[k] if args.checkpoint else None)
        seed = meta.get("checkpoint", {}).get("seed", k)
        members = _members(model, args.members)
        store = out / "predictions" / f"seed{seed}.zarr"
        attrs = {"model": name, "seed": seed, "members": members or 0, **meta}
        options = {
            "members": members,
            "sample_seed": args.sample_seed,
            "attrs": attrs,
            "batch_size": args.batch_size,
            "modalities": meta.get("task_modalities"),
            "keep": keep,
        }
        records: list[dict] = []
        seconds.append(predict_to_store(model, ds, stats, store, innovations=records, **options))
        if records:
            innovations[str(seed)] = innovation_summary(records, channels)
        stores.append(store)
        seeds.append(seed)
        provenance.append(meta)
    return {
        "stores": stores,
        "seeds": seeds,
        "models": provenance,
        "seconds": seconds,
        "innovations": innovations,
    }


def _warn_other_dataset(models: list[dict], summary: dict) -> None:
    """Warn when a checkpoint was trained on another build than the one scored (both digests
    are manifest digests, so they differ only if the data differ)."""
    scored = summary["dataset"]
    for meta in models:
        trained = meta.get("checkpoint") or {}
        kinds = (trained.get("dataset_digest_kind"), scored["digest_kind"])
        if kinds == ("manifest", "manifest") and trained["dataset_digest"] != scored["digest"]:
            warnings.warn(
                f"{trained['checkpoint']} was trained on {trained['dataset']} with digest "
                f"{trained['dataset_digest'][:12]}, but {scored['name']} scored here has digest "
                f"{scored['digest'][:12]}: another build (its normalisation statistics and "
                "observations may differ).",
                UserWarning,
                stacklevel=3,
            )


def run(args: argparse.Namespace) -> dict:
    """Evaluate a reference model or one checkpoint per seed; write results and figures."""
    from dambench.load import open_dataset, stats_from_attrs
    from dambench.scoring import evaluate_predictions

    if args.checkpoint:
        from baselines.checkpoint import checkpoint_metadata

        check_seeds_of_one_method([checkpoint_metadata(p) for p in args.checkpoint])
    torch.manual_seed(args.sample_seed)
    ds = open_dataset(args.dataset, split=args.split)
    stats = stats_from_attrs(ds)
    models = build_models(args, ds, stats)
    name = args.name or args.model or Path(args.checkpoint[0]).parent.parent.name
    out = Path(args.out)
    predicted = _predict_all(args, ds, stats, models, out, name)
    report = evaluate_predictions(
        predicted["stores"],
        args.dataset,
        split=args.split,
        out=out,
        name=name,
        seeds=predicted["seeds"],
        regions=args.region,
        by=args.by,
        n_resamples=args.bootstrap,
        figure_channel=args.channel,
        overwrite=getattr(args, "overwrite", False),
    )
    results = {
        **report.summary,
        "models": predicted["models"],
        "sample_seed": args.sample_seed,
        "analysis_seconds_per_cycle": float(np.mean(predicted["seconds"])),
    }
    if predicted["innovations"]:
        results["innovations"] = {
            "definition": INNOVATION_DEFINITION,
            "seeds": predicted["innovations"],
        }
    _warn_other_dataset(predicted["models"], report.summary)
    if models[0].info.uses_modalities:
        results["modalities"] = modality_labels(ds, _kept_modalities(args.modalities))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def _model_name(result: dict) -> str:
    models = result.get("models") or [{}]
    return str(models[0].get("model_name", result["model"]))


HOST_FREE_KEYS = (
    ("model", "name"),
    ("model", "adapter"),
    ("task", "modalities"),
    ("train", "freeze"),
)
"""Config keys in which a Multi-X run may differ from its X run when both follow one recipe:
the model's name, the adapter's settings, the modalities it reads and what it freezes."""


def _host_recipe(meta: dict) -> dict:
    """A seed's recipe (:func:`recipe`) without :data:`HOST_FREE_KEYS`."""
    out = json.loads(json.dumps(meta.get("recipe") or {}))
    for section, key in HOST_FREE_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def host_relation(multi: dict, host: dict) -> str:
    """How a Multi-X result was built on an X result, or :class:`DambenchInputError` when it was
    not: Imp is only defined against the host a Multi-X was built on.

    Every seed of Multi-X must be either fine-tuned from one of the host result's checkpoints
    (``model.init_from``), or trained with the host's recipe and seed (the same config but for
    :data:`HOST_FREE_KEYS`: e.g. Multi-SDA, whose score network takes the background as
    context, against an SDA trained the same way, never against zero-shot SDA). Returns
    ``"fine-tuned"`` or ``"same recipe"``."""
    from baselines.checkpoint import config_differences

    expected = _model_name(multi).removeprefix("multi_")
    if _model_name(host) != expected:
        raise DambenchInputError(
            f"{multi['model']} is built on {expected}, not on {host['model']} "
            f"({_model_name(host)}): Imp compares a Multi-X with its own host only."
        )
    seeds = [m.get("checkpoint") or {} for m in multi.get("models", [])]
    hosts = {(m.get("checkpoint") or {}).get("seed"): m for m in host.get("models", [])}
    paths = {
        str(Path(c["checkpoint"]).resolve())
        for c in (m.get("checkpoint") or {} for m in host.get("models", []))
        if c.get("checkpoint")
    }
    starts = [(c.get("init_from") or {}).get("path") for c in seeds]
    if seeds and all(s and str(Path(s).resolve()) in paths for s in starts):
        return "fine-tuned"
    problems = []
    for meta, ckpt in zip(multi.get("models", []), seeds, strict=True):
        twin = hosts.get(ckpt.get("seed"))
        if twin is None or not meta.get("recipe") or not twin.get("recipe"):
            problems.append(f"seed {ckpt.get('seed')}: no host run of that seed with a recipe")
            continue
        changed = config_differences(_host_recipe(twin), _host_recipe(meta))
        if changed:
            problems.append(f"seed {ckpt.get('seed')}: {'; '.join(changed)}")
    if problems or not seeds:
        raise DambenchInputError(
            f"{multi['model']} was neither fine-tuned from {host['model']}'s checkpoints nor "
            f"trained with its recipe and seeds ({'; '.join(problems) or 'no checkpoints'}): "
            "Imp across different hosts is refused; score the host this Multi-X was built on."
        )
    return "same recipe"


def improvement(multi: dict, host: dict, *, seed: int = 0) -> dict:
    """Table 4's Imp of a Multi-X result over the X result it was built on
    (:func:`host_relation`): :func:`dambench.scoring.comparison.relative_improvement`, ``100 (1
    - MSE_multi / MSE_host)`` % on the channels both scored, with its paired block-bootstrap
    interval over the same cycles. Results of other dataset digests, splits, cycles or hosts
    are refused. Returns its ``value``, ``ci``, ``n``, ``block_length``, ``channels`` and
    ``notes``, and ``host`` (how Multi-X was built on X)."""
    from dambench.scoring.comparison import relative_improvement
    from dambench.scoring.identity import check_same_data

    check_same_data(multi, host)
    relation = host_relation(multi, host)
    imp = relative_improvement(multi, host, seed=seed)
    return {**imp, "host": relation}


def table4(results: list[dict]) -> str | None:
    """The paper's Table 4 layout for every Multi-X result whose X result is also given: the
    Table 3 columns of Multi-X and Imp (relative MSE improvement over the X it was built on,
    paired interval), with the modalities each used and their sources; a Multi-X whose given X
    is another host gets no Imp and a note saying why; ``None`` when no pair is given."""
    from dambench.scoring.report import TABLE3

    hosts = {_model_name(r): r for r in results if not _model_name(r).startswith("multi_")}
    rows, notes = {}, []
    for multi in results:
        host = hosts.get(_model_name(multi).removeprefix("multi_"))
        if not _model_name(multi).startswith("multi_") or host is None:
            continue
        row = dict(multi["table3"][multi["model"]])
        try:
            row["Imp (%)"] = improvement(multi, host)
        except DambenchInputError as refused:
            rows[multi["model"]] = row
            notes.append(f"- {multi['model']}: no Imp. {refused}")
            continue
        rows[multi["model"]] = row
        notes.append(
            f"- {multi['model']} over {host['model']}: modalities {_used_text(multi)}; "
            f"{training_note(multi, host)}; Imp on {_channels_text(row['Imp (%)'])}"
        )
    if not rows:
        return None
    columns = [title for title, *_ in TABLE3] + ["Imp (%)"]
    return _format_rows(rows, columns) + "\n\n" + "\n".join(notes)


def _channels_text(imp: dict) -> str:
    """``channels u10, t2m (NOTE; NOTE)``: the channels an Imp was computed on and what was
    left out."""
    text = f"channels {', '.join(imp['channels'])}"
    return text + (f" ({'; '.join(imp['notes'])})" if imp["notes"] else "")


def _used_text(result: dict) -> str:
    """``precip, precip_gauges (precip: SOURCE)``: the modality variables a result used and the
    recorded source of each one's group."""
    used = result.get("modalities", {})
    names = used.get("used", [])
    info = schema.MODALITIES
    groups = dict.fromkeys(info[n].group if n in info else n for n in names)
    sources = "; ".join(f"{g}: {used.get('sources', {}).get(g, '?')}" for g in groups)
    return f"{', '.join(names)} ({sources})" if names else "none"


def training_note(multi: dict, host: dict) -> str:
    """How a Multi-X result was trained relative to its X result: fine-tuned from that very
    checkpoint (Imp is the adapter's), from another one, or from scratch (Imp then also holds
    the difference between two training runs)."""
    start = ((multi.get("models") or [{}])[0].get("checkpoint") or {}).get("init_from")
    if not start:
        return (
            "trained from scratch (host and adapter together): Imp also holds the difference "
            "between two training runs; `evaluate.py run --modalities none` separates them"
        )
    paths = [(m.get("checkpoint") or {}).get("checkpoint") for m in host.get("models", [])]
    same = Path(start["path"]).resolve() in {Path(p).resolve() for p in paths if p}
    which = "this host's checkpoint" if same else "another checkpoint"
    return f"fine-tuned from {which} {start['path']} (epoch {start['epoch']})"


def _ensemble_rows(results: list[dict]) -> str | None:
    from dambench.scoring.report import ENSEMBLE_TABLE

    rows = {r["model"]: r["ensemble"][r["model"]] for r in results if r.get("ensemble")}
    return _format_rows(rows, [t for t, *_ in ENSEMBLE_TABLE]) if rows else None


def _leaderboard_rows(results: list[dict]) -> dict[str, dict]:
    """Each method once: the results' own rows, then the reference rows they carry (the
    dataset's Background) unless a result is that same method (identical per-cycle values)."""
    rows = {r["model"]: r["table3"][r["model"]] for r in results}
    own = [r["per_cycle"][r["model"]] for r in results]
    for result in results:
        for method, row in result["table3"].items():
            values = result["per_cycle"].get(method, {})
            if method not in rows and not any(_same_values(values, o) for o in own):
                rows[method] = row
    return rows


def _same_values(a: dict, b: dict) -> bool:
    """Two methods' per-cycle Table 3 columns agree to float32 round-off (the same analyses)."""
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and np.allclose(a[k], b[k], rtol=1e-5, atol=0) for k in a
    )


def leaderboard(paths: list[str], out: str | None = None) -> str:
    """One Table 3 from several ``results.json`` files (each method once), with paired
    block-bootstrap comparisons of every row against the best on MSE; the ensemble table when
    ensembles are given; Table 4 when a Multi-X result and its X result are both given. Results
    scored on different dataset digests, splits or cycles are refused."""
    from dambench.scoring import compare
    from dambench.scoring.report import TABLE3

    results = [json.loads(Path(p).read_text()) for p in paths]
    text = _format_rows(_leaderboard_rows(results), [title for title, *_ in TABLE3])
    scored = [r for r in results if "MSE(1e-2)" in r["table3"][r["model"]]]
    if len(scored) > 1:
        best = min(scored, key=lambda r: r["table3"][r["model"]]["MSE(1e-2)"]["value"])
        notes = [compare(r, best) for r in scored if r is not best]
        text += "\n\n" + "\n".join(f"- {c['verdict']}{_interval_text(c)}" for c in notes)
    for title, section in (("Ensembles", _ensemble_rows(results)), ("Table 4", table4(results))):
        if section:
            text += f"\n\n{title}:\n\n{section}"
    if out:
        Path(out).write_text(text + "\n")
    return text


def _interval_text(comparison: dict) -> str:
    return (
        f" (difference {comparison['difference']:.4g}, paired 95 % interval "
        f"[{comparison['ci_low']:.4g}, {comparison['ci_high']:.4g}])"
    )


def _format_rows(rows: dict[str, dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| Method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for method, row in rows.items():
        cells = []
        for column in columns:
            entry = row.get(column)
            if entry is None:
                cells.append("-")
                continue
            text = f"{entry['value']:.4g}"
            if entry.get("std_over_seeds") is not None:
                text += f" ± {entry['std_over_seeds']:.2g}"
            cells.append(f"{text} [{entry['ci'][0]:.4g}, {entry['ci'][1]:.4g}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="evaluate one method on a split")
    which = run_p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model",
        help="a registered model that is not trained (background, "
        "threedvar): see baselines.registry.list_models()",
    )
    which.add_argument("--checkpoint", nargs="+", help="one checkpoint per seed")
    run_p.add_argument("--dataset", default="era5-sample", help="name, build folder or URL")
    run_p.add_argument("--split", default="test", choices=list(schema.SPLITS))
    run_p.add_argument("--out", required=True, help="folder for tables, results, figures")
    run_p.add_argument("--name", help="row name (default: model or run folder)")
    run_p.add_argument(
        "--overwrite", action="store_true", help="replace earlier results in --out"
    )
    run_p.add_argument(
        "--members",
        type=int,
        help=f"ensemble size (ensemble models: "
        f"{DEFAULT_MEMBERS}; gaussian models: draws from the predictive)",
    )
    run_p.add_argument("--sample-seed", type=int, default=0, help="seed of the members' draws")
    run_p.add_argument("--batch-size", type=int, default=1)
    run_p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    run_p.add_argument("--channel", default="t2m", help="channel of the figures")
    run_p.add_argument("--region", nargs="+", default=["global"], help="regions to score")
    run_p.add_argument("--by", choices=["month", "season"], help="also score per period")
    run_p.add_argument(
        "--modalities",
        help="none or NAME[,NAME]: withhold the other modalities (marked absent) from a "
        "multi-modal model, for an ablation; a group name (precip, olr) keeps its gauge-count "
        "channel too",
    )
    board = sub.add_parser("leaderboard", help="collect results.json files into one table")
    board.add_argument("results", nargs="+", help="results.json files of evaluate.py run")
    board.add_argument("--out", help="write the table to this Markdown file too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        results = run(args)
        print(_format_rows(results["table3"], list(next(iter(results["table3"].values())))))
    else:
        print(leaderboard(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
