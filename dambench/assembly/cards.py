"""Dataset cards: the ``README.md`` of a built dataset folder.

A card is the Markdown template ``dataset_cards/NAME.md`` (one source of truth, in the repository
root; wheels ship it as the package data ``dambench.dataset_cards``) with ``{{ token }}``
placeholders, filled from the build, under a YAML front matter that the Hugging Face Hub and
``datasets`` read:

- ``configs``: a ``default`` config whose ``data_files`` map each split to
  ``data/{split}-*.parquet``, so ``load_dataset(repo_or_folder, split=...)`` finds the Parquet
  shards and ignores the Zarr store, ``stats.json`` and ``manifest.json``; and, when the folder
  has one, a small ``preview`` config (``preview/{split}-*.parquet``: a few scalars per cycle and
  channel) that the Hub's dataset viewer can page through, unlike the 24 MB array rows;
- ``dataset_info``: per config, each split's ``num_examples`` (rows, from the Parquet footers) and
  ``num_bytes`` (the bytes of its Parquet files), and the config's ``download_size``. A plain
  non-streaming ``datasets.load_dataset`` compares the rows it prepared with ``num_examples`` and
  refuses a split with a Parquet file missing or a stray one added
  (``NonMatchingSplitsSizesError``); it does not compare ``num_bytes`` and checks no content
  (see the card's "How to load" for which path checks what);
- ``license``, ``pretty_name``, ``task_categories``, ``tags`` and ``size_categories``.

Figures are never typed in a template: the builder passes them in ``context`` (see
:data:`CARD_TOKENS`) and :func:`render_card` derives the rest from the context and the folder
(see :data:`DERIVED_TOKENS`). A dataset whose name has no template of its own (a user's config)
gets the generic template ``dataset_cards/_custom.md``, filled from its config
(:func:`config_context`). The YAML is written here, not with PyYAML (not a core dependency):
strings are emitted as JSON strings, which YAML reads unchanged.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from dambench import schema
from dambench.assembly.yaml_text import front_matter
from dambench.exceptions import DambenchInputError

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "dataset_cards"
"""``dataset_cards/`` of a source checkout (editable installs and tests)."""
TEMPLATE_PACKAGE = "dambench.dataset_cards"
"""Where a wheel ships the same templates (``[tool.setuptools.package-dir]`` mapping)."""
GENERIC_TEMPLATE = "_custom"
"""The template of datasets without their own (no dataset name starts with ``_``)."""

TOKEN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SPLIT = re.compile(r"^\w+(\.\w+)*$")

SPLIT_ORDER = ("train", "validation", "test")
DEFAULT_LICENSE = "cc-by-4.0"
TASK_CATEGORIES = ("time-series-forecasting",)
TAGS = (
    "weather",
    "climate",
    "atmosphere",
    "data-assimilation",
    "era5",
    "benchmark",
    "xarray",
    "zarr",
)

BUILDER_TOKENS = MappingProxyType(
    {
        "name": "dataset name, e.g. era5-sample (also the Hub repo dambench/NAME and NAME.zarr)",
        "title": "human title of the dataset (also the card's pretty_name)",
        "dambench_version": "version of dambench that built the folder",
        "channels": "comma-separated channel names in stored order",
        "n_channels": "number of channels C",
        "n_cycles": "number of cycles (rows) over all splits",
        "n_cycles_train": "cycles in the train split",
        "n_cycles_validation": "cycles in the validation split",
        "n_cycles_test": "cycles in the test split",
        "first_cycle": "first cycle time (UTC)",
        "last_cycle": "last cycle time (UTC)",
        "size_human": "size of the built folder, e.g. '12.3 MB'",
        "background": "one-line description of how the background was made",
        "build_date": "date recorded for the build",
    }
)
"""Tokens the builder passes in ``context``."""

DERIVED_TOKENS = MappingProxyType(
    {
        "data_years": "years spanned by the cycles ('2026' or '2000-2024'), from first/last_cycle",
        "n_parquet_files": "number of Parquet files, from the splits",
        "observation_pattern": "observation pattern, from the store's 'observation' attribute",
        "observation_ratio_percent": "observed fraction in %, from the 'observation' attribute",
        "observation_seed": "observation seed, from the 'observation' attribute",
        "channel_table": "Markdown table: channel, variable, level, units, observation error std",
    }
)
"""Tokens :func:`render_card` computes when ``context`` does not give them."""

CONFIG_TOKENS = MappingProxyType(
    {
        "recipe": "the build recipe (era5-sample or era5-fengwu)",
        "license": "licence identifier of the dataset",
        "sources_list": "Markdown list of the sources and their attributions, from the config",
        "splits_rule": "how cycles were assigned to splits, from the config",
        "fields_table": "Markdown table of the row fields (state fields and modalities)",
    }
)
"""Tokens :func:`config_context` makes from a build config (the builder passes them too)."""

CARD_TOKENS = MappingProxyType({**BUILDER_TOKENS, **DERIVED_TOKENS, **CONFIG_TOKENS})
"""Every token a template may use, with its meaning."""

_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


# --- templates ---------------------------------------------------------------------------------


def template_path(name: str) -> Path:
    """Path of the card template of dataset ``name``.

    Parameters
    ----------
    name
        Dataset name, e.g. ``"era5-sample"``.

    Returns
    -------
    ``dataset_cards/NAME.md`` of the source checkout if it exists, else the copy shipped in the
    wheel as the package data ``dambench.dataset_cards``.

    Raises
    ------
    DambenchInputError
        An invalid name, or no template: the message names the expected paths.
    """
    if not _NAME.match(name) and name != GENERIC_TEMPLATE:
        raise DambenchInputError(f"Invalid dataset name {name!r} for a card template.")
    filename = f"{name}.md"
    candidates = [TEMPLATE_DIR / filename]
    packaged = _packaged_root()
    if packaged is not None:
        candidates.append(Path(str(packaged.joinpath(filename))))
    for path in candidates:
        if path.is_file():
            return path
    expected = " or ".join(str(path) for path in candidates)
    raise DambenchInputError(
        f"No dataset card template for {name!r}: expected {expected}. "
        f"Known templates: {available_templates() or 'none'}."
    )


def _packaged_root():
    """The ``dambench.dataset_cards`` package data as an ``importlib.resources`` Traversable
    (a namespace package without ``__init__.py``), or ``None`` when it is not installed."""
    try:
        return resources.files(TEMPLATE_PACKAGE)
    except (ModuleNotFoundError, TypeError):
        return None


def available_templates() -> list[str]:
    """Names of the dataset card templates that can be found."""
    names = {p.stem for p in TEMPLATE_DIR.glob("*.md")} if TEMPLATE_DIR.is_dir() else set()
    packaged = _packaged_root()
    if packaged is not None and packaged.is_dir():
        names |= {e.name[:-3] for e in packaged.iterdir() if e.name.endswith(".md")}
    return sorted(n for n in names if not n.startswith("_"))


def template_for(name: str) -> str:
    """The template a dataset named ``name`` uses: its own, else :data:`GENERIC_TEMPLATE`."""
    return name if name in available_templates() else GENERIC_TEMPLATE


def template_text(name: str) -> str:
    """Markdown text of the card template of dataset ``name`` (see :func:`template_path`)."""
    return template_path(name).read_text(encoding="utf-8")


def template_tokens(text: str) -> set[str]:
    """Names of the ``{{ token }}`` placeholders in ``text``."""
    return set(TOKEN.findall(text))


def fill(text: str, context: Mapping[str, object]) -> str:
    """Replace every ``{{ token }}`` of ``text`` by ``str(context[token])``.

    Raises
    ------
    DambenchInputError
        A token missing from ``context`` (all missing tokens are named), or a malformed
        placeholder (``{{`` or ``}}`` left over that is not a ``{{ token }}``).
    """
    missing = sorted(template_tokens(text) - set(context))
    if missing:
        raise DambenchInputError(f"Card context lacks tokens {missing}.")
    leftover = TOKEN.sub("", text)
    if "{{" in leftover or "}}" in leftover:
        line = next(ln for ln in leftover.splitlines() if "{{" in ln or "}}" in ln)
        raise DambenchInputError(f"Malformed card placeholder near {line.strip()!r}.")
    return TOKEN.sub(lambda match: str(context[match.group(1)]), text)


# --- front matter ------------------------------------------------------------------------------


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` label of a dataset of ``n_rows`` rows (``"n<1K"``, ...)."""
    for limit, label in _SIZE_CATEGORIES:
        if n_rows < limit:
            return label
    return "n>1B"


