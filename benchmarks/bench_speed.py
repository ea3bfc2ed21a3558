"""The speed suite: one run, one table each, written to ``benchmarks/results/speed.json`` with the machine's load.

0. The full-batch training step of the paper's NLTCS model on raw tensors (the Quickstart's loop) against the
   hand-fused torch model, float32 and float64, at ``--paper-threads`` threads (``bench_engine.paper_step``).
1. The paper's mixture of 1000 products over 1000 variables (3 million nodes): build, compile + first forward, save
   and load, with the peak resident memory.
2. The Adam step of RAT-SPNs against cirkit at sums = inputs = 5, 12, 25 (1.1e4, 1.1e5, 9.6e5 parameters), steps
   interleaved as in ``bench_peers.py`` (``peers.time_cell``).
2b. The Adam step of the learned structure, the HCLT over the Chow-Liu tree of the plants training data, against the
   same HCLT in cirkit (``hclt_peers.py``) at ``--hclt-latents`` K = 12, 38, 121 latent states (1.1e4, 1.0e5, 1.0e6
   overspn parameters), interleaved the same way; outputs are checked comparable first, and equal at equal
   parameters.
3. The no-grad forward of random DAG SPNs of 10^2 .. 10^5 nodes (normalised weights, sub-networks shared;
   ``random_dags.py``) against the same DAG built from SPFlow 1.1 modules, evaluated with SPFlow's cache so that
   shared modules run once; outputs are checked equal (within 1e-3 nats) before timing.

Everything but the paper's step runs at ``--threads`` (default 1). Run it in the peers' environment (see
``bench_peers.py``) on a machine with nothing else running::

    OVERSPN_DATA=../shared/datasets .venv-bench/bin/python benchmarks/bench_speed.py

``--sections 2 2b`` runs only those sections (the JSON then holds only theirs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_engine import paper_step
from hclt_peers import HCLT_LATENTS, HCLT_RUNNERS, TreeShape, check_same_function, chow_liu_parents
from peers import BASE, SCALING_BATCH, Shape, available_runners, check_comparable, time_cell
from provenance import source_revision
from random_dags import random_dag
from timing import interleaved_timings

from overspn.atomic import atomic_write_json
from overspn.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
SPEED_WIDTHS = (5, 12, 25)  # sums = inputs: 11,200 / 113,400 / 961,000 parameters (about 1e4, 1e5, 1e6)
DAG_SIZES = (100, 1_000, 10_000, 100_000)
SECTIONS = ("0", "1", "2", "2b", "3")


def spflow_dag(root: Any) -> torch.nn.Module:
    """The same DAG as SPFlow 1.1 modules (shared sub-networks shared): indicator sums become Bernoulli leaves."""
    from spflow.meta.data.scope import Scope
    from spflow.modules.leaves import Bernoulli
    from spflow.modules.products import Product
    from spflow.modules.sums import Sum

    import overspn as osp

    built: dict[int, torch.nn.Module] = {}
    for node in osp.topological_order(root):
        if isinstance(node, osp.Indicator):
            continue
        if isinstance(node, osp.Sum) and all(isinstance(c, osp.Indicator) for c in node.children):
            p = float(node.weights[1] / node.weights.sum())
            built[id(node)] = Bernoulli(scope=Scope([node.children[0].var]), probs=torch.tensor([[p]]))
        elif isinstance(node, osp.Product):
            built[id(node)] = Product([built[id(c)] for c in node.children])
        else:
            w = torch.tensor(node.weights / node.weights.sum(), dtype=torch.float32).view(1, -1, 1, 1)
            built[id(node)] = Sum([built[id(c)] for c in node.children], weights=w)
    return built[id(root)]


def dag_cell(target: int, repeats: int, warmup: int, budget: float, with_spflow: bool) -> dict[str, Any]:
    """No-grad forward of a random DAG over 10 binary variables: overspn's compiled model on encoded data against
    SPFlow's module graph (with its cache, so that shared modules are evaluated once), on the same rows."""
    import overspn as osp

    rng = np.random.default_rng(target)
    root = random_dag(10, target, rng, normalised=True)
    nodes = len(osp.topological_order(root))
    started = time.perf_counter()
    model = osp.compile(root, "raw", dtype=torch.float32)
    compile_s = time.perf_counter() - started
    rows = 1000
    x = torch.from_numpy(rng.integers(0, 2, size=(rows, 10)).astype(np.float32))
    data = model.encode(x)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return model.log_likelihood(data)

    functions = {"overspn": ours}
    cell: dict[str, Any] = {"nodes": nodes, "layers": len(model.layers), "rows": rows, "compile_s": compile_s}
    if with_spflow:
        from spflow.utils.cache import Cache

        started = time.perf_counter()
        peer = spflow_dag(root)
        cell["spflow_build_s"] = time.perf_counter() - started

        def theirs() -> torch.Tensor:
            with torch.no_grad():
                return peer.log_likelihood(x, cache=Cache()).reshape(rows)

        error = float((ours().double() - theirs().double()).abs().max())
        if error > 1e-3:
            raise RuntimeError(f"SPFlow and overspn differ by {error} on a DAG of {nodes} nodes")
        cell["max_abs_difference"] = error
        functions["spflow"] = theirs
    times = interleaved_timings(functions, repeats, warmup, budget)
    cell["results"] = {name: {"median_ms": statistics.median(v), "runs": len(v)} for name, v in times.items()}
    if with_spflow:
        cell["spflow_over_overspn"] = cell["results"]["spflow"]["median_ms"] / cell["results"]["overspn"]["median_ms"]
    return cell


