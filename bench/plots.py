"""PNG plots in the paper's style, from a benchmark's result (see report.py).

- tasks: reduce-stage task completion times per mode, as box plots (Figs. 3 and 5);
- fetch wait: the mean time a reduce task waited for shuffle data (Fig. 4);
- stages: map stage, reduce stage and whole job per mode, side by side;
- reduce task: where a mean reduce task's time goes, per mode;
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

    paths.append(_reduce_task_parts(summary, modes, out))

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


def _reduce_task_parts(summary: dict[str, Any], modes: list[str], out: Path) -> Path:
    """A mean reduce task, split into its wait for data, netspark's checks and unpickling,
    and the rest. Spark's own reading and unpickling are not measured apart from the task:
    in its bar they are part of the rest."""
    parts: dict[str, list[float]] = {
        "waiting for shuffle data (Spark's fetch; netspark's fetch)": [],
        "netspark read besides the wait: crc32c, unpickling": [],
        "the rest: the job's function, PySpark and the JVM (for spark: its read too)": [],
    }
    for m in modes:
        tasks = summary[m]["reduce_tasks"]
        whole = sum(tasks) / len(tasks) if tasks else 0.0
        wait = summary[m]["fetch_wait_per_task_s"]
        read = max(0.0, summary[m]["reduce_netspark_read_s"]
                   - summary[m]["netspark_fetch_wait_per_task_s"])
        for values, value in zip(parts.values(), (wait, read, max(0.0, whole - wait - read)),
                                 strict=True):
            values.append(value * 1e3)
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 4, 4))
    left = [0.0] * len(modes)
    for label, values in parts.items():
        ax.barh(modes, values, left=left, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per reduce task (means)")
    ax.set_title("where a reduce task's time goes")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _save(fig, out, "reduce-task")


def _save(fig: Any, out: Path, what: str) -> Path:
    path = out.with_name(f"{out.name}-{what}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
