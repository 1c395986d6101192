"""Figures people can read: maps of a triplet, error maps and zonal energy spectra.

Every function builds a :class:`matplotlib.figure.Figure` with the object-oriented API and returns
it (saving it first when a ``path`` is given). Nothing here touches pyplot's state or the user's
backend: no window opens, a script's figures are freed when dropped, and Jupyter displays a returned
figure. Titles carry the model name and the valid time; error panels share one symmetric colour
limit, so equal colours mean equal errors across panels. Coastlines are drawn when cartopy is
installed (``pip install 'dambench[plot]'``); without it, maps are plain latitude-longitude images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError, MissingDependencyError

logger = logging.getLogger(__name__)

SPARSE_FRACTION = 0.02
"""Panels with fewer finite points than this fraction are drawn as dots (observations)."""


# --- labels ---------------------------------------------------------------------------------
def _format_time(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def _valid_time(field: xr.DataArray, override=None) -> str:
    """``"valid 2024-01-01 00:00 UTC"`` from ``override`` or the field's ``time`` coordinate."""
    if override is not None:
        return f"valid {_format_time(override)} UTC"
    if schema.TIME not in field.coords:
        return ""
    times = np.atleast_1d(field[schema.TIME].values)
    if times.size == 1:
        return f"valid {_format_time(times[0])} UTC"
    return (
        f"valid {_format_time(times.min())} to {_format_time(times.max())} UTC ({times.size} times)"
    )


def _units(field: xr.DataArray) -> str:
    if field.attrs.get("units"):
        return str(field.attrs["units"])
    if "units" in field.coords and field["units"].ndim == 0:
        return str(field["units"].values)
    return ""


def _channel(field: xr.DataArray) -> str:
    if schema.CHANNEL in field.coords and field[schema.CHANNEL].ndim == 0:
        return str(field[schema.CHANNEL].values)
    return str(field.name or "")


def _title(name: str, model: str | None, when: str) -> str:
    details = ", ".join(part for part in (model, when) if part)
    return f"{name}\n{details}" if details else name


# --- figure plumbing ------------------------------------------------------------------------
def _cartopy_crs(coastlines: bool | None):
    """``cartopy.crs`` when coastlines are wanted and can be drawn, else ``None``.

    The Natural Earth coastlines are fetched (or found in cartopy's cache) here, so that an
    offline machine without them falls back to plain maps (``coastlines=None``) or fails now
    with a clear error (``coastlines=True``), not later in ``savefig``.
    """
    if coastlines is False:
        return None
    try:
        import cartopy.crs as ccrs
        from cartopy.io import shapereader

        shapereader.natural_earth(resolution="110m", category="physical", name="coastline")
    except ImportError as err:
        if coastlines:
            raise MissingDependencyError(
                f"coastlines=True needs cartopy ({err}): pip install 'dambench[plot]' (or pass "
                "coastlines=None to draw them only when cartopy is installed)."
            ) from err
        return None
    except OSError as err:  # no cached coastline data and no network
        if coastlines:
            raise MissingDependencyError(
                f"cartopy could not get the Natural Earth coastlines ({err}); connect once or "
                "pass coastlines=False."
            ) from err
        logger.warning("No coastlines: cartopy could not get the Natural Earth data (%s).", err)
        return None
    return ccrs


def _new_figure(n_panels: int, crs_module, central_longitude: float, panel_size=(5.2, 3.1)):
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = int(np.ceil(n_panels / cols))
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    subplot_kw = {}
    if crs_module is not None:
        subplot_kw["projection"] = crs_module.PlateCarree(central_longitude=central_longitude)
    axes = fig.subplots(rows, cols, squeeze=False, subplot_kw=subplot_kw).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _finish(fig, path: str | Path | None, dpi: int = 110):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def _as_map(field: xr.DataArray, name: str) -> xr.DataArray:
    """A 2-D ``(latitude, longitude)`` field with latitude north to south."""
    if not isinstance(field, xr.DataArray) or set(field.dims) != set(schema.SPATIAL_DIMS):
        dims = getattr(field, "dims", type(field).__name__)
        raise DambenchInputError(
            f"Panel {name!r} must be a (latitude, longitude) DataArray, got dims {dims}; select "
            "one map first, e.g. field.isel(time=-1).sel(channel='t2m')."
        )
    field = field.transpose(*schema.SPATIAL_DIMS)
    lat = field[schema.LATITUDE].values
    return field.isel({schema.LATITUDE: slice(None, None, -1)}) if lat[0] < lat[-1] else field


