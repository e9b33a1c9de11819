"""The `rankstudy` command: `study`, `plan`, `report`, `export`, `evaluate`, `trial` (one arm,
no Ray Tune)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path

from rankstudy.core.errors import InputError
from rankstudy.core.summaries import StudySummary, SweepSummary


def _invalid(command: str, error: Exception) -> int:
    """Bad input, said in the error's own words (which name the field or option): status 2."""
    print(f"rankstudy {command}: invalid input\n{error}", file=sys.stderr)
    return 2


def _trial(args: argparse.Namespace) -> int:

    from rankstudy.core.arms import parse_arm
    from rankstudy.core.spec import load_spec
    from rankstudy.study.model_fit import check_fits_model

    # validate everything before any compute starts (bad input: main says so)
    spec = load_spec(args.spec, args.set)
    parse_arm(args.arm, spec)
    check_fits_model(spec)
    from rankstudy.core.records import RESULT_FILE, TrialConfig, TrialFailure, write_failure
    from rankstudy.trial.checkpoint import CorruptCheckpoint
    from rankstudy.trial.lifecycle import TrialFailed, run_trial

    out = Path(args.out or f"runs/{spec.name}/{args.arm}")
    config = TrialConfig(spec=spec, arm=args.arm, out_dir=str(out), overrides=args.set)
    try:
        result = run_trial(config)
    except TrialFailed as e:
        write_failure(TrialFailure(arm=args.arm, reason=str(e)), out)
        print(f"rankstudy trial: FAILED: {e}", file=sys.stderr)
        return 1
    except CorruptCheckpoint as e:
        print(f"rankstudy trial: {e}; run it again", file=sys.stderr)
        return 1
    curve = "  ".join(f"r={k}: {v:.3f}" for k, v in result.scores.items())
    print(
        f"{args.arm}: test {curve}  AURAC log2 {result.aurac['log2']:.3f} "
        f"linear {result.aurac['linear']:.3f}\nwrote {out / RESULT_FILE}"
    )
    return 0


def _plan(args: argparse.Namespace) -> int:

    from rankstudy.core.spec import load_spec, read_spec_file
    from rankstudy.study.plan import (
        add_time,
        calibrate,
        plan,
        plan_table,
        published_split_sizes,
        shape_of,
    )
    from rankstudy.study.preflight import preflight
    from rankstudy.study.sweep import sweep_points

    try:
        spec = load_spec(args.spec, args.set)
        variants = [(p.label, [*args.set, *p.overrides]) for p in sweep_points(spec)]
        plans = []
        for label, sets in variants:
            variant = load_spec(args.spec, sets)
            # the study's own checks (rankstudy.study.preflight), then what it will spend
            arch, sizes = preflight(variant, Path(f"runs/{variant.name}"))
            shape = shape_of(variant, arch)
            # a hub data set out of reach: its published sizes (the trials read its rows)
            out = plan(variant, shape, published_split_sizes(variant) if sizes is None else sizes)
            if args.calibrate:
                raw = read_spec_file(args.spec)
                add_time(out, variant, shape, *calibrate(raw, sets, args.calibrate))
            elif variant.throughput is not None:
                t = variant.throughput
                add_time(out, variant, shape, t.device, t.tokens_per_second)
            plans.append((label, out))
    except OSError as e:  # a file the spec names cannot be read (an InputError goes to main)
        return _invalid(args.command, e)
    for label, out in plans:
        print((f"[{label}] " if label else "") + plan_table(out))
        if "throughput" not in out:
            print("device-hours: give `throughput` in the spec, or --calibrate STEPS")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(plans) if len(plans) > 1 else plans[0][1]))
    return 0


