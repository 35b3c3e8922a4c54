"""Report the thread pools a job gets: torch intra-op and inter-op threads, BLAS and OpenMP
pools and the tokenizers setting, in the main process and inside joblib's loky workers (the
processes that `hydra/launcher=joblib` runs jobs in).

Run: .venv/bin/python benchmarks/threads.py
Here --threads defaults to 0, which leaves torch's default as a run with
train.torch_threads=0 does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(threads=0)
    parser.add_argument(
        "--n-jobs", type=int, nargs="+", default=[1, 2],
        help="joblib n_jobs values to probe; the joblib launcher's default -1 means all cores.",
    )
    return parser.parse_args(argv)


def probe() -> dict[str, Any]:
    """Thread settings of the calling process."""
    import torch
    from threadpoolctl import threadpool_info

    return {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {key: os.environ.get(key) for key in ENV_KEYS},
        "thread_pools": sorted(
            f"{pool.get('internal_api')}={pool.get('num_threads')}" for pool in threadpool_info()
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        harness.setup_torch(args.threads)
    record = harness.run_record(args)

    import cloudpickle
    from joblib import Parallel, delayed

    if __name__ != "__main__":
        # Imported by file path (as the tests do), this module cannot be imported by name in a
        # worker, so `probe` travels by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    contexts = {"main process": probe()}
    for n_jobs in args.n_jobs:
        # The launcher's backend: hydra_joblib_launcher forces backend="loky".
        jobs = (delayed(probe)() for _ in range(max(n_jobs, 1)))
        workers = Parallel(n_jobs=n_jobs, backend="loky")(jobs)
        contexts[f"loky worker, n_jobs={n_jobs}"] = workers[0]

    results = record | {"contexts": contexts}
    harness.write_results("threads", args, results, render)
    return results


def render(results: dict[str, Any]) -> str:
    main_pid = results["contexts"]["main process"]["pid"]
    rows = [
        [name, "yes" if entry["pid"] == main_pid else "no", entry["torch_threads"],
         entry["torch_interop_threads"], entry["env"]["OMP_NUM_THREADS"], ", ".join(entry["thread_pools"]),
         entry["env"]["TOKENIZERS_PARALLELISM"]]
        for name, entry in results["contexts"].items()
    ]
    return "\n".join([
        f"Thread pools on {results['machine']['cores']} cores",
        "",
        harness.format_table(
            ["context", "main process", "torch threads", "torch inter-op", "OMP_NUM_THREADS",
             "BLAS/OpenMP pools", "TOKENIZERS_PARALLELISM"],
            rows,
        ),
    ])


if __name__ == "__main__":
    main()
