"""``python -m overspn.studies.results``: the numbers and figures the README quotes about the paper, from the study
folders that ``make figures`` fills, into ``docs/results/`` (small JSON and PNG files, committed).

* ``sweep.json``, ``sweep.png``: the perturbation sweep on NLTCS (paper protocol, runs of 1200 iterations; reach
  statistics within 500 and 1200 iterations; speed-ups with bootstrap intervals);
* ``paper.json``, ``paper_nltcs.png``: the paper protocol at the default perturbation 1e-12 within the paper's 500
  iterations, the slow one-layer runs and when they reach the plateau;
* ``gaussian_ITERATIONS.json``, ``gaussian_ITERATIONS_NAME.png``: the depth study with Gaussian leaves;
* ``dynamics.json``, ``dynamics_eta_scaling.png``: what ``overspn dynamics`` prints for the README's settings;
* ``log_protocol.json`` and ``compare_PROTOCOL.json`` with their figures: the log-weight protocol and the optimizer
  comparison (:mod:`overspn.studies.results_protocols`);
* ``tables.md``: the README's tables, generated from the JSON files by :func:`readme_tables` (the test of the
  README compares the README with these).

Each part is skipped when its study folder is missing; the numbers come from whatever runs the folders hold
(``load_results``), and every JSON file states its seed counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from overspn.atomic import atomic_write_json, atomic_write_text
from overspn.studies.depth import summarise
from overspn.studies.report import figure, save_figure
from overspn.studies.results_protocols import compare_part, compare_table, log_part, log_table
from overspn.studies.statistics import binomial_interval
from overspn.studies.sweep import load_results, plot_sweep, sweep_summary

SLOW_LEVEL = -7.30  # a one-layer run still below this at iteration 500 is "slow"
PAPER_BUDGET = 500


def _slow_runs(curves: np.ndarray, target: float, budget: int) -> dict[str, Any]:
    """Runs below ``SLOW_LEVEL`` at ``budget``, and when (if) they reach ``target`` within the whole run."""
    slow = curves[:, budget] < SLOW_LEVEL
    later = [int(np.flatnonzero(c >= target)[0]) if np.any(c >= target) else None for c in curves[slow]]
    low, high = binomial_interval(int(slow.sum()), len(curves))
    reached = [t for t in later if t is not None]
    return {"level": SLOW_LEVEL, "at_iteration": budget, "runs": len(curves), "slow": int(slow.sum()),
            "fraction": float(slow.mean()), "fraction_ci95": [low, high], "run_length": curves.shape[1] - 1,
            "slow_reaching_target": len(reached), "slow_reach_iterations": later,
            "slow_reach_min": min(reached) if reached else None, "slow_reach_max": max(reached) if reached else None,
            "slow_llh_at_budget": [float(v) for v in curves[slow, budget]]}


def paper_part(folder: Path, out: Path) -> dict[str, Any]:
    study, results = load_results(folder)
    summary = summarise(study, results, budget=PAPER_BUDGET)
    entry = summary["datasets"]["nltcs"]
    for depth in study.depths:
        curves = np.array([r.history.train_llh for r in results if r.depth == depth])
        tests = np.array([r.history.test_llh for r in results if r.depth == depth])
        values = entry["depths"][str(depth)]
        values["train_at_budget"] = {"mean": float(curves[:, PAPER_BUDGET].mean()),
                                     "std": float(curves[:, PAPER_BUDGET].std(ddof=1))}
        values["test_at_budget"] = {"mean": float(tests[:, PAPER_BUDGET].mean()),
                                    "std": float(tests[:, PAPER_BUDGET].std(ddof=1))}
        values["slow_runs"] = _slow_runs(curves, entry["target"], PAPER_BUDGET)
        # the plain step on raw weights against the floor: the largest fall of a curve in one iteration
        values["largest_one_step_drop"] = float(np.max(curves[:, :-1] - curves[:, 1:]))
    initial = np.array([r.history.train_llh[0] for r in results])
    summary["initial_train_llh"] = {"min": float(initial.min()), "max": float(initial.max()),
                                    "log_half_times_16": float(16 * np.log(0.5))}
    summary["study_folder"] = str(folder)
    atomic_write_json(out / "paper.json", summary)
    _plot_paper(study, results, entry["target"], out / "paper_nltcs.png")
    return summary


def _plot_paper(study: Any, results: list, target: float, path: Path) -> None:
    fig, axes = figure(11, 4.2, 1, 2, sharey=True)
    for axis, depth in zip(axes, (1, 3)):
        curves = np.array([r.history.train_llh for r in results if r.depth == depth])
        for curve in curves:
            axis.plot(curve, color="#0072B2" if depth == 1 else "#009E73", linewidth=0.6, alpha=0.5)
        axis.axhline(target, color="black", linewidth=0.8, linestyle="--", label=f"target {target}")
        axis.axhline(SLOW_LEVEL, color="grey", linewidth=0.8, linestyle=":", label=f"slow below {SLOW_LEVEL} at "
                                                                                    f"{PAPER_BUDGET}")
        axis.axvline(PAPER_BUDGET, color="grey", linewidth=0.8)
        axis.set_ylim(-8.0, -6.6)
        axis.set_xlabel("iteration")
        axis.set_title(f"{depth} layer{'s' if depth > 1 else ''}: {len(curves)} seeds, perturbation "
                       f"{study.perturbation:g}", fontsize=9)
        axis.legend(fontsize=7, loc="lower right")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("train mean log-likelihood (nats)")
    save_figure(fig, path, dpi=90)


def sweep_part(folders: list[Path], out: Path) -> dict[str, Any]:
    outcomes = [load_results(folder) for folder in folders]
    summary = sweep_summary(outcomes, budgets=[PAPER_BUDGET])
    summary["study_folders"] = [str(f) for f in folders]
    atomic_write_json(out / "sweep.json", summary)
    plot_sweep(outcomes, summary, out / "sweep.png")
    return summary


def gaussian_part(folder: Path, out: Path) -> dict[str, Any]:
    """``gaussian_ITERATIONS.json`` and ``gaussian_ITERATIONS_NAME.png`` from one Gaussian study folder."""
    study, results = load_results(folder)
    tag = f"gaussian_{study.iterations}"
    summary = summarise(study, results)
    for name, entry in summary["datasets"].items():
        for depth in study.depths:
            curves = np.array([r.history.train_llh for r in results if r.dataset == name and r.depth == depth])
            entry["depths"][str(depth)]["train_at"] = {
                str(t): float(curves[:, t].mean()) for t in (0, 1, 10, 50, 100, 200, study.iterations)}
            # how far the mean curve still moves: the change over the last 100 iterations
            entry["depths"][str(depth)]["last_100_change"] = float(curves[:, -1].mean() - curves[:, -101].mean())
        if (folder / f"{name}.png").is_file():
            shutil.copyfile(folder / f"{name}.png", out / f"{tag}_{name}.png")
    summary["study_folder"] = str(folder)
    atomic_write_json(out / f"{tag}.json", summary)
    return summary


def dynamics_part(folder: Path, out: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    summary["study_folder"] = str(folder)
    atomic_write_json(out / "dynamics.json", summary)
    if (folder / "eta_scaling.png").is_file():
        shutil.copyfile(folder / "eta_scaling.png", out / "dynamics_eta_scaling.png")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The README's tables
# ----------------------------------------------------------------------------------------------------------------


def _n(value: float | None, spec: str = ".0f") -> str:
    return "not reached" if value is None else format(value, spec).replace("-", "−")


def _ci(pair: list[float | None], spec: str) -> str:
    return "—" if pair[0] is None else f"{_n(pair[0], spec)}–{_n(pair[1], spec)}"


def _speed(value: dict[str, Any] | None) -> str:
    """Ratio (CI); where some bootstrap resamples had a median not reached, the share that had one (the interval is
    conditional on it)."""
    if value is None:
        return "—"
    text = f"{_n(value['ratio'], '.2f')} ({_ci(value['ci95'], '.2f')})"
    if value["ratio"] is not None and value["defined_fraction"] < 0.995:
        text += f", defined in {100 * value['defined_fraction']:.0f} % of resamples"
    return text


def paper_table(paper: dict[str, Any]) -> str:
    entry = paper["datasets"]["nltcs"]
    lines = ["| layers | seeds | train at 500 | test at 500 | reached −7.10 within 500 (95 % CI) | iterations of those "
             "(median, quartiles) | KM median, all runs | speed-up vs 1 layer (95 % CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for depth, values in entry["depths"].items():
        reach, speed = values["reach"], values["speedup_vs_depth1"]
        train, test = values["train_at_budget"], values["test_at_budget"]
        speed_text = _speed(speed)
        lines.append(
            f"| {depth} {tuple(values['branching'])} | {values['runs']} | {_n(train['mean'], '.3f')} ± "
            f"{train['std']:.3f} | {_n(test['mean'], '.3f')} ± {test['std']:.3f} | {reach['reached']}/{reach['runs']} "
            f"({_ci(reach['fraction_reached_ci95'], '.2f')}) | {_n(reach['median_reached'])} "
            f"({_n(reach['q25_reached'])}–{_n(reach['q75_reached'])}) | {_n(reach['km_median'])} | {speed_text} |")
    return "\n".join(lines)


def sweep_table(sweep: dict[str, Any]) -> str:
    lines = ["| perturbation | budget | seeds (1 / 2 / 3 layers) | reached −7.10, 1 layer | KM median 1 / 3 layers | "
             "speed-up 1 / 3 layers (95 % CI) | speed-up 1 / 2 layers (95 % CI) |",
             "|---|---|---|---|---|---|---|"]
    for row in sweep["perturbations"]:
        for budget in sweep["budgets"]:
            depths = row["budgets"][str(budget)]["nltcs"]["depths"]

            def speed(depth: str, depths: dict[str, Any] = depths) -> str:
                if depth not in depths:
                    return "—"
                return _speed(depths[depth]["speedup_vs_depth1"])

            seeds = " / ".join(str(depths[d]["runs"]) if d in depths else "—" for d in ("1", "2", "3"))
            one = depths["1"]["reach"]
            lines.append(f"| {row['perturbation']:g} | {budget} | {seeds} | {one['reached']}/{one['runs']} | "
                         f"{_n(one['km_median'])} / "
                         f"{_n(depths['3']['reach']['km_median']) if '3' in depths else '—'} | {speed('3')} | "
                         f"{speed('2')} |")
    return "\n".join(lines)


def gaussian_table(gaussian: dict[str, Any]) -> str:
    lines = ["| data set | layers | seeds | final train | final test | target (rule) | reached | KM median | "
             "speed-up vs 1 layer (95 % CI) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in gaussian["datasets"].items():
        for depth, values in entry["depths"].items():
            reach, speed = values["reach"], values["speedup_vs_depth1"]
            final, test = values["final_train_llh"], values["final_test_llh"]
            speed_text = _speed(speed)
            lines.append(f"| {name} | {depth} | {values['runs']} | {_n(final['mean'], '.2f')} ± {final['std']:.2f} | "
                         f"{_n(test['mean'], '.2f')} ± {test['std']:.2f} | {_n(entry['target'], '.2f')} | "
                         f"{reach['reached']}/{reach['runs']} | {_n(reach['km_median'])} | {speed_text} |")
    return "\n".join(lines)


def dynamics_table(dynamics: dict[str, Any]) -> str:
    lines = ["| state | one-gradient residual: slope (absolute) or rounding-limited | paper's formula, relative "
             "residual | deep step vs shallow gradient (noise level) |", "|---|---|---|---|"]
    for state in dynamics["gradient_noise_level"]:
        general = dynamics["slopes"][f"general, {state}"]
        paper = dynamics["slopes"][f"paper, {state}"]
        general_text = (f"rounding-limited (≤ {general['max_relative_residual']:.1e} relative)"
                        if general["rounding_limited"] else f"{general['absolute_residual_slope']:.2f}")
        lines.append(f"| {state} | {general_text} | {paper['max_relative_residual']:.1e} (slope "
                     f"{paper['relative_residual_slope']:.2f}) | {dynamics['gradient_noise_level'][state]:.1e} |")
    return "\n".join(lines)


def readme_tables(folder: Path) -> dict[str, str]:
    """The README's tables, keyed by name, from the JSON files in ``folder`` (those present)."""
    makers = {"paper": paper_table, "sweep": sweep_table, "dynamics": dynamics_table, "log_protocol": log_table}
    names = [name for name in makers if (folder / f"{name}.json").is_file()]
    gaussian = sorted((p.stem for p in folder.glob("gaussian_*.json")), key=lambda n: int(n.split("_")[1]))
    comparisons = sorted(p.stem for p in folder.glob("compare_*.json"))
    makers.update({name: gaussian_table for name in gaussian} | {name: compare_table for name in comparisons})
    return {name: makers[name](json.loads((folder / f"{name}.json").read_text()))
            for name in names + gaussian + comparisons}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("results/sweep"),
                        help="folder of the perturbation sweep (one pLABEL folder per perturbation)")
    parser.add_argument("--paper-perturbation", default="p1e-12", help="the sweep folder of the paper protocol")
    parser.add_argument("--gaussian", type=Path, action="append",
                        help="a Gaussian-leaf study folder (repeatable; default results/gaussian)")
    parser.add_argument("--dynamics", type=Path, default=Path("results/dynamics/nltcs-2x2x2"))
    parser.add_argument("--log", type=Path, default=Path("results/log"),
                        help="folder of the log-weight protocol (overspn reproduce --protocol log)")
    parser.add_argument("--compare", type=Path, action="append",
                        help="an overspn compare output folder (repeatable; default results/compare and "
                             "results/compare-log)")
    parser.add_argument("--data-dir", type=Path, help="benchmark splits, for the log protocol's factorised model "
                                                      "(default $OVERSPN_DATA)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folders = sorted(p for p in args.sweep.glob("p*") if (p / "study.json").is_file())
    if folders:
        sweep_part(folders, args.out)
        print(f"wrote {args.out / 'sweep.json'} from {len(folders)} perturbations")
    if (args.sweep / args.paper_perturbation / "study.json").is_file():
        paper_part(args.sweep / args.paper_perturbation, args.out)
        print(f"wrote {args.out / 'paper.json'}")
    for folder in args.gaussian or [Path("results/gaussian")]:
        if (folder / "study.json").is_file():
            gaussian_part(folder, args.out)
            print(f"wrote the Gaussian summary of {folder}")
    if (args.dynamics / "summary.json").is_file():
        dynamics_part(args.dynamics, args.out)
        print(f"wrote {args.out / 'dynamics.json'}")
    if (args.log / "study.json").is_file():
        log_part(args.log, args.out, args.data_dir)
        print(f"wrote {args.out / 'log_protocol.json'}")
    for folder in args.compare or [Path("results/compare"), Path("results/compare-log")]:
        if (folder / "comparison.json").is_file():
            for summary in compare_part(folder, args.out):
                print(f"wrote {args.out / ('compare_' + summary['protocol'] + '.json')} from {folder}")
    tables = readme_tables(args.out)
    atomic_write_text(args.out / "tables.md", "".join(f"## {name}\n\n{table}\n\n" for name, table in tables.items()))
    print(f"wrote {args.out / 'tables.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