def _point_studies(args: argparse.Namespace, spec) -> tuple[list, list]:
    """The points of the spec's sweep (one, with no sweep) and a Study for each, checked now.
    A sweep's points record into one MLflow store and experiment; resumed, a point that never
    started starts afresh."""
    from rankstudy.study.driver import Study, StudyError
    from rankstudy.study.preflight import tracking_uri
    from rankstudy.study.state import STATE_FILE
    from rankstudy.study.sweep import shared_tracking, sweep_points

    base = Path(args.out or f"runs/{spec.name}")
    points = sweep_points(spec)
    if len(points) == 1 and not points[0].label:
        return points, [Study(args.spec, args.set, str(base), args.resume, spec=spec)]
    folders = [base / p.label for p in points]
    if args.resume and not any((f / STATE_FILE).exists() for f in folders):
        raise StudyError(f"--resume: {base} holds no sweep to resume")
    shared = shared_tracking(spec, tracking_uri(spec.tracking.uri, base))
    return points, [
        Study(
            args.spec,
            [*args.set, *p.overrides, *shared],
            str(f),
            args.resume and (f / STATE_FILE).exists(),
            p.tags,
        )
        for p, f in zip(points, folders, strict=True)
    ]


def _study(args: argparse.Namespace) -> int:
    from rankstudy.core.spec import load_spec
    from rankstudy.study.ray_cluster import ClusterError, check_cluster, connect_ray
    from rankstudy.study.state import StudyError

    if args.dry_run:
        return _plan(args)
    studies = []
    try:  # every spec and output directory is checked, then held, before anything starts
        spec = load_spec(args.spec, args.set)
        points, studies = _point_studies(args, spec)
        for study in studies:
            study.hold()
    except (InputError, StudyError, OSError) as e:  # OSError: as `plan` refuses it
        for study in studies:
            study.let_go()
        return _invalid(args.command, e)
    r = studies[0].spec.resources
    try:
        connect_ray(args.address, extra_cpus=1 if r.workers > 1 and not r.use_gpu else 0)
        for study in studies:
            check_cluster(study.spec)
    except ClusterError as e:
        print(f"rankstudy study: {e}", file=sys.stderr)
        for study in studies:
            study.let_go()
        return 2
    # SIGTERM (`ray job stop`, a scheduler's kill) stops the study as Ctrl-C does: Tune ends
    # its trials and saves its state, the parent run is marked KILLED, the exit ends this
    # process's own Ray, and the --resume command is printed
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    sweep = (points, Path(args.out or f"runs/{spec.name}")) if spec.budgets else None
    code = _run_points(studies, sweep, args.resume)
    if spec.sweep and not spec.budgets:  # a map of settings: where the paper's method wins
        _print_regime_map(points, studies, Path(args.out or f"runs/{spec.name}"))
    return code


def _run_points(studies: list, sweep: tuple | None, resume: bool) -> int:
    """Run each point's study in turn. A budget sweep (sweep: its points and folder) rewrites
    <folder>/sweep_summary.json after each point and ends with its table; resumed, it skips
    the points that file lists as finished."""
    from rankstudy.core.summaries import SUMMARY_FILE, read_study_summary
    from rankstudy.study.driver import StudyError, StudyInterrupted
    from rankstudy.study.sweep import finished_folders

    finished = finished_folders(sweep[1]) if sweep and resume else set()
    done: dict[str, StudySummary] = {}
    incomplete = []
    for study in studies:
        if str(study.out_dir) in finished:
            study.log(f"finished before the resume: not run again ({SUMMARY_FILE} kept)")
            done[str(study.out_dir)] = read_study_summary(study.out_dir)
            continue
        try:
            summary = study.run()
        except StudyError as e:  # what failed, or stopped it, and how to finish the study
            print(f"rankstudy study: {e}", file=sys.stderr)
            if len(studies) > 1:  # a point's own --resume would run that point alone
                print(
                    f"rankstudy study: {study.out_dir.name} is one point of a sweep: continue "
                    f"the whole sweep with --resume --out {study.out_dir.parent} (and the same "
                    f"--spec and --set)",
                    file=sys.stderr,
                )
            return 130 if isinstance(e, StudyInterrupted) else 1
        _print_summary(study, summary)
        done[str(study.out_dir)] = summary
        if summary.missing:
            incomplete.append(f"{study.spec.name}: {', '.join(summary.missing)}")
        if sweep:  # after each point: a kill leaves the finished ones listed
            _write_sweep(sweep, studies, done)
    if sweep:
        sweeps, path = _write_sweep(sweep, studies, done)
        _print_sweeps(sweeps)
        print(f"wrote {path}")
    if incomplete:
        print("rankstudy study: methods not scored: " + "; ".join(incomplete), file=sys.stderr)
        return 1
    return 0


