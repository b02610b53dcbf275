"""The evaluation's tables: their rows and columns (defined here once), as markdown, as files
(metrics.json, report.md) and in the loggers (W&B tables, logged metrics).

Rows of an evaluation:

- real images (ground truth): the evaluators on the reference images themselves;
- samples vs own conditions: FID/KID/IS, fidelity to the conditions, diversity;
- samples vs shuffled conditions: the same samples against another item's conditions (rolled
  by one): a model that follows its conditions scores clearly higher on its own.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from facediff.evaluation.flip import flip_lines
from facediff.provenance import record

REAL = "real images (ground truth)"
OWN = "samples vs own conditions"
SHUFFLED = "samples vs shuffled conditions"
ROWS = (REAL, OWN, SHUFFLED)
# the fidelity columns a model that follows its conditions must separate from the shuffled row
FIDELITY = ("attr_acc", "mask_acc", "miou")

COLUMNS = [
    ("fid", "FID", "{:.2f}", 1),
    ("kid", "KID x100", "{:.2f}", 100),
    ("is", "IS", "{:.2f}", 1),
    ("fid_domain", "FID*", "{:.2f}", 1),
    ("kid_domain", "KID* x100", "{:.2f}", 100),
    ("attr_acc", "attribute acc.", "{:.1f}", 100),
    ("mask_acc", "mask acc.", "{:.1f}", 100),
    ("miou", "mIoU", "{:.1f}", 100),
    ("diversity", "diversity", "{:.4f}", 1),
]


def with_interval(value, low=None, high=None, fmt: str = "{:.2f}", scale: float = 1) -> str:
    """A cell as facediff's tables print it: the value scaled and formatted, its interval in
    brackets where it has one (143.69 [132.03, 144.87]), "-" without a value."""
    if value is None:
        return "-"
    text = fmt.format(value * scale)
    if low is not None and high is not None:
        text += f" [{fmt.format(low * scale)}, {fmt.format(high * scale)}]"
    return text


def markdown_table(rows: dict) -> str:
    """The paper's Table 4 columns (FID, KID, attribute acc., mask acc., mIoU, diversity);
    a column only where some row has it. * = the domain extractor. FID and FID* carry their
    bootstrap interval over the samples where the protocol computed one: 143.2 [131.0, 160.4]."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows.values())]
    lines = ["| | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [
            with_interval(r.get(k), r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high"), fmt, scale)
            for k, _, fmt, scale in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out_dir, extra: dict | None = None) -> str:
    """metrics.json (everything, the protocol included) and report.md (the table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report["rows"])
    metrics = report | (extra or {}) | record()  # which code measured it
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    notes = "\n".join(f"- {k}: {v}" for k, v in report.get("extractors", {}).items())
    if "flip" in report:
        notes += "\n\n" + flip_lines(report["flip"])
    (out_dir / "report.md").write_text(table + "\n\n" + notes + "\n")
    return table


def log_table_to_loggers(loggers, rows: dict, step: int, variant: str | None = None) -> None:
    """The evaluation table as a wandb.Table ("evaluation/table", or "evaluation/<variant>/table")
    in the run's W&B run, and its numbers as evaluation/[<variant>/]<row>/<column> for W&B's
    summary and the other loggers."""
    columns = [c[0] for c in COLUMNS]  # the printed table's columns
    prefix = f"evaluation/{variant}" if variant else "evaluation"
    flat = {}
    for name, row in rows.items():
        key = name.split(" (")[0].replace(" ", "_")
        flat |= {
            f"{prefix}/{key}/{c}": float(row[c])
            for c in columns
            if isinstance(row.get(c), (int, float))
        }
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            data = [
                [name]
                + [row.get(c) if isinstance(row.get(c), (int, float)) else None for c in columns]
                for name, row in rows.items()
            ]
            lg.log_table(f"{prefix}/table", columns=["row", *columns], data=data, step=step)
        if flat:
            lg.log_metrics(flat, step=step)
        lg.save()


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    sd = (
        math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        if len(values) > 1
        else 0.0
    )
    return m, sd


def cell(runs: list[dict], key: str, scale: float, fmt: str, which: str = OWN) -> str:
    """mean ± std of one column of one row over runs' metrics (their "rows"); - where none has
    it."""
    values = [m["rows"][which][key] * scale for m in runs if key in m["rows"].get(which, {})]
    if not values:
        return "-"
    m, sd = mean_std(values)
    return fmt.format(m) + (" ± " + fmt.format(sd) if len(values) > 1 else "")


def study_table(rows: list[tuple[str, list[dict | None]]]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of a study: one line per (setting, its jobs' metrics; None for a job
    that failed). The evaluation's columns for own conditions, the shuffled fidelity beside
    them, mean ± std over the finished jobs, the number of jobs (finished / all)."""
    done = [m for _, runs in rows for m in runs if m is not None]
    cols = [c for c in COLUMNS if any(c[0] in m["rows"].get(OWN, {}) for m in done)]
    shuffled = [c for c in cols if c[0] in FIDELITY]
    header = ["setting", "jobs"] + [c[1] for c in cols] + [f"{c[1]} (shuffled)" for c in shuffled]
    body = []
    for setting, runs in rows:
        ok = [m for m in runs if m is not None]
        line = [setting, f"{len(ok)}/{len(runs)}"]
        line += [cell(ok, k, scale, fmt) for k, _, fmt, scale in cols]
        line += [cell(ok, k, scale, fmt, SHUFFLED) for k, _, fmt, scale in shuffled]
        body.append(line)
    return header, body


def study_values(rows: list[tuple[str, list[dict | None]]]) -> list[dict]:
    """The numbers behind a study's cells, one line per setting, evaluation row and column:
    {setting, row, column, mean, std, n} (std 0 for one job; the columns' own units, not the
    table's scaled ones), for pandas and plots (facediff-report's results.csv)."""
    out = []
    for setting, runs in rows:
        ok = [m for m in runs if m is not None]
        for which in (OWN, SHUFFLED):
            for key, *_ in COLUMNS:
                values = [m["rows"][which][key] for m in ok if key in m["rows"].get(which, {})]
                if values and all(isinstance(v, (int, float)) for v in values):
                    mean, std = mean_std([float(v) for v in values])
                    out.append(
                        {"setting": setting, "row": which, "column": key, "mean": mean,
                         "std": std, "n": len(values)}
                    )  # fmt: skip
    return out


def markdown_lines(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table, one string per line."""
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return md + ["| " + " | ".join(line) + " |" for line in body]


def log_study_to_wandb(result: dict, project: str = "facediff", offline: bool = True) -> str:
    """A study's table as a wandb.Table in a run of its own (job_type=report), with its
    numeric summary (intervals), its claims' verdicts and its figures; returns its folder."""
    import wandb

    run = wandb.init(
        project=project, job_type="report", mode="offline" if offline else "online", reinit=True
    )
    logged = {"study": wandb.Table(columns=result["header"], data=result["rows"])}
    for key in ("summary", "claims"):
        lines = [{k: v for k, v in d.items() if not isinstance(v, list)} for d in result[key]]
        if lines:
            columns = list(dict.fromkeys(k for d in lines for k in d))
            data = [[d.get(c) for c in columns] for d in lines]
            logged[key] = wandb.Table(columns=columns, data=data)
    for path in result["paths"]:
        if path.endswith(".png"):
            logged[f"figures/{Path(path).stem}"] = wandb.Image(path)
    run.log(logged)
    folder = run.dir
    run.finish()
    return folder


def code_notes(jobs) -> list[str]:
    """The facediff versions the finished jobs were measured with (metrics.json's `code`), with
    their job counts, and the jobs whose checkout changed under the running process (`code` !=
    `code_loaded`: configs read on code imported earlier). Nothing where no job recorded one
    (metrics.json written before facediff recorded it)."""
    done = [j for j in jobs if j.metrics is not None and "code" in j.metrics]
    if not done:
        return []
    counts = Counter(j.metrics["code"] for j in done)  # in order of first appearance
    lines = ["Code: " + ", ".join(f"{v} ({n} jobs)" for v, n in counts.items()) + "."]
    if len(done) < len([j for j in jobs if j.metrics is not None]):
        lines[0] = lines[0][:-1] + "; the other finished jobs did not record theirs."
    mixed = [
        str(j.folder)
        for j in done
        if j.metrics.get("code_loaded", j.metrics["code"]) != j.metrics["code"]
    ]
    if mixed:
        lines.append(
            "The checkout changed while these jobs ran (their process had imported other code "
            "than the configs it then read): " + ", ".join(mixed) + "."
        )
    return lines