def _finite_values(fields: Sequence[xr.DataArray]) -> np.ndarray:
    values = np.concatenate([np.asarray(f.values, dtype=np.float64).ravel() for f in fields])
    return values[np.isfinite(values)]


def symmetric_limit(fields: Sequence[xr.DataArray]) -> float:
    """The largest finite ``|value|`` over all ``fields`` (1.0 when none is non-zero): the one
    colour limit ``(-limit, limit)`` that error panels share."""
    values = _finite_values(fields)
    limit = float(np.abs(values).max()) if values.size else 0.0
    return limit or 1.0


def _draw_map(ax, field: xr.DataArray, style: dict, crs_module, central_longitude: float):
    """Image (or dots for sparse fields) of a north-to-south map; returns the mappable.

    On cartopy axes the image is given in the axes' own PlateCarree (centred on the grid's
    middle longitude), so it is placed without resampling.
    """
    lat = field[schema.LATITUDE].values
    lon = field[schema.LONGITUDE].values
    values = np.asarray(field.values, dtype=np.float64)
    finite = np.isfinite(values)
    half = abs(lon[1] - lon[0]) / 2 if lon.size > 1 else 0.5
    shift = 0.0 if crs_module is None else central_longitude
    if finite.mean() < SPARSE_FRACTION:
        rows, cols = np.nonzero(finite)
        points = {} if crs_module is None else {"transform": crs_module.PlateCarree()}
        image = ax.scatter(lon[cols], lat[rows], c=values[finite], s=14, **style, **points)
    else:
        extent = (lon[0] - half - shift, lon[-1] + half - shift, lat[-1], lat[0])
        same = {} if crs_module is None else {"transform": ax.projection}
        image = ax.imshow(values, extent=extent, origin="upper", **style, **same)
    if crs_module is None:
        ax.set_xlim(lon[0] - half, lon[-1] + half)
        ax.set_ylim(lat[-1], lat[0])
        ax.set_aspect("equal")
        ax.set_xlabel("longitude (deg E)")
        ax.set_ylabel("latitude (deg N)")
    else:
        ax.set_global()
        ax.coastlines(linewidth=0.5)
        ax.gridlines(draw_labels=["left", "bottom"], linewidth=0.3, alpha=0.5)
    return image


def _panel_styles(
    fields: Mapping[str, xr.DataArray],
    diverging: Sequence[str],
    separate_scales: Sequence[str],
    error_limit: float | None,
) -> dict[str, dict]:
    """Colour map and limits per panel: one symmetric limit for all diverging panels, one
    min-max range shared by the others unless they have separate scales."""
    unknown = sorted((set(diverging) | set(separate_scales)) - set(fields))
    if unknown:
        raise DambenchInputError(f"diverging/separate_scales name panels {unknown} not in panels.")
    limit = error_limit or symmetric_limit([fields[n] for n in diverging] or [xr.DataArray(0.0)])
    shared = _finite_values(
        [f for n, f in fields.items() if n not in diverging and n not in separate_scales]
        or [xr.DataArray(np.nan)]
    )
    styles = {}
    for name in fields:
        if name in diverging:
            styles[name] = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
        elif name in separate_scales or not shared.size:
            styles[name] = {"cmap": "viridis"}
        else:
            styles[name] = {"cmap": "viridis", "vmin": shared.min(), "vmax": shared.max()}
    return styles


