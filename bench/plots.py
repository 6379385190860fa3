"""PNG plots in the paper's style, from a benchmark's result (see report.py).

- tasks: reduce-stage task completion times per mode, as box plots (Figs. 3 and 5);
- fetch wait: the mean time a reduce task waited for shuffle data (Fig. 4);
- stages: map stage, reduce stage and whole job per mode, side by side;
- iterations: PageRank's per-iteration times per mode (Fig. 6), when there are several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def draw(result: dict[str, Any], out: Path) -> list[Path]:
    summary = result["summary"]
    modes = list(summary)
    paths = []
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 2, 4))
    ax.boxplot([summary[m]["reduce_tasks"] for m in modes], whis=(0, 100))
    ax.set_xticks(range(1, len(modes) + 1), modes)
    ax.set_ylabel("task completion time (s)")
    ax.set_title("reduce-stage tasks: min, quartiles, max")
    paths.append(_save(fig, out, "tasks"))

    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 2, 4))
    ours = [summary[m]["netspark_fetch_wait_per_task_s"] for m in modes]
    total = [summary[m]["fetch_wait_per_task_s"] for m in modes]
    spark = [t - o for t, o in zip(total, ours, strict=True)]
    ax.bar(modes, spark, label="Spark's shuffle fetch (handles, for netspark)")
    ax.bar(modes, ours, bottom=spark, label="netspark fetch")
    ax.set_ylabel("wait per reduce task (s)")
    ax.set_title("time reduce tasks waited for shuffle data")
    ax.legend(fontsize="small")
    paths.append(_save(fig, out, "fetchwait"))

    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 2, 4))
    width = 0.8 / 3
    for i, (key, label) in enumerate([("map_stage_s", "map stage"),
                                      ("reduce_stage_s", "reduce stage"), ("job_s", "job")]):
        ax.bar([x + (i - 1) * width for x in range(len(modes))],
               [summary[m][key] for m in modes], width, label=label)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("seconds (median of rounds)")
    ax.legend(fontsize="small")
    paths.append(_save(fig, out, "stages"))

    if result.get("iterations", True) and len(summary["spark"]["iteration_s"]) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for m in modes:
            its = summary[m]["iteration_s"]
            ax.plot(range(1, len(its) + 1), its, marker="o", label=m)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("seconds (median of rounds)")
        ax.set_ylim(bottom=0)
        ax.set_title("PageRank: time per iteration")
        ax.legend(fontsize="small")
        paths.append(_save(fig, out, "iterations"))
    return paths


def _save(fig: Any, out: Path, what: str) -> Path:
    path = out.with_name(f"{out.name}-{what}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
