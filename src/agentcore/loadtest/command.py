"""``agentcore loadtest run | compare | baseline save`` (docs/load-testing.md).

Exit codes of ``run``: 0 every figure PASS or WARN; 1 a FAIL (or the run
itself failed); 3 INCONCLUSIVE (the load generator or the user count, not
the gateway, limited a figure that missed its target; ``--inconclusive-ok``
makes it 0); 2 bad options. ``compare``: 0 no regression, 1 regression,
2 unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentcore.loadtest import compare
from agentcore.loadtest.scenarios import ALL, CATALOGUE, parse_duration, scenarios_dir
from agentcore.loadtest.targets import load_targets


def add_parser(commands: Any) -> None:
    loadtest = commands.add_parser("loadtest", help="run, judge and compare load tests (Locust)")
    actions = loadtest.add_subparsers(dest="action", required=True)

    run = actions.add_parser(
        "run",
        help="run a scenario (or all) against a gateway it starts, judge it against targets",
        description="Defaults of --users/--spawn-rate/--run-time are the seed's per scenario.",
    )
    run.add_argument("scenario", choices=[*CATALOGUE, "all"])
    run.add_argument("--users", type=int, help="concurrent Locust users")
    run.add_argument("--spawn-rate", type=float, help="users started per second")
    run.add_argument("--run-time", help="e.g. 30s, 5m (Locust syntax)")
    run.add_argument(
        "--host", help="a running gateway (e.g. http://localhost:8001); default: start one"
    )
    run.add_argument("--api-key", help="API key for --host when it has auth on")
    run.add_argument(
        "--processes",
        type=int,
        help="Locust processes (-1: one per core); one process is limited to one core",
    )
    run.add_argument("--out", help="result folder (default results/<time>-<scenario>)")
    run.add_argument("--targets", help="TOML file overriding target/critical levels")
    run.add_argument("--warmup", default="auto", help="warm-up duration, or auto (default)")
    run.add_argument("--cooldown", default="30s", help="pause between scenarios of 'all'")
    run.add_argument("--no-wrk", dest="wrk", action="store_false", help="HTTP RPS from Locust")
    run.add_argument("--wrk-time", help="wrk duration (default: the run time, at most 30s)")
    run.add_argument("--progress", default="5s", help="interval of progress lines (default 5s)")
    run.add_argument("--gateway-config", help="TOML configuration of the started gateway")
    run.add_argument("--gateway-workers", type=int, help="worker processes of the started gateway")
    run.add_argument("--gateway-cpus", help="pin the started gateway (taskset -c LIST)")
    run.add_argument("--gateway-nice", type=int, help="run the started gateway under nice -n N")
    run.add_argument("--scenarios-dir", help="folder of the Locust files (default tests/load)")
    run.add_argument(
        "--inconclusive-ok", action="store_true", help="exit 0 instead of 3 when inconclusive"
    )

    cmp = actions.add_parser("compare", help="compare two results; exit 1 on regression")
    compare.add_arguments(cmp)

    baseline = actions.add_parser("baseline", help="keep a result as the baseline")
    baseline_actions = baseline.add_subparsers(dest="baseline_action", required=True)
    save = baseline_actions.add_parser("save", help="copy a result's stats and summary")
    save.add_argument("result", help="result folder of 'agentcore loadtest run'")
    save.add_argument("--to", default="results/baselines", help="default results/baselines")


def main(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # The runner (samplers, figures, the gateway's key store) loads only for `agentcore loadtest`.
    from agentcore.loadtest import runner

    if args.action == "compare":
        return compare.run(args)
    if args.action == "baseline":
        written = runner.save_baseline(Path(args.result), Path(args.to))
        if not written:
            print(f"agentcore: no *_stats.csv under {args.result}", file=sys.stderr)
            return 2
        for path in written:
            print(f"baseline saved: {path}")
        return 0
    try:
        targets = load_targets(args.targets)
        for value in (args.run_time, args.wrk_time, args.cooldown, args.progress):
            if value is not None:
                parse_duration(value)
        if args.warmup != "auto":
            parse_duration(args.warmup)
    except (OSError, ValueError) as exc:
        print(f"agentcore: {exc}", file=sys.stderr)
        return 2
    names = list(ALL) if args.scenario == "all" else [args.scenario]
    opts = runner.Options(
        out=Path(args.out) if args.out else runner.default_out(args.scenario),
        scenarios_dir=scenarios_dir(args.scenarios_dir),
        targets=targets,
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        host=args.host,
        processes=args.processes,
        warmup=args.warmup,
        wrk=args.wrk,
        wrk_time=parse_duration(args.wrk_time) if args.wrk_time else None,
        gateway_config=args.gateway_config,
        gateway_workers=args.gateway_workers,
        gateway_cpus=args.gateway_cpus,
        gateway_nice=args.gateway_nice,
        api_key=args.api_key,
        progress_s=parse_duration(args.progress),
        cooldown_s=parse_duration(args.cooldown),
        inconclusive_ok=args.inconclusive_ok,
        environ=environ,
    )
    return runner.run(opts, names)
