"""``overspn dynamics``: trace gradient ascent on an overparametrized SPN against its first-order theory.

Builds the paper's mixture of ``prod(branching)`` products of indicator sums on a data set, overparametrizes its
root into ``len(branching)`` sum layers (every new weight starting at ``--init``), trains it by gradient ascent
(``--lr``, weights clamped to ``--floor``) and writes, into ``--out``:

* ``dynamics.csv``: per iteration and component the collapsed weight, the shallow gradient, rho, lambda, the paper's
  rho, the self rate and cross term, the real change of the weight and its first-order predictions (general formula
  and the paper's), the unrolled first-order weight and what is left of the initial weight in it;
* ``momentum.csv``: the unrolled coefficients mu(t, tau) of the past gradients in w_k(t) at the middle and last t;
* ``eta_scaling.csv``: ``formula, eta, residual`` (relative residual of the first-order prediction of one unclamped
  step) plus the state (iteration) it was taken from, the absolute residual and the size of the change;
* ``summary.json``: log-log slopes, residuals at the training rate, checks;
* figures ``rho.png``, ``lambda.png``, ``predicted_vs_actual.png``, ``eta_scaling.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from overspn.atomic import atomic_write_json, atomic_write_text
from overspn.cli.argtypes import non_negative_float, positive_float, positive_int
from overspn.cli.options import add_data_dir, add_quiet, add_seed, add_threads, default_out, set_threads
from overspn.data import load_dataset
from overspn.errors import ConfigurationError
from overspn.studies.dynamics import Trace, Tracer, loglog_slope
from overspn.studies.report import COLOURS, save_figure
from overspn.studies.report import figure as new_figure
from overspn.symbolic.transforms import mixture, overparametrize

DEFAULT_ETAS = "1e-2,1e-3,1e-4,1e-5,1e-6,1e-7"
ROUNDING_SLOPE = 0.5  # an absolute residual with a log-log slope in eta below this is rounding, not the expansion


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)

    return "\n".join([",".join(header)] + [",".join(cell(v) for v in row) for row in rows]) + "\n"


def dynamics_table(trace: Trace) -> str:
    unrolled, start = trace.unrolled(), trace.decayed_start()
    header = ["iteration", "component", "weight", "gradient", "rho", "lambda", "rho_paper", "rho_self", "cross",
              "actual_change", "predicted_change", "predicted_change_paper", "unrolled_weight", "decayed_start",
              "clamped", "objective"]
    rows = []
    for t in range(trace.iterations):
        for k in range(trace.weights.shape[1]):
            rows.append([t, k, trace.weights[t, k], trace.gradients[t, k], trace.rho[t, k], trace.lam[t, k],
                         trace.rho_paper[t, k], trace.rho_self[t, k], trace.cross[t, k], trace.actual[t, k],
                         trace.general[t, k], trace.paper[t, k], unrolled[t, k], start[t, k], int(trace.clamped[t, k]),
                         trace.objective[t]])
    return _csv(header, rows)


def momentum_table(trace: Trace, times: list[int]) -> str:
    rows = []
    for t in times:
        mu = trace.momentum_coefficients(t)
        for tau in range(t):
            for k in range(mu.shape[1]):
                rows.append([t, tau, k, mu[tau, k], trace.gradients[tau, k]])
    return _csv(["t", "tau", "component", "mu", "gradient"], rows)


def _save(figure: Any, path: Path) -> None:
    save_figure(figure, path)


def plot(out: Path, trace: Trace, scaling: list[dict[str, Any]], title: str) -> None:
    steps = np.arange(trace.iterations)
    colours = [COLOURS[k % len(COLOURS)] for k in range(trace.weights.shape[1])]

    figure, axis = new_figure(7, 4.5)
    for k, colour in enumerate(colours):
        axis.plot(steps, trace.rho[:, k], color=colour, label=f"k={k}" if k < 10 else None)
        axis.plot(steps, trace.rho_paper[:, k], color=colour, linestyle="--")
    axis.set_yscale("log")
    axis.set_xlabel("iteration t")
    axis.set_ylabel("rho(t)")
    axis.set_title(f"{title}\nadaptive rate: general (solid) and the paper's eta (w[0])^2 (dashed)", fontsize=9)
    axis.legend(fontsize=7, ncol=2)
    _save(figure, out / "rho.png")

    figure, axis = new_figure(7, 4.5)
    for k, colour in enumerate(colours):
        axis.plot(steps, trace.lam[:, k], color=colour, label=f"k={k}" if k < 10 else None)
    axis.set_yscale("symlog", linthresh=1e-6)
    axis.set_xlabel("iteration t")
    axis.set_ylabel("lambda(t)")
    axis.set_title(f"{title}\nmomentum-like coefficient lambda(t) = eta sum_shared G_e / a_e", fontsize=9)
    axis.legend(fontsize=7, ncol=2)
    _save(figure, out / "lambda.png")

    figure, axes = new_figure(10, 4.5, 1, 2, sharex=True, sharey=True)
    actual = trace.actual.ravel()
    held = trace.clamped.ravel()
    panels = ((axes[0], trace.general.ravel(), "general formula"), (axes[1], trace.paper.ravel(), "paper's formula"))
    for axis, predicted, name in panels:
        moved = (actual != 0) & (predicted != 0)
        agree = np.sign(actual) == np.sign(predicted)
        for mask, colour, label in ((moved & ~held & agree, "tab:blue", "free step, same sign"),
                                    (moved & ~held & ~agree, "tab:orange", "free step, opposite sign"),
                                    (moved & held, "tab:red", "step held by the floor")):
            axis.scatter(np.abs(actual[mask]), np.abs(predicted[mask]), s=4, alpha=0.4, color=colour, label=label)
        magnitudes = np.abs(np.concatenate([actual[moved], predicted[moved]]))
        if magnitudes.size:
            low, high = float(magnitudes.min()), float(magnitudes.max())
            axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("|actual change w_k(t+1) - w_k(t)|")
        axis.set_title(name, fontsize=9)
    axes[0].set_ylabel("|first-order prediction|")
    axes[0].legend(fontsize=7, markerscale=3)
    figure.suptitle(title, fontsize=9)
    _save(figure, out / "predicted_vs_actual.png")

    figure, axis = new_figure(7, 4.5)
    states = sorted({row["state"] for row in scaling})
    for formula, style in (("general", "-o"), ("paper", "--s"), ("general_deep_step", ":^")):
        for state in states:
            rows = [r for r in scaling if r["formula"] == formula and r["state"] == state]
            axis.plot([r["eta"] for r in rows], [r["residual"] for r in rows], style, markersize=4,
                      label=f"{formula}, state t={state}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("step size eta")
    axis.set_ylabel("relative residual ||actual - predicted|| / ||actual||")
    axis.set_title(f"{title}\nfirst-order residual of one step from fixed states", fontsize=9)
    axis.legend(fontsize=7)
    _save(figure, out / "eta_scaling.png")


def summarise(trace: Trace, scaling: list[dict[str, Any]], floor: float, lr: float) -> dict[str, Any]:
    with np.errstate(over="ignore", invalid="ignore"):  # at large steps the first-order recursion overflows
        return _summarise(trace, scaling, floor, lr)


def _summarise(trace: Trace, scaling: list[dict[str, Any]], floor: float, lr: float) -> dict[str, Any]:
    slopes: dict[str, Any] = {}
    for formula in ("general", "paper", "general_deep_step"):
        for state in sorted({row["state"] for row in scaling}):
            rows = [r for r in scaling if r["formula"] == formula and r["state"] == state]
            etas = [r["eta"] for r in rows]
            slopes[f"{formula}, t={state}"] = {
                # a second-order error shrinks like eta^2 (slope 2), a first-order one like eta (slope 1, the paper's
                # formula for 3+ layers); float64 rounding of the step does not shrink (slope near 0)
                "rounding_limited": bool(loglog_slope(etas, [r["absolute"] for r in rows]) < ROUNDING_SLOPE),
                "min_absolute_residual": min(r["absolute"] for r in rows),
                "weight_resolution": rows[0]["resolution"],
                "max_absolute_residual": max(r["absolute"] for r in rows),
                "max_relative_residual": max(r["residual"] for r in rows),
                "absolute_residual_slope": loglog_slope(etas, [r["absolute"] for r in rows]),
                "relative_residual_slope": loglog_slope(etas, [r["residual"] for r in rows]),
                "relative_residual_by_eta": {repr(r["eta"]): r["residual"] for r in rows},
            }
    step_residuals = {formula: trace.step_residuals(formula) for formula in ("general", "paper")}
    # per component and step: where the floor held an edge the step is not a gradient step at all
    free = ~trace.clamped
    component_residual = {
        formula: np.abs(trace.actual - predicted) / np.where(trace.actual != 0, np.abs(trace.actual), np.nan)
        for formula, predicted in (("general", trace.general), ("paper", trace.paper))}
    on_floor = np.isclose(trace.values, floor, rtol=1e-9, atol=0.0)
    unrolled_all = trace.unrolled()
    unrolled, final = unrolled_all[-1], trace.weights[-1]
    return {
        "slopes": slopes,
        "training_steps": {
            formula: {"lr": lr, "median_relative_residual": float(np.nanmedian(r)),
                      "max_relative_residual": float(np.nanmax(r)),
                      "first_step_relative_residual": float(r[0]),
                      "fraction_of_steps_above_0.1": float(np.mean(r[np.isfinite(r)] > 0.1)),
                      "median_component_residual_free_steps": _nanmedian(component_residual[formula][free]),
                      "median_component_residual_clamped_steps": _nanmedian(component_residual[formula][~free])}
            for formula, r in step_residuals.items()},
        "fraction_of_component_steps_clamped": float(trace.clamped.mean()),
        "gradient_noise_level": {
            f"t={state}": min((r for r in scaling if r["formula"] == "general_deep_step" and r["state"] == state),
                              key=lambda r: r["eta"])["residual"]
            for state in sorted({row["state"] for row in scaling})},
        "edges_on_floor": {"first_state": float(on_floor[0].mean()), "mean": float(on_floor.mean()),
                           "last_state": float(on_floor[-1].mean())},
        "unrolled_final_relative_error": float(np.linalg.norm(unrolled - final) / np.linalg.norm(final)),
        "unrolled_relative_error_by_t": {
            str(t): float(np.linalg.norm(unrolled_all[t] - trace.weights[t]) / np.linalg.norm(trace.weights[t]))
            for t in sorted({1, 2, 5, 10, 20, 50, 100, trace.iterations}) if t <= trace.iterations},
        "decayed_start_share_of_final_weight": float(np.linalg.norm(trace.decayed_start()[-1])
                                                     / np.linalg.norm(final)),
        "deep_minus_shallow_objective_max": float(np.max(np.abs(trace.objective - trace.objective_shallow))),
        "objective_first": float(trace.objective[0]), "objective_last": float(trace.objective[-1]),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``overspn dynamics`` prints: slopes per state, the float64 noise level, floor and residual figures."""
    config = summary["config"]
    lines = [f"{config['dataset']}, branching {','.join(map(str, config['branching']))}, lr {config['lr']}, "
             f"{config['iterations']} iterations, seed {config['seed']}, perturbation {config['perturbation']:g}"]
    for key, value in summary["slopes"].items():
        if key.startswith("general_deep_step"):
            continue
        if value["rounding_limited"]:
            lines.append(f"{key}: rounding-limited: the absolute residual ({value['min_absolute_residual']:.2g} to "
                         f"{value['max_absolute_residual']:.2g}, slope {value['absolute_residual_slope']:.2f}) does "
                         "not shrink with eta, it is float64 rounding of the step (resolution of the weights "
                         f"eps ||w|| = {value['weight_resolution']:.2g}); relative residual at most "
                         f"{value['max_relative_residual']:.2g}: the first-order prediction holds to that")
        else:
            lines.append(f"{key}: residual slope {value['absolute_residual_slope']:.3f} (absolute), "
                         f"{value['relative_residual_slope']:.3f} (relative); actual and predicted step from one "
                         "gradient")
    for state, noise in summary["gradient_noise_level"].items():
        deep = summary["slopes"][f"general_deep_step, {state}"]
        lines.append(f"{state}: the deep model's own step against the shallow gradient's prediction (two gradients): "
                     f"relative residual {noise:.3g} at the smallest eta, slope {deep['relative_residual_slope']:.2f} "
                     "(relative); " + ("constant in eta: the two float64 gradients disagree by this much"
                                       if abs(deep["relative_residual_slope"]) < ROUNDING_SLOPE else
                                       "shrinking with eta: the gradients agree below the expansion's error"))
    for formula, value in summary["training_steps"].items():
        lines.append(f"training steps at lr {value['lr']}, {formula}: median relative residual "
                     f"{value['median_relative_residual']:.3g}, first step "
                     f"{value['first_step_relative_residual']:.3g}; per component: free steps "
                     f"{value['median_component_residual_free_steps']:.3g}, steps held by the floor "
                     f"{value['median_component_residual_clamped_steps']:.3g}")
    lines.append(f"component-steps held by the floor: {summary['fraction_of_component_steps_clamped']:.3f}; "
                 f"edges on the floor: first state {summary['edges_on_floor']['first_state']:.3f}, mean "
                 f"{summary['edges_on_floor']['mean']:.3f}, last state {summary['edges_on_floor']['last_state']:.3f}")
    lines.append("unrolled first-order weights, relative error at t = " + ", ".join(
        f"{t}: {v:.2g}" for t, v in summary["unrolled_relative_error_by_t"].items()))
    return lines


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    try:
        branching = tuple(int(b) for b in args.branching.split(","))
        etas = [float(e) for e in args.etas.split(",")]
    except ValueError as error:
        raise ConfigurationError(f"--branching and --etas must be comma-separated numbers ({error})") from None
    if any(b < 1 for b in branching) or len(branching) < 2:
        raise ConfigurationError(f"--branching needs at least two layers of positive ints, got {args.branching}")
    if any(not (math.isfinite(e) and e > 0) for e in etas):
        raise ConfigurationError(f"--etas must be positive numbers, got {args.etas}")
    if args.iterations < 1:
        raise ConfigurationError(f"--iterations must be >= 1, got {args.iterations}")
    data = load_dataset(args.dataset, args.data_dir).train
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    say(f"dynamics: tracing {args.iterations} iterations of gradient ascent on {args.dataset} ({data.shape[0]} rows), "
        f"branching {','.join(map(str, branching))}, lr {args.lr} ...")
    components = math.prod(branching)
    root = mixture(data.shape[1], components, "indicator", args.seed, root_weight=args.init,
                   perturbation=args.perturbation)
    deep = overparametrize(root, branching, init=args.init)
    tracer = Tracer(deep, data, lr=args.lr, floor=args.floor)
    states = sorted({0, args.iterations // 2, args.iterations})
    trace, snapshots = tracer.run(args.iterations, snapshot_at=states)
    scaling: list[dict[str, Any]] = []
    say(f"dynamics: first-order residuals of one step at {len(etas)} step sizes from the states t = "
        f"{', '.join(map(str, states))} ...")
    for state in states:
        tracer.restore(snapshots[state])
        scaling.extend({"state": state, **row} for row in tracer.eta_scaling(etas))
    out = Path(args.out) if args.out is not None else default_out(
        "dynamics", f"{args.dataset}-{'x'.join(map(str, branching))}", args, OUT_DEFAULTS)
    atomic_write_text(out / "dynamics.csv", dynamics_table(trace))
    atomic_write_text(out / "momentum.csv", momentum_table(trace, sorted({args.iterations // 2, args.iterations})))
    atomic_write_text(out / "eta_scaling.csv", _csv(
        ["formula", "eta", "residual", "state", "absolute", "change"],
        [[r["formula"], r["eta"], r["residual"], r["state"], r["absolute"], r["change"]] for r in scaling]))
    summary = summarise(trace, scaling, args.floor, args.lr)
    summary["config"] = {"dataset": args.dataset, "branching": list(branching), "lr": args.lr,
                         "iterations": args.iterations, "seed": args.seed, "perturbation": args.perturbation,
                         "init": args.init, "floor": args.floor, "etas": etas}
    atomic_write_json(out / "summary.json", summary)
    title = (f"{args.dataset}, branching {','.join(map(str, branching))}, lr {args.lr}, init {args.init}, "
             f"seed {args.seed}")
    plot(out, trace, scaling, title)
    if args.quiet:
        return 0
    for line in summary_lines(summary):
        print(line)
    for name in ("dynamics.csv", "momentum.csv", "eta_scaling.csv", "summary.json", "rho.png", "lambda.png",
                 "predicted_vs_actual.png", "eta_scaling.png"):
        print(f"wrote {out / name}")
    return 0


# the options that change the results: a run that changes one of them gets its own default folder
OUT_DEFAULTS = {"lr": 0.01, "iterations": 500, "seed": 0, "perturbation": 1e-12, "init": 1e-4, "floor": 1e-4,
                "etas": DEFAULT_ETAS, "data_dir": None}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dynamics", help="trace an overparametrized SPN's training against first-order theory",
        description="Trace gradient ascent on an overparametrized SPN (the paper's mixture with its root replaced by "
                    "sum layers of the given branching) against its first-order theory: per iteration and "
                    "component the collapsed weight, gradient, adaptive rate rho, momentum-like lambda and the "
                    "first-order predictions (general and the paper's), plus the residual of one step at several "
                    "step sizes. Writes dynamics.csv, momentum.csv, eta_scaling.csv, summary.json and four figures "
                    "to --out.")
    parser.add_argument("--dataset", default="nltcs", metavar="NAME", help="benchmark data set (its train split)")
    add_data_dir(parser)
    parser.add_argument("--branching", default="2,2,2",
                        help="comma-separated branching of the sum layers, at least two layers")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="gradient-ascent step size")
    parser.add_argument("--iterations", type=positive_int, default=500, help="gradient-ascent steps traced")
    add_seed(parser, "seed of the perturbation of the initial leaf weights, an integer >= 0")
    parser.add_argument("--perturbation", type=non_negative_float, default=1e-12,
                        help="relative perturbation of the initial leaf weights (breaks the components' symmetry)")
    parser.add_argument("--init", type=positive_float, default=1e-4, help="initial value of every sum-layer weight")
    parser.add_argument("--floor", type=non_negative_float, default=1e-4,
                        help="weights are clamped to at least this after every step")
    parser.add_argument("--etas", default=DEFAULT_ETAS, help="step sizes of the first-order residual check")
    add_threads(parser, default=1)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: results/dynamics/DATASET-BRANCHING, e.g. "
                             "results/dynamics/nltcs-2x2x2, with a short hash of other settings that differ from "
                             "the defaults)")
    add_quiet(parser)
    parser.set_defaults(handler=handle)
