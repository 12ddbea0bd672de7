"""``cascade simulate``'s plot: the per-round report of ``serving.cli.simulate`` as a PNG
(matplotlib, imported when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path


def plot_rounds(report: dict, path: Path) -> None:
    """Two panels: teacher share and cascade accuracy per round, with the teacher's accuracy for
    reference; and the live agreement of the static and the controlled threshold against the goal.
    With a wrong teacher, a third: the student's and the cascade's recall on its wrong classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    wrong = bool(report.get("wrong_classes"))
    fig, axes = plt.subplots(3 if wrong else 2, 1, figsize=(8, 12 if wrong else 8), dpi=120)
    share_ax, agreement_ax = axes[0], axes[1]
    if wrong:
        _plot_recall(report, axes[2])
    share_ax.plot(rounds, [100 * r["teacher_share"] for r in report["rounds"]], "o-", color="tab:orange", label="teacher share of traffic (%)")
    share_ax.plot(rounds, [100 * r["test_teacher_share"] for r in report["rounds"]], "o--", color="tab:orange", alpha=0.5,
                  label="teacher share on test (%)")
    for r in report["rounds"]:  # where control started the student serving at the round's end
        if r.get("control_start") is not None:
            start = "shadow" if r["control_start"] == "shadow" else "safe start"
            at = f" {r['control_start_threshold']:.2f}" if r.get("control_start_threshold") is not None else ""
            share_ax.annotate(f"{start}{at}", (r["round"], 100 * r["teacher_share"]), textcoords="offset points", xytext=(0, 8),
                              ha="center", fontsize=7, color="tab:gray")
    share_ax.set_xlabel("round (traffic streamed, then a refresh; label: where control started the round's last student)")
    share_ax.set_ylabel("teacher share of traffic (%)", color="tab:orange")
    share_ax.set_xticks(rounds)
    accuracy_ax = share_ax.twinx()
    accuracy_ax.plot(rounds, [r["cascade_accuracy"] for r in report["rounds"]], "s-", color="tab:blue", label="cascade test accuracy")
    accuracy_ax.axhline(report["teacher_accuracy"], color="tab:red", linestyle=":", label=f"teacher alone ({report['teacher_accuracy']:.2%})")
    accuracy_ax.set_ylabel("cascade accuracy on test", color="tab:blue")
    lines = share_ax.get_legend_handles_labels()[0] + accuracy_ax.get_legend_handles_labels()[0]
    labels = share_ax.get_legend_handles_labels()[1] + accuracy_ax.get_legend_handles_labels()[1]
    accuracy_ax.legend(lines, labels, loc="upper center", fontsize=8)  # on the top axes, so no line is drawn over it
    share_ax.set_title("cascade simulate: the student learns from the teacher's escalations")
    share_ax.grid(alpha=0.3)
    rows = report["rounds"]
    for key, style, name in (("static_agreement", "o--", "static threshold"), ("controlled_agreement", "s-", "controlled threshold"),
                             ("served_agreement", "^:", "answers served")):
        agreement_ax.plot(rounds, [r[key] for r in rows], style, label=name)
    targets = [r["goal_target"] for r in rows]
    if all(t is not None for t in targets):
        agreement_ax.plot(rounds, targets, "r:", marker="_", markersize=20, drawstyle="steps-mid", label=f"goal ({report['goal']})")
    agreement_ax.set_xlabel("round")
    agreement_ax.set_ylabel("agreement with the teacher, round's traffic")
    agreement_ax.set_xticks(rounds)
    agreement_ax.set_title(f"live agreement, stream shift: {report['shift']}")
    agreement_ax.legend(fontsize=8)
    agreement_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_recall(report: dict, ax) -> None:
    """Recall on the wrong teacher's classes per round (the student that served it) and after the
    last refresh, with the feedback sent per round as bars."""
    rows = report["rounds"]
    rounds = [r["round"] for r in rows]
    after = rounds[-1] + 1
    for key, style, name in (("wrong_class_student_recall", "o-", "student"), ("wrong_class_cascade_recall", "s--", "cascade")):
        ax.plot(rounds + [after], [r[key] for r in rows] + [report["final"][key]], style, label=f"{name} recall")
    ax.axhline(report["teacher_recall"], color="tab:red", linestyle=":", label=f"teacher alone ({report['teacher_recall']:.2%})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(rounds + [after], [str(r) for r in rounds] + ["after"])
    ax.set_xlabel("round (the student that served it; 'after': the last refresh's)")
    ax.set_ylabel("recall on the wrong classes, test split")
    ax.set_title(f"teacher wrong on {len(report['wrong_classes'])} classes, feedback on {report['feedback_rate']:.0%} of traffic\n"
                 f"({', '.join(report['wrong_classes'])})", fontsize=10)
    counts = ax.twinx()
    counts.bar(rounds, [r["feedback_sent"] for r in rows], alpha=0.15, color="tab:green", label="feedback sent")
    counts.set_ylabel("feedback items sent", color="tab:green")
    ax.set_zorder(counts.get_zorder() + 1)  # the recall lines over the bars
    ax.patch.set_visible(False)
    lines = ax.get_legend_handles_labels()[0] + counts.get_legend_handles_labels()[0]
    names = ax.get_legend_handles_labels()[1] + counts.get_legend_handles_labels()[1]
    ax.legend(lines, names, fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