# --- maps -----------------------------------------------------------------------------------
def plot_maps(
    panels: Mapping[str, xr.DataArray],
    path: str | Path | None = None,
    *,
    model: str | None = None,
    valid_time=None,
    title: str = "",
    diverging: Sequence[str] = (),
    separate_scales: Sequence[str] = (),
    error_limit: float | None = None,
    coastlines: bool | None = None,
):
    """One latitude-longitude map per panel, saved to ``path`` (any matplotlib format) if given.

    Parameters
    ----------
    panels
        ``{panel name: (latitude, longitude) field}``, any latitude order.
    path
        Where to save the figure; ``None`` saves nothing.
    model
        Model name, shown in every panel title.
    valid_time
        Shown in every title; default: each panel's ``time`` coordinate.
    diverging
        Panels (errors, increments) drawn blue-red with ONE shared symmetric limit
        ``(-L, L)``, ``L`` = :func:`symmetric_limit` of all of them unless ``error_limit``.
    separate_scales
        Panels with their own colour scale; all others share one (min to max of them all).
    coastlines
        ``None``: when cartopy is installed; ``True``: required; ``False``: never.

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot. NaN (unobserved) points are blank; panels under
        :data:`SPARSE_FRACTION` finite are drawn as enlarged dots.
    """
    if not panels:
        raise DambenchInputError("plot_maps needs at least one panel.")
    fields = {name: _as_map(field, name) for name, field in panels.items()}
    styles = _panel_styles(fields, diverging, separate_scales, error_limit)
    crs_module = _cartopy_crs(coastlines)
    lon = next(iter(fields.values()))[schema.LONGITUDE].values
    central_longitude = float(lon[0] + lon[-1]) / 2
    fig, axes = _new_figure(len(fields), crs_module, central_longitude)
    for ax, (name, field) in zip(axes, fields.items(), strict=True):
        image = _draw_map(ax, field, styles[name], crs_module, central_longitude)
        ax.set_title(_title(name, model, _valid_time(field, valid_time)), fontsize=9)
        label = " ".join(part for part in (_channel(field), f"({_units(field)})") if part != "()")
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_error_maps(
    target: xr.DataArray,
    fields: Mapping[str, xr.DataArray],
    path: str | Path | None = None,
    **kwargs,
):
    """Maps of ``field - target`` for each of ``fields`` (e.g. background and analysis), all on
    one shared symmetric colour scale; keyword arguments as :func:`plot_maps`.

    Returns
    -------
    matplotlib.figure.Figure
        Panels titled ``"<label> - target"`` in the field's units.
    """
    truth = _as_map(target, "target")
    errors = {}
    for label, field in fields.items():
        try:
            field_, truth_ = xr.align(_as_map(field, label), truth, join="exact")
        except ValueError as err:
            raise DambenchInputError(
                f"{label!r} and the target are on different grids; regrid first ({err})."
            ) from err
        error = field_ - truth_
        errors[f"{label} - target"] = error.assign_attrs(units=_units(target) or _units(field))
    return plot_maps(errors, path, diverging=tuple(errors), **kwargs)


# --- spectra --------------------------------------------------------------------------------
def _check_longitude(lon: np.ndarray) -> float:
    """Uniform longitude spacing (degrees) of a full latitude circle, or raise."""
    spacing = np.mod(np.diff(lon), 360.0)
    step = 360.0 / lon.size
    if lon.size < 2 or not np.allclose(spacing, step, atol=1e-3):
        raise DambenchInputError(
            f"A zonal spectrum needs uniformly spaced longitudes covering the full circle "
            f"(spacing {step:g} deg for {lon.size} points); got spacings {np.unique(spacing)}."
        )
    return step


