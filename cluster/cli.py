"""The `rayworks` command.

    rayworks run <pipeline> [--config FILE] [--set k=v ...] [--resume] [--address ADDR]
    rayworks submit <pipeline> --address http://HEAD:8265 [--config FILE] [--set k=v ...]
    rayworks tune <pipeline> --space SPACE.yaml [--num-samples N] [--config FILE] [--set k=v ...]
    rayworks serve <app> [--port 8000] [--checkpoint PATH_OR_ID] [--address ADDR] [--direct-ingress]
    rayworks compare <pipeline> --vary FIELD=A,B --seeds N [--metric NAME ...] [--set k=v ...]
    rayworks quickstart [--only PIPELINE ...]
    rayworks config <pipeline> [--config FILE] [--set k=v ...]

Exit codes: 0 done, 1 the run failed, 2 a config error (the field is named), 3 Ray could not be
reached. Commands that start a local Ray take `--num-cpus N` (or `RAYWORKS_NUM_CPUS`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from pipelines import PIPELINES, UnknownPipeline, get_pipeline
from pipelines.launch import (
    EXIT_CONFIG_ERROR,
    add_local_ray_arguments,
    add_run_arguments,
    print_summaries,
    quiet_libraries,
    report_failure,
)
from serving import APPS, UnknownApp, get_app_builder
from workloads.config import ConfigError, config_yaml, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayworks", description="Train, distil and serve models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline (local Ray unless --address/RAY_ADDRESS)")
    run.add_argument("pipeline")
    add_run_arguments(run)

    submit = commands.add_parser("submit", help="submit a pipeline as a Ray job and stream its logs")
    submit.add_argument("pipeline")
    submit.add_argument("--address", required=True, help="the cluster's dashboard/job server, http://HEAD:8265")
    submit.add_argument("--config")
    submit.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    submit.add_argument("--resume", action="store_true")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting")

    tune = commands.add_parser("tune", help="Ray Tune search (ASHA) over a pipeline's config fields")
    tune.add_argument("pipeline")
    tune.add_argument("--space", required=True, help="search space YAML")
    tune.add_argument("--num-samples", type=int, default=4)
    tune.add_argument("--max-concurrent", type=int, default=2)
    tune.add_argument("--config")
    tune.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    tune.add_argument("--address")
    add_local_ray_arguments(tune)

    serve = commands.add_parser("serve", help="start a Ray Serve app; runs until Ctrl-C")
    serve.add_argument("app", help=f"one of: {', '.join(sorted(APPS))}")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--checkpoint", help="generate: model directory or hub id; policy: a policy.pt or its directory")
    serve.add_argument("--isolation", choices=["bubblewrap", "rlimits-only"], help="verifier: Python sandbox mode")
    serve.add_argument("--workers", type=int, help="verifier: sandbox worker processes (default: CPU count)")
    serve.add_argument("--lean-project", help="verifier: Lake project with the Lean REPL built")
    serve.add_argument("--draft", help="repair: the draft model's directory (default: newest rayworks-tri-draft)")
    serve.add_argument("--infiller", help="repair: the infiller's directory (default: newest rayworks-tri-infiller)")
    serve.add_argument("--solver", help="streamma: the solver's directory (default: newest rayworks-streamma-solver)")
    serve.add_argument("--checker", help="streamma: the checker's directory (default: newest rayworks-streamma-checker)")
    serve.add_argument("--address")
    serve.add_argument("--direct-ingress", action="store_true",
                       help="the app's replica answers HTTP on --port itself, with no hop through Serve's proxy "
                            "(Serve's throughput-optimised mode; for control loops). Local Ray only: on a cluster, "
                            "set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 on its nodes")
    add_local_ray_arguments(serve)

    compare = commands.add_parser("compare", help="run arms of a pipeline over seeds; mean and 95%% CI per arm")
    compare.add_argument("pipeline")
    compare.add_argument("--vary", required=True, help="FIELD=VALUE1,VALUE2[,...], e.g. reward=rubric,outcome")
    compare.add_argument("--seeds", type=int, default=3)
    compare.add_argument("--metric", dest="metrics", action="append", default=[], help="metric to compare (repeatable)")
    compare.add_argument("--config")
    compare.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    compare.add_argument("--address")
    add_local_ray_arguments(compare)

    quickstart = commands.add_parser("quickstart", help="run every pipeline's smallest embedded default, locally")
    quickstart.add_argument("--only", nargs="+", choices=list(PIPELINES), metavar="PIPELINE",
                            help=f"just these pipelines ({', '.join(PIPELINES)})")
    add_local_ray_arguments(quickstart)

    config = commands.add_parser("config", help="print a pipeline's config as YAML, each field's help beside it")
    config.add_argument("pipeline")
    config.add_argument("--config", dest="config_file", help="YAML config file to start from")
    config.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    return parser


def cmd_run(args) -> int:
    module = get_pipeline(args.pipeline)
    argv = []
    if args.config:
        argv += ["--config", args.config]
    if args.overrides:
        argv += ["--set", *args.overrides]
    if args.resume:
        argv.append("--resume")
    if args.address:
        argv += ["--address", args.address]
    if args.num_cpus is not None:
        argv += ["--num-cpus", str(args.num_cpus)]
    if args.verbose:
        argv.append("--verbose")
    return module.main(argv)


def cmd_submit(args) -> int:
    from cluster import submit

    module = get_pipeline(args.pipeline)
    overrides = submit.config_file_overrides(args.config) + args.overrides
    config = load_config(module.Config, None, overrides)  # a bad field fails here, not on the cluster
    submit.check_storage_path(config.storage_path)
    return submit.main(args.pipeline, args.address, None, overrides, args.resume, not args.no_wait)


def cmd_tune(args) -> int:
    from cluster.connect import connect
    from pipelines.tuning import load_space, run_search

    load_space(args.space, args.pipeline, args.config, args.overrides)  # check before Ray starts
    quiet_libraries(args.verbose)
    connect(args.address, args.num_cpus, log_to_driver=args.verbose)
    outcome = run_search(args.pipeline, args.space, args.num_samples, args.config, args.overrides, args.max_concurrent)
    print(f"best {outcome['metric']} = {outcome['best_value']:.4f} with {outcome['best_params']}")
    print(f"MLflow parent run {outcome['parent_run_id']} ({outcome['num_trials']} trials, {outcome['errors']} errored)")
    print("RESULT " + json.dumps(outcome, default=str))
    return 0 if outcome["errors"] == 0 else 1


def cmd_compare(args) -> int:
    from cluster.connect import connect
    from pipelines.compare import check_comparison, print_comparison, run_comparison

    check_comparison(args.pipeline, args.vary, args.seeds, args.config, args.overrides)  # before Ray starts
    quiet_libraries(args.verbose)
    connect(args.address, args.num_cpus, log_to_driver=args.verbose)
    outcome = run_comparison(args.pipeline, args.vary, args.seeds, args.metrics, args.config, args.overrides)
    print_comparison(outcome)
    print("RESULT " + json.dumps(outcome, default=str))
    return 0


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


SERVE_STOP_DEADLINE_S = 30.0


def _bounded(step, deadline_s: float) -> bool:
    """Run `step` in a helper thread; False when it is still running after `deadline_s`."""
    worker = threading.Thread(target=step, daemon=True)
    worker.start()
    worker.join(deadline_s)
    return not worker.is_alive()


def _stop_serve(deadline_s: float = SERVE_STOP_DEADLINE_S) -> bool:
    """Stop Serve, then this process's Ray, each within a deadline.

    A loaded machine can leave `serve.shutdown()` waiting on a controller that no longer
    answers; Ctrl-C must still end the process, and with it the local Ray it started.
    """
    import ray
    from ray import serve

    started = time.monotonic()
    for name, step in (("serve.shutdown", serve.shutdown), ("ray.shutdown", ray.shutdown)):
        if not _bounded(step, deadline_s):
            print(f"warning: {name}() did not finish within {deadline_s:.0f} s; exiting anyway", file=sys.stderr, flush=True)
            return False
    print(f"Serve stopped in {time.monotonic() - started:.1f} s", flush=True)
    return True


def cmd_serve(args) -> int:
    from ray import serve

    from cluster.connect import connect

    builder = get_app_builder(args.app)
    options = {"checkpoint": args.checkpoint, "isolation": args.isolation, "workers": args.workers,
               "lean_project": args.lean_project, "draft": args.draft, "infiller": args.infiller,
               "solver": args.solver, "checker": args.checker}
    try:
        application = builder({key: value for key, value in options.items() if value is not None})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    proxy_port = args.port
    if args.direct_ingress:
        if args.address or os.environ.get("RAY_ADDRESS"):
            raise ConfigError("--direct-ingress: starts a local Ray with Serve's direct ingress; on a cluster, set "
                              "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 on its nodes instead")
        from serving.http import direct_ingress_environment, free_port

        os.environ.update(direct_ingress_environment(args.host, args.port))
        proxy_port = free_port(args.host)  # Serve still starts its proxy; the replica has --port
    connect(args.address, args.num_cpus)
    # Ctrl-C stops the app even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then installs no handler); SIGTERM alike.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        serve.start(http_options={"host": args.host, "port": proxy_port})
        try:
            serve.run(application, name=args.app, route_prefix="/")
        except RuntimeError as exc:  # a replica that refused to start (e.g. no sandbox here)
            print(f"error: the {args.app} app failed to start: {exc}", file=sys.stderr)
            return 1
        print(f"Serve app '{args.app}' is up at http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("shutting down Serve ...", flush=True)
    finally:
        if not _stop_serve():
            os._exit(1)  # a hung shutdown thread would block interpreter exit; the local Ray dies with us
    return 0


def quickstart_pipelines(only: list[str] | None) -> list[str]:
    """The pipelines `quickstart` runs: all of them, or those named in `--only`, in the registry's order."""
    return [name for name in PIPELINES if not only or name in only]