def card_metadata(
    name: str,
    splits: Mapping[str, Sequence[str]],
    *,
    license: str = DEFAULT_LICENSE,
    pretty_name: str | None = None,
    size_category: str | None = None,
    tags: Sequence[str] | None = None,
    preview: Mapping[str, Sequence[str]] | None = None,
    sizes: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
) -> dict:
    """The YAML front matter of a dataset card, as a dict.

    Parameters
    ----------
    name
        Dataset name (``pretty_name`` defaults to it).
    splits
        Split name -> relative paths of its Parquet files (may be empty). Every path must match
        ``data/{split}-*.parquet``, the pattern written in the card.
    license
        Hub licence identifier (``cc-by-4.0``).
    pretty_name, size_category, tags
        Hub metadata; ``size_category`` is omitted when ``None``; ``tags`` default to
        :data:`TAGS`.
    preview
        Split name -> preview files (``preview/{split}-*.parquet``); adds a ``preview`` config.
    sizes
        Config name (``default``, ``preview``) -> split -> ``{"num_examples", "num_bytes"}``
        (see :func:`split_sizes`); adds ``dataset_info``.

    Returns
    -------
    dict with ``license``, ``pretty_name``, ``task_categories``, ``tags``, optionally
    ``size_categories``, ``configs``: the ``default`` config (marked ``default: true`` when
    a ``preview`` config follows), one ``data_files`` entry per split, in ``splits`` order, and,
    with ``sizes``, ``dataset_info`` (the list form ``datasets`` reads, one entry per config).

    Raises
    ------
    DambenchInputError
        No split, an invalid split name, or a file outside its split's pattern.
    """
    if not splits:
        raise DambenchInputError("A dataset card needs at least one split.")
    data_files = [
        {"split": split, "path": _split_pattern(split, files)} for split, files in splits.items()
    ]
    meta: dict = {
        "license": license,
        "pretty_name": pretty_name or name,
        "task_categories": list(TASK_CATEGORIES),
        "tags": list(TAGS if tags is None else tags),
    }
    if size_category is not None:
        meta["size_categories"] = [size_category]
    meta["configs"] = [{"config_name": "default", "data_files": data_files}]
    if preview:
        meta["configs"][0]["default"] = True
        previews = [
            {"split": split, "path": _split_pattern(split, files, "preview")}
            for split, files in preview.items()
        ]
        meta["configs"].append({"config_name": "preview", "data_files": previews})
    if sizes:
        meta["dataset_info"] = [dataset_info(name, by_split) for name, by_split in sizes.items()]
    return meta


