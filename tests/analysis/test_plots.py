"""The results plots: labels of close points never overprint each other."""
import itertools

from matplotlib.text import Annotation, Text

from mixaq_mmdet.analysis.plots import pareto_figure, plot_pareto

# The demo's PTQ rows: a cluster at 1.35x whose label column reaches the lone
# points at 2.18x and 2.98x.
ROWS = [
    dict(name=n, speedup=s, bbox_mAP=m)
    for n, s, m in (('uniform_w8a8', 0.54, 72.0), ('uniform_w4a8', 1.0, 71.9),
                    ('uniform_w4a6', 1.38, 72.0), ('search_1.35x', 1.35, 71.9),
                    ('uniform_ratio_1.35x', 1.35, 71.9), ('mixaq_w4a8a4', 1.34, 71.6),
                    ('mixaq_w4a8a4_prune', 1.57, 66.5), ('uniform_w4a4', 2.18, 71.2),
                    ('uniform_w4a3', 2.98, 70.2), ('uniform_w4a2', 4.57, 54.7))
]


def _labels(fig):
    return [t for t in fig.axes[0].texts if isinstance(t, Annotation)]


def test_every_row_is_labelled_once_and_no_labels_overlap():
    fig = pareto_figure(ROWS)
    labels = _labels(fig)
    assert sorted(t.get_text() for t in labels) == sorted(f"{r['name']} ({r['bbox_mAP']:.1f})"
                                                          for r in ROWS)
    fig.draw_without_rendering()
    for a, b in itertools.combinations(labels, 2):
        assert not Text.get_window_extent(a).overlaps(Text.get_window_extent(b)), \
            (a.get_text(), b.get_text())


def test_far_points_keep_their_own_labels(tmp_path):
    rows = [dict(name='a', speedup=1.0, bbox_mAP=70.0), dict(name='b', speedup=4.0, bbox_mAP=60.0)]
    fig = pareto_figure(rows)
    assert all(label.arrow_patch is None for label in _labels(fig))  # no column: beside each
    plot_pareto(rows, str(tmp_path / 'p.png'))
    assert (tmp_path / 'p.png').stat().st_size > 0


def test_policy_curves_label_their_points_like_the_pareto_plot(tmp_path, monkeypatch):
    from mixaq_mmdet.analysis import plots
    laid_out = []
    label_points = plots._label_points
    monkeypatch.setattr(
        plots, '_label_points',
        lambda fig, ax, rows, x, y: laid_out.append(rows) or label_points(fig, ax, rows, x, y))
    singles = [('uniform_w4a8', 1.0, 71.9), ('uniform_w4a6', 1.38, 72.0),
               ('uniform_w4a4', 2.18, 71.2)]
    plots.plot_policy_curves({'contrast': [(1.0, 71.9), (1.35, 71.9)]}, singles,
                             str(tmp_path / 'policy.png'))
    assert [(r['name'], r['x'], r['y']) for r in laid_out[0]] == singles
    assert (tmp_path / 'policy.png').stat().st_size > 0
