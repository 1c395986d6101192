"""The scorecard figure keeps its titles inside the figure.

Regression: a scorecard of one region (``baselines/run_sample.py`` scores the global region
only) was 2.7 inches wide, and its title and panel titles ("convcnp_small vs background") were
cut off at both edges.
"""

from __future__ import annotations

import pytest

from dambench.scoring.scorecard import plot_scorecard


def _cells(regions: list[str]) -> list[dict]:
    return [
        {"method": method, "channel": channel, "region": region, "relative_pct": pct,
         "significant": pct < -5}
        for method, pct in (("threedvar", -35.0), ("convcnp_small", 0.5))
        for channel in ("u10", "v10", "t2m", "msl")
        for region in regions
    ]  # fmt: skip


@pytest.mark.parametrize("regions", [["global"], ["global", "tropics", "extratropics_north"]])
def test_titles_lie_inside_the_figure(regions):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plot_scorecard(_cells(regions), "background")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = fig.bbox
    texts = [fig._suptitle, *(ax.title for ax in fig.axes if ax.get_title())]
    assert len(texts) == 3
    for text in texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, (text.get_text(), box, frame)
