"""Wall time and peak memory of ``overspn.data.load_csv`` on a large binary CSV file, clean and with missing fields.

Three files of about ``--megabytes`` MB each (100 binary columns, ``0,1,...`` rows) are written to a temporary
folder: ``clean``; ``one_empty`` (a single empty field in the middle line); ``missing_1pct`` (about 1% of the
fields empty or ``?``). Each is read with ``load_csv(path, binary=True, allow_missing=True)`` in a fresh Python
process, which reports its wall and processor seconds (the latter less sensitive to other jobs), its resident
memory after importing overspn (torch included) and its peak resident memory (``VmHWM``). The table and
``results/bench/csv_memory.json`` give the peak over the file size, both for the whole process and for the loader
alone (peak minus the memory after import). The float64 result alone is ``8 / 2 = 4`` times the size of a binary CSV
file (two bytes per value), so that is the floor of the second ratio.

    python benchmarks/bench_csv_memory.py [--megabytes 200] [--out results/bench/csv_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COLUMNS = 100
MISSING_FRACTION = 0.01
BLOCK_ROWS = 50_000  # rows generated at a time, so that the generator stays small next to the file

# Runs in the child: import first, so that the memory after import can be told apart from the loader's peak. The peak
# is VmHWM, the high-water mark of the child's own address space: ru_maxrss (and /usr/bin/time, which reads it) keeps
# across exec the resident size of the parent it was forked from, which can hide the child's peak.
CHILD = """
import json, sys, time
from overspn import data
from overspn.data import load_csv

def status(key: str) -> int:
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise SystemExit(f"no {key} in /proc/self/status")

after_import = status("VmRSS")
started, cpu_started = time.perf_counter(), time.process_time()
array = load_csv(sys.argv[1], binary=True, allow_missing=True)
seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": status("VmHWM"),
                  "after_import_bytes": after_import, "shape": list(array.shape),
                  "missing": int((array != array).sum()), "module": data.__file__}))
"""


def write_csv(path: Path, rows: int, variant: str, seed: int = 0) -> None:
    """Write ``rows`` binary rows of ``COLUMNS`` fields; ``variant`` says which fields are left empty or ``?``."""
    rng = np.random.default_rng(seed)
    middle = rows // 2
    with open(path, "wb") as stream:
        for start in range(0, rows, BLOCK_ROWS):
            count = min(BLOCK_ROWS, rows - start)
            # The bytes "d,d,...,d\n" built as one array, far faster than formatting rows in Python; an empty field
            # is a digit left out.
            text = np.full((count, 2 * COLUMNS), ord(","), dtype=np.uint8)
            text[:, 0::2] = rng.integers(0, 2, (count, COLUMNS)) + ord("0")
            text[:, -1] = ord("\n")
            keep = np.ones(text.shape, dtype=bool)
            if variant == "one_empty" and start <= middle < start + count:
                keep[middle - start, 2 * (COLUMNS // 2)] = False
            elif variant == "missing_1pct":
                drawn = rng.random((count, COLUMNS))
                keep[:, 0::2] = drawn >= MISSING_FRACTION / 2
                text[:, 0::2][(drawn >= MISSING_FRACTION / 2) & (drawn < MISSING_FRACTION)] = ord("?")
            stream.write(text[keep].tobytes())


def measure(path: Path) -> dict[str, object]:
    """Read ``path`` in a fresh interpreter and return its report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env,
                               check=False)
    if completed.returncode != 0:
        raise SystemExit(f"reading {path} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0, help="size of each generated file (default 200)")
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "csv_memory.json"))
    parser.add_argument("--label", default="", help="free text stored in the JSON (e.g. the commit measured)")
    args = parser.parse_args()
    rows = max(1, int(args.megabytes * 1e6 / (2 * COLUMNS)))
    results = []
    with tempfile.TemporaryDirectory(prefix="overspn-bench-csv-") as folder:
        for variant in ("clean", "one_empty", "missing_1pct"):
            path = Path(folder) / f"{variant}.csv"
            write_csv(path, rows, variant)
            size = path.stat().st_size
            report = measure(path)
            path.unlink()  # one file on disk at a time
            peak, after_import = int(report["peak_bytes"]), int(report["after_import_bytes"])
            results.append({"variant": variant, "module": report["module"], "file_bytes": size,
                            "shape": report["shape"], "missing_values": report["missing"],
                            "seconds": report["seconds"], "cpu_seconds": report["cpu_seconds"], "peak_bytes": peak,
                            "after_import_bytes": after_import, "peak_over_file": peak / size,
                            "loader_peak_over_file": (peak - after_import) / size,
                            "result_over_file": rows * COLUMNS * 8 / size})
    print("| file | MB | rows x cols | missing | wall s | CPU s | peak MB | after import MB | peak / file | "
          "(peak - import) / file |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for entry in results:
        print(f"| {entry['variant']} | {entry['file_bytes'] / 1e6:.1f} | {entry['shape'][0]:,} x {entry['shape'][1]} | "
              f"{entry['missing_values']:,} | {entry['seconds']:.2f} | {entry['cpu_seconds']:.2f} | "
              f"{entry['peak_bytes'] / 1e6:,.0f} | {entry['after_import_bytes'] / 1e6:,.0f} | "
              f"{entry['peak_over_file']:.2f} | {entry['loader_peak_over_file']:.2f} |")
    print(f"(the float64 result alone is {results[0]['result_over_file']:.2f} x the file size)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "csv_memory", "label": args.label, "megabytes": args.megabytes, "columns": COLUMNS,
              "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
