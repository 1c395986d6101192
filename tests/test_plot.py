"""Figures: titles, shared symmetric error scales, spectra with units, and no backend switching."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from dambench import DambenchInputError, MissingDependencyError, plot, schema
from dambench.testing import mock_triplet, smooth_field

VALID = "2024-01-03 00:00 UTC"


@pytest.fixture(scope="module")
def cycle():
    """The last cycle's t2m maps (target, background, a better analysis, observations)."""
    ds = mock_triplet(3, ["u10", "t2m"], seed=3)
    last = {"time": -1}
    target = ds["target"].isel(last).sel(channel="t2m")
    background = ds["background"].isel(last).sel(channel="t2m")
    analysis = (target + 0.3 * (background - target)).astype("float32")
    observation = ds["observation"].isel(last).sel(channel="t2m")
    return target, background, analysis, observation


@pytest.fixture
def no_cartopy(monkeypatch):
    for name in ("cartopy", "cartopy.crs", "cartopy.io", "cartopy.io.shapereader"):
        monkeypatch.setitem(sys.modules, name, None)


def _clims(fig: Figure) -> list[tuple[float, float]]:
    return [tuple(map(float, ax.get_images()[0].get_clim())) for ax in fig.axes if ax.get_images()]


def test_every_map_title_names_the_model_and_valid_time(cycle, no_cartopy, tmp_path):
    target, background, analysis, observation = cycle
    panels = {"target": target, "background": background, "observations": observation}
    fig = plot.plot_maps(panels, tmp_path / "maps.png", model="ConvCNP")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3
    assert all("ConvCNP" in t and VALID in t for t in titles)
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    override = plot.plot_maps({"target": target.drop_vars("time")}, valid_time="2020-05-01T06")
    assert "valid 2020-05-01 06:00 UTC" in override.axes[0].get_title()


def test_error_panels_share_one_symmetric_limit(cycle, no_cartopy):
    target, background, analysis, _ = cycle
    expected = max(
        np.abs(background.values - target.values).max(),
        np.abs(analysis.values - target.values).max(),
    )
    fig = plot.plot_error_maps(target, {"background": background, "analysis": analysis})
    limits = _clims(fig)
    assert len(limits) == 2
    for low, high in limits:
        assert low == -high
        assert high == pytest.approx(expected, rel=1e-6)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()] == [
        "background - target",
        "analysis - target",
    ]
    # plot_maps: every diverging panel gets the same limit, whatever its own range
    maps = plot.plot_maps(
        {"small": analysis - target, "large": background - target, "target": target},
        diverging=("small", "large"),
    )
    small, large, shared = _clims(maps)
    assert small == large and small[0] == -small[1]
    assert large[1] == pytest.approx(expected, rel=1e-6)
    assert shared == pytest.approx((target.values.min(), target.values.max()))


def test_latitude_order_does_not_flip_the_map(cycle, no_cartopy):
    target = cycle[0]
    north_first = plot.plot_maps({"t": target}).axes[0].get_images()[0].get_array()
    south_first = target.isel(latitude=slice(None, None, -1))
    flipped = plot.plot_maps({"t": south_first}).axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(north_first), np.asarray(flipped))


def test_plotting_keeps_the_users_backend_and_pyplot_state():
    # old code called matplotlib.use("Agg") and so switched the user's backend
    script = textwrap.dedent(
        """
        import matplotlib
        import matplotlib.pyplot as plt
        before = matplotlib.get_backend()
        from dambench import plot
        from dambench.testing import smooth_field
        field = smooth_field(1, ["t2m"])
        plot.plot_maps({"t2m": field.isel(time=0, channel=0)}, coastlines=False)
        plot.plot_spectra({"target": field.isel(channel=0)})
        print(before, matplotlib.get_backend(), len(plt.get_fignums()))
        """
    )
    env = {"MPLBACKEND": "svg", "PATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split() == ["svg", "svg", "0"]


def test_zonal_energy_spectrum_golden_and_parseval():
    field = smooth_field(2, ["u10", "t2m"], seed=7)
    lon = np.deg2rad(field.longitude.values)
    wave = xr.DataArray(3.0 + 2.0 * np.cos(5 * lon), dims="longitude")
    golden = (field.isel(channel=1, time=0) * 0 + wave).drop_vars("units")
    spectrum = plot.zonal_energy_spectrum(golden.assign_attrs(units="K"))
    lat = spectrum.latitude.values
    assert np.all(np.abs(lat) < 90) and lat.size == field.sizes["latitude"] - 2
    circumference = 2 * np.pi * schema.EARTH_RADIUS_M * np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(spectrum.isel(zonal_wavenumber=0), 9.0 * circumference)
    np.testing.assert_allclose(spectrum.isel(zonal_wavenumber=5), 2.0 * circumference)
    rest = spectrum.drop_isel(zonal_wavenumber=[0, 5])
    assert float(np.abs(rest).max()) < 1e-9 * float(spectrum.max())
    assert spectrum.attrs["units"] == "m (K)^2"
    np.testing.assert_allclose(
        spectrum.wavelength.isel(zonal_wavenumber=5), circumference / 5, rtol=1e-12
    )
    # Parseval on random fields (even length: the Nyquist bin counted once)
    full = plot.zonal_energy_spectrum(field)
    inner = field.isel(latitude=slice(1, -1)).astype(np.float64)
    circle = xr.DataArray(circumference, dims="latitude")
    np.testing.assert_allclose(
        full.sum("zonal_wavenumber").values,
        ((inner**2).mean("longitude") * circle).values,
        rtol=1e-10,
    )
    assert full["units"].values.tolist() == ["m (m s-1)^2", "m (K)^2"]


def test_spectra_figure_has_units_titles_and_the_band_mean(cycle, no_cartopy, tmp_path):
    ds = mock_triplet(2, ["u10", "t2m"], seed=5)
    fields = {name: ds[name].sel(channel="t2m") for name in ("target", "background")}
    fig = plot.plot_spectra(fields, tmp_path / "spectra.png", model="3D-Var")
    assert isinstance(fig, Figure) and (tmp_path / "spectra.png").exists()
    (ax,) = fig.axes
    assert ax.get_xlabel() == "zonal wavenumber k (cycles per latitude circle)"
    assert ax.get_ylabel() == "zonal energy S_k [m (K)^2]"
    title = ax.get_title()
    assert "3D-Var" in title and "valid 2024-01-01 00:00 to 2024-01-02 00:00 UTC" in title
    assert [line.get_label() for line in ax.get_lines()] == ["target", "background"]
    # the plotted curve: numpy rfft energy averaged over |lat| <= 60 and time, k = 1..119
    values = ds["target"].sel(channel="t2m").values.astype(np.float64)
    lat = ds.latitude.values
    rows = np.abs(lat) <= 60
    power = np.abs(np.fft.rfft(values[:, rows], axis=-1) / values.shape[-1]) ** 2
    energy = (
        2 * power * (2 * np.pi * schema.EARTH_RADIUS_M * np.cos(np.deg2rad(lat[rows])))[:, None]
    )
    expected = energy.mean(axis=(0, 1))[1:-1]
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 120))
    np.testing.assert_allclose(y, expected, rtol=1e-10)


