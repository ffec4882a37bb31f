"""``python -m clsd_ds report RUN_DIR``: what a run did, in a few lines and two PNG plots.

Reads the run directory only (``config.json``, ``meta.json``, ``metrics.jsonl``, ``exit.json``,
``checkpoints/latest``): loss curves with held-out evaluations, throughput, and every restart marked.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError


def load(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """(metrics records, meta.json, config.json) of a run directory."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"report: '{run_dir}' has no metrics.jsonl; is it a run directory?")
    records = [json.loads(line) for line in metrics.open() if line.strip()]
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").is_file() else {"starts": []}
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    return records, meta, config


def restart_steps(records: list[dict]) -> list[int]:
    """The first step logged by each start after the first."""
    first = {}
    for r in records:
        first.setdefault(r.get("restart", 0), r["step"])
    return [step for restart, step in sorted(first.items()) if restart > 0]


def summary(run_dir: Path) -> str:
    records, meta, config = load(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    exit_file = run_dir / "exit.json"
    lines = [f"run {run_dir} (stage {config.get('stage', '?')})"]
    total = config.get("train", {}).get("steps")
    if train:
        last = train[-1]
        lines.append(f"  steps     {last['step']} of {total}; last training loss {last['loss']:.4f}")
        recent = train[-10:]
        lines.append(f"  speed     {sum(r['tok_s'] for r in recent) / len(recent):.1f} block tok/s, "
                     f"{sum(r['step_s'] for r in recent) / len(recent):.3f} s/step (last {len(recent)} records)")
    if len(evals) >= 2:
        lines.append(f"  held-out  loss {evals[0]['loss']:.4f} (step {evals[0]['step']}) -> {evals[-1]['loss']:.4f} "
                     f"(step {evals[-1]['step']})")
    restarts = restart_steps(records)
    lines.append(f"  starts    {max(1, len(meta['starts']))}; restarts at steps {restarts or 'none'}")
    if exit_file.is_file():
        ex = json.loads(exit_file.read_text())
        signal = f" ({ex['signal']})" if "signal" in ex else ""
        lines.append(f"  last exit {ex['reason']} at step {ex['step']}{signal}")
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        lines.append(f"  newest checkpoint {run_dir / 'checkpoints' / latest.read_text().strip()}")
    if (run_dir / "export").is_dir():
        lines.append(f"  export    {run_dir / 'export'}")
    return "\n".join(lines)


def plot(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """loss.png and throughput.png (restarts as dashed lines) into ``out_dir`` (default: the run directory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, _, _ = load(run_dir)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    restarts = restart_steps(records)
    paths = []
    for name, series in (("loss", [("train loss", train, "loss"), ("held-out loss", evals, "loss")] +
                          ([("train CE", train, "ce")] if train and "ce" in train[0] else [])),
                         ("throughput", [("block tokens/s", train, "tok_s")])):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, rows, key in series:
            rows = [r for r in rows if r.get(key) is not None]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-" if rows is evals else "-",
                        label=label, markersize=3)
        for i, step in enumerate(restarts):
            ax.axvline(step, color="gray", linestyle="--", linewidth=1, label="restart" if i == 0 else None)
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {name}")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
