from dambench import schema


def test_channel_order_and_count():
    assert len(schema.CHANNELS) == 69
    assert schema.CHANNELS[:4] == ("u10", "v10", "t2m", "msl")
    # z, q, u, v, t blocks of 13 ascending levels: z50 at 4, q50 at 17, t1000 last
    assert schema.CHANNELS[4] == "z50" and schema.CHANNELS[16] == "z1000"
    assert schema.CHANNELS[17] == "q50" and schema.CHANNELS[-1] == "t1000"
    assert schema.CHANNELS.index("z500") == 4 + 7
    assert len(set(schema.CHANNELS)) == 69


def test_channel_variable_level_and_units():
    assert schema.CHANNEL_VARIABLE["z500"] == "z" and schema.CHANNEL_LEVEL["z500"] == 500
    assert schema.CHANNEL_VARIABLE["t2m"] == "t2m" and schema.CHANNEL_LEVEL["t2m"] is None
    assert schema.CHANNEL_LEVEL["q1000"] == 1000
    assert schema.channel_units("z500") == "m2 s-2"
    assert schema.channel_units("q700") == "kg kg-1"
    assert schema.channel_units("msl") == "Pa"
    assert set(schema.HEADLINE_CHANNELS) <= set(schema.CHANNELS)


def test_splits_and_grid_constants():
    assert schema.SPLITS["train"] == ("2000-01-01", "2022-12-31")
    assert schema.SPLITS["validation"] == ("2023-01-01", "2023-12-31")
    assert schema.SPLITS["test"] == ("2024-01-01", "2024-12-31")
    assert (schema.N_LATITUDE, schema.N_LONGITUDE) == (121, 240)
    assert 180 / schema.GRID_SPACING_DEG + 1 == schema.N_LATITUDE
    assert schema.CANONICAL_DIMS == ("time", "channel", "latitude", "longitude")


def test_observation_error_table_covers_every_channel_positively():
    assert set(schema.OBSERVATION_ERROR_STD) == set(schema.CHANNELS)
    assert all(v > 0 for v in schema.OBSERVATION_ERROR_STD.values())
    # humidity errors grow towards the surface, where there is more water vapour
    q = [schema.OBSERVATION_ERROR_STD[f"q{lv}"] for lv in schema.LEVELS_HPA]
    assert q == sorted(q)


def test_modality_table_is_the_one_source_of_names_and_units():
    from dambench.sources import cpc, cpc_grid, olr

    assert list(schema.MODALITIES) == ["precip", "precip_gauges", "olr"]
    # the readers spell their output the table's way: names and units come from it
    assert cpc.PRECIP_UNITS == schema.MODALITIES["precip"].units
    assert cpc.GAUGES_ATTRS["units"] == schema.MODALITIES["precip_gauges"].units
    assert (cpc_grid.PRECIP, cpc_grid.GAUGES) == ("precip", "precip_gauges")
    assert olr.OLR_UNITS == schema.MODALITIES["olr"].units and olr.OLR in schema.MODALITIES
    # the build config's groups produce every modality, each in exactly one group
    assert {info.group for info in schema.MODALITIES.values()} == set(schema.MODALITY_GROUPS)
    standardised = {n for n, info in schema.MODALITIES.items() if info.standardize}
    assert standardised == {"precip", "olr"}  # gauge counts stay a density channel
    assert schema.MODALITY_DIMS == ("time", "latitude", "longitude")


def test_level_tolerance_separates_float32_from_other_levels():
    import numpy as np

    nearest_float32 = float(np.nextafter(np.float32(850), np.float32(0)))
    assert abs(nearest_float32 - 850) < schema.LEVEL_ATOL_HPA < 0.4


def test_physical_ranges_cover_every_channel_and_exclude_unit_mistakes():
    assert set(schema.PHYSICAL_RANGE) == set(schema.CHANNELS)
    assert all(low < high for low, high in schema.PHYSICAL_RANGE.values())
    low, high = schema.PHYSICAL_RANGE["t2m"]
    assert low <= 184 and 330 <= high and high < 273.15 + 150  # records in; degC + K out
    low, high = schema.PHYSICAL_RANGE["msl"]
    assert low <= 87_000 and 108_500 <= high and high / 100 < low  # hPa falls out
    g0 = schema.STANDARD_GRAVITY_M_S2
    observed_m = {50: (18_500, 22_000), 500: (4_600, 6_000), 1000: (-700, 600)}
    for level, (lo_m, hi_m) in observed_m.items():
        low, high = schema.PHYSICAL_RANGE[f"z{level}"]
        assert low <= g0 * lo_m and g0 * hi_m <= high
    assert schema.PHYSICAL_RANGE["z500"][0] > 6_000  # geopotential height in m falls out
    assert schema.PHYSICAL_RANGE["q1000"][1] < 1  # q in g kg-1 (up to ~20) falls out


def test_era5_sample_lies_within_the_physical_ranges(era5_sample_target):
    for channel in era5_sample_target.channel.values.tolist():
        values = era5_sample_target.sel(channel=channel).values
        low, high = schema.PHYSICAL_RANGE[channel]
        assert low <= values.min() and values.max() <= high, channel