def cmd_quickstart(args) -> int:
    from cluster.connect import connect

    names = quickstart_pipelines(args.only)
    configs = {name: load_config(get_pipeline(name).Config, None, get_pipeline(name).QUICKSTART) for name in names}
    quiet_libraries(args.verbose)
    connect(None, args.num_cpus, log_to_driver=args.verbose)
    summaries, seconds, started = [], {}, time.monotonic()
    for index, (name, config) in enumerate(configs.items(), 1):
        print(f"\n=== [{index}/{len(configs)}] {name} ===", flush=True)
        begun = time.monotonic()
        summaries.append(get_pipeline(name).run(config))
        seconds[name] = time.monotonic() - begun
    each = ", ".join(f"{name} {value:.0f}" for name, value in seconds.items())
    print(f"\nquickstart finished in {time.monotonic() - started:.0f} s ({each})\n")
    print_summaries(summaries)
    return 0


def cmd_config(args) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `rayworks config sft | head` ends quietly
    config = load_config(get_pipeline(args.pipeline).Config, args.config_file, args.overrides)
    print(f"# rayworks config {args.pipeline}: use with --config FILE; any field also with --set key=value")
    print(config_yaml(config))
    return 0


COMMANDS = {"config": cmd_config, "run": cmd_run, "submit": cmd_submit, "tune": cmd_tune, "serve": cmd_serve, "compare": cmd_compare, "quickstart": cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UnknownPipeline, UnknownApp) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return report_failure(exc, getattr(args, "verbose", False))


if __name__ == "__main__":
    sys.exit(main())
