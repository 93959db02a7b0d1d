"""Plots of the results table."""
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text


def plot_pareto(rows: Sequence[Dict],
                out_file: str,
                x: str = 'speedup',
                y: str = 'bbox_mAP',
                title: str = '',
                xlabel: Optional[str] = None) -> None:
    """Scatter ``y`` against ``x`` for every row, labelled by name (see
    :func:`pareto_figure`)."""
    fig = pareto_figure(rows, x, y)
    _save(fig, fig.axes[0], out_file, xlabel or x, y.replace('_', ' '), title)


def pareto_figure(rows: Sequence[Dict], x: str = 'speedup', y: str = 'bbox_mAP') -> Figure:
    """The scatter of :func:`plot_pareto`.

    Uniform rows (with 'uniform' in their ``name``) are joined by a line: the
    trade-off MixA-Q rows must beat to be worth it. Labels as
    :func:`_label_points` lays them out.
    """
    fig, ax = _axes()
    uniform = sorted((r for r in rows if 'uniform' in r['name']), key=lambda r: r[x])
    if uniform:
        ax.plot([r[x] for r in uniform], [r[y] for r in uniform],
                '--',
                color='grey',
                label='uniform')
    for row in sorted(rows, key=lambda r: (r[x], -r[y])):
        marker = 's' if 'uniform' in row['name'] else 'o' if 'mixaq' in row['name'] else 'D'
        ax.scatter(row[x], row[y], marker=marker, s=40, zorder=3)
    _label_points(fig, ax, rows, x, y)
    return fig


def _label_points(fig: Figure, ax, rows: Sequence[Dict], x: str, y: str) -> None:
    """Label every row's point ``name (y)``: points close in ``x`` share a
    column of labels, and columns whose texts would overprint each other (as
    measured on the drawn figure) are merged into one."""
    xs, ys = [r[x] for r in rows], [r[y] for r in rows]
    x_span = (max(xs) - min(xs)) or 1.0
    y_step = ((max(ys) - min(ys)) or 1.0) * 0.05
    clusters: List[List[Dict]] = []
    for row in sorted(rows, key=lambda r: (r[x], -r[y])):
        if clusters and row[x] - clusters[-1][-1][x] < 0.1 * x_span:
            clusters[-1].append(row)
        else:
            clusters.append([row])
    fig.tight_layout()
    while True:
        columns = [_label_column(ax, cluster, x, y, x_span, y_step) for cluster in clusters]
        fig.draw_without_rendering()
        overlap = next(
            (i for i in range(len(columns) - 1) if _overprint(columns[i], columns[i + 1])), None)
        if overlap is None:
            return
        for column in columns:
            for label in column:
                label.remove()
        clusters[overlap:overlap + 2] = [clusters[overlap] + clusters[overlap + 1]]


def _label_column(ax, cluster: List[Dict], x: str, y: str, x_span: float,
                  y_step: float) -> List[Annotation]:
    """The labels of ``cluster``: beside a lone point, or a column right of the
    cluster's last point with a line to each point."""
    top = max(r[y] for r in cluster) + (0.8 * y_step if len(cluster) == 1 else 0)
    anchor = cluster[-1][x] + (0.03 if len(cluster) > 1 else -0.02) * x_span
    return [
        ax.annotate(
            f"{row['name']} ({row[y]:.1f})", (row[x], row[y]),
            xytext=(anchor, top - level * y_step),
            fontsize=7,
            va='center',
            arrowprops=dict(arrowstyle='-', lw=0.4, color='grey') if len(cluster) > 1 else None)
        for level, row in enumerate(sorted(cluster, key=lambda r: -r[y]))
    ]


def _overprint(first: List[Annotation], second: List[Annotation]) -> bool:
    """Whether a text of ``first`` overlaps a text of ``second`` (as drawn;
    the lines to the points may cross)."""
    return any(
        Text.get_window_extent(a).overlaps(Text.get_window_extent(b)) for a in first
        for b in second)


def plot_search(result,
                uniform_cost: float,
                out_file: str,
                targets: Sequence[float] = (),
                ylabel: str = 'accuracy') -> None:
    """Every candidate a ratio search evaluated (speedup over the uniform
    high-bit model against its accuracy), its Pareto front and the targets."""
    fig, ax = _axes()
    points = [(uniform_cost / e.cost, e.accuracy) for e in result.evaluations
              if e.accuracy == e.accuracy]  # not nan: inside the band
    if points:
        ax.scatter(*zip(*points), s=12, color='lightgrey', label='evaluated')
    front = sorted((uniform_cost / e.cost, e.accuracy) for e in result.front())
    if front:
        ax.plot(*zip(*front), 'o-', color='C0', label='Pareto front')
    for target in targets:
        ax.axvline(target, ls='--', lw=0.8, color='C3')
    _save(fig, ax, out_file, 'BitOPs speedup over the uniform high-bit model', ylabel)


def plot_policy_curves(curves: Dict[str, Sequence[Tuple[float, float]]],
                       points: Sequence[Tuple[str, float, float]],
                       out_file: str,
                       title: str = '',
                       xlabel: str = 'BitOPs speedup') -> None:
    """One line per window order (``(speedup, mAP)`` along the low-bit ratio)
    and labelled single points (the uniform bit widths), labelled as in
    :func:`pareto_figure`."""
    fig, ax = _axes()
    for label, curve in curves.items():
        ax.plot(*zip(*sorted(curve)), 'o-', ms=4, label=label)
    for _, x, y in points:
        ax.scatter(x, y, marker='s', color='black', s=30, zorder=3)
    if points:
        _label_points(fig, ax, [dict(name=n, x=x, y=y) for n, x, y in points], 'x', 'y')
    _save(fig, ax, out_file, xlabel, 'bbox mAP (val)', title)


def _axes():
    # The Figure API, not pyplot: no global backend switch in a user's session.
    fig = Figure(figsize=(7, 5), dpi=110)
    return fig, fig.subplots()


def _save(fig: Figure, ax, out_file: str, xlabel: str, ylabel: str, title: str = '') -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file)
