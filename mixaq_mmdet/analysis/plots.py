"""Plots of the results table."""
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure


def plot_pareto(rows: Sequence[Dict], out_file: str, x: str = 'speedup',
                y: str = 'bbox_mAP', title: str = '', xlabel: Optional[str] = None) -> None:
    """Scatter ``y`` against ``x`` for every row, labelled by name.

    Uniform rows (with 'uniform' in their ``name``) are joined by a line: the
    trade-off MixA-Q rows must beat to be worth it.
    """
    fig, ax = _axes()
    uniform = sorted((r for r in rows if 'uniform' in r['name']),
                     key=lambda r: r[x])
    if uniform:
        ax.plot([r[x] for r in uniform], [r[y] for r in uniform], '--',
                color='grey', label='uniform')
    xs, ys = [r[x] for r in rows], [r[y] for r in rows]
    x_span = (max(xs) - min(xs)) or 1.0
    y_step = ((max(ys) - min(ys)) or 1.0) * 0.05
    clusters: List[List[Dict]] = []
    for row in sorted(rows, key=lambda r: (r[x], -r[y])):
        if clusters and row[x] - clusters[-1][-1][x] < 0.1 * x_span:
            clusters[-1].append(row)
        else:
            clusters.append([row])
    for cluster in clusters:
        # a cluster's labels form a column, so close points do not overprint
        top = max(r[y] for r in cluster) + (0.8 * y_step if len(cluster) == 1 else 0)
        for level, row in enumerate(sorted(cluster, key=lambda r: -r[y])):
            marker = 's' if 'uniform' in row['name'] else 'o' if 'mixaq' in row['name'] \
                else 'D'
            ax.scatter(row[x], row[y], marker=marker, s=40, zorder=3)
            ax.annotate(f"{row['name']} ({row[y]:.1f})", (row[x], row[y]),
                        xytext=(cluster[-1][x] + (0.03 if len(cluster) > 1
                                                  else -0.02) * x_span,
                                top - level * y_step),
                        fontsize=7, va='center',
                        arrowprops=dict(arrowstyle='-', lw=0.4, color='grey')
                        if len(cluster) > 1 else None)
    _save(fig, ax, out_file, xlabel or x, y.replace('_', ' '), title)


def plot_search(result, uniform_cost: float, out_file: str, targets: Sequence[float] = (),
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
                       points: Sequence[Tuple[str, float, float]], out_file: str,
                       title: str = '', xlabel: str = 'BitOPs speedup') -> None:
    """One line per window order (``(speedup, mAP)`` along the low-bit ratio)
    and labelled single points (the uniform bit widths); labels of close
    points are stacked."""
    fig, ax = _axes()
    for label, curve in curves.items():
        ax.plot(*zip(*sorted(curve)), 'o-', ms=4, label=label)
    span = (max(x for _, x, _ in points) - min(x for _, x, _ in points)) or 1.0 if points else 1.0
    level, previous = 0, None
    for name, x, y in sorted(points, key=lambda p: p[1]):
        level = level + 1 if previous is not None and x - previous < 0.12 * span else 0
        previous = x
        ax.scatter(x, y, marker='s', color='black', s=30, zorder=3)
        ax.annotate(f'{name} ({y:.1f})', (x, y), xytext=(6, 6 - 10 * level),
                    textcoords='offset points', fontsize=7)
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
