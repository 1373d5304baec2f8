"""A period as a picture (``--status --png FILE``): per contender its declared, demonstrated,
credited and effective capacity as bars on one scale per task, with reliability and quality
written beside them, for a person who would rather look than read the table."""

from __future__ import annotations

from pathlib import Path

from core.validator.status import Snapshot


class NoPlotting(RuntimeError):
    """matplotlib is not installed (it comes with the sim extra)."""


def period_png(snap: Snapshot, path: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise NoPlotting("--png needs matplotlib: pip install -e '.[sim]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(snap.closing.rows, key=lambda r: (r.contender.task, r.contender.uid))
    tasks = sorted({r.contender.task for r in rows})
    fig, axes = plt.subplots(len(tasks) or 1, 1, figsize=(9, 1.2 + 0.5 * max(len(rows), 1)),
                             squeeze=False)
    bars = (("declared", "#bbbbbb"), ("demonstrated", "#6baed6"), ("credited", "#2171b5"),
            ("effective", "#08306b"))
    for ax, task in zip(axes[:, 0], tasks or ["(no contender)"]):
        mine = [r for r in rows if r.contender.task == task]
        for i, r in enumerate(mine):
            values = (r.contender.declared, r.state.demonstrated, r.state.credited, r.effective)
            for j, ((name, colour), value) in enumerate(zip(bars, values)):
                ax.barh(i + j * 0.2 - 0.3, value, height=0.2, color=colour,
                        label=name if i == 0 else None)
            ax.text(max(r.contender.declared, r.state.demonstrated) * 1.01, i,
                    f"rel {r.state.reliability:.2f}  q {r.state.quality:.2f}", va="center",
                    fontsize=7)
        ax.set_yticks(range(len(mine)), [f"uid {r.contender.uid}" for r in mine], fontsize=7)
        ax.set_title(task, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        widest = max((max(r.contender.declared, r.state.demonstrated) for r in mine), default=1)
        ax.set_xlim(0, widest * 1.3 or 1)  # room for the figures written beside the bars
    progress = "finished" if snap.finished else "in progress"
    fig.suptitle(f"period {snap.period} ({progress})", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="upper right", ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
