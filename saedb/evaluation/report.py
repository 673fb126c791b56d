"""Text reports of an evaluation run: the full table and the comparison at matched cosine."""

from __future__ import annotations

from saedb.evaluation.runner import REWRITE_MIN_COSINE, EvalRun, ResultRow


def _strength(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def format_table(run: EvalRun) -> str:
    lines = [f"{'method':<28} {'a_up':>5} {'a_down':>6} {'n':>4} {'cos(q,q`)':>9} {'up acc':>7} {'down acc':>8}"]
    for r in sorted(run.rows, key=lambda r: (r.method, r.a_up or 0, -(r.a_down or 0))):
        lines.append(f"{r.method:<28} {_strength(r.a_up):>5} {_strength(r.a_down):>6} {r.n_cases:>4} {r.cosine:>9.3f} "
                     f"{r.up_accuracy:>7.2f} {r.down_accuracy:>8.2f}" + (f"  ({r.unanswered} unanswered)" if r.unanswered else ""))
    cases = max((r.n_cases for r in run.rows if r.method == "unmodified"), default=0)
    for r in run.rows:
        if r.method.startswith("rewrite") and r.n_cases < cases:
            lines.append(f"warning: {cases - r.n_cases} of {cases} rewrites refused (no well-formed reply, or not a rewrite of "
                         f"the query: cosine to it below {REWRITE_MIN_COSINE}); rewriting is scored on the other {r.n_cases}")
    if cases and not any(r.method.startswith("rewrite") for r in run.rows):
        lines.append(f"warning: all {cases} rewrites refused: rewriting is not scored in this run")
    return "\n".join(lines)


def nearest(rows: list[ResultRow], target_cosine: float) -> ResultRow | None:
    """The row whose mean cosine is nearest ``target_cosine``: chosen by cosine only, never by
    accuracy, so picking among many grid points does not inflate the figure."""
    return min(rows, key=lambda r: (abs(r.cosine - target_cosine), r.method), default=None)


def _line(name: str, row: ResultRow) -> str:
    strengths = "" if row.a_up is None else f"  (a_up {row.a_up:g}, a_down {row.a_down:g})"
    return f"  {name:<26} cos {row.cosine:5.2f}  up {row.up_accuracy:.2f}  down {row.down_accuracy:.2f}{strengths}"


def format_comparison(run: EvalRun) -> str:
    """Each steering method at the setting whose cosine is nearest rewriting's, next to rewriting,
    the random direction at the same cosine, and the unmodified query."""
    rewrite = next((r for r in run.rows if r.method.startswith("rewrite")), None)
    if rewrite is None:
        return ""
    lines = [f"at matched cosine (nearest rewriting's {rewrite.cosine:.2f}; chance 0.20):", _line(rewrite.method, rewrite)]
    control = nearest([r for r in run.rows if r.method == "random-direction"], rewrite.cosine)
    if control:  # what moving that far in no particular direction does to down accuracy
        lines.append(_line("random-direction", control))
    for method in ("add", "clamp", "family-add"):
        row = nearest([r for r in run.rows if r.method == method], rewrite.cosine)
        if row:
            lines.append(_line(method, row))
            control = [r for r in run.rows if r.method == "random-direction" and (r.a_up, r.a_down) == (row.a_up, row.a_down)]
            if method == "add" and control and _line("random-direction", control[0]) not in lines:
                lines.append(_line("random-direction", control[0]))
    lines += [_line(r.method, r) for r in run.rows if r.method == "unmodified"]
    return "\n".join(lines)
