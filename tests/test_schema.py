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
