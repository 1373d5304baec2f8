"""A period as a picture (``--status --png FILE``): per task, each contender's declared,
demonstrated, credited and effective capacity as bars on one axis in the task's unit per period,
with reliability and quality written beside them; then the period's weights per uid (the
table's ``weights:`` line), for a person who would rather look than read the table."""

from __future__ import annotations

from pathlib import Path

from core.errors import SetupError
from core.tasks import TASKS
from core.validator.status import Snapshot

ROW_IN = 0.75  # inches of height per contender: four bars and their labels stay readable
BARS = (("declared", "#bbbbbb"), ("demonstrated", "#6baed6"), ("credited", "#2171b5"),
        ("effective", "#08306b"))


class NoPlotting(SetupError):
    """matplotlib is not installed (it comes with the sim extra)."""


def period_png(snap: Snapshot, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = period_figure(snap)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def period_figure(snap: Snapshot):
    """The matplotlib figure ``period_png`` writes."""
    try:
        import matplotlib
    except ImportError:
        raise NoPlotting("--png needs matplotlib: pip install -e '.[sim]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(snap.closing.rows, key=lambda r: (r.contender.task, r.contender.uid))
    tasks = sorted({r.contender.task for r in rows}) or ["(no contender)"]
    uids = sorted({r.contender.uid for r in rows})
    heights = [max(1, sum(r.contender.task == t for r in rows)) * ROW_IN + 0.9 for t in tasks]
    heights.append(max(1, len(uids)) * 0.35 + 0.9)  # the weights panel
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 1.0), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, task in zip(axes[:-1, 0], tasks):
        mine = [r for r in rows if r.contender.task == task]
        widest = max((max(r.contender.declared, r.state.demonstrated, r.state.credited)
                      for r in mine), default=0) or 1.0
        for i, r in enumerate(mine):
            values = (r.contender.declared, r.state.demonstrated, r.state.credited, r.effective)
            for j, ((name, colour), value) in enumerate(zip(BARS, values)):
                ax.barh(i + (j - 1.5) * 0.2, value, height=0.18, color=colour,
                        label=name if i == 0 else None)
            ax.text(widest * 1.02, i, f"reliability {r.state.reliability:.2f}\n"
                                      f"quality {r.state.quality:.2f}", va="center", fontsize=8)
        ax.set_yticks(range(len(mine)), [f"uid {r.contender.uid}" for r in mine], fontsize=9)
        ax.set_ylim(len(mine) - 0.5, -0.5)  # the first uid on top, as in the table
        unit = TASKS[task].unit.value if task in TASKS else "units"
        ax.set_title(task, fontsize=10, loc="left")
        ax.set_xlabel(f"capacity ({unit} per period)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlim(0, widest * 1.25)  # room for the figures written beside the bars
        ax.grid(axis="x", alpha=0.3)
    ax = axes[-1, 0]
    shares = [float(snap.period_weights[u]) if u < len(snap.period_weights) else 0.0
              for u in uids]
    ax.barh(range(len(uids)), shares, height=0.6, color="#238b45")
    for i, share in enumerate(shares):
        ax.text(share + 0.01, i, f"{share:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(uids)), [f"uid {u}" for u in uids], fontsize=9)
    ax.set_ylim(len(uids) - 0.5 if uids else 0.5, -0.5)
    ax.set_xlim(0, max(max(shares, default=0) * 1.15, 0.1))
    ax.set_xlabel("weight (share of the period's weight vector, summing to 1 over all uids)",
                  fontsize=9)
    ax.set_title("weights", fontsize=10, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    progress = "finished" if snap.finished else "in progress, so far"
    fig.suptitle(f"period {snap.period} ({progress})", fontsize=12, x=0.01, ha="left")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=9, loc="upper right", ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (sum(heights) + 1.0)))
    return fig
