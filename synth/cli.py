"""The `synth` command. Exit codes: 0 success, 1 build failed, 2 bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from synth.errors import BadInput, unwrap
from synth.terminal import FILE_ONLY

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build Chinese safety-guard corpora.")
templates_app = typer.Typer(no_args_is_help=True, help="List and validate scenario templates.")
app.add_typer(templates_app, name="templates")
probe_app = typer.Typer(no_args_is_help=True, help="Probe judges: classifiers over a model's hidden states.")
app.add_typer(probe_app, name="probe")
review_app = typer.Typer(no_args_is_help=True, help="Rows out to people and their labels back, through Label Studio's "
                                                    "JSON import and export files.")
app.add_typer(review_app, name="review")

DEFAULT_TEMPLATES = Path("templates")
DEFAULT_SEEDS = Path("seeds")


def _setup_logging(stream=None) -> None:
    """synth's log lines on the terminal (`stream`, default sys.stderr)."""
    logger = logging.getLogger("synth")
    handler = next((h for h in logger.handlers if getattr(h, "synth_terminal", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.synth_terminal = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        # lines for build.log only (the progress line, while a live bar shows the same on the terminal)
        handler.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        logger.addHandler(handler)
    handler.stream = stream or sys.stderr  # not setStream(): it flushes the old one, maybe closed by now
    logger.setLevel(logging.INFO)


@contextmanager
def _others_output_to(log_path: Path):
    """Within the block, everything written to this process's stdout and stderr (Ray's and
    vLLM's notices and warnings, Ray's C++ log lines, progress bars) goes to `log_path`;
    synth's own log lines keep the terminal. The command's result and its errors are
    printed after the block, on the terminal.

    Done at the file-descriptor level: Ray's and vLLM's loggers hold their own streams,
    and Ray's C++ core writes to fd 2 directly. Skipped where the streams are not real
    files (e.g. click's CliRunner in tests).
    """
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = [os.dup(fd) for fd in fds]
    terminal = open(saved[1], "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    for fd in fds:
        os.dup2(log_fd, fd)
    _setup_logging(terminal)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        terminal.flush()
        for fd, original in zip(fds, saved):
            os.dup2(original, fd)
            os.close(original)
        os.close(log_fd)
        _setup_logging()
        terminal.close()


def _tool_log(name: str) -> Path:
    """Where Ray's own notices of a `synth dedup` / `synth decontaminate` run go (not the terminal)."""
    from synth.models import models_cache_dir

    return models_cache_dir().parent / "logs" / f"{name}.log"


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


@contextmanager
def _reported():
    """Report bad input (exit 2) and failed builds (exit 1) as one line, also when they were
    raised inside a Ray task and arrive wrapped by Ray; anything else is a bug and keeps its traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:
        error = unwrap(e)
        if error is None:
            raise
        _fail(error)


@app.command()
def build(
    config: Path = typer.Argument(..., help="pipeline config, e.g. pipelines/demo.yaml"),
    out: str = typer.Option(..., "--out", help="build directory: a local path, s3://bucket/prefix, gs://… "
                                               "(any pyarrow filesystem)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="use the deterministic stand-in engine, no model"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore finished stages and the request cache"),
    max_failures: Optional[int] = typer.Option(
        None, "--max-failures", help="LLM requests that may fail (recorded in rejects/) before the build fails"
    ),
    templates: Optional[Path] = typer.Option(None, help="templates dir (default: from the config)"),
    seeds: Optional[Path] = typer.Option(None, help="seeds dir (default: from the config)"),
) -> None:
    """Run a build: generate, answer, judge, clean and export a corpus."""
    _setup_logging()
    from synth import storage
    from synth.build import prepare, run_build

    location = storage.location(out)
    with _reported():  # a config or template that fails validation writes nothing into --out
        prepare(config, templates, seeds)
    with _reported(), _others_output_to(storage.local_log_dir(location) / "build.log"):
        manifest = run_build(config, location, dry_run=dry_run, fresh=fresh, max_failures=max_failures,
                             templates=templates, seeds=seeds)
    counts = manifest["export"]
    typer.echo(
        f"done: {counts['corpus_rows']} rows in {storage.join(location, 'corpus')} (labels {counts['labels']}), "
        f"{counts['controversial']['rows']} controversial (configs strict/loose), "
        f"{counts['hard_rows']} in {storage.join(location, 'hard')}, manifest {storage.join(location, 'manifest.json')}"
        + (f"; {manifest['pending']} requests pending (transient failures): rerun to send them"
           if manifest.get("pending") else "")
    )


@templates_app.command("list")
def templates_list(
    templates: Path = typer.Argument(DEFAULT_TEMPLATES), seeds: Path = typer.Option(DEFAULT_SEEDS)
) -> None:
    """List scenarios and their subcategories."""
    from synth.templates import load_catalog

    with _reported():
        catalog = load_catalog(templates, seeds)
    for scenario in catalog.scenarios.values():
        t = scenario.template
        typer.echo(f"{t.id}  {t.name_zh} / {t.name_en}  ({len(t.subcategories)} subcategories, {scenario.path})")
        for sub in t.subcategories:
            typer.echo(f"    {sub.id}  {sub.name_zh} / {sub.name_en}")


@templates_app.command("validate")
def templates_validate(
    templates: Path = typer.Argument(DEFAULT_TEMPLATES), seeds: Path = typer.Option(DEFAULT_SEEDS)
) -> None:
    """Validate every template and seed pool, rendering each template once."""
    from synth.templates import load_catalog

    with _reported():
        catalog = load_catalog(templates, seeds)
    subs = sum(len(s.template.subcategories) for s in catalog.scenarios.values())
    typer.echo(f"ok: {len(catalog.scenarios)} scenarios, {subs} subcategories, "
               f"{len(catalog.augment.tactics)} tactics, {len(catalog.respond.personas)} personas")


@app.command()
def preview(
    scenario: str = typer.Argument(..., help="scenario id"),
    n: int = typer.Option(3, "-n", help="how many element combinations"),
    kind: str = typer.Option("harmful", help="harmful | benign"),
    style: str = typer.Option("chat", help="chat | completion"),
    seed: int = typer.Option(0),
    templates: Path = typer.Option(DEFAULT_TEMPLATES),
    seeds: Path = typer.Option(DEFAULT_SEEDS),
) -> None:
    """Render prompts for sampled elements without calling any model."""
    import random

    from synth.templates import load_catalog, scenario_vars

    with _reported():
        catalog = load_catalog(templates, seeds)
        if scenario not in catalog.scenarios:
            raise BadInput(f"unknown scenario '{scenario}' (known: {', '.join(catalog.scenarios)})")
        if kind not in ("harmful", "benign") or style not in ("chat", "completion"):
            raise BadInput("--kind must be harmful|benign and --style chat|completion")
    s = catalog.scenarios[scenario]
    rng = random.Random(seed)
    for i in range(n):
        sub = rng.choice(s.template.subcategories)
        variables = {
            "scenario": scenario_vars(s.template), "subcategory": sub.model_dump(),
            "behavior": rng.choice(s.pools.behaviors[sub.id]), "benign_topic": rng.choice(s.pools.benign_topics[sub.id]),
            "task_type": rng.choice(catalog.task_types), "region": rng.choice(catalog.regions),
            "event": rng.choice(catalog.events), "n": 10,
        }
        with _reported():  # a template branch the load-time sample render did not take
            rendered = catalog.render(getattr(s.template, kind), style, variables, f"{s.path}: {kind}")
        typer.echo(f"--- {i + 1}: {sub.name_zh} ({kind}, {style})")
        if rendered.system:
            typer.echo(f"[system] {rendered.system}")
        typer.echo(rendered.prompt)


@app.command("export")
def export_cmd(
    build_dir: str = typer.Argument(..., help="a finished build directory (a local path or a URI, e.g. s3://…)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="sft | alpaca | libra-test | jsonl (none: rewrite the "
                                                             "build's own exports)"),
    out: Optional[str] = typer.Option(None, "--out", help="sft, alpaca: a directory; libra-test, jsonl: a .jsonl file "
                                                          "(a local path or a URI)"),
    label_position: Optional[str] = typer.Option(
        None, "--label-position", help="sft, alpaca: 答案 before|after 分析 (default: the config's export.label_position)"
    ),
    config: Optional[Path] = typer.Option(None, help="the build's config (default: BUILD_DIR/inputs/config.yaml)"),
    sft_target: Optional[str] = typer.Option(
        None, "--sft-target", help="sft, alpaca: libra ({答案, 分析}) | extended (+ the judge fields the build asked "
        "for) (default: the config's export.sft_target)"
    ),
) -> None:
    """Re-export a finished build without rerunning it.

    Without --format: the build's own exports (corpus/, sft/, hard/, rejects/, libra_test.jsonl, the
    card), the manifest's counts and the report, written again from its stage outputs with the
    people's labels of reviews/ applied (`synth review pull`).
    sft: chat `messages` parquet + Alpaca jsonl + LLaMA-Factory dataset_info.json;
    alpaca: Alpaca jsonl + dataset_info.json; libra-test: the Libra-Test view;
    jsonl: every corpus row with its split.
    """
    from synth.export import export_format

    if fmt is None and out is None:
        _setup_logging()
        from synth.build import export_again

        with _reported():
            if label_position is not None or sft_target is not None:
                raise BadInput("--label-position and --sft-target go with --format; without it the build's own "
                               "exports are rewritten as its config says")
            counts = export_again(build_dir, config)
        typer.echo(json.dumps({"corpus_rows": counts["corpus_rows"], "labels": counts["labels"],
                               "controversial": counts["controversial"]["rows"], "reviewed": counts["reviewed"]},
                              ensure_ascii=False))
        return
    with _reported():
        if fmt is None or out is None:
            raise BadInput("--format and --out go together (or give neither: rewrite the build's own exports)")
        if label_position not in (None, "before", "after"):
            raise BadInput(f"--label-position must be before or after, got {label_position!r}")
        from synth import storage
        from synth.lock import BuildLock

        # on an object store: from a local copy, the build's lease held meanwhile
        with BuildLock(build_dir, reading=True), storage.local_mirror(build_dir) as local, \
                storage.local_target(out) as target:
            counts = export_format(local, fmt, target, config_path=config, label_position=label_position,
                                   sft_target=sft_target)
    typer.echo(json.dumps(counts, ensure_ascii=False))


TOKEN_ENV_HELP = ("the environment variable holding the Label Studio API token (a personal access token or a "
                  "legacy token); the token itself is never printed or recorded")


@review_app.command("push")
def review_push(
    build_dir: str = typer.Argument(..., help="a finished build directory (a local path or a URI)"),
    to: str = typer.Option(..., "--to", help="a Label Studio server (http://HOST:PORT, with --project) or an import "
                                             "file (JSON) to write or add to; a file's labeling config goes beside "
                                             "it as FILE.labeling.xml"),
    select: str = typer.Option("controversial", "--select", help="controversial | hard | sample:N (a stratified "
                                                                 "audit sample of the agreed corpus) | a pandas query "
                                                                 "over the corpus rows"),
    project: Optional[str] = typer.Option(None, "--project", help="the project's title (created on a server if "
                                                                  "missing; in a file, kept in each task; default "
                                                                  "for a file: the build's name)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="sample:N's seed (default: the build's)"),
    token_env: str = typer.Option("LABEL_STUDIO_API_KEY", "--token-env", help=TOKEN_ENV_HELP),
) -> None:
    """Send rows to Label Studio as tasks, the judges' verdicts as predictions; rows already in the project
    or file are not added again."""
    from synth import storage
    from synth.lock import BuildLock
    from synth.review import push

    with _reported(), BuildLock(build_dir, reading=True), storage.local_mirror(build_dir) as local:
        result = push(local, to, select, project=project, seed=seed, token_env=token_env)
    typer.echo(json.dumps(result, ensure_ascii=False))


@review_app.command("pull")
def review_pull(
    build_dir: str = typer.Argument(..., help="the build the tasks were pushed from (a local path or a URI)"),
    source: str = typer.Option(..., "--from", help="a Label Studio server (http://HOST:PORT, with --project) or an "
                                                   "export of the project (JSON format)"),
    project: Optional[str] = typer.Option(None, "--project", help="the server's project title; with a file, refuse "
                                                                  "tasks of another project"),
    token_env: str = typer.Option("LABEL_STUDIO_API_KEY", "--token-env", help=TOKEN_ENV_HELP),
) -> None:
    """Record every annotation of a Label Studio project or export in BUILD/reviews/ (by annotation id:
    pulling again changes nothing). `synth export BUILD` then applies them."""
    from synth import storage
    from synth.build import check_finished
    from synth.human_labels import REVIEWS_DIR
    from synth.lock import BuildLock
    from synth.review import pull

    with _reported():
        check_finished(build_dir)  # before the lock: no lock file in a directory that is not a build
        with BuildLock(build_dir), storage.local_mirror(build_dir) as local:
            result = pull(local, source, project=project, token_env=token_env)
            storage.sync_back(local, build_dir, [REVIEWS_DIR])
    typer.echo(json.dumps(result, ensure_ascii=False))


@app.command("eval-guard")
def eval_guard(
    predictions: Path = typer.Argument(..., help="jsonl: id, prediction (the guard's raw output)"),
    gold: Path = typer.Option(..., "--gold", help="jsonl with the Libra-Test keys (id, source, label, ...)"),
) -> None:
    """Accuracy and F1 (unsafe, safe) of a guard per source and macro-averaged, as one JSON object."""
    from synth.eval_guard import evaluate_files

    with _reported():
        result, unmatched = evaluate_files(predictions, gold)
    if unmatched:
        typer.echo(f"warning: {unmatched} prediction(s) have an id that is not in {gold} (ignored)", err=True)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


@app.command("eval-judges")
def eval_judges(
    gold: list[Path] = typer.Argument(..., help="jsonl gold pairs (Libra-Test keys: question, response, label, "
                                                "category_name, sub_category_name, id), e.g. seeds/gold/judge_gold.jsonl, "
                                                "or a build's reviews directory (BUILD/reviews: the rows people "
                                                "settled); several are judged in one run and shown side by side"),
    config: Path = typer.Option(..., "--config", help="pipeline config whose judge roles are calibrated"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
    dry_run: bool = typer.Option(False, "--dry-run", help="the stand-in engine instead of the models"),
    calibrate: bool = typer.Option(False, "--calibrate", help="choose the rule's thresholds on the FIRST gold file "
                                                             "for --target; the other files measure them held out"),
    target: str = typer.Option("max_accuracy,share>=0.6", "--target",
                               help="precision_unsafe=P | accuracy=A | max_accuracy,share>=S"),
    save: Optional[Path] = typer.Option(None, "--save", help="write the calibration record here "
                                                            "(a config's annotate.rule.calibration reads it)"),
    plot_dir: Optional[Path] = typer.Option(None, "--plot", help="write reliability and threshold-curve plots here"),
    harm_only: bool = typer.Option(False, "--harm-only", help="question gold with categories of its own (not "
                                                             "the catalog's): score harmful vs benign only"),
) -> None:
    """Calibrate a config's judges on gold labels: per judge accuracy, F1, AUROC and AU-PRC of its
    unsafe_score; the combined score's AUROC, AU-PRC and threshold curve; the accuracy and share of
    the labels the build's rule keeps; with --calibrate, thresholds for a target. Question gold
    (rows with `kind` and no `response`) scores the question judges instead: harmful-vs-benign
    accuracy and F1, scenario and subcategory accuracy, per scenario."""
    _setup_logging()
    from synth.eval_judges import evaluate_judges, format_result, log_path
    from synth.eval_questions import evaluate_question_judges, format_question_result, is_question_gold

    with _reported(), _others_output_to(log_path()):
        if save is not None and not calibrate:
            raise BadInput("--save: a calibration record needs --calibrate")
        kinds = {is_question_gold(path) for path in gold}
        if len(kinds) > 1:
            raise BadInput("eval-judges: give either pair gold files or question gold files, not both")
        if kinds == {True}:
            result = evaluate_question_judges(gold, config, dry_run=dry_run, harm_only=harm_only)
        else:
            result = evaluate_judges(gold, config, dry_run=dry_run, target=target if calibrate else None, save=save,
                                     plot_dir=plot_dir)
    formatted = format_question_result(result) if kinds == {True} else format_result(result)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2) if as_json else formatted)


@probe_app.command("train")
def probe_train(
    gold: Optional[list[Path]] = typer.Argument(None, help="jsonl gold pairs to train on (the eval-judges format); "
                                                          "keep the pairs you measure on out of them"),
    config: Path = typer.Option(..., "--config", help="pipeline config with the probe judge role"),
    judge: str = typer.Option(..., "--judge", help="the probe judge's role name (its model has task: embed)"),
    out: Path = typer.Option(..., "--out", help="where to write the probe (the role's `probe:` file)"),
    questions: bool = typer.Option(False, "--questions", help="a question probe for a question judge role, "
                                                              "trained on the config's seed pools (no gold)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="the stand-in engine instead of the model"),
) -> None:
    """Train a probe judge: the judge prompt's pooled hidden states, a logistic regression on gold labels
    (or, with --questions, a question judge's probe: harm and subcategory, on the seed pools)."""
    _setup_logging()
    from synth.eval_judges import log_path
    from synth.probe_train import train_probe, train_question_probe

    with _reported(), _others_output_to(log_path()):
        if questions and gold:
            raise BadInput("probe train --questions trains on the config's seed pools: give no gold files")
        if not questions and not gold:
            raise BadInput("probe train: give the gold pairs to train on (or --questions for a question probe)")
        summary = train_question_probe(config, judge, out, dry_run=dry_run) if questions else \
            train_probe(gold, config, judge, out, dry_run=dry_run)
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command("plan")
def plan_cmd(
    config: Path = typer.Argument(..., help="pipeline config, e.g. pipelines/libra-stage1.yaml"),
    from_build: Optional[Path] = typer.Option(None, "--from-build",
                                              help="a previous build of a config like this one: its acceptance rates"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as one JSON object"),
) -> None:
    """Before a build: requests per stage and role, tokens, GPU-hours, wall time and API cost."""
    from synth.build import prepare
    from synth.plan import make_plan, render

    with _reported():
        cfg, catalog = prepare(config)
        plan = make_plan(cfg, catalog, from_build)
    typer.echo(json.dumps(plan, ensure_ascii=False, indent=2) if as_json else render(plan))


@app.command("report")
def report_cmd(
    build_dir: str = typer.Argument(..., help="a finished build directory (with manifest.json; a path or a URI)"),
    out: Optional[str] = typer.Option(None, "--out", help="report directory (default: BUILD_DIR/report)"),
) -> None:
    """Write the build report: index.html, README.md, report.json and plots (also done by every build)."""
    from synth import storage
    from synth.lock import BuildLock
    from synth.report import write_report

    with _reported():
        # on an object store: from a local copy, the build's lease held meanwhile; what the report
        # wrote into the build (report/, the card's headline) is put back
        with BuildLock(build_dir, reading=True), storage.local_mirror(build_dir) as local:
            if out is None:
                write_report(local, None)
                storage.sync_back(local, build_dir, ("report", "corpus/README.md"))
            else:
                with storage.local_target(out) as target:
                    write_report(local, target)
    where = out if out is not None else storage.join(build_dir, "report")
    typer.echo(f"report: {storage.join(where, 'index.html')} (summary {storage.join(where, 'README.md')})")


@app.command()
def dedup(
    input: Path = typer.Argument(..., help="a .jsonl file, a .parquet file or a folder of parquet files"),
    text_field: str = typer.Option(..., "--text-field", help="column with the text to compare"),
    id_field: str = typer.Option("id", "--id-field", help="column with unique row ids"),
    threshold: float = typer.Option(0.8, "--threshold", help="Jaccard similarity of character 5-grams that makes a duplicate"),
    out: Path = typer.Option(..., "--out", help="output folder, gets kept/ and removed/ (parquet)"),
) -> None:
    """Remove exact and near-duplicate rows (MinHash LSH on Ray, candidates verified by exact Jaccard).

    Removed rows keep all columns and add duplicate_of (id of the kept row), similarity and reason.
    """
    _setup_logging()
    from synth.dedup.command import run_dedup_command

    said: list[tuple[str, bool]] = []  # the result line, printed once Ray's output is off the terminal
    with _reported(), _others_output_to(_tool_log("dedup")):
        code = run_dedup_command(input, text_field, id_field, threshold, out,
                                 echo=lambda text, err=False: said.append((text, err)))
    for text, err in said:
        typer.echo(text, err=err)
    raise typer.Exit(code)


@app.command()
def decontaminate(
    input: Path = typer.Argument(..., help="a .jsonl file, a .parquet file or a folder of parquet files"),
    against: list[Path] = typer.Option(..., "--against", help="an evaluation file (.jsonl or parquet); repeatable"),
    text_field: str = typer.Option(..., "--text-field", help="column with the text to compare"),
    against_field: Optional[str] = typer.Option(
        None, "--against-field", help="the evaluation files' text field (default: the same as --text-field)"),
    against_id_field: str = typer.Option("id", "--against-id-field", help="the evaluation files' id field"),
    threshold: float = typer.Option(
        0.7, "--threshold", help="Jaccard of character 5-grams that makes a row a copy of a (long) evaluation item"),
    out: Path = typer.Option(..., "--out", help="output folder, gets kept/ and removed/ (parquet)"),
) -> None:
    """Remove rows that copy an evaluation item (MinHash near duplicates; n-gram overlap for short items).

    Removed rows keep all columns and add contaminated_by (the evaluation item's id),
    contamination_similarity and reason ("contaminated: <evaluation file stem>").
    """
    _setup_logging()
    from synth.dedup.command import run_decontaminate_command

    said: list[tuple[str, bool]] = []
    with _reported(), _others_output_to(_tool_log("decontaminate")):
        code = run_decontaminate_command(input, against, text_field, against_field, against_id_field, threshold, out,
                                         echo=lambda text, err=False: said.append((text, err)))
    for text, err in said:
        typer.echo(text, err=err)
    raise typer.Exit(code)


@templates_app.command("try")
def templates_try(
    scenario: str = typer.Argument(..., help="scenario id (see `synth templates list`)"),
    subcategory: Optional[str] = typer.Argument(None, help="one subcategory id of it (default: all of them)"),
    config: Path = typer.Option(..., "--config", help="pipeline config: its generator, question judge, filters, seed"),
    n: int = typer.Option(8, "--n", help="about how many element combinations to draw, harmful and benign"),
    answers: bool = typer.Option(False, "--answers", help="also answer them (the first responder) and label the "
                                                          "pairs (the pair judges)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="the stand-in engine instead of the models"),
) -> None:
    """Try a scenario's templates before a build: write questions for a few element combinations,
    judge them with the question judge, print the scorecard and a sample. Writes into no build."""
    _setup_logging()
    from synth.templates_try import format_try, run_try, try_inputs

    with _reported():  # bad input exits 2 before anything runs
        cfg, catalog = try_inputs(config, scenario, subcategory, n, answers)
    with _reported(), _others_output_to(_tool_log("templates-try")):
        result = run_try(cfg, catalog, answers=answers, dry_run=dry_run)
    typer.echo(format_try(result))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
