"""Regridding cost: one 0.25 degree 69-channel state (69, 721, 1440) float32 to the 1.5 degree grid.

regrid_ratio = time(dambench conservative regrid of the state) / time(one numpy pass over the same
array: a mean over latitude and longitude). A fresh Regridder is built in each timed run, so the
ratio includes computing the weights. Best of --repeats. Last line: ``regrid_ratio=X``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_of

from dambench import CANONICAL_GRID, Regridder, lat_weights, schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    rng = np.random.default_rng(0)
    state = rng.standard_normal((len(schema.CHANNELS), 721, 1440), dtype=np.float32)

    def ours():
        return Regridder(lat, lon).regrid_array(state)

    def numpy_pass():
        return state.mean(axis=(-2, -1))

    out = ours()
    assert out.shape == (len(schema.CHANNELS), *CANONICAL_GRID.shape)
    w_src = lat_weights(lat, "area").values[:, None]
    w_dst = lat_weights(CANONICAL_GRID.latitude, "area").values[:, None]
    drift = abs((out * w_dst).mean() - (state * w_src).mean())
    t_ours = best_of(ours, args.repeats)
    t_np = best_of(numpy_pass, args.repeats)
    print(f"state {state.shape} float32 ({state.nbytes / 1e6:.0f} MB) -> {out.shape}")
    print(f"area-weighted mean drift: {drift:.2e}")
    print(f"dambench regrid: {t_ours:.3f} s; numpy mean pass: {t_np:.3f} s")
    print(f"regrid_ratio={t_ours / t_np:.2f}")


if __name__ == "__main__":
    main()
