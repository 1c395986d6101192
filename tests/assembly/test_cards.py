"""Dataset cards: templates, tokens, YAML front matter, and loading a folder through its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dambench import schema
from dambench.assembly import cards
from dambench.assembly.cards import (
    BUILDER_TOKENS,
    CARD_TOKENS,
    card_metadata,
    fill,
    front_matter,
    render_card,
    template_text,
    template_tokens,
    write_card,
)
from dambench.exceptions import DambenchInputError

TEMPLATES = ("era5-sample", "era5-fengwu")
ROWS = {"train": 3, "validation": 1, "test": 2}
SMALL_SHAPE = (2, 3, 4)  # stands in for (C, 121, 240): the card does not depend on it


def builder_context(name: str, channels=("u10", "v10", "t2m", "msl")) -> dict[str, str]:
    """The context the builder passes (dambench/assembly/builder.py::_write_card)."""
    return {
        "name": name,
        "title": f"DAMBench {name}",
        "dambench_version": "0.1.0",
        "channels": ", ".join(channels),
        "n_channels": str(len(channels)),
        "n_cycles": str(sum(ROWS.values())),
        "n_cycles_train": str(ROWS["train"]),
        "n_cycles_validation": str(ROWS["validation"]),
        "n_cycles_test": str(ROWS["test"]),
        "first_cycle": "2026-03-25 21:00:00",
        "last_cycle": "2026-03-31 23:00:00",
        "size_human": "1.2 MB",
        "background": "persistence: the ERA5 sample 3 steps earlier (21-22 h before the cycle)",
        "build_date": "2026-03-31",
    }


def write_store_attrs(folder: Path, name: str, observation) -> None:
    """A stand-in for NAME.zarr's root metadata: only zarr.json with the attributes."""
    store = folder / f"{name}.zarr"
    store.mkdir(parents=True, exist_ok=True)
    attrs = {"observation": json.dumps(observation), "dambench_dataset": name}
    (store / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs})
    )


def make_folder(folder: Path, name: str = "era5-sample", rows=ROWS) -> Path:
    """A built-folder fixture: small Parquet splits, stats.json, manifest.json and store attrs."""
    from datasets import Array2D, Array3D, Dataset, Features, Value

    features = Features(
        {
            "time": Value("timestamp[ns]"),
            "target": Array3D(SMALL_SHAPE, "float32"),
            "background": Array3D(SMALL_SHAPE, "float32"),
            "observation": Array3D(SMALL_SHAPE, "float32"),
            "precip": Array2D(SMALL_SHAPE[1:], "float32"),
        }
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    start = np.datetime64("2026-03-25T00", "ns")
    for split, n in rows.items():
        times = start + np.arange(n) * np.timedelta64(1, "D")
        columns = {"time": times}
        for field in ("target", "background", "observation"):
            columns[field] = np.ones((n, *SMALL_SHAPE), np.float32)
        columns["precip"] = np.full((n, *SMALL_SHAPE[1:]), np.nan, np.float32)
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        Dataset.from_dict(columns, features=features).to_parquet(str(path))
    (folder / "stats.json").write_text(json.dumps({"channels": ["u10", "v10"], "split": "train"}))
    (folder / "manifest.json").write_text(json.dumps({"name": name, "files": {}}))
    write_store_attrs(
        folder, name, {"pattern": "random", "ratio": 0.05, "seed": 0, "noise": "default"}
    )
    return folder


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "era5-sample")