def mixture_cell(num_vars: int, components: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    """Build, compile (+ first forward), save and load the paper's mixture of ``components`` products over
    ``num_vars`` variables (3 million nodes at 1000 x 1000); ``repeats`` rounds, each in this order."""
    import gc
    import resource

    import overspn as osp

    path = out_dir / f"mixture_{num_vars}x{components}.spn"
    rounds = []
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size=(256, num_vars)).astype(np.float32))
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        root = osp.mixture(num_vars, components)
        built = time.perf_counter()
        model = osp.compile(root)
        compiled = time.perf_counter()
        with torch.no_grad():
            model.log_likelihood(x)
        forward = time.perf_counter()
        osp.save(model, path)
        saved = time.perf_counter()
        del model, root
        gc.collect()
        loaded_start = time.perf_counter()
        model = osp.load(path)
        loaded = time.perf_counter()
        rounds.append({"build_s": built - started, "compile_s": compiled - built, "first_forward_s": forward - compiled,
                       "compile_and_first_forward_s": forward - built, "save_s": saved - forward,
                       "load_s": loaded - loaded_start})
        del model
    result: dict[str, Any] = {"num_vars": num_vars, "components": components,
                              "nodes": 3 * num_vars * components + components + 1,
                              "file_bytes": path.stat().st_size, "rounds": rounds}
    for key in rounds[0]:
        result[f"median_{key}"] = statistics.median(r[key] for r in rounds)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path.unlink()
    return result