def dataset_info(config_name: str, sizes: Mapping[str, Mapping[str, int]]) -> dict:
    """One ``dataset_info`` entry: the config's splits with ``num_bytes`` and ``num_examples``
    (the names and order ``datasets`` reads) and its ``download_size``."""
    splits = [
        {"name": split, "num_bytes": int(n["num_bytes"]), "num_examples": int(n["num_examples"])}
        for split, n in sizes.items()
    ]
    total = sum(entry["num_bytes"] for entry in splits)
    return {"config_name": config_name, "splits": splits, "download_size": total}


def split_sizes(folder: str | Path, splits: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Split -> ``{"num_examples": rows, "num_bytes": bytes}`` of its Parquet files in ``folder``.

    Rows come from the Parquet footers (no data is read); bytes are the files' sizes.

    Raises
    ------
    DambenchInputError
        A listed file is missing or is not a readable Parquet file (named).
    """
    import pyarrow.parquet as pq

    out = {}
    for split, files in splits.items():
        rows = size = 0
        for relative in files:
            path = Path(folder) / relative
            try:
                rows += pq.read_metadata(path).num_rows
                size += path.stat().st_size
            except (OSError, ValueError) as err:
                raise DambenchInputError(
                    f"Cannot read the Parquet footer of {path} ({type(err).__name__}: {err}); "
                    "the card records every split's rows: rebuild or restore the file."
                ) from err
        out[split] = {"num_examples": rows, "num_bytes": size}
    return out


def _split_pattern(split: str, files: Sequence[str], folder: str = "data") -> str:
    if not _SPLIT.match(split):
        raise DambenchInputError(f"Invalid split name {split!r} (letters, digits, _ and dots).")
    pattern = f"{folder}/{split}-*.parquet"
    stray = [f for f in files if not fnmatch.fnmatchcase(f, pattern)]
    if stray:
        raise DambenchInputError(f"Files {stray} of split {split!r} do not match {pattern!r}.")
    return pattern


# --- derived tokens ----------------------------------------------------------------------------


def splits_from_folder(folder: str | Path, subfolder: str = "data") -> dict[str, list[str]]:
    """Split name -> Parquet files found as ``folder/SUBFOLDER/{split}-*.parquet``, train first.

    Raises
    ------
    DambenchInputError
        ``folder/data`` holds no Parquet file (an absent ``preview`` folder gives ``{}``).
    """
    folder = Path(folder)
    found: dict[str, list[str]] = {}
    for path in sorted((folder / subfolder).glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        found.setdefault(split, []).append(path.relative_to(folder).as_posix())
    if not found and subfolder == "data":
        raise DambenchInputError(f"No Parquet file in {folder / 'data'}: cannot list the splits.")
    order = [s for s in SPLIT_ORDER if s in found] + sorted(set(found) - set(SPLIT_ORDER))
    return {split: found[split] for split in order}


def observation_spec(folder: str | Path, name: str) -> dict:
    """The observation operator's parameters recorded in ``folder/NAME.zarr`` (root attribute
    ``observation``, a JSON string or a mapping).

    Raises
    ------
    DambenchInputError
        No store metadata, or no ``observation`` attribute in it.
    """
    path = Path(folder) / f"{name}.zarr" / "zarr.json"
    try:
        attrs = json.loads(path.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError) as err:
        raise DambenchInputError(
            f"Cannot read the observation parameters from {path} ({err}); pass the card tokens "
            "observation_pattern, observation_ratio_percent, observation_seed and channel_table "
            "in the context."
        ) from err
    spec = attrs.get("observation")
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, Mapping):
        raise DambenchInputError(f"{path} has no 'observation' attribute.")
    return dict(spec)


def noise_by_channel(channels: Sequence[str], noise) -> dict[str, float]:
    """Observation-error standard deviation of each channel for an ``observe(noise=...)`` value.

    ``"default"`` is :data:`dambench.schema.OBSERVATION_ERROR_STD`; a number applies to every
    channel; a mapping gives each channel; ``None`` or ``0`` means noise-free.
    """
    if noise in (None, 0, 0.0):
        return dict.fromkeys(channels, 0.0)
    if noise == "default":
        return {c: schema.OBSERVATION_ERROR_STD[c] for c in channels}
    if isinstance(noise, Mapping):
        return {c: float(noise[c]) for c in channels}
    return dict.fromkeys(channels, float(noise))


def channel_table(channels: Sequence[str], noise="default") -> str:
    """Markdown table of the channels in stored order, with units and observation error."""
    std = noise_by_channel(channels, noise)
    rows = [
        "| index | channel | variable | level (hPa) | units | observation error std |",
        "|---|---|---|---|---|---|",
    ]
    for i, channel in enumerate(channels):
        info = schema.VARIABLES[schema.CHANNEL_VARIABLE[channel]]
        level = schema.CHANNEL_LEVEL[channel]
        rows.append(
            f"| {i} | `{channel}` | {info.long_name} | {'surface' if level is None else level} "
            f"| {info.units} | {std[channel]:g} |"
        )
    return "\n".join(rows)


def _data_years(context: Mapping[str, object]) -> str:
    first, last = (str(context[k])[:4] for k in ("first_cycle", "last_cycle"))
    return first if first == last else f"{first}-{last}"


def derived_context(
    name: str,
    folder: str | Path | None,
    context: Mapping[str, object],
    splits: Mapping[str, Sequence[str]],
    needed: set[str],
) -> dict[str, str]:
    """Values of the :data:`DERIVED_TOKENS` in ``needed`` that ``context`` does not give.

    ``data_years`` needs ``first_cycle``/``last_cycle``; ``channel_table`` needs ``channels``;
    the observation tokens need ``folder/NAME.zarr`` (see :func:`observation_spec`).
    """
    wanted = (set(needed) & set(DERIVED_TOKENS)) - set(context)
    out: dict[str, str] = {}
    if "data_years" in wanted and {"first_cycle", "last_cycle"} <= set(context):
        out["data_years"] = _data_years(context)
    if "n_parquet_files" in wanted:
        out["n_parquet_files"] = str(sum(len(files) for files in splits.values()))
    observation_tokens = {
        "observation_pattern",
        "observation_ratio_percent",
        "observation_seed",
        "channel_table",
    }
    if wanted & observation_tokens and folder is not None:
        spec = observation_spec(folder, name)
        out["observation_pattern"] = str(spec.get("pattern", schema.DEFAULT_OBSERVATION_PATTERN))
        ratio = float(spec.get("ratio", schema.DEFAULT_OBSERVATION_RATIO))
        out["observation_ratio_percent"] = f"{100 * ratio:g}"
        out["observation_seed"] = str(spec.get("seed", schema.DEFAULT_OBSERVATION_SEED))
        if "channels" in context:
            channels = [c.strip() for c in str(context["channels"]).split(",") if c.strip()]
            out["channel_table"] = channel_table(channels, spec.get("noise", "default"))
    return {k: v for k, v in out.items() if k in wanted}


# --- rendering and writing ---------------------------------------------------------------------


def render_card(
    name: str,
    folder: str | Path | None,
    context: Mapping[str, object],
    *,
    splits: Mapping[str, Sequence[str]] | None = None,
    license: str = DEFAULT_LICENSE,
    pretty_name: str | None = None,
    tags: Sequence[str] | None = None,
    preview: Mapping[str, Sequence[str]] | None = None,
    template: str | None = None,
) -> str:
    """The full ``README.md`` text of a built folder: YAML front matter and the filled template.

    Parameters
    ----------
    name
        Dataset name.
    folder
        The built folder: the source of the splits (``data/*.parquet``, when ``splits`` is
        ``None``), of the preview files (``preview/*.parquet``, when ``preview`` is ``None``), of
        each split's rows and bytes (``dataset_info``, from the Parquet files) and of the
        observation parameters (``NAME.zarr``) for derived tokens. May be ``None`` when
        ``splits`` is given and ``context`` holds every token (the card then has no
        ``dataset_info``).
    context
        Token -> value (see :data:`CARD_TOKENS`); values are written with ``str``.
    splits
        Split name -> Parquet files (default: found in ``folder``).
    license, pretty_name, tags
        Front matter (``pretty_name`` defaults to ``context["title"]``, then ``name``).
    preview
        Split name -> preview files (default: found in ``folder``); adds the ``preview`` config.
    template
        Template name (default: ``name``; :func:`template_for` picks the generic one for names
        without a template).

    Returns
    -------
    The card text, ending with a newline.

    Raises
    ------
    DambenchInputError
        No template, a token that is neither in ``context`` nor derivable (named), bad splits.
    """
    text = template_text(template or name)
    if splits is None:
        if folder is None:
            raise DambenchInputError("render_card needs a folder or explicit splits.")
        splits = splits_from_folder(folder)
    if preview is None and folder is not None:
        preview = splits_from_folder(folder, "preview")
    values = {k: str(v) for k, v in context.items()}
    values.update(derived_context(name, folder, values, splits, template_tokens(text)))
    body = fill(text, values)
    sizes = None
    if folder is not None:
        sizes = {"default": split_sizes(folder, splits)}
        if preview:
            sizes["preview"] = split_sizes(folder, preview)
    meta = card_metadata(
        name,
        splits,
        license=license,
        pretty_name=pretty_name or values.get("title") or name,
        size_category=_size_label(values),
        tags=tags,
        preview=preview,
        sizes=sizes,
    )
    return front_matter(meta) + "\n" + body.rstrip("\n") + "\n"


def config_context(config) -> dict[str, str]:
    """The :data:`CONFIG_TOKENS` of a :class:`~dambench.assembly.config.BuildConfig`."""
    sources = [f"- **{key}**: {value}" for key, value in sorted(config.sources.items())]
    return {
        "recipe": config.recipe,
        "license": config.license,
        "sources_list": "\n".join(sources) or "- (the config records no sources)",
        "splits_rule": splits_rule(config.splits),
        "fields_table": fields_table(
            len(config.channels),
            [m for m, info in schema.MODALITIES.items() if info.group in config.modalities],
        ),
    }


def splits_rule(splits: Mapping) -> str:
    """One sentence saying how a config's ``splits`` entry assigns cycles to splits."""
    if "dates" in splits:
        spans = [f"{name} {a} to {b}" for name, (a, b) in splits["dates"].items()]
        return "By date (inclusive): " + "; ".join(spans) + "."
    days = splits["last_days"]
    parts = [f"the last {days.get('test', 0)} calendar days are the test split"]
    if days.get("validation"):
        parts.append(f"the {days['validation']} days before them the validation split")
    return "; ".join(parts) + "; the rest is the train split."


def fields_table(n_channels: int, modalities: Sequence[str]) -> str:
    """Markdown table of a row's fields: time, the three state fields and the modalities."""
    shape = f"({n_channels}, 121, 240) float32"
    rows = [
        "| field | shape, dtype | units | content |",
        "|---|---|---|---|",
        "| `time` | scalar, timestamp[ns] | UTC | cycle (analysis) time |",
        f"| `target` | {shape} | per channel (table below) | the state to recover x*(t) |",
        f"| `background` | {shape} | as `target` | background state x_b(t) |",
        f"| `observation` | {shape} | as `target` | y(t) = x*(t) + noise at observed points; "
        "NaN where unobserved |",
    ]
    for name in modalities:
        info = schema.MODALITIES[name]
        rows.append(
            f"| `{name}` | (121, 240) float32 | {info.units} | {info.long_name}; NaN where absent |"
        )
    return "\n".join(rows)


def _size_label(values: Mapping[str, str]) -> str | None:
    n = values.get("n_cycles", "")
    return size_category(int(n)) if n.isdigit() else None


def write_card(
    folder: str | Path,
    name: str,
    context: Mapping[str, object],
    splits: Mapping[str, Sequence[str]] | None = None,
    *,
    license: str = DEFAULT_LICENSE,
    pretty_name: str | None = None,
    tags: Sequence[str] | None = None,
    preview: Mapping[str, Sequence[str]] | None = None,
    template: str | None = None,
) -> Path:
    """Render the card (see :func:`render_card`) and write ``folder/README.md`` atomically.

    The text goes to a hidden temporary file in ``folder`` and is renamed over ``README.md``, so
    a reader never sees a half-written card.

    Returns
    -------
    Path of ``README.md``.
    """
    folder = Path(folder)
    text = render_card(
        name,
        folder,
        context,
        splits=splits,
        license=license,
        pretty_name=pretty_name,
        tags=tags,
        preview=preview,
        template=template,
    )
    return _atomic_write_text(folder / "README.md", text)


def _atomic_write_text(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