def split_front_matter(text: str) -> tuple[str, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return head, body


# --- templates and tokens ------------------------------------------------------------------------


def test_both_templates_exist_and_only_use_known_tokens():
    assert set(TEMPLATES) <= set(cards.available_templates())
    for name in TEMPLATES:
        tokens = template_tokens(template_text(name))
        unknown = tokens - set(CARD_TOKENS)
        assert not unknown, f"{name} uses undocumented tokens {unknown}"
        assert {"n_cycles_train", "size_human", "dambench_version", "channels"} <= tokens


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_render_from_the_builder_context_and_the_folder(tmp_path, name):
    channels = schema.CHANNELS if name == "era5-fengwu" else ("u10", "v10", "t2m", "msl")
    folder = make_folder(tmp_path / name, name)
    text = render_card(name, folder, builder_context(name, channels))
    head, body = split_front_matter(text)
    assert "{{" not in body and "}}" not in body
    prose = " ".join(body.split())
    assert f"dambench/{name}" in body and f"{name}.zarr" in body
    assert 'with_format("numpy")' in body and "30x faster" in body
    assert "Contains modified Copernicus Climate Change Service information [2026]" in prose
    assert "arXiv:2511.01468" in body and "hersbach2020era5" in body
    # the channel table: one row per channel in stored order, units and error std from schema
    table_rows = [
        line
        for line in body.splitlines()
        if line.startswith("| ") and "`" in line and line.split("|")[1].strip().isdigit()
    ]
    assert [row.split("`")[1] for row in table_rows] == list(channels)
    assert "| `t2m` | 2 metre temperature | surface | K | 1 |" in body
    assert "probability 5 %" in prose and "seed = 0" in prose
    assert 'pretty_name: "DAMBench ' in head


def test_fengwu_card_states_sources_licences_and_citations(tmp_path):
    folder = make_folder(tmp_path / "era5-fengwu", "era5-fengwu")
    body = render_card("era5-fengwu", folder, builder_context("era5-fengwu", schema.CHANNELS))
    prose = " ".join(body.split())
    for text in (
        "NickGeneva/earth_ai",
        "fengwu_v1.onnx",
        "global_means.npy",
        "global_stds.npy",
        "licence as stated by the model repository; not verified offline",
        "CPC Global Unified Precipitation data provided by the NOAA/OAR/ESRL PSL",
        "Interpolated OLR data provided by the NOAA PSL",
        "arXiv:2304.02948",
        "xie2007cpc",
        "chen2008cpc",
        "liebmann1996olr",
        "2000-01-01 to 2022-12-31",
        "W m-2",
        "mm/day",
    ):
        assert text in prose, text
    assert "| 68 | `t1000` | Temperature | 1000 | K | 1 |" in body


def test_sample_card_has_no_olr_and_station_precip(folder):
    body = render_card("era5-sample", folder, builder_context("era5-sample"))
    prose = " ".join(body.split())
    assert "no `olr` field" in prose and "capital" in prose and "x 1000 x 24" in prose
    assert "| `precip` | (121, 240) float32 | mm/day |" in body


def test_missing_tokens_are_all_named(folder):
    with pytest.raises(DambenchInputError, match=r"lacks tokens \['size_human'\]"):
        fill("size {{ size_human }}", {})
    context = builder_context("era5-sample")
    del context["n_cycles_test"], context["build_date"]
    with pytest.raises(DambenchInputError, match=r"\['build_date', 'n_cycles_test'\]"):
        render_card("era5-sample", folder, context)


def test_fill_substitutes_and_rejects_malformed_placeholders():
    assert fill("a {{x}} b {{ y }} {{ x }}", {"x": 1, "y": "two"}) == "a 1 b two 1"
    with pytest.raises(DambenchInputError, match="Malformed card placeholder"):
        fill("a {{ x } b", {"x": 1})
    with pytest.raises(DambenchInputError, match="Malformed"):
        fill("a {{ bad token }}", {})


def test_derived_tokens_need_the_store_or_the_context(tmp_path, folder):
    context = builder_context("era5-sample")
    (folder / "era5-sample.zarr" / "zarr.json").unlink()
    with pytest.raises(DambenchInputError, match="observation_ratio_percent"):
        render_card("era5-sample", folder, context)
    given = {
        "observation_pattern": "random",
        "observation_ratio_percent": "10",
        "observation_seed": "7",
        "channel_table": "TABLE",
    }
    body = render_card("era5-sample", folder, {**context, **given})
    assert "probability 10 %" in " ".join(body.split()) and "seed = 7" in body
    assert "\nTABLE\n" in body


def test_channel_table_follows_the_noise_setting():
    assert "| 0 | `u10` | 10 metre U wind component | surface | m s-1 | 1.5 |" in (
        cards.channel_table(["u10"])
    )
    assert "| m2 s-2 | 3 |" in cards.channel_table(["z500"], noise=3.0)
    assert "| kg kg-1 | 0 |" in cards.channel_table(["q700"], noise=None)
    assert cards.noise_by_channel(["q700"], "default") == {"q700": 3.2e-4}


def test_unknown_template_names_the_expected_path():
    with pytest.raises(DambenchInputError, match=r"expected .*dataset_cards/era5-nothing\.md"):
        template_text("era5-nothing")
    with pytest.raises(DambenchInputError, match="Invalid dataset name"):
        template_text("../README")


def test_builder_tokens_are_documented():
    assert set(BUILDER_TOKENS) == set(builder_context("x"))


# --- front matter -------------------------------------------------------------------------------


def test_front_matter_round_trips_through_huggingface_hub(tmp_path):
    from huggingface_hub import DatasetCard

    meta = card_metadata(
        "x",
        {
            "train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
            "test": [],
        },
        pretty_name='A "quoted" name: é',
        size_category=cards.size_category(12),
    )
    (tmp_path / "README.md").write_text(front_matter(meta) + "\n# body\n")
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.to_dict() == meta
    assert card.data.to_dict()["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": "data/test-*.parquet"},
    ]
    assert card.text.strip() == "# body"


