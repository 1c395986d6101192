"""Metric throughput vs plain numpy on a (64, 69, 121, 240) float32 pair.

pointwise_ratio = time(rmse + mse + mae via dambench) / time(one numpy pass computing the same sums:
the squared, weighted-squared and absolute error means per sample and channel).
spectral_ratio = time(spec_div + spec_res via dambench) / time(one np.fft.rfft2 of both inputs).

Each timing is the best of --repeats runs. The last line printed is
``pointwise_ratio=X spectral_ratio=Y``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import xarray as xr
from _timing import best_of

from dambench import (
    CANONICAL_GRID,
    channel_coords,
    lat_weights,
    mae,
    mse,
    rmse,
    schema,
    spec_div,
    spec_res,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.samples, len(schema.CHANNELS), *CANONICAL_GRID.shape)
    truth_np = rng.standard_normal(shape, dtype=np.float32)
    pred_np = truth_np + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    coords = {
        "time": pd.date_range("2024-01-01", periods=args.samples, freq="D").values,
        **channel_coords(),
        **CANONICAL_GRID.coords(),
    }
    truth = xr.DataArray(truth_np, dims=schema.CANONICAL_DIMS, coords=coords)
    pred = xr.DataArray(pred_np, dims=schema.CANONICAL_DIMS, coords=coords)
    w = lat_weights(CANONICAL_GRID.latitude, "cos").values[:, None].astype(np.float32)

    def numpy_pointwise():
        err = pred_np - truth_np
        sq = err**2
        mse_np = sq.mean(axis=(2, 3))
        rmse_np = np.sqrt((sq * w).mean(axis=(2, 3))).mean(axis=0)
        mae_np = np.abs(err).mean(axis=(2, 3))
        return mse_np, rmse_np, mae_np

    def ours_pointwise():
        return rmse(pred, truth).values, mse(pred, truth).values, mae(pred, truth).values

    def numpy_fft():
        return np.fft.rfft2(pred_np), np.fft.rfft2(truth_np)

    def ours_spectral():
        return spec_div(pred, truth).values, spec_res(pred, truth).values

    # correctness guard: the two pointwise paths agree
    np.testing.assert_allclose(ours_pointwise()[0], numpy_pointwise()[1], rtol=1e-4)

    t_np = best_of(numpy_pointwise, args.repeats)
    t_ours = best_of(ours_pointwise, args.repeats)
    t_fft = best_of(numpy_fft, args.repeats)
    t_spec = best_of(ours_spectral, args.repeats)
    print(f"array {shape} float32, {truth_np.nbytes / 1e9:.2f} GB per input")
    print(f"numpy pointwise pass: {t_np:.3f} s; dambench rmse+mse+mae: {t_ours:.3f} s")
    print(f"numpy rfft2 of both:  {t_fft:.3f} s; dambench spec_div+spec_res: {t_spec:.3f} s")
    print(f"pointwise_ratio={t_ours / t_np:.2f} spectral_ratio={t_spec / t_fft:.2f}")


if __name__ == "__main__":
    main()
