"""``nessa methods`` (the selection library's methods, no daemon) and ``nessa select`` (one selection, to a file)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nessa.cli.options import Command, UsageError, option_pair
from nessa.cli.status import add_daemon_flags, daemon_client

__all__ = ["COMMANDS"]


def _daemon_can_run(method: str, requires: list[str] | tuple[str, ...]) -> str:
    """Whether a storage daemon can run ``method`` with its default options (and whether it needs a proxy)."""
    from nessa.errors import InvalidArgumentError
    from nessa.proxy.inputs import plan_inputs

    try:
        plan = plan_inputs(method, requires)
    except InvalidArgumentError:
        missing = [r for r in requires if r not in ("labels", "gradients", "losses", "embeddings")]
        return f"no: needs {', '.join(missing)}, which a daemon cannot compute (use it as a library)"
    return "yes, with a pushed proxy" if plan.needs_proxy else "yes, no proxy needed"


def _run_methods(args: argparse.Namespace) -> int:
    from nessa.selection import available

    methods = available()
    if args.method:
        unknown = [m for m in args.method if m not in methods]
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; choose one of: {', '.join(methods)}")
        methods = {m: methods[m] for m in args.method}
    for name, info in methods.items():
        info["daemon"] = _daemon_can_run(name, info["requires"])
    if args.json:
        print(json.dumps(methods, indent=2, default=str))
        return 0
    for i, (name, info) in enumerate(methods.items()):
        if i:
            print()
        print(f"{name}: {info['description']}")
        print(f"  needs:   {', '.join(info['requires']) or 'nothing'}")
        print(f"  daemon:  {info['daemon']}")
        opts = info["options"]
        if opts:
            width = max(len(k) for k in opts)
            print("  options:")
            for key, default in opts.items():
                print(f"    {key:<{width}}  {json.dumps(default, default=str)}")
        else:
            print("  options: none")
    return 0


def _add_methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="*", help="only these methods (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON: name → description, requires, options")


def _run_select(args: argparse.Namespace) -> int:
    import numpy as np

    if (args.fraction is None) == (args.count is None):
        raise UsageError("give exactly one budget: --fraction F in (0, 1] or --count N")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1]; got {args.fraction}")
    if not args.out.endswith(".npz"):
        raise UsageError(f"--out {args.out!r}: write the selection to a .npz file, e.g. --out sel.npz")
    with daemon_client(args) as client:
        sel = client.select(
            args.dataset,
            args.method,
            fraction=args.fraction,
            count=args.count,
            seed=args.seed,
            budget_rule=args.budget_rule,
            engine=args.engine,
            options=dict(args.option or []),
        )
    metadata: dict[str, Any] = {**sel.meta(), "seed": args.seed}
    np.savez(args.out, indices=sel.indices, weights=sel.weights, metadata=np.array(json.dumps(metadata)))
    print(
        f"{args.out}: {len(sel)} of {sel.num_candidates} samples of {sel.dataset} by {sel.method} "
        f"(selection {sel.id}{', cached' if sel.cached else ''})"
    )
    return 0


def _add_select(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset name (`nessa status` lists them)")
    p.add_argument("method", help="selection method (`nessa methods` lists them)")
    add_daemon_flags(p)
    p.add_argument("--fraction", type=float, default=None, help="budget as a fraction of the dataset, in (0, 1]")
    p.add_argument("--count", type=int, default=None, help="budget as a number of samples (instead of --fraction)")
    p.add_argument("--out", required=True, help="write indices, weights and metadata (JSON) here, a .npz file")
    p.add_argument("--seed", type=int, default=0, help="the method's seed (default: 0)")
    p.add_argument(
        "--budget-rule", default="global", help="global, or equal / proportional per-class budgets (default: global)"
    )
    p.add_argument("--engine", default="", help="the daemon's proxy engine (default: the daemon's)")
    p.add_argument(
        "--option", action="append", type=option_pair, metavar="KEY=VALUE", help="method option (repeatable)"
    )


COMMANDS = {
    "methods": Command(
        help="the selection methods: what each is for, the inputs it needs, its options and defaults",
        add=_add_methods,
        run=_run_methods,
    ),
    "select": Command(
        help="ask a daemon for one selection and write its indices, weights and metadata to a .npz file",
        description="Run one selection on the daemon and save it: indices (int64), weights (float32) and metadata "
        "(a JSON string: id, method, options, class counts, timings ...). Load with numpy.load(PATH). Methods that "
        "need model outputs need a proxy pushed for the dataset first (nessa train pushes one).",
        add=_add_select,
        run=_run_select,
    ),
}
