import pytest

from dambench.build.cards import fill, front_matter, render_card, template_text, template_tokens
from dambench.exceptions import DambenchInputError

CONTEXT_KEYS = {
    "name",
    "title",
    "dambench_version",
    "channels",
    "n_channels",
    "n_cycles",
    "n_cycles_train",
    "n_cycles_validation",
    "n_cycles_test",
    "first_cycle",
    "last_cycle",
    "size_human",
    "background",
    "build_date",
}


@pytest.mark.parametrize("name", ["era5-sample", "era5-fengwu"])
def test_templates_use_only_tokens_the_builder_fills(name):
    tokens = template_tokens(template_text(name))
    assert tokens and tokens <= CONTEXT_KEYS
    text = render_card(
        name, {k: f"<{k}>" for k in CONTEXT_KEYS}, {"train": [], "validation": [], "test": []}
    )
    assert "{{" not in text and "<n_cycles_test>" in text


def test_missing_token_is_named():
    with pytest.raises(DambenchInputError, match=r"lacks tokens \['size_human'\]"):
        fill("size {{ size_human }}", {})


def test_front_matter_loads_with_huggingface_hub(tmp_path):
    from huggingface_hub import DatasetCard

    head = front_matter(
        {"train": [], "test": []}, license="cc-by-4.0", pretty_name='A "b"', n_rows=12
    )
    (tmp_path / "README.md").write_text(head + "\n# body\n")
    card = DatasetCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["pretty_name"] == 'A "b"'
    assert data["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": "data/test-*.parquet"},
    ]
    assert data["size_categories"] == ["n<1K"]


def test_unknown_template():
    with pytest.raises(DambenchInputError, match="No dataset card template"):
        template_text("era5-nothing")