def test_card_metadata_defaults_and_checks():
    meta = card_metadata("era5-sample", {"train": []})
    assert meta["license"] == "cc-by-4.0" and meta["pretty_name"] == "era5-sample"
    assert {"weather", "data-assimilation", "era5"} <= set(meta["tags"])
    assert meta["task_categories"] == ["time-series-forecasting"]
    assert "size_categories" not in meta
    assert card_metadata("x", {"train": []}, tags=["a"])["tags"] == ["a"]
    with pytest.raises(DambenchInputError, match="at least one split"):
        card_metadata("x", {})
    with pytest.raises(DambenchInputError, match="Invalid split name"):
        card_metadata("x", {"my split": []})
    with pytest.raises(DambenchInputError, match=r"do not match 'data/test-\*\.parquet'"):
        card_metadata("x", {"test": ["data/train-00000-of-00001.parquet"]})


@pytest.mark.parametrize(
    ("rows", "label"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1_000, "1K<n<10K"),
        (9_132, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (5 * 10**9, "n>1B"),
    ],
)
def test_size_category(rows, label):
    assert cards.size_category(rows) == label


def test_front_matter_writes_scalars_and_empty_collections():
    text = front_matter({"a": 1, "b": True, "c": None, "d": [], "e": {}, "weird key": 1.5})
    assert text == '---\na: 1\nb: true\nc: null\nd: []\ne: {}\n"weird key": 1.5\n---\n'
    with pytest.raises(DambenchInputError, match="Cannot write"):
        front_matter({"a": object()})


# --- writing and loading ------------------------------------------------------------------------


def test_written_card_loads_with_datasets_and_huggingface_hub(folder):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    path = write_card(folder, "era5-sample", builder_context("era5-sample"))
    assert path == folder / "README.md"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp file left
    data = DatasetCard.load(path).data.to_dict()
    assert [f["split"] for f in data["configs"][0]["data_files"]] == list(ROWS)
    assert data["size_categories"] == ["n<1K"] and data["license"] == "cc-by-4.0"
    loaded = load_dataset(str(folder), cache_dir=str(folder.parent / "hf-cache"))
    assert {split: loaded[split].num_rows for split in loaded} == ROWS
    train = load_dataset(
        str(folder), split="train", cache_dir=str(folder.parent / "hf-cache")
    ).with_format("numpy")
    assert train[0]["target"].shape == SMALL_SHAPE
    assert train.features["target"].shape == SMALL_SHAPE


def test_the_card_configs_decide_the_splits(folder):
    from datasets import load_dataset

    write_card(
        folder,
        "era5-sample",
        builder_context("era5-sample"),
        {
            "train": ["data/train-00000-of-00001.parquet"],
            "test": ["data/test-00000-of-00001.parquet"],
        },
    )
    loaded = load_dataset(str(folder), cache_dir=str(folder.parent / "hf-cache"))
    assert set(loaded) == {"train", "test"}  # validation files exist but the card omits them


def test_write_card_is_atomic_and_keeps_the_old_card_on_error(folder):
    (folder / "README.md").write_text("old card")
    context = builder_context("era5-sample")
    del context["size_human"]
    with pytest.raises(DambenchInputError):
        write_card(folder, "era5-sample", context)
    assert (folder / "README.md").read_text() == "old card"
    write_card(folder, "era5-sample", builder_context("era5-sample"))
    assert (folder / "README.md").read_text().startswith("---\nlicense:")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_splits_are_found_in_the_folder_in_benchmark_order(tmp_path, folder):
    (folder / "data" / "extra-00000-of-00001.parquet").write_bytes(b"")
    assert list(cards.splits_from_folder(folder)) == ["train", "validation", "test", "extra"]
    with pytest.raises(DambenchInputError, match="No Parquet file"):
        cards.splits_from_folder(tmp_path / "empty")
    with pytest.raises(DambenchInputError, match="folder or explicit splits"):
        render_card("era5-sample", None, builder_context("era5-sample"))