def paper_section(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """0. the paper's model on raw tensors against the hand-fused model."""
    result["paper_step_threads"] = args.paper_threads
    threads = torch.get_num_threads()
    torch.set_num_threads(args.paper_threads)
    nltcs = load_dataset("nltcs").train
    print(f"\n0. paper's NLTCS model, full-batch step, {args.paper_threads} thread(s): ms (ratio to hand-fused)")
    for dtype in (torch.float32, torch.float64):
        cell = paper_step(nltcs, dtype, args.paper_repeats, args.warmup)
        result[f"paper_step_{str(dtype).removeprefix('torch.')}"] = cell
        print(f"{str(dtype):14} hand-fused {cell['hand_fused']['median_ms']:.2f}; raw tensor "
              f"{cell['raw']['median_ms']:.2f} ({cell['raw']['ratio_to_hand_fused']:.2f}x); encoded "
              f"{cell['encoded']['median_ms']:.2f} ({cell['encoded']['ratio_to_hand_fused']:.2f}x)", flush=True)
    torch.set_num_threads(threads)


def mixture_section(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """1. the mixture."""
    size = args.mixture
    mixture = mixture_cell(size[0], size[1], args.mixture_repeats, args.out.parent)
    result["mixture"] = mixture
    print(f"\n1. mixture {size[0]} x {size[1]} ({mixture['nodes']:,} nodes, file {mixture['file_bytes'] / 1e6:.1f} "
          f"MB), median of {args.mixture_repeats}: compile {mixture['median_compile_s']:.1f} s + first forward "
          f"{mixture['median_first_forward_s']:.1f} s = {mixture['median_compile_and_first_forward_s']:.1f} s; "
          f"load {mixture['median_load_s']:.1f} s; save {mixture['median_save_s']:.1f} s; peak RSS "
          f"{mixture['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)


def rat_section(args: argparse.Namespace, names: list[str], result: dict[str, Any]) -> None:
    """2. RAT-SPN training steps against cirkit."""
    data = torch.from_numpy(load_dataset("plants").train).float()
    rat_names = [n for n in names if n in ("overspn", "cirkit")]
    rat = []
    print(f"\n2. RAT-SPN Adam step, plants, batch {SCALING_BATCH}, {torch.get_num_threads()} thread(s)")
    print(f"{'sums=inputs':>11} {'parameters':>10} {'overspn ms':>11} {'cirkit ms':>10} {'cirkit/overspn':>15}")
    for width in args.widths:
        shape = Shape(data.shape[1], BASE["depth"], BASE["repetitions"], width, width)
        cell = time_cell(shape, rat_names, SCALING_BATCH, data, args.repeats, args.warmup, args.budget, args.seed)
        rat.append(cell)
        r = cell["results"]
        peer = r.get("cirkit", {})
        print(f"{width:11d} {r['overspn']['parameters']:10,d} {r['overspn']['median_step_ms']:11.1f} "
              f"{peer.get('median_step_ms', float('nan')):10.1f} {peer.get('ratio_to_overspn', float('nan')):15.2f}",
              flush=True)
    result["rat_steps"] = rat


def hclt_section(args: argparse.Namespace, names: list[str], result: dict[str, Any]) -> None:
    """2b. HCLT training steps against the same HCLT in cirkit, after checking that the two compute the same."""
    data = torch.from_numpy(load_dataset("plants").train).float()
    hclt_names = [n for n in names if n in ("overspn", "cirkit")]
    parents = chow_liu_parents(data)
    leaves = len(set(range(len(parents))) - set(parents))
    cells = []
    print(f"\n2b. HCLT Adam step, Chow-Liu tree of plants ({len(parents)} variables, {leaves} leaves), batch "
          f"{SCALING_BATCH}, {torch.get_num_threads()} thread(s)")
    print("| K | parameters overspn / cirkit | overspn ms/step (p10-p90) | cirkit ms/step (p10-p90) | "
          "samples/s overspn / cirkit | cirkit / overspn | max abs error at equal parameters (init / factorised) |")
    print("|---|---|---|---|---|---|---|")
    for latent in args.hclt_latents:
        shape = TreeShape(data.shape[1], latent, parents)
        checks: dict[str, Any] = {}
        if "cirkit" in hclt_names:
            checks["same_function"] = check_same_function(shape, data, 512, args.seed)
            checks["comparable"] = check_comparable([HCLT_RUNNERS[n](shape, args.seed) for n in hclt_names],
                                                    data[:512])
        cell = time_cell(shape, hclt_names, SCALING_BATCH, data, args.repeats, args.warmup, args.budget, args.seed,
                         HCLT_RUNNERS)
        cell["checks"] = checks
        cells.append(cell)
        r = cell["results"]
        ours, peer = r["overspn"], r.get("cirkit")
        row = [str(latent), f"{ours['parameters']:,} / {peer['parameters']:,}" if peer else f"{ours['parameters']:,}",
               f"{ours['median_step_ms']:.1f} ({ours['p10_step_ms']:.1f}-{ours['p90_step_ms']:.1f})"]
        if peer:
            errors = (checks["same_function"]["max_abs_error"],
                      max(checks["comparable"][n]["equal_parameters_max_abs_error"] for n in hclt_names))
            row += [f"{peer['median_step_ms']:.1f} ({peer['p10_step_ms']:.1f}-{peer['p90_step_ms']:.1f})",
                    f"{ours['samples_per_s']:,.0f} / {peer['samples_per_s']:,.0f}",
                    f"**{peer['ratio_to_overspn']:.2f}**", f"{errors[0]:.1e} / {errors[1]:.1e}"]
        print("| " + " | ".join(row) + " |", flush=True)
    result["hclt_steps"] = cells


def dag_section(args: argparse.Namespace, names: list[str], result: dict[str, Any]) -> None:
    """3. random DAGs against SPFlow."""
    dags = []
    print("\n3. random DAGs, 10 binary variables, 1,000 rows, no grad: forward ms")
    print(f"{'nodes':>8} {'layers':>7} {'compile s':>10} {'overspn ms':>11} {'SPFlow ms':>10} {'SPFlow/overspn':>15}")
    for target in args.dag_sizes:
        cell = dag_cell(target, args.repeats, args.warmup, args.budget, "spflow" in names)
        dags.append(cell)
        r = cell["results"]
        print(f"{cell['nodes']:8d} {cell['layers']:7d} {cell['compile_s']:10.2f} {r['overspn']['median_ms']:11.2f} "
              f"{r.get('spflow', {}).get('median_ms', float('nan')):10.2f} "
              f"{cell.get('spflow_over_overspn', float('nan')):15.2f}", flush=True)
    result["random_dags"] = dags


def speed_suite(args: argparse.Namespace) -> None:
    names, missing = available_runners()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "overspn speed suite: the paper's model on raw tensors against a hand-fused model, a "
                     "3-million-node mixture, RAT-SPN and HCLT steps against cirkit, random DAGs against SPFlow",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()},
        "source": source_revision(), "versions": {"torch": torch.__version__}, "missing": missing,
        "settings": vars(args) | {"out": str(args.out)},
    }
    for name in names[1:]:
        from importlib.metadata import version

        result["versions"][name] = version("libcirkit" if name == "cirkit" else name)
    sections = set(args.sections)
    if "0" in sections:
        paper_section(args, result)
    if "1" in sections:
        mixture_section(args, result)
    if "2" in sections:
        rat_section(args, names, result)
    if "2b" in sections:
        hclt_section(args, names, result)
    if "3" in sections:
        dag_section(args, names, result)
    result["machine"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"\nload average at end: {os.getloadavg()}; written to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per library and cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per library and cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", type=int, nargs="+", default=list(SPEED_WIDTHS),
                        help="sums = inputs per region of the RAT-SPNs timed against cirkit")
    parser.add_argument("--hclt-latents", type=int, nargs="+", default=list(HCLT_LATENTS),
                        help="latent states K of the HCLTs timed against cirkit (section 2b)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="the sections to run (default: all)")
    parser.add_argument("--mixture", type=int, nargs=2, default=[1000, 1000], metavar=("VARS", "COMPONENTS"))
    parser.add_argument("--mixture-repeats", type=int, default=1)
    parser.add_argument("--dag-sizes", type=int, nargs="+", default=list(DAG_SIZES))
    parser.add_argument("--paper-threads", type=int, default=2, help="torch threads of the paper-model step")
    parser.add_argument("--paper-repeats", type=int, default=200, help="interleaved rounds of that step")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speed_suite(args)


if __name__ == "__main__":
    main()