def _write_sweep(
    sweep: tuple, studies: list, done: dict[str, StudySummary]
) -> tuple[list[SweepSummary], Path]:
    """The sweep's summaries from its finished points (done: folder -> study summary), written
    to <folder>/sweep_summary.json."""
    from rankstudy.study.sweep import sweep_summaries, write_sweep_summary

    sweeps = sweep_summaries(sweep[0], [s.out_dir for s in studies], done)
    return sweeps, write_sweep_summary(sweep[1].resolve(), sweeps)


def _print_summary(study, summary: StudySummary) -> None:
    from rankstudy.study.driver import summary_table
    from rankstudy.tracking.tracker import ui_hint

    print(f"\n{study.spec.name}\n" + summary_table(summary))
    print(
        f"wrote {study.out_dir / 'study_summary.json'}\n"
        + (f"report: {summary.report}\n" if summary.report else "")
        + ui_hint(summary.mlflow.tracking_uri, summary.mlflow.experiment_id)
    )


def _print_regime_map(points: list, studies: list, out: Path) -> None:
    """The regime map (rankstudy.study.regime_map) of the points that finished, printed and written
    to <out>/regime_map.json; a point not finished is left out and counted."""
    from rankstudy.study.regime_map import (
        folder_summaries,
        map_table,
        sweep_cells,
        write_regime_map,
    )

    summaries = folder_summaries([s.out_dir for s in studies])
    cells = sweep_cells([(p.settings, s) for p, s in zip(points, summaries, strict=True)])
    print("\n" + map_table(cells))
    print(f"wrote {write_regime_map(out.resolve(), cells, len(points))}")


def _print_sweeps(sweeps: list[SweepSummary]) -> None:
    """Each budget sweep's table and its frontier: what each one-run method reaches against the
    LoRA grid, at what compute."""
    from rankstudy.study.sweep import frontier_text, sweep_table

    for s in sweeps:
        print("\n" + sweep_table(s) + "\n\n" + frontier_text(s))


