"""Dataset cards: the ``README.md`` of a built folder, from ``dataset_cards/NAME.md``.

A template is Markdown with ``{{ token }}`` placeholders filled from the build (never typed by
hand). The YAML front matter declares the Parquet splits as ``configs`` so that
``load_dataset(folder)`` and the Hub find them, plus licence, tags and size category.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

from dambench.exceptions import DambenchInputError

TOKEN = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
TAGS = ("weather", "climate", "data-assimilation", "era5", "benchmark", "xarray", "zarr")


def template_text(name: str) -> str:
    """The card template of dataset ``name`` (``dataset_cards/NAME.md``, shipped in the wheel as
    ``dambench.dataset_cards``)."""
    source_tree = Path(__file__).resolve().parents[2] / "dataset_cards" / f"{name}.md"
    if source_tree.exists():  # a source checkout (editable installs, tests)
        return source_tree.read_text()
    try:
        return (resources.files("dambench.dataset_cards") / f"{name}.md").read_text()
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise DambenchInputError(
            f"No dataset card template for {name!r}: expected dataset_cards/{name}.md."
        ) from err


def template_tokens(text: str) -> set[str]:
    """The ``{{ token }}`` names a template uses."""
    return set(TOKEN.findall(text))


def fill(text: str, context: dict[str, str]) -> str:
    """Replace every ``{{ token }}``; a token missing from ``context`` raises, naming it."""
    missing = sorted(template_tokens(text) - set(context))
    if missing:
        raise DambenchInputError(f"Card context lacks tokens {missing}.")
    return TOKEN.sub(lambda m: str(context[m.group(1)]), text)


def _size_category(n_rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n_rows < limit:
            return label
    return "100K<n<1M"


def front_matter(
    splits: dict[str, list[str]], *, license: str, pretty_name: str, n_rows: int
) -> str:
    """YAML front matter (block style; strings quoted as JSON, which YAML reads the same)."""
    lines = ["---", f"license: {license}", f"pretty_name: {json.dumps(pretty_name)}"]
    lines += ["task_categories:", "- time-series-forecasting", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    lines += ["size_categories:", f"- {json.dumps(_size_category(n_rows))}"]
    lines += ["configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {json.dumps(f'data/{split}-*.parquet')}"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def render_card(name: str, context: dict[str, str], splits: dict[str, list[str]], *,
                license: str = "cc-by-4.0") -> str:
    """The full ``README.md`` text: front matter and the filled template."""
    counts = [str(context.get(f"n_cycles_{split}", "")) for split in splits]
    n_rows = sum(int(c) for c in counts if c.isdigit())
    head = front_matter(splits, license=license, pretty_name=context.get("title", name),
                        n_rows=n_rows)
    return head + "\n" + fill(template_text(name), context)


def write_card(folder: Path, name: str, context: dict[str, str], splits: dict[str, list[str]],
               *, license: str = "cc-by-4.0") -> Path:
    """Write ``folder/README.md`` atomically."""
    path = Path(folder) / "README.md"
    tmp = path.with_name("README.md.tmp")
    tmp.write_text(render_card(name, context, splits, license=license))
    os.replace(tmp, path)
    return path
