"""Plots of the results table."""
from typing import Dict, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_pareto(rows: Sequence[Dict], out_file: str, x: str = 'speedup',
                y: str = 'bbox_mAP', title: str = '') -> None:
    """Scatter ``y`` against ``x`` for every row, labelled by name.

    Uniform rows (``name`` starting with 'uniform') are joined by a line: the
    trade-off MixA-Q rows must beat to be worth it.
    """
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    uniform = sorted((r for r in rows if r['name'].startswith('uniform')),
                     key=lambda r: r[x])
    if uniform:
        ax.plot([r[x] for r in uniform], [r[y] for r in uniform], '--',
                color='grey', label='uniform PTQ')
    for row in rows:
        kind = row['name'].split('_')[0]
        marker = dict(uniform='s', mixaq='o').get(kind, 'D')
        ax.scatter(row[x], row[y], marker=marker, s=40, zorder=3)
        ax.annotate(row['name'], (row[x], row[y]), textcoords='offset points',
                    xytext=(4, 4), fontsize=7)
    ax.set_xlabel('BitOPs speedup over uniform W4A8' if x == 'speedup' else x)
    ax.set_ylabel(y.replace('_', ' '))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)
