"""Comparable or refused (issue 18, item 1): results are compared on the channels, regions and
data they share; the leaderboard, the scorecard, unique seeds and stores, and the observation-space
statistics, each against an independent numpy computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dambench.cli import main
from dambench.exceptions import DambenchInputError
from dambench.scoring import PredictionWriter, compare, evaluate_predictions, leaderboard
from dambench.scoring.bootstrap import paired_difference

CHANNELS = ["u10", "v10", "t2m", "msl"]


def blended(ds):
    """The background with each observed point replaced by its observation (a real analysis
    that differs from the background)."""
    return ds["background"].where(ds["observation"].isnull(), ds["observation"])


def write_store(ds, path, channels, name, field=None):
    field = blended(ds) if field is None else field
    writer = PredictionWriter.like(ds, path, channels=list(channels), attrs={"model": name})
    for time in ds.time.values:
        writer.write(time, field.sel(time=time, channel=list(channels)).values)
    return path


@pytest.fixture(scope="module")
def scored(sample_folder, sample_test, tmp_path_factory):
    """Two evaluations of the same blended fields: all four channels, and t2m alone."""
    folder = tmp_path_factory.mktemp("cmp")
    out = {}
    for name, channels in (("four", CHANNELS), ("t2m-only", ["t2m"])):
        store = write_store(sample_test, folder / f"{name}.zarr", channels, name)
        out[name] = evaluate_predictions(
            store,
            sample_folder,
            out=folder / name,
            regions=["global", "tropics"],
            n_resamples=200,
            figure_channel=None,
        )
    return out, folder


def _normalised_mse(sample_test, field, channels) -> np.ndarray:
    """Per-cycle 100 x mean over ``channels`` of the grid-mean squared normalised error."""
    from dambench.load import stats_from_attrs

    stats = stats_from_attrs(sample_test)
    per_channel = []
    for channel in channels:
        mean, std = (float(stats[k].sel(channel=channel)) for k in ("mean", "std"))
        a = (field.sel(channel=channel).values.astype(np.float64) - mean) / std
        t = (sample_test["target"].sel(channel=channel).values.astype(np.float64) - mean) / std
        per_channel.append(((a - t) ** 2).mean(axis=(1, 2)))
    return 100 * np.mean(per_channel, axis=0)


def test_identical_fields_on_different_channel_subsets_compare_equal(scored):
    """Regression: the t2m-only and four-channel submissions of the same fields were reported
    about 40 MSE points apart; on their common channel t2m they are equal."""
    reports, _ = scored
    four, t2m = reports["four"].summary, reports["t2m-only"].summary
    with pytest.warns(UserWarning, match="common channels t2m"):
        result = compare(four, t2m)
    zero = pytest.approx(0.0, abs=1e-12)  # float rounding of a 1- vs a 4-channel grid mean
    assert result["difference"] == zero and result["ci_low"] == zero and result["ci_high"] == zero
    assert result["channels"] == ["t2m"]
    assert any("also scored channels u10, v10, msl" in note for note in result["notes"])
    assert "not distinguishable" in result["verdict"]


def test_genuinely_different_methods_keep_their_paired_interval(scored, sample_test):
    reports, _ = scored
    four, t2m = reports["four"].summary, reports["t2m-only"].summary
    result = compare(four, four, model_b="Background")
    analysis = _normalised_mse(sample_test, blended(sample_test), CHANNELS)
    background = _normalised_mse(sample_test, sample_test["background"], CHANNELS)
    expected = paired_difference(analysis, background)
    assert result["difference"] == pytest.approx(expected.value, rel=1e-9)
    assert result["ci_high"] < 0 and "lower than" in result["verdict"]
    # across subsets: the four-channel run's t2m against the t2m-only run's Background
    with pytest.warns(UserWarning):
        crossed = compare(four, t2m, model_b="Background")
    on_t2m = _normalised_mse(sample_test, blended(sample_test), ["t2m"])
    on_t2m -= _normalised_mse(sample_test, sample_test["background"], ["t2m"])
    assert crossed["difference"] == pytest.approx(on_t2m.mean(), rel=1e-6)  # a small difference
    assert crossed["ci_high"] < 0


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("dataset_digest", "0" * 64, "dataset_digest"),
        ("split", "validation", "split"),
        ("times", ["2024-01-01 00:00:00"], "times"),
    ],
)
def test_results_of_other_data_are_refused_naming_the_difference(scored, key, value, named):
    reports, _ = scored
    four = reports["four"].summary
    with pytest.raises(DambenchInputError, match=f"their {named} differ"):
        compare(four, {**four, key: value, "model": "other"})


def test_no_channel_in_common_is_refused(scored):
    reports, _ = scored
    four = reports["four"].summary
    other = {**four, "model": "msl-only", "channels": ["z500"]}
    with pytest.raises(DambenchInputError, match="share no channel"):
        compare(four, other)


def test_leaderboard_scores_every_row_on_the_common_channels(scored):
    """The Background row is recomputed on the channels every result shares, never borrowed
    from a run scored on other channels."""
    reports, _ = scored
    board = leaderboard([reports["four"].summary, reports["t2m-only"].summary], n_resamples=200)
    rows = {line.split(" | ")[0].strip("| "): line for line in board.markdown.splitlines()}
    own = reports["t2m-only"].summary["table3"]["Background"]["MSE(1e-2)"]["value"]
    four_bg = reports["four"].summary["table3"]["Background"]["MSE(1e-2)"]["value"]
    assert f"{own:.4g}" in rows["Background"] and f"{four_bg:.4g}" not in rows["Background"]
    assert rows["four"].split(" | ")[1:] == rows["t2m-only"].split(" | ")[1:]
    assert board.common.channels == ("t2m",) and board.common.regions == ("global", "tropics")
    assert "Note: compared on the common channels t2m." in board.markdown
    first, second = board.comparisons
    assert first["difference"] == pytest.approx(second["difference"], rel=1e-12)
    assert first["ci_high"] < 0


def test_scorecard_cells_equal_an_independent_computation(scored, sample_test):
    reports, _ = scored
    board = leaderboard([reports["four"].summary], n_resamples=200)
    cells = {(c["channel"], c["region"]): c for c in board.scorecard}
    assert set(cells) == {(c, r) for c in CHANNELS for r in ("global", "tropics")}
    weights = np.clip(np.cos(np.deg2rad(sample_test.latitude.values)), 0, None)[:, None]
    weights = np.broadcast_to(weights, sample_test["target"].shape[-2:])
    truth = sample_test["target"].sel(channel="msl").values.astype(np.float64)

    def rmse(field):
        values = field.sel(channel="msl").values.astype(np.float64)
        return np.array([np.sqrt(np.average((v - t) ** 2, weights=weights)) for v, t in
                         zip(values, truth, strict=True)])  # fmt: skip

    mine, ref = rmse(blended(sample_test)), rmse(sample_test["background"])
    cell = cells[("msl", "global")]
    assert cell["relative_pct"] == pytest.approx(100 * (mine.mean() - ref.mean()) / ref.mean())
    interval = paired_difference(mine, ref, n_resamples=200)
    assert cell["significant"] == (not interval.low <= 0 <= interval.high)


def test_leaderboard_command_writes_table_and_scorecard(scored, tmp_path, capsys):
    reports, folder = scored
    out = tmp_path / "board"
    argv = ["leaderboard", str(folder / "four"), str(folder / "t2m-only"), "--out", str(out)]
    assert main([*argv, "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "compared on the common channels t2m" in printed and "| Background |" in printed
    assert (out / "scorecard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RMSE relative to Background" in (out / "scorecard.md").read_text()
    recorded = json.loads((out / "leaderboard.json").read_text())
    assert recorded["channels"] == ["t2m"] and recorded["reference"] == "Background"
    assert main([*argv, "--bootstrap", "200"]) == 1  # earlier results: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err


def test_unknown_reference_is_refused(scored):
    reports, _ = scored
    with pytest.raises(DambenchInputError, match="No result holds the reference 'adas'"):
        leaderboard([reports["four"].summary], reference="adas")


def test_duplicate_seed_labels_are_refused_up_front(sample_folder, tmp_path, capsys):
    """Regression: --seeds 0 0 failed late with 'got shapes (14,) and (7,)'."""
    argv = ["evaluate", "--predictions", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]
    argv += ["--dataset", str(sample_folder), "--out", str(tmp_path / "out"), "--seeds", "0", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Seed labels must be unique; [0] given more than once" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_same_store_twice_is_refused(sample_folder, sample_test, tmp_path):
    store = write_store(sample_test, tmp_path / "a.zarr", ["t2m"], "a")
    with pytest.raises(DambenchInputError, match="same prediction store is given more than once"):
        evaluate_predictions([store, tmp_path / "." / "a.zarr"], sample_folder, n_resamples=50)


def test_observed_and_unobserved_scores_and_o_minus_a(scored, sample_test):
    reports, _ = scored
    frame = reports["four"].scores
    target = sample_test["target"].sel(channel="u10").values.astype(np.float64)
    observation = sample_test["observation"].sel(channel="u10").values.astype(np.float64)
    analysis = blended(sample_test).sel(channel="u10").values.astype(np.float64)
    background = sample_test["background"].sel(channel="u10").values.astype(np.float64)
    cos = np.clip(np.cos(np.deg2rad(sample_test.latitude.values)), 0, None)[:, None]

    def value(model, metric):
        hit = frame[(frame.model == model) & (frame.metric == metric) & (frame.channel == "u10")]
        return float(hit[hit.period == "all"]["value"].iloc[0])

    observed = np.isfinite(observation)
    for model, field in (("four", analysis), ("Background", background)):
        for metric, where in (("rmse_observed", observed), ("rmse_unobserved", ~observed)):
            full = np.broadcast_to(cos, where.shape[1:])
            per_cycle = [
                np.sqrt(np.sum((full * (f - t) ** 2)[w]) / np.sum(full[w]))
                for f, t, w in zip(field, target, where, strict=True)
            ]
            assert value(model, metric) == pytest.approx(np.mean(per_cycle), rel=1e-9)
        o_minus = [(o - f)[m] for o, f, m in zip(observation, field, observed, strict=True)]
        assert value(model, "oma_mean") == pytest.approx(np.mean([d.mean() for d in o_minus]))
        rms = np.mean([np.sqrt((d**2).mean()) for d in o_minus])
        assert value(model, "oma_rms") == pytest.approx(rms, rel=1e-9)
    # the blended analysis copies its observations: O-A is 0, and only observed points improve
    assert value("four", "oma_rms") == 0.0 < value("Background", "oma_rms")
    unobserved = value("Background", "rmse_unobserved")
    assert value("four", "rmse_unobserved") == pytest.approx(unobserved)
    table = reports["four"].tables["observed.md"]
    assert "| four | msl | Pa |" in table and "O-B" in table


def test_every_table_is_headed_by_dataset_digest_split_and_units(scored):
    reports, folder = scored
    digest = reports["four"].summary["dataset_digest"][:16]
    for name in ("table3.md", "channels.md", "regions.md", "observed.md"):
        lines = (folder / "four" / name).read_text().splitlines()
        assert lines[0].startswith(f"Dataset era5-sample, digest {digest}"), name
        assert "split test" in lines[0] and lines[1].startswith("Units: "), name
    channels = (folder / "four" / "channels.md").read_text()
    assert "| four | msl | Pa |" in channels
    regions = (folder / "four" / "regions.md").read_text()
    assert "| four | tropics |" in regions and "RMSE msl" in regions


def test_figures_show_the_increment_the_observations_and_spectra_over_all_cycles(
    scored, sample_test
):
    from dambench.plot import band_spectrum
    from dambench.scoring import open_predictions
    from dambench.scoring.figures import maps_figure, mean_spectra, spectra_figure

    _, folder = scored
    predictions = open_predictions(folder / "four.zarr")
    titles = [ax.get_title() for ax in maps_figure(sample_test, predictions, "four", "t2m").axes]
    observed = int(sample_test["observation"].isel(time=-1).sel(channel="t2m").notnull().sum())
    assert any(t.startswith("increment: four - background") for t in titles)
    assert any(t.startswith(f"observations ({observed} points)") for t in titles)
    spectra = mean_spectra(sample_test, predictions, "four", "t2m")
    target = band_spectrum(sample_test["target"].sel(channel="t2m"))  # every cycle at once
    np.testing.assert_allclose(spectra["target"].values, target.values, rtol=1e-10)
    (ax,) = spectra_figure(sample_test, predictions, "four", "t2m").axes
    assert "mean over 7 cycles" in ax.get_title()


def test_relative_improvement_is_made_on_the_common_channels(scored, sample_test):
    """Table 4's Imp through dambench.scoring: identical t2m fields improve by 0 %, and an
    analysis over the background by numpy's ratio on the channels both scored."""
    from dambench.scoring.comparison import relative_improvement

    reports, _ = scored
    four, t2m = reports["four"].summary, reports["t2m-only"].summary
    with pytest.warns(UserWarning, match="common channels t2m"):
        same = relative_improvement(four, t2m)
    assert same["value"] == pytest.approx(0.0, abs=1e-10) and same["channels"] == ["t2m"]
    with pytest.warns(UserWarning):
        better = relative_improvement(four, t2m, model_b="Background")
    mine = _normalised_mse(sample_test, blended(sample_test), ["t2m"]).mean()
    theirs = _normalised_mse(sample_test, sample_test["background"], ["t2m"]).mean()
    assert better["value"] == pytest.approx(100 * (1 - mine / theirs), rel=1e-6)
    assert better["ci"][0] > 0


def test_leaderboard_observed_table_has_every_row_once(scored):
    from dambench.scoring.leaderboard import load_scores, observed_table

    reports, folder = scored
    board = leaderboard([reports["four"].summary, reports["t2m-only"].summary], n_resamples=200)
    table = observed_table([load_scores(folder / n) for n in ("four", "t2m-only")], board)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == ["Background", "four", "t2m-only"]
    assert all(" | t2m | K | " in r for r in rows) and table.startswith("Dataset era5-sample")
