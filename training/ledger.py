"""`python -m training.ledger`: the default model's held-out DSC_Final against summed training hours, over sessions.

Reads the model card's ledger of full held-out scores (`docs/heldout_ledger.csv`: one row per scored model, the
cumulative steps and step-hours of its lineage, DSC_Final per held-out volume with and without box, all scored
with the same evaluation code and settings, except the rows named "with the intensity step", scored with it on
(docs/intensity.md); optional columns mean_box / mean_nobox: the harness's mean) and
writes a PNG: one panel per box mode, one line per volume and their mean through the shipped models; open
markers, off the lines, for models scored but not shipped.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

VOLUMES = ("CT", "brain", "lesions")
MODES = ("box", "nobox")


def read_ledger(path: Path) -> list[dict]:
    """Rows of the ledger CSV, numbers parsed, sorted by step-hours; `mean_box` / `mean_nobox` per row."""
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {"model": r["model"], "steps": int(r["steps"]), "step_hours": float(r["step_hours"]),
                   "shipped": r["shipped"].strip().lower() == "yes"}
            for mode in MODES:
                scores = [float(r[f"{v}_{mode}"]) for v in VOLUMES]
                row.update({f"{v}_{mode}": s for v, s in zip(VOLUMES, scores)})
                # the harness's mean over all cases when recorded (unrounded), else the mean of the rounded figures
                row[f"mean_{mode}"] = float(r.get(f"mean_{mode}") or sum(scores) / len(scores))
            rows.append(row)
    return sorted(rows, key=lambda r: r["step_hours"])


def plot(rows: list[dict], out: Path) -> Path:
    """Write the curve PNG (DSC_Final against step-hours, a panel per box mode)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    shipped = [r for r in rows if r["shipped"]]
    for ax, mode in zip(axes, MODES):
        for name in (*VOLUMES, "mean"):
            key = f"{name}_{mode}"
            line, = ax.plot([r["step_hours"] for r in shipped], [r[key] for r in shipped], "-",
                            lw=2.5 if name == "mean" else 1.2, label=name)
            for r in rows:
                ax.plot(r["step_hours"], r[key], "o", color=line.get_color(),
                        mfc=line.get_color() if r["shipped"] else "white")
        ax.set_title("with box" if mode == "box" else "without box")
        ax.set_xlabel("training step-hours on 2 CPU cores (lineage of the model)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out DSC_Final (all structures)")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.ledger", description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", type=Path, default=Path("docs/heldout_ledger.csv"), help="ledger CSV")
    ap.add_argument("--out", type=Path, default=Path("docs/heldout_ledger.png"), help="PNG to write")
    args = ap.parse_args(argv)
    rows = read_ledger(args.ledger)
    for r in rows:
        print(f"{r['model']:<28} {r['step_hours']:5.2f} h  mean DSC_Final {r['mean_box']:.3f} box, "
              f"{r['mean_nobox']:.3f} no box")
    print("wrote", plot(rows, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