def test_spectra_averaged_cycle_by_cycle_equal_the_band_mean_over_all_cycles(no_cartopy):
    """The evaluation's spectra: the mean over cycles of each cycle's band spectrum (one cycle
    in memory) equals the band mean of all cycles at once, and is what the figure plots."""
    ds = mock_triplet(3, ["u10", "t2m"], seed=5)
    field = ds["target"].sel(channel="t2m")
    at_once = plot.band_spectrum(field)
    cycle_by_cycle = sum(plot.band_spectrum(field.isel(time=t)) for t in range(3)) / 3
    np.testing.assert_allclose(cycle_by_cycle.values, at_once.values, rtol=1e-12)
    assert at_once.attrs["units"] == "m (K)^2" and at_once.attrs["n_longitude"] == 240
    fig = plot.plot_spectrum_curves(
        {"target": at_once}, channel="t2m", model="m", when="mean over 3 cycles"
    )
    (ax,) = fig.axes
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 120))  # the even grid's Nyquist bin left out
    np.testing.assert_allclose(y, at_once.values[1:-1])
    assert "mean over 3 cycles" in ax.get_title() and ax.get_ylabel().endswith("[m (K)^2]")


def test_spectra_refuse_what_they_cannot_plot(cycle):
    target, background, _, observation = cycle
    with pytest.raises(DambenchInputError, match="NaN"):
        plot.plot_spectra({"observations": observation})
    field = smooth_field(1, ["u10", "t2m"])
    with pytest.raises(DambenchInputError, match="one channel"):
        plot.plot_spectra({"both": field})
    with pytest.raises(DambenchInputError, match="different units"):
        plot.plot_spectra({"K": target, "normalised": (target - 280).assign_coords(units="1")})
    with pytest.raises(DambenchInputError, match="other times"):
        plot.plot_spectra(
            {"a": target, "b": background.assign_coords(time=np.datetime64("2000-01-01"))}
        )
    with pytest.raises(DambenchInputError, match="full circle"):
        plot.zonal_energy_spectrum(target.isel(longitude=slice(0, 100)))


def test_maps_refuse_ambiguous_input(cycle, no_cartopy):
    target, background, _, _ = cycle
    with pytest.raises(DambenchInputError, match=r"isel\(time=-1\)"):
        plot.plot_maps({"cube": target.expand_dims(member=2)})
    with pytest.raises(DambenchInputError, match="not in panels"):
        plot.plot_maps({"t": target}, diverging=("error",))
    coarse = background.isel(latitude=slice(0, 60))
    with pytest.raises(DambenchInputError, match="different grids"):
        plot.plot_error_maps(target, {"background": coarse})


def test_without_cartopy_maps_fall_back_or_name_the_extra(cycle, no_cartopy):
    target = cycle[0]
    fig = plot.plot_maps({"t": target})
    assert fig.axes[0].get_xlabel() == "longitude (deg E)"
    assert fig.axes[0].get_ylabel() == "latitude (deg N)"
    with pytest.raises(MissingDependencyError, match=r"dambench\[plot\]"):
        plot.plot_maps({"t": target}, coastlines=True)


def test_with_cartopy_maps_are_geoaxes(cycle):
    pytest.importorskip("cartopy")
    target = cycle[0]
    try:
        fig = plot.plot_maps({"t": target}, coastlines=True)
    except MissingDependencyError as err:  # cartopy present but Natural Earth data unreachable
        assert "Natural Earth" in str(err)
        return
    assert type(fig.axes[0]).__name__ == "GeoAxes"