def test_installed_wheels_find_the_packaged_templates(tmp_path, monkeypatch):
    packaged = tmp_path / "site" / "dambench" / "dataset_cards"
    packaged.mkdir(parents=True)
    (packaged / "era5-sample.md").write_text("# {{ title }}\n")
    monkeypatch.setattr(cards, "TEMPLATE_DIR", tmp_path / "no-checkout" / "dataset_cards")
    monkeypatch.setattr(cards, "_packaged_root", lambda: packaged)
    assert cards.template_path("era5-sample") == packaged / "era5-sample.md"
    assert cards.available_templates() == ["era5-sample"]
    with pytest.raises(DambenchInputError, match=r"no-checkout/dataset_cards/x\.md or .*site"):
        template_text("x")


# --- the Hub path guarded: recorded split sizes -------------------------------------------------


@pytest.fixture(scope="module")
def built_sample(tmp_path_factory):
    from dambench.assembly import build

    return build("era5-sample", tmp_path_factory.mktemp("sizes") / "era5-sample", verbose=False)


def card_data(folder: Path) -> dict:
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md").data.to_dict()


def test_the_card_records_each_splits_rows_and_bytes(built_sample):
    import pyarrow.parquet as pq

    info = {entry["config_name"]: entry for entry in card_data(built_sample)["dataset_info"]}
    assert set(info) == {"default", "preview"}
    for config, folder in (("default", "data"), ("preview", "preview")):
        recorded = {s["name"]: (s["num_examples"], s["num_bytes"]) for s in info[config]["splits"]}
        expected = {}
        for path in sorted((built_sample / folder).glob("*.parquet")):
            split = path.name.split("-")[0]
            rows, size = expected.get(split, (0, 0))
            expected[split] = (rows + pq.read_metadata(path).num_rows, size + path.stat().st_size)
        assert recorded == expected
        assert info[config]["download_size"] == sum(size for _, size in expected.values())
    body = (built_sample / "README.md").read_text()
    assert "### What each way of loading checks" in body and "NonMatchingSplitsSizesError" in body


def copy_of(built: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(built, tmp_path / "copy"))


def test_plain_load_dataset_refuses_a_missing_or_a_stray_parquet_file(built_sample, tmp_path):
    from datasets import load_dataset
    from datasets.exceptions import NonMatchingSplitsSizesError

    train_files = sorted((built_sample / "data").glob("train-*.parquet"))
    assert len(train_files) >= 2
    intact = load_dataset(str(built_sample), split="train", cache_dir=str(tmp_path / "c0"))
    missing = copy_of(built_sample, tmp_path / "missing")
    (missing / "data" / train_files[-1].name).unlink()
    with pytest.raises(NonMatchingSplitsSizesError):
        load_dataset(str(missing), split="train", cache_dir=str(tmp_path / "c1"))
    stray = copy_of(built_sample, tmp_path / "stray")
    (stray / "data" / "train-99999-of-99999.parquet").write_bytes(train_files[0].read_bytes())
    with pytest.raises(NonMatchingSplitsSizesError):
        load_dataset(str(stray), split="train", cache_dir=str(tmp_path / "c2"))
    # as the card says, streaming checks nothing: the stray rows come through
    streamed = load_dataset(str(stray), split="train", streaming=True)
    assert sum(1 for _ in streamed) > intact.num_rows


def test_a_flipped_byte_passes_plain_load_dataset_but_not_load_rows(built_sample, tmp_path):
    from datasets import load_dataset

    from dambench.exceptions import DambenchIntegrityError
    from dambench.load import load_rows

    flipped = copy_of(built_sample, tmp_path)
    path = sorted((flipped / "data").glob("train-*.parquet"))[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    clean = load_dataset(str(built_sample), split="train", cache_dir=str(tmp_path / "c0"))
    plain = load_dataset(str(flipped), split="train", cache_dir=str(tmp_path / "c1"))
    clean, plain = clean.with_format("numpy"), plain.with_format("numpy")
    differs = [
        not np.array_equal(plain[i][f], clean[i][f], equal_nan=True)
        for i in range(len(plain))
        for f in ("target", "background", "observation")
    ]
    assert any(differs)  # wrong values, no error: the card's "not detected"
    with pytest.raises(DambenchIntegrityError, match=path.name):
        load_rows(str(flipped), split="train", cache_dir=str(tmp_path / "c2"))