def _one_sided_power(values: np.ndarray) -> np.ndarray:
    """``c_k |rfft(values, norm="forward")|**2`` along the last axis, c_0 = 1, c_k = 2 below the
    Nyquist bin, and 1 at the Nyquist bin of an even length (so the sum is the mean square)."""
    n = values.shape[-1]
    power = np.abs(np.fft.rfft(np.asarray(values, dtype=np.float64), axis=-1, norm="forward"))
    factor = np.full(n // 2 + 1, 2.0)
    factor[0] = 1.0
    if n % 2 == 0:
        factor[-1] = 1.0
    return factor * power**2


def _energy_units(units: str) -> str:
    return "m" if units in ("", "1") else f"m ({units})^2"


def zonal_energy_spectrum(
    field: xr.DataArray, *, earth_radius_m: float = schema.EARTH_RADIUS_M
) -> xr.DataArray:
    """Zonal energy spectrum of each latitude row, after WeatherBench 2's ZonalEnergySpectrum.

    For a row at latitude phi with L longitudes, ``F_k = rfft(f, norm="forward")``,
    ``k = 0 .. L // 2``; ``S_k = C(phi) c_k |F_k|^2`` with circumference
    ``C(phi) = 2 pi R cos(phi)``, ``c_0 = 1`` and ``c_k = 2`` for ``k >= 1`` except ``c = 1`` at
    the Nyquist bin of an even L (WeatherBench 2 doubles that bin too), so that Parseval holds
    exactly: ``sum_k S_k = C(phi) * mean_l f_l**2``, the integral of ``f**2`` around the circle.

    Parameters
    ----------
    field
        Dims include ``latitude`` and ``longitude`` (uniform spacing, full circle, degrees).
    earth_radius_m
        Earth radius in metres (default :data:`dambench.schema.EARTH_RADIUS_M`; WeatherBench 2
        uses 6 367 500 m, which scales every S_k by 0.9994).

    Returns
    -------
    DataArray
        ``longitude`` replaced by ``zonal_wavenumber`` (cycles per latitude circle) as the last
        dim; the pole rows (``|latitude| = 90``, zero circumference) are dropped. Coordinate
        ``wavelength`` ``(latitude, zonal_wavenumber)`` in m (infinite at k = 0). Units
        ``m (field units)^2``. A NaN anywhere in a row makes that row's spectrum NaN.
    """
    _check_longitude(field[schema.LONGITUDE].values)
    rows = np.flatnonzero(np.abs(field[schema.LATITUDE].values) < 90.0 - 1e-6)
    field = field.isel({schema.LATITUDE: rows})
    n_lon = field.sizes[schema.LONGITUDE]
    power = xr.apply_ufunc(
        _one_sided_power,
        field,
        input_core_dims=[[schema.LONGITUDE]],
        output_core_dims=[["zonal_wavenumber"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"zonal_wavenumber": n_lon // 2 + 1}},
    )
    lat = field[schema.LATITUDE].astype(np.float64)
    circumference = 2 * np.pi * earth_radius_m * np.cos(np.deg2rad(lat))
    k = np.arange(n_lon // 2 + 1)
    with np.errstate(divide="ignore"):
        wavelength = circumference / xr.DataArray(k.astype(np.float64), dims="zonal_wavenumber")
    spectrum = (power * circumference).assign_coords(
        zonal_wavenumber=k, wavelength=wavelength.assign_attrs(units="m")
    )
    spectrum.attrs = {
        "long_name": "zonal energy spectrum",
        "earth_radius_m": earth_radius_m,
        "n_longitude": n_lon,
    }
    if "units" in field.coords and field["units"].ndim == 1:  # per-channel units
        per_channel = [_energy_units(str(u)) for u in field["units"].values]
        spectrum = spectrum.assign_coords(units=(field["units"].dims, per_channel))
    else:
        spectrum.attrs["units"] = _energy_units(_units(field))
        spectrum = spectrum.drop_vars("units", errors="ignore")
    return spectrum.rename(field.name)


def _spectrum_input(field: xr.DataArray, label: str) -> xr.DataArray:
    """One channel's complete field, ready for :func:`zonal_energy_spectrum`."""
    if not isinstance(field, xr.DataArray) or not set(schema.SPATIAL_DIMS) <= set(field.dims):
        raise DambenchInputError(f"Spectrum {label!r} needs a DataArray with latitude/longitude.")
    if schema.CHANNEL in field.dims:
        if field.sizes[schema.CHANNEL] != 1:
            raise DambenchInputError(
                f"Spectrum {label!r} has {field.sizes[schema.CHANNEL]} channels; plot one channel "
                "at a time, e.g. field.sel(channel='t2m')."
            )
        field = field.isel({schema.CHANNEL: 0})
    n_nan = int(field.isnull().sum())
    if n_nan:
        raise DambenchInputError(
            f"Spectrum {label!r} has {n_nan} NaN values; spectra need complete fields (not "
            "observations)."
        )
    return field


def _band_mean(spectrum: xr.DataArray, latitude_band: tuple[float, float]) -> xr.DataArray:
    """Mean over the latitude rows within the band and over every dim but the wavenumber."""
    lat = spectrum[schema.LATITUDE].values
    rows = np.flatnonzero((lat >= latitude_band[0]) & (lat <= latitude_band[1]))
    if rows.size == 0:
        raise DambenchInputError(f"No latitude row lies in {latitude_band=}.")
    band = spectrum.isel({schema.LATITUDE: rows})
    return band.mean([d for d in band.dims if d != "zonal_wavenumber"], keep_attrs=True)


def _check_same_times(fields: Mapping[str, xr.DataArray]) -> None:
    first = next(iter(fields.values()))
    for label, field in fields.items():
        if schema.TIME in field.coords and not (
            schema.TIME in first.coords
            and np.array_equal(field[schema.TIME].values, first[schema.TIME].values)
        ):
            raise DambenchInputError(f"Spectrum {label!r} is at other times than the first field.")


def plot_spectra(
    fields: Mapping[str, xr.DataArray],
    path: str | Path | None = None,
    *,
    model: str | None = None,
    valid_time=None,
    title: str = "",
    latitude_band: tuple[float, float] = (-60.0, 60.0),
    earth_radius_m: float = schema.EARTH_RADIUS_M,
):
    """Zonal energy spectra of one channel, e.g. ``{"target": t, "background": b, "analysis": a}``.

    Each curve is :func:`zonal_energy_spectrum` averaged over the latitude rows within
    ``latitude_band`` (degrees, inclusive) and over every other dim (e.g. time), plotted on log
    axes against the zonal wavenumber k from 1 (the zonal mean, k = 0, is left out) to below the
    Nyquist bin of an even grid (which holds one Fourier term, not two, so would dip by half). A
    blurry analysis shows as a curve falling below the target's at high k.

    Parameters
    ----------
    fields
        ``{label: field}`` with ``latitude`` and ``longitude`` dims, one channel (a scalar or
        length-1 ``channel``), the same times, no NaN (a NaN is refused, not skipped).
    path, model, valid_time, title
        As :func:`plot_maps`; the title names the channel, the band, the model and valid time.
    latitude_band
        ``(south, north)`` rows to average.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled with units: the energy in ``m (field units)^2``.
    """
    if not fields:
        raise DambenchInputError("plot_spectra needs at least one field.")
    fields = {label: _spectrum_input(field, label) for label, field in fields.items()}
    first = next(iter(fields.values()))
    _check_same_times(fields)
    spectra = {
        label: band_spectrum(field, latitude_band=latitude_band, earth_radius_m=earth_radius_m)
        for label, field in fields.items()
    }
    return plot_spectrum_curves(
        spectra,
        path,
        channel=_channel(first),
        model=model,
        when=_valid_time(first, valid_time),
        title=title,
        latitude_band=latitude_band,
    )


def band_spectrum(
    field: xr.DataArray,
    *,
    latitude_band: tuple[float, float] = (-60.0, 60.0),
    earth_radius_m: float = schema.EARTH_RADIUS_M,
) -> xr.DataArray:
    """:func:`zonal_energy_spectrum` of one complete channel averaged over the latitude rows
    within ``latitude_band`` (inclusive) and every dim but ``zonal_wavenumber``; attrs carry the
    ``units``. Averaging these per cycle over cycles equals the band mean over all cycles."""
    field = _spectrum_input(field, str(field.name))
    spectrum = zonal_energy_spectrum(field, earth_radius_m=earth_radius_m)
    return _band_mean(spectrum, latitude_band)


def plot_spectrum_curves(
    spectra: Mapping[str, xr.DataArray],
    path: str | Path | None = None,
    *,
    channel: str = "",
    model: str | None = None,
    when: str = "",
    title: str = "",
    latitude_band: tuple[float, float] = (-60.0, 60.0),
):
    """Log-log curves of band-mean zonal energy spectra (:func:`band_spectrum`, or their mean
    over cycles) against the zonal wavenumber k from 1 to below an even grid's Nyquist bin.

    Parameters
    ----------
    spectra
        ``{label: spectrum over zonal_wavenumber}``, all in the same ``attrs["units"]``
        (``attrs["n_longitude"]`` tells whether the last bin is an even grid's Nyquist bin).
    channel, model, when
        Shown in the axes title (``when``: e.g. ``"valid ... UTC"`` or ``"mean over 7 cycles"``).
    """
    units = {label: spectrum.attrs.get("units", "") for label, spectrum in spectra.items()}
    if len(set(units.values())) > 1:
        raise DambenchInputError(f"Spectra in different units cannot share axes: {units}.")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, spectrum in spectra.items():
        k = spectrum["zonal_wavenumber"].values
        even = int(spectrum.attrs.get("n_longitude", 2 * (k.size - 1))) % 2 == 0
        shown = slice(1, -1) if even else slice(1, None)
        ax.loglog(k[shown], spectrum.values[shown], label=label)
    ax.set_xlabel("zonal wavenumber k (cycles per latitude circle)")
    ax.set_ylabel(f"zonal energy S_k [{next(iter(units.values()))}]")
    ax.legend()
    south, north = latitude_band
    name = f"{channel} zonal energy spectra, latitudes {south:g} to {north:g}"
    ax.set_title(_title(name, model, when), fontsize=10)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
