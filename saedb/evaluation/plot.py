"""The paper's accuracy-vs-cosine figure (accuracy_vs_cosine_similarity.pdf), as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

from saedb.evaluation.runner import EvalRun

STYLE = {  # method prefix -> matplotlib style
    "add": dict(color="tab:blue", marker="o", label="steering: decoder addition"),
    "clamp": dict(color="tab:green", marker="s", label="steering: clamp + reconstruct"),
    "family-add": dict(color="tab:purple", marker="^", label="steering: family addition"),
    "random-direction": dict(color="tab:gray", marker="x", label="control: random direction, same cosine"),
    "unmodified": dict(color="black", marker="D", label="control: unmodified query"),
    "rewrite": dict(color="tab:red", marker="*", s=220, label="query rewriting"),
}


def plot_run(run: EvalRun, stem: Path) -> list[Path]:
    """Up and down accuracy against mean cosine(q, q') for every method; writes stem.png and stem.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, side in zip(axes, ("up", "down")):
        for prefix, style in STYLE.items():
            rows = [r for r in run.rows if r.method.split(":")[0] == prefix]
            if rows:
                style = dict(style)
                if prefix == "rewrite":
                    style["label"] = f"query rewriting ({run.rewriter})"
                ax.scatter([r.cosine for r in rows], [getattr(r, f"{side}_accuracy") for r in rows],
                           s=style.pop("s", 28), alpha=0.8, **style)
        ax.axhline(0.2, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel("mean cosine(q, q')")
        ax.set_title(f"{side} accuracy (chance 0.2)")
        ax.set_xlim(-0.2, 1.05)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(loc="lower left", fontsize=8)
    n_cases = max((r.n_cases for r in run.rows if r.method == "unmodified"), default=0)
    fig.suptitle(f"model {run.model_id}, judge {run.judge}: {n_cases} cases from {run.queries}")
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