def _report(args: argparse.Namespace) -> int:
    import os

    from mlflow.exceptions import MlflowException

    from rankstudy_report import ReportError, build_report

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        print(
            "rankstudy report: --tracking-uri: give one (or set MLFLOW_TRACKING_URI)",
            file=sys.stderr,
        )
        return 2
    if not (args.experiment or args.run or args.sweep):
        print("rankstudy report: give --experiment, --run or --sweep", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.experiment or args.run or args.sweep}/report"
    try:
        page = build_report(
            uri,
            out,
            args.experiment,
            args.run,
            log=not args.no_log,
            sweep=args.sweep,
            csv_dir=args.csv,
        )
    except (ReportError, MlflowException) as e:
        print(f"rankstudy report: {e}", file=sys.stderr)
        return 2
    print(f"report: {page.resolve()}")
    if args.csv:
        print(f"tables: {Path(args.csv).resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rankstudy.core.spec import SpecError
    from rankstudy.study.export import ExportError, run_export
    from rankstudy.study.registry import RegistryError, plan_registration, register

    if (args.rank is None) == (args.ranks is None):
        print("rankstudy export: give exactly one of --rank K and --ranks all", file=sys.stderr)
        return 2
    if args.register and args.rank is None:
        print("rankstudy export: --register: registers one rank; give --rank K", file=sys.stderr)
        return 2
    try:
        if args.register:
            request = plan_registration(args.study, args.method, args.rank, args.seed)
        written = run_export(
            args.study, args.method, None if args.ranks else [args.rank], args.out, args.seed
        )
    except (ExportError, SpecError, RegistryError) as e:
        print(f"rankstudy export: {e}", file=sys.stderr)
        return 2
    for path in written:
        config = json.loads((path / "adapter_config.json").read_text())
        print(f"wrote {path} (rank {config['r']}; base {config['base_model_name_or_path']})")
    if args.register:
        print(f"registered {register(request, written[0], args.register)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rankstudy.commands.evaluate import EvaluateError, Request, evaluate_adapter, evaluate_study
    from rankstudy.core.spec import SpecError
    from rankstudy.study.export import ExportError

    request = Request(args.task, args.shots, args.limit, args.gen_kwargs, args.batch_size)
    data, include, out = Path(args.data), [Path(p) for p in args.include], Path(args.out)
    try:
        if args.study is None:
            if args.method or args.ranks:
                raise EvaluateError(
                    "--method, --ranks: a study's options; --adapter is scored alone"
                )
            lines = evaluate_adapter(Path(args.adapter), args.base, out, request, data, include)
        else:
            if args.base:
                raise EvaluateError("--base: only with --adapter (a study knows its base model)")
            if not (args.method and args.ranks):
                raise EvaluateError("--method, --ranks: give both with --study")
            lines = evaluate_study(
                Path(args.study), args.method, args.ranks, out, request, data, include
            )
    except (EvaluateError, ExportError, SpecError) as e:
        print(f"rankstudy evaluate: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"wrote {out / 'evaluate_summary.txt'}")
    return 0


def _ranks(text: str) -> list[int]:
    """--ranks "1,4": [1, 4], each rank once, in the order given."""
    try:
        ranks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ranks"
        ) from None
    return list(dict.fromkeys(ranks))


def _at_least(low: int):
    """An argparse type: a whole number >= low."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {low}")
        return int(text)

    return parse


def _add_trial(sub) -> None:
    from rankstudy.core.methods import REGISTRY  # torch-free: the help names every method

    nested = ", ".join(name for name, m in REGISTRY.items() if not m.grid)
    trial = sub.add_parser("trial", help="train and score one arm (no Ray Tune)")
    trial.add_argument("--spec", required=True, help="study spec YAML")
    trial.add_argument(
        "--arm",
        required=True,
        help=f"lora_r<rank>, or a nested method: {nested}",
    )
    trial.add_argument("--out", help="output dir (default runs/<study>/<arm>)")
    trial.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. training.lr=1e-3 (repeatable)",
    )
    trial.set_defaults(handler=_trial)


def _add_study_and_plan(sub) -> None:
    """`study` and `plan` share the planning options (`study --dry-run` is `plan`)."""
    study = sub.add_parser("study", help="run a whole study: Ray Tune + Optuna + MLflow")
    study.add_argument("--spec", required=True, help="study spec YAML")
    study.add_argument("--out", help="output dir (default runs/<study name>)")
    study.add_argument("--resume", action="store_true", help="continue an interrupted study")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    study.add_argument(
        "--address", help="Ray address (default: $RAY_ADDRESS, a local head, or a new local Ray)"
    )
    study.add_argument("--dry-run", action="store_true", help="plan it, run nothing")
    study.set_defaults(handler=_study)
    plan = sub.add_parser("plan", help="what a study will spend; runs nothing")
    plan.add_argument("--spec", required=True, help="study spec YAML")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.set_defaults(handler=_plan)
    for command in (study, plan):
        command.add_argument(
            "--calibrate", type=int, metavar="STEPS", help="measure throughput with a short trial"
        )
        command.add_argument("--json", metavar="PATH", help="also write the plan as JSON")


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report",
        help="the HTML comparison report of a study, from MLflow",
        description="A study whose parent run carries rankstudy.sweep and rankstudy.budget (a "
        "point of a budget sweep) gets the sweep's AURAC-compute frontier at the top of its "
        "page, with no flag: AURAC against FLOPs and device-seconds, one line per method "
        "through its budget points, and the frontier table.",
    )
    which = report.add_mutually_exclusive_group()
    which.add_argument("--experiment", help="MLflow experiment: its newest study is reported")
    which.add_argument("--run", help="the study's parent run id")
    report.add_argument(
        "--sweep",
        metavar="NAME",
        help="the budget sweep (rankstudy.sweep tag) whose frontier to draw; the experiment "
        "defaults to NAME; the page details the point the LoRA grid is read at (budget 1.0)",
    )
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    report.add_argument("--out", help="output folder (default runs/<experiment>/report)")
    report.add_argument(
        "--no-log", action="store_true", help="do not log the report to the study's parent run"
    )
    report.add_argument(
        "--csv", metavar="DIR", help="also write every table of the page to DIR/<table id>.csv"
    )
    report.set_defaults(handler=_report)


def _add_export(sub) -> None:
    export = sub.add_parser(
        "export", help="a study's chosen trial at a rank, as a standard PEFT LoRA adapter"
    )
    export.add_argument("--study", required=True, help="the study's folder (its --out)")
    export.add_argument(
        "--method", required=True, help="a method of the study, or a LoRA arm (lora_r<rank>)"
    )
    export.add_argument("--rank", type=int, help="the rank to export")
    export.add_argument("--ranks", choices=["all"], help="every rank the method serves")
    export.add_argument("--seed", type=int, help="which seed's trial (default: the first)")
    export.add_argument("--out", required=True, help="folder (one rank) or parent (all)")
    export.add_argument(
        "--register",
        metavar="NAME",
        help="also log it as an MLflow model in the study's store and register a version of "
        "NAME carrying the study's figures for it (a database-backed store)",
    )
    export.set_defaults(handler=_export)


def _add_evaluate(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="score a study's chosen trial at some ranks, or a PEFT adapter, with lm-eval",
    )
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="the study's folder (its --out)")
    which.add_argument("--adapter", help="an exported PEFT adapter folder")
    evaluate.add_argument("--method", help="with --study: a method of it, or lora_r<rank>")
    evaluate.add_argument("--ranks", type=_ranks, help="with --study: ranks to score, e.g. 1,4")
    evaluate.add_argument(
        "--base", help="with --adapter: its base model (default: the adapter's own)"
    )
    evaluate.add_argument("--task", default="gsm8k", help="the lm-eval task (default gsm8k)")
    evaluate.add_argument(
        "--data",
        default="../shared/data/gsm8k",
        help="gsm8k: the folder of train.jsonl and test.jsonl (default ../shared/data/gsm8k)",
    )
    evaluate.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of lm-eval task YAMLs that --task may name (repeatable)",
    )
    evaluate.add_argument(
        "--shots", type=_at_least(0), help="few-shot exemplars (default: the task's)"
    )
    evaluate.add_argument("--limit", type=_at_least(1), help="score the first N problems only")
    evaluate.add_argument(
        "--gen-kwargs", help="over the task's generation settings, e.g. max_gen_toks=256"
    )
    evaluate.add_argument("--batch-size", default="1", help="lm-eval's batch size (or auto)")
    evaluate.add_argument("--out", required=True, help="folder for the results")
    evaluate.set_defaults(handler=_evaluate)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and exit with the command's status. Bad input (an InputError) is
    a short message naming the field, status 2; any other exception is a bug in rankstudy, never
    the user's input: its traceback and a line that says so, status 1."""
    parser = argparse.ArgumentParser(prog="rankstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_trial, _add_study_and_plan, _add_report, _add_export, _add_evaluate):
        add(sub)
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except InputError as e:
        code = _invalid(args.command, e)
    except Exception:
        traceback.print_exc()
        print(
            f"rankstudy {args.command}: this is a bug in rankstudy, not in your input; please "
            f"report it with the traceback above",
            file=sys.stderr,
        )
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
