"""One table from one or more Hydra multirun folders: a row per setting, mean ± std over seeds.

A multirun folder holds Hydra's `multirun.yaml` and one folder per job (`0/`, `1/`, ...), each
with `.hydra/overrides.yaml` (the job's own overrides) and, when the job ran the evaluation
protocol, `evaluation/metrics.json` (`facediff-train -m ... evaluate_after=true`) or
`metrics.json` (`facediff-evaluate -m ckpt_path=... evaluation.sampler=...`: solvers by steps; a
checkpoint a facediff-train job wrote stands for that job's setting and seed, so several seeds'
checkpoints make one row; one written before its run's max_steps is a row of its own,
`stopped_at_step=<N>`);
a job with `evaluation.variants` (its .hydra/config.yaml) has one per variant in
`[evaluation/]<variant>/` and counts as one job per variant, the variant's options added to its
overrides (`evaluation.eta=1.0`), as if the option had been swept. A job's setting is its
overrides without `seed=`; jobs of one setting made at different times (several folders) are one
row.
Jobs without `metrics.json` are listed as failed. Jobs whose protocols differ are refused: a
table mixing them would compare numbers that are not comparable.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facediff.evaluation import comparisons
from facediff.evaluation.tables import code_notes, markdown_lines, study_table, study_values

SEED_KEYS = ("seed",)
VARIANTS = "evaluation.variants"
RENAMED = {"solver": "sampler"}  # evaluation options renamed since: old jobs read as new ones


def _renamed(options: dict) -> dict:
    return {RENAMED.get(k, k): v for k, v in options.items()}


def _renamed_override(override: str) -> str:
    key, sep, value = override.partition("=")
    for old, new in RENAMED.items():
        if key.lstrip("+~") == f"evaluation.{old}":
            key = key.replace(f"evaluation.{old}", f"evaluation.{new}")
    return key + sep + value


@dataclass
class Job:
    folder: Path  # where its metrics.json is (an evaluation variant's own folder)
    overrides: list[str]
    metrics: dict | None  # None: the job failed (no metrics.json, or an unreadable one)
    error: str | None = None  # why its metrics.json could not be read
    run: Path | None = None  # the job folder Hydra wrote (.hydra/, csv/): `folder` or above it

    def __post_init__(self):
        if self.run is None:
            self.run = self.folder

    @property
    def seed(self) -> str | None:
        for o in self.overrides:
            key, _, value = o.partition("=")
            if key.lstrip("+~") in SEED_KEYS:
                return value
        return None


@dataclass
class Row:
    setting: str
    jobs: list[Job] = field(default_factory=list)


def read_jobs(folder) -> list[Job]:
    """The jobs of one multirun folder (Hydra's multirun.yaml beside numbered job folders)."""
    folder = Path(folder)
    if not (folder / "multirun.yaml").is_file():
        raise FileNotFoundError(
            f"{folder}: not a Hydra multirun folder (no multirun.yaml); give the folder that "
            "`facediff-train -m` or `facediff-evaluate -m` wrote (hydra.sweep.dir)"
        )
    jobs = []
    for job in sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue  # not a job folder Hydra wrote (e.g. a DDP rank's log only)
        hydra = _hydra(job)  # read once: the command it ran, where it ran
        overrides = _trained_setting(
            [_renamed_override(str(o)) for o in yaml.safe_load(overrides_file.read_text()) or []],
            hydra,
        )
        variants = _variants(job)
        if variants:  # evaluation.variants: one job evaluated several ways, a Job each
            # (named by each variant's options, not by the override that listed them all)
            overrides = [o for o in overrides if o.partition("=")[0].lstrip("+~") != VARIANTS]
            for name, options in variants.items():
                where = _metrics_file(job, hydra, name)
                metrics, error = read_metrics(where)
                jobs.append(
                    Job(
                        where.parent,
                        overrides
                        + [f"evaluation.{k}={override_value(v)}" for k, v in options.items()]
                        + _stopped_early(metrics),
                        metrics,
                        error,
                        run=job,
                    )
                )
            continue
        where = _metrics_file(job, hydra)
        metrics, error = read_metrics(where)
        jobs.append(Job(job, overrides + _stopped_early(metrics), metrics, error))
    return jobs


def read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """(metrics, None) from a job's metrics.json; (None, why) where it is missing or unreadable
    (truncated by a killed job, not JSON, not a table of rows): that job is listed as failed,
    naming the file, and the other jobs still make their rows."""
    if not path.is_file():
        return None, f"{path}: missing"
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return None, f"{path}: unreadable ({type(e).__name__}: {e})"
    if not isinstance(metrics, dict) or not isinstance(metrics.get("rows"), dict):
        return None, f"{path}: not a facediff metrics.json (no 'rows' table)"
    if isinstance(metrics.get("protocol"), dict):
        metrics["protocol"] = _renamed(metrics["protocol"])
    return metrics, None


def _stopped_early(metrics: dict | None) -> list[str]:
    """`stopped_at_step=<N>` where facediff-evaluate measured a checkpoint written before its run
    reached trainer.max_steps: a row of its own, never averaged with finished runs."""
    step, max_steps = (metrics or {}).get("ckpt_step"), (metrics or {}).get("ckpt_max_steps")
    return [f"stopped_at_step={step}"] if max_steps and step < max_steps else []


def _trained_setting(overrides: list[str], hydra: dict) -> list[str]:
    """A facediff-evaluate job's `ckpt_path=` override, replaced by the setting of the
    facediff-train job that wrote the checkpoint (<train job>/checkpoints/<name>.ckpt beside its
    .hydra/overrides.yaml; a relative path is read from the evaluate job's working directory):
    its overrides and seed, less its own evaluation options (this job's protocol is the one
    measured), so that checkpoints of several seeds evaluated alike make one row, mean ± std.
    A checkpoint other than last.ckpt adds `checkpoint=<name>`. A checkpoint with no training
    job beside it (one handed over) stays `ckpt_path=...`: a row of its own, and so does a
    facediff-train job's `ckpt_path=` (a run resumed from a checkpoint is a setting of its own,
    not the run it started from)."""
    if hydra.get("job", {}).get("config_name") == "train":
        return overrides  # a training job resumed from a checkpoint: its own setting
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        trained = _training_job(value, hydra) if key == "ckpt_path" else None
        if trained is None:
            out.append(o)
            continue
        ckpt, train_overrides = trained
        out += [
            t
            for t in train_overrides
            if not t.lstrip("+~").startswith(("evaluation.", "evaluate_after="))
        ]
        if ckpt.name != "last.ckpt":
            out.append(f"checkpoint={ckpt.stem}")
    return out


def _training_job(ckpt_path: str, hydra: dict) -> tuple[Path, list[str]] | None:
    ckpt = Path(ckpt_path)
    if not ckpt.is_absolute():
        ckpt = Path(hydra.get("runtime", {}).get("cwd") or ".") / ckpt
    overrides_file = ckpt.parent.parent / ".hydra" / "overrides.yaml"
    if ckpt.parent.name != "checkpoints" or not overrides_file.is_file():
        return None
    return ckpt, [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]


def _metrics_file(job: Path, hydra: dict, variant: str = "") -> Path:
    """facediff-train's <job>/evaluation/[<variant>/]metrics.json or facediff-evaluate's
    <job>/[<variant>/]metrics.json (the first that exists; the former if neither does)."""
    found = [
        f
        for f in (job / "evaluation" / variant / "metrics.json", job / variant / "metrics.json")
        if f.is_file()
    ]
    if found:
        return found[0]
    evaluate_job = _is_evaluate_job(job, hydra)
    return (job if evaluate_job else job / "evaluation") / variant / "metrics.json"


def _hydra(job: Path) -> dict:
    """The job's Hydra settings (.hydra/hydra.yaml's `hydra:`; {} where it has none)."""
    hydra_file = job / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    return (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}


def _is_evaluate_job(job: Path, hydra: dict) -> bool:
    """A facediff-evaluate job (its primary config is evaluate.yaml); in a folder without
    Hydra's settings, one whose log is evaluate.log (Hydra names the log after the job)."""
    name = hydra.get("job", {}).get("config_name")
    return name == "evaluate" if name else (job / "evaluate.log").is_file()


def _variants(job: Path) -> dict:
    """The job's evaluation.variants ({name: {option: value}}) from its .hydra/config.yaml."""
    config = job / ".hydra" / "config.yaml"
    if not config.is_file():
        return {}
    evaluation = (yaml.safe_load(config.read_text()) or {}).get("evaluation") or {}
    variants = evaluation.get("variants") or {}
    return {name: _renamed(options or {}) for name, options in variants.items()}


def override_value(value) -> str:
    """A value as a Hydra command-line override writes it (0.0, dpmpp_2m, null, {attrs:3.0})."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def _setting_overrides(job: Job, common: set[str], same: dict | None = None) -> list[str]:
    return [
        o
        for o in job.overrides
        if o not in common and o.partition("=")[0].lstrip("+~") not in SEED_KEYS
        if not _measured_alike(o, same or {})
    ]


def _measured_alike(override: str, same: dict) -> bool:
    key, _, value = override.lstrip("+~").partition("=")
    key = key.removeprefix("evaluation.") if key.startswith("evaluation.") else None
    return key in same and override_value(same[key]) == value


def same_options(jobs: list[Job]) -> dict:
    """The evaluation options every finished job measured with the same value ({key: value}):
    an `evaluation.<key>=<that value>` override is not what tells its row apart (facediff-train's
    study set `evaluation.inception=fid_helper` in its config, facediff-evaluate on the command
    line), so the rows of both read alike."""
    done = [j for j in jobs if j.metrics is not None]
    if not done:
        return {}
    defaults = protocol_defaults()
    protocols = [defaults | j.metrics.get("protocol", {}) for j in done]
    first = protocols[0]
    values: dict[str, set[str]] = {}  # what the jobs, failed ones too, set each option to
    for j in jobs:
        for o in j.overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if key.startswith("evaluation."):
                values.setdefault(key.removeprefix("evaluation."), set()).add(value)
    return {
        k: v
        for k, v in first.items()
        if all(p.get(k) == v for p in protocols) and len(values.get(k, ())) <= 1
    }  # an option the sweep varied names its rows, even where only one value finished


def protocol_defaults() -> dict:
    """conf/evaluation/default.yaml: an option a job's metrics.json lacks (written before the
    option existed) had its default value then."""
    from importlib.resources import files

    return yaml.safe_load(files("facediff.conf").joinpath("evaluation/default.yaml").read_text())


def swept_options(jobs: list[Job]) -> set[str]:
    """The evaluation options these jobs set themselves (evaluation.<key>= overrides)."""
    return {
        o.partition("=")[0].lstrip("+~").removeprefix("evaluation.")
        for j in jobs
        for o in j.overrides
        if o.lstrip("+~").startswith("evaluation.")
    }


# evaluation options that change what a figure means (how many samples, against which
# reference, scored by which networks): never a row setting unless the study declares it so
# (`row_options: [evaluation.num_conditions]` in its config)
MEANING = (
    "split", "num_conditions", "diversity_conditions", "samples_per_condition", "inception",
    "kid_subset_size", "evaluators_dir", "parser_steps", "classifier_steps", "bootstrap_rounds",
    "parser_experiment",
)  # fmt: skip


def check_protocols(jobs: list[Job], row_options=()) -> dict | None:
    """The one protocol all finished jobs share; a ValueError naming the option that differs.
    A swept option is the study's variable, not a clash, unless it is one of MEANING and the
    study did not declare it in `row_options`; `data.resolution` (the resolution scored)
    likewise."""
    done = [j for j in jobs if j.metrics is not None]
    if not done:
        return None
    declared = {str(o).removeprefix("evaluation.") for o in row_options}
    _check_resolution(done, declared)
    defaults = protocol_defaults()
    first = defaults | done[0].metrics.get("protocol", {})
    for job in done[1:]:
        p = defaults | job.metrics.get("protocol", {})
        swept = swept_options([done[0], job])  # the study's variable, not a clash
        swept -= set(MEANING) - declared
        for key in sorted((set(first) | set(p)) - swept - {"variants"}):
            if first.get(key) != p.get(key):
                raise ValueError(
                    f"evaluation.{key} differs: {first.get(key)!r} in {done[0].folder} but "
                    f"{p.get(key)!r} in {job.folder}; one table compares one protocol (report "
                    "those folders separately, or evaluate them again with the same protocol)"
                )
    return first


def _check_resolution(done: list[Job], declared: set) -> None:
    values = {}
    for job in done:
        value = comparisons.options(job.overrides).get("data.resolution")
        values.setdefault(value, job.folder)
    if len(values) > 1 and "data.resolution" not in declared:
        (a, fa), (b, fb) = list(values.items())[:2]
        raise ValueError(
            f"data.resolution differs: {a} in {fa} but {b} in {fb}; figures scored at two "
            "resolutions are not comparable (declare row_options: [data.resolution] in the "
            "study's config to make it a row setting)"
        )


def group(jobs: list[Job], same: dict | None = None) -> tuple[list[Row], list[str]]:
    """Rows by setting (in order of first appearance) and the overrides common to all jobs;
    `same`: same_options(jobs), where the caller has it."""
    common = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    same = same_options(jobs) if same is None else same
    rows: dict[tuple[str, ...], Row] = {}
    for job in jobs:
        overrides = _setting_overrides(job, common, same)
        setting = " ".join(overrides) or "(common overrides only)"
        # one setting whatever the order of its overrides (a variant's options are in its
        # config's order, a sweep's in the command line's); named as first seen
        rows.setdefault(tuple(sorted(overrides)), Row(setting)).jobs.append(job)
    if len(rows) == 1:  # one setting: name it by its overrides (what all jobs share)
        row = next(iter(rows.values()))
        row.setting = " ".join(_setting_overrides(row.jobs[0], set())) or "(no overrides)"
        return [row], []
    return list(rows.values()), sorted(common)


def report(folders, out_dir, baseline: str | None = None) -> dict:
    """Read the multirun folders, check they share one protocol, write report.md, report.csv
    (the table's cells), results.csv (their numbers: setting, row, column, mean, std, n), and
    `comparisons.sections`' study.csv, jobs.csv and figures under out_dir; returns {header,
    rows, failed, common, protocol, paths, values, summary, comparisons, claims}."""
    jobs = [j for f in folders for j in read_jobs(f)]
    if not jobs:
        raise ValueError(f"{', '.join(map(str, folders))}: no job folders found")
    protocol = check_protocols(jobs, comparisons.study_key(jobs, "row_options") or [])
    same = same_options(jobs)
    rows, common = group(jobs, same)
    runs = [(r.setting, [j.metrics for j in r.jobs]) for r in rows]
    header, body = study_table(runs)
    failed = [str(j.folder) for j in jobs if j.metrics is None]
    why = [j.error or f"{j.folder}: no metrics.json" for j in jobs if j.metrics is None]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_lines(header, body)
    notes = [
        "",
        f"Mean ± std over seeds; jobs = finished / all. Folders: {', '.join(map(str, folders))}.",
        f"Common to all jobs: {' '.join(common) or '-'}.",
    ]
    if protocol:
        swept = swept_options(jobs) - set(same)  # differ by row: named in the settings
        notes.append(
            "Protocol: "
            + ", ".join(
                f"{k}={protocol[k]}" if k not in swept else f"{k}=(by row)"
                for k in (
                    "split",
                    "num_conditions",
                    "num_steps",
                    "sampler",
                    "eta",
                    "guidance_scale",
                    "inception",
                )
                if k in protocol
            )
            + "."
        )
    notes += code_notes(jobs)
    if failed:
        notes.append("Failed jobs (no readable metrics.json): " + "; ".join(why) + ".")
    row_options = [
        comparisons.options(_setting_overrides(r.jobs[0], set(common), same)) for r in rows
    ]
    extra = comparisons.sections(rows, row_options, jobs, out, baseline)
    notes += extra["markdown"]
    (out / "report.md").write_text("\n".join(md + notes) + "\n")
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    values = study_values(runs)
    with open(out / "results.csv", "w", newline="") as f:  # the numbers, for pandas
        writer = csv.DictWriter(f, ["setting", "row", "column", "mean", "std", "n"])
        writer.writeheader()
        writer.writerows(values)
    return {
        "header": header,
        "rows": body,
        "failed": failed,
        "common": common,
        "protocol": protocol,
        "paths": [str(out / "report.md"), str(out / "report.csv"), str(out / "results.csv")]
        + extra["paths"],
        "values": values,
        "summary": extra["summary"],
        "comparisons": extra["comparisons"],
        "claims": extra["claims"],
        "markdown": "\n".join(md + notes),
    }


__all__ = [
    "Job",
    "Row",
    "check_protocols",
    "group",
    "override_value",
    "read_jobs",
    "report",
    "same_options",
]
