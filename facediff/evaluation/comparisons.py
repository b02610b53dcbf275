"""facediff-report's numbers with their uncertainty, on top of the rows `study.group` makes.

- `summary`: a line per setting: one column per swept option, n, and per metric its mean, std
  and 95% interval over seeds (study.csv, and the Markdown rendered from it);
- `job_lines`: a line per job with FID and FID*'s bootstrap intervals over its samples;
- `compare`: each setting against a baseline, paired by seed: the difference, its interval and
  the smallest difference the seeds could have detected;
- `claims`: the study's declared claims (`claims:` in its config) with a computed verdict;
- `figures`: each metric by setting with its intervals, and the learning curves, as PNGs.

The arithmetic is in `facediff.evaluation.statistics`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import yaml

from facediff.evaluation.statistics import paired, t_interval, verdict
from facediff.evaluation.tables import COLUMNS, OWN, with_interval

# the fidelity monitor's ceilings: the real images, and them through a latent model's first stage
CEILINGS = ("_real", "_decoded")
# ... and the real images at a lower resolution, upsampled again (monitor.at_resolution)
AT_SIZE = re.compile(r"fidelity/(\w+)_real_(\d+)px")


def is_ceiling(key: str) -> bool:
    """A monitor's reference level (real, decoded, at a lower resolution), not a model's curve."""
    return key.endswith(CEILINGS) or AT_SIZE.fullmatch(key) is not None


# the issue's goal for a training recipe: fractions of the real images' scores
TIME_TO_QUALITY = {"attr_acc": 0.95, "miou": 0.90}

# the metrics and how they print: the protocol's table columns (tables.COLUMNS)
LABELS = {k: (label, fmt, scale) for k, label, fmt, scale in COLUMNS}


def options(setting_overrides: list[str]) -> dict:
    """{key: value} of Hydra overrides (a job's, a row's, a claim's; `+`/`~` dropped)."""
    out = {}
    for o in setting_overrides:
        key, _, value = o.lstrip("+~").partition("=")
        out[key] = value
    return out


def by_seed(row, key: str) -> dict:
    """{seed: value} of a metric over a row's finished jobs (the own-conditions row)."""
    out = {}
    for job in row.jobs:
        value = (job.metrics or {}).get("rows", {}).get(OWN, {}).get(key)
        if value is not None:
            out[job.seed if job.seed is not None else str(job.folder)] = float(value)
    return out


def present(rows) -> list[str]:
    return [k for k in LABELS if any(by_seed(r, k) for r in rows)]


def summary(rows, row_options: list[dict]) -> tuple[list[str], list[dict]]:
    """study.csv's columns and lines: the swept options, n, and per metric mean, std, ci_low,
    ci_high over seeds (numbers, not strings)."""
    swept = sorted({k for o in row_options for k in o})
    metrics = present(rows)
    columns = ["setting", *swept, "n"]
    columns += [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci_low", "ci_high")]
    lines = []
    for row, opts in zip(rows, row_options):
        line = {"setting": row.setting, **{k: opts.get(k) for k in swept}}
        line["n"] = sum(j.metrics is not None for j in row.jobs)
        for m in metrics:
            t = t_interval(by_seed(row, m).values())
            line |= {f"{m}_{s}": t[s] for s in ("mean", "std", "ci_low", "ci_high")}
        lines.append(line)
    return columns, lines


def summary_markdown(columns: list[str], lines: list[dict]) -> list[str]:
    """The setting table rendered from study.csv's numbers: mean [95% interval] per metric."""
    metrics = [c.removesuffix("_mean") for c in columns if c.endswith("_mean")]
    out = ["| setting | n | " + " | ".join(LABELS[m][0] for m in metrics) + " |"]
    out.append("|---" * (len(metrics) + 2) + "|")
    for line in lines:
        cells = [
            with_interval(
                line[f"{m}_mean"], line[f"{m}_ci_low"], line[f"{m}_ci_high"], *LABELS[m][1:]
            )
            for m in metrics
        ]
        out.append(f"| {line['setting']} | {line['n']} | " + " | ".join(cells) + " |")
    return out


def job_lines(rows) -> list[dict]:
    """A line per finished job: FID and FID* with their bootstrap intervals over the samples,
    KID and KID* with their std over subsets."""
    keys = ("fid", "fid_ci_low", "fid_ci_high", "fid_domain", "fid_domain_ci_low")
    keys += ("fid_domain_ci_high", "kid", "kid_std", "kid_domain", "kid_domain_std")
    out = []
    for row in rows:
        for job in row.jobs:
            if job.metrics is None:
                continue
            own = job.metrics["rows"].get(OWN, {})
            line = {"setting": row.setting, "seed": job.seed, "folder": str(job.folder)}
            out.append(line | {k: own.get(k) for k in keys})
    return out


def _match(opts: dict, spec: dict) -> bool:
    return all(opts.get(k) == v for k, v in spec.items())


def _partner(rows, row_options, opts: dict, baseline: dict):
    """The row whose options are `opts` with `baseline`'s values in place (same variant, same
    other options), or None."""
    want = opts | baseline
    for row, o in zip(rows, row_options):
        if o == want:
            return row
    return None


def _comparison(row, base, metric: str) -> dict:
    a, b = by_seed(row, metric), by_seed(base, metric)
    p = paired(a, b)
    p["unpaired_seeds"] = sorted(set(a) ^ set(b), key=str)
    return p


def compare(rows, row_options, baseline: dict) -> list[dict]:
    """Every row that is not a baseline row against the baseline row that differs from it only
    in `baseline`'s options: per metric, the paired difference over the seeds both ran."""
    out = []
    for row, opts in zip(rows, row_options):
        if _match(opts, baseline):
            continue
        base = _partner(rows, row_options, opts, baseline)
        if base is None:
            continue
        for metric in present([row, base]):
            out.append({"setting": row.setting, "baseline": base.setting, "metric": metric})
            out[-1] |= _comparison(row, base, metric)
    return out


def _check_claim(claim: dict, where: Path) -> dict:
    need = {"name", "setting", "baseline", "metric", "expect"}
    missing = need - set(claim)
    if missing:
        raise ValueError(f"{where}: claim {claim}: missing {sorted(missing)}")
    if claim["metric"] not in LABELS:
        raise ValueError(f"{where}: claim {claim['name']!r}: metric {claim['metric']!r}, "
                         f"expected one of {sorted(LABELS)}")  # fmt: skip
    return claim | {"margin": float(claim.get("margin", 0.0))}


def claims(rows, row_options, declared: list[dict]) -> list[dict]:
    """A verdict per declared claim and matching pair of rows (one per evaluation variant)."""
    out = []
    for claim in declared:
        setting, base = options(claim["setting"].split()), options(claim["baseline"].split())
        found = False
        for row, opts in zip(rows, row_options):
            if not _match(opts, setting):
                continue
            partner = _partner(rows, row_options, opts, base)
            if partner is None:
                continue
            found = True
            p = _comparison(row, partner, claim["metric"])
            v = verdict(p["ci_low"], p["ci_high"], claim["expect"], claim["margin"])
            out.append(claim | {"row": row.setting, "row_baseline": partner.setting} | p)
            out[-1]["verdict"] = v
        if not found:
            out.append(claim | {"verdict": "not run (no pair of rows matches)", "n": 0})
    return out


def comparison_markdown(items: list[dict], title: str) -> list[str]:
    if not items:
        return []
    head = "| claim | " if "verdict" in items[0] else "| "
    out = ["", f"**{title}** (paired by seed; 95% interval; detectable: the smallest true "
           "difference the seeds find with 80% power)", "",  # fmt: skip
           head + "setting | baseline | metric | n | difference [95% interval] | detectable |"
           + (" verdict |" if "verdict" in items[0] else ""),
           "|---" * (8 if "verdict" in items[0] else 6) + "|"]  # fmt: skip
    for c in items:
        label, fmt, scale = LABELS[c["metric"]]
        diff = with_interval(c.get("mean"), c.get("ci_low"), c.get("ci_high"), fmt, scale)
        cells = [c.get("row", c["setting"]), c.get("row_baseline", c["baseline"])]
        cells += [
            label,
            str(c.get("n", 0)),
            diff,
            with_interval(c.get("detectable"), fmt=fmt, scale=scale),
        ]
        if "verdict" in c:
            cells = [c["name"], *cells, f"**{c['verdict']}**"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_csv(path: Path, columns: list[str], lines: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(lines)


def figures(rows, lines: list[dict], out: Path, curves: dict) -> list[str]:
    """metrics.png (each metric by setting: seeds as dots, the mean with its 95% interval) and
    curves.png (fidelity/* against step from each job's CSV log, `curves`:
    learning_curves(rows); seeds as thin lines, the mean thick) and, where the jobs logged
    their training time, curves_time.png, next to report.md; the paths written."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it was

    metrics = [m for m in present(rows)]
    paths = []
    if metrics:
        fig = Figure(figsize=(3.2 * len(metrics), 3.2))
        axes = fig.subplots(1, len(metrics), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            label, _, scale = LABELS[m]
            for i, (row, line) in enumerate(zip(rows, lines)):
                seeds = list(by_seed(row, m).values())
                ax.plot([i] * len(seeds), [v * scale for v in seeds], "o", ms=3, alpha=0.5)
                if line[f"{m}_ci_low"] is not None:
                    mean = line[f"{m}_mean"] * scale
                    err = [[mean - line[f"{m}_ci_low"] * scale],
                           [line[f"{m}_ci_high"] * scale - mean]]  # fmt: skip
                    ax.errorbar([i], [mean], yerr=err, fmt="s", color="k", capsize=3)
            ax.set_title(label)
            ax.set_xticks(range(len(rows)), [str(i + 1) for i in range(len(rows))])
            ax.set_xlabel("setting (report.md's order)")
        fig.tight_layout()
        fig.savefig(out / "metrics.png", dpi=100)
        paths.append(str(out / "metrics.png"))
    for x in ("step", "seconds"):  # curves.png against step, curves_time.png against time
        fig = _curve_figure(curves, x)
        if fig is not None:
            name = "curves.png" if x == "step" else "curves_time.png"
            fig.savefig(out / name, dpi=100)
            paths.append(str(out / name))
    return paths


def _curve_figure(curves: dict, x: str):
    """fidelity/* of every setting (a colour; seeds thin, their mean thick where the seeds
    measured at the same points) against `x`: "step", or "seconds" of training (time/train_s,
    drawn in minutes) where the runs logged it; each metric's real-image ceiling
    (fidelity/<metric>_real) dashed, and a latent model's first-stage ceiling
    (fidelity/<metric>_decoded) dotted. None when there is nothing to draw."""
    from matplotlib.figure import Figure

    keys = sorted(
        {k for cs in curves.values() for c in cs for k, pts in c.items()
         if not is_ceiling(k) and any(p[x] is not None for p in pts)}
    )  # fmt: skip
    if not keys:
        return None
    fig = Figure(figsize=(3.6 * len(keys), 3.2))
    axes = fig.subplots(1, len(keys), squeeze=False)
    scale = 1 / 60 if x == "seconds" else 1
    for ax, key in zip(axes[0], keys):
        for i, cs in enumerate(curves.values()):
            color = f"C{i % 10}"
            runs = [[(p[x] * scale, p["value"]) for p in c.get(key, []) if p[x] is not None]
                    for c in cs]  # fmt: skip
            runs = [r for r in runs if r]
            for r in runs:
                ax.plot(*zip(*r), color=color, lw=0.7, alpha=0.5)
            if len(runs) > 1 and x == "step" and len({tuple(p[0] for p in r) for r in runs}) == 1:
                mean = [sum(vs) / len(vs) for vs in zip(*[[p[1] for p in r] for r in runs])]
                ax.plot([p[0] for p in runs[0]], mean, color=color, lw=2)
            for c in cs[:1]:
                for suffix, style in zip(CEILINGS, ("--", ":")):
                    level = [p["value"] for p in c.get(f"{key}{suffix}", [])]
                    if level:
                        ax.axhline(level[-1], color=color, ls=style, lw=0.8)
            ax.plot([], [], color=color, label=str(i + 1))
        ax.set_title(key)
        ax.set_xlabel("step" if x == "step" else "training time (min)")
    axes[0][-1].legend(fontsize=6, title="setting")
    fig.tight_layout()
    return fig


def learning_curves(rows) -> dict:
    """{setting: [each job's _curve, in the row's order]}."""
    return {row.setting: [_curve(j.run) for j in row.jobs] for row in rows}


def _curve(job: Path) -> dict:
    """{fidelity/<metric>: [{step, value, seconds}, ...]} from a job's CSV logger files (in its
    Hydra folder, Job.run); `seconds` is the training time logged with the value
    (time/train_s; None where it was not). {} where there is no log."""
    files = sorted(job.glob("csv/version_*/metrics.csv"))
    if not files:
        return {}
    out: dict = {}
    for file in files:  # a resumed run logs into a new version: the versions in order
        with open(file) as f:
            for line in csv.DictReader(f):
                seconds = line.get("time/train_s") or None
                for key, value in line.items():
                    if key and key.startswith("fidelity/") and value not in ("", None):
                        out.setdefault(key, []).append(
                            {
                                "step": int(line["step"]),
                                "value": float(value),
                                "seconds": float(seconds) if seconds else None,
                            }  # fmt: skip
                        )
    return out


def time_to_quality(curve: dict, targets: dict) -> dict:
    """When one run's fidelity first reached `targets` ({metric: fraction of the real images'
    score}, e.g. {"attr_acc": 0.95, "miou": 0.90}), all of them at one measurement: {"step",
    "seconds"} of that measurement (None each if never), "reached" {metric: fraction of the
    ceiling} there (or at the best measurement), and the ceilings. Needs the monitor's
    fidelity/<metric>_real (facediff.evaluation.monitor)."""
    ceilings = {}
    for metric in targets:
        real = curve.get(f"fidelity/{metric}_real")
        if not real or not curve.get(f"fidelity/{metric}"):
            return {}
        ceilings[metric] = real[-1]["value"]
    points = {}
    for metric in targets:
        for p in curve[f"fidelity/{metric}"]:
            points.setdefault(p["step"], {"seconds": p["seconds"]})[metric] = (
                p["value"] / ceilings[metric]
            )
    measured = [(step, p) for step, p in sorted(points.items()) if len(p) == len(targets) + 1]
    if not measured:
        return {}
    for step, p in measured:
        if all(p[m] >= t for m, t in targets.items()):
            return {"step": step, "seconds": p["seconds"], "ceilings": ceilings,
                    "reached": {m: p[m] for m in targets}}  # fmt: skip
    step, best = max(measured, key=lambda sp: min(sp[1][m] / t for m, t in targets.items()))
    return {"step": None, "seconds": None, "ceilings": ceilings,
            "reached": {m: best[m] for m in targets}, "best_step": step}  # fmt: skip


def time_to_quality_markdown(rows, curves: dict, targets: dict) -> list[str]:
    """A line per job: when its fidelity reached `targets` of the real images' scores
    (`curves`: learning_curves(rows))."""
    lines = []
    for row in rows:
        for job, curve in zip(row.jobs, curves[row.setting]):
            t = time_to_quality(curve, targets)
            if not t:
                continue
            want = " and ".join(f"{m} >= {f:.0%}" for m, f in targets.items())
            got = ", ".join(
                f"{m} {t['reached'][m]:.1%} of {t['ceilings'][m]:.3f}" for m in targets
            )
            sizes = sorted({int(m[2]) for k in curve if (m := AT_SIZE.fullmatch(k))}, reverse=True)
            for suffix, label in [("_decoded", "the first stage's round trip reaches")] + [
                (f"_real_{n}px", f"the real images at {n} px") for n in sizes
            ]:  # the share of the ceiling a latent model's first stage keeps, and a smaller image
                at = [
                    f"{m} {curve[key][-1]['value'] / t['ceilings'][m]:.1%}"
                    for m in targets
                    if curve.get(key := f"fidelity/{m}{suffix}")
                ]
                if at:
                    got += f"; {label} " + ", ".join(at)
            if t["step"] is None:
                when = f"not reached (best at step {t['best_step']}: {got})"
            else:
                minutes = f"{t['seconds'] / 60:.1f} min, " if t["seconds"] is not None else ""
                when = f"{minutes}step {t['step']} ({got})"
            lines.append(f"| {row.setting} | {job.seed or '-'} | {want} | {when} |")
    if not lines:
        return []
    head = ["", "**Time to quality** (the fidelity monitor's measurements against the real "
            "images' scores of the same items; training time without the measurements)", "",
            "| setting | seed | target | reached at |", "|---|---|---|---|"]  # fmt: skip
    return head + lines


__all__ = [
    "claims",
    "compare",
    "figures",
    "job_lines",
    "options",
    "sections",
    "study_key",
    "summary",
    "summary_markdown",
    "time_to_quality",
]


def study_key(jobs, key: str):
    """A study config's `key` (claims:, row_options:) from the first job's .hydra/config.yaml
    that sets it (Job.run: above an evaluation variant's folder); None where none does."""
    for job in jobs:
        config = job.run / ".hydra" / "config.yaml"
        if config.is_file():
            value = (yaml.safe_load(config.read_text()) or {}).get(key)
            if value:
                return value
    return None


def sections(rows, row_options, jobs, out: Path, baseline: str | None) -> dict:
    """Everything above for report(): study.csv, jobs.csv, the comparisons against
    `baseline` (overrides, e.g. "experiment=attr"), the claims' verdicts, the figures; their
    Markdown lines and paths."""
    columns, lines = summary(rows, row_options)
    write_csv(out / "study.csv", columns, lines)
    per_job = job_lines(rows)
    if per_job:
        write_csv(out / "jobs.csv", list(per_job[0]), per_job)
    base = options(baseline.split()) if baseline else None
    if base and not any(_match(o, base) for o in row_options):
        known = "; ".join(r.setting for r in rows)
        raise ValueError(f"--baseline {baseline!r}: no row has these options (rows: {known})")
    compared = compare(rows, row_options, base) if base else []
    declared = [_check_claim(c, Path("claims")) for c in study_key(jobs, "claims") or []]
    verdicts = claims(rows, row_options, declared)
    md = ["", "**Settings** (mean [95% interval] over seeds; n = seeds; study.csv)", ""]
    md += summary_markdown(columns, lines)
    md += comparison_markdown(verdicts, "Claims")
    md += comparison_markdown(compared, f"Against the baseline {baseline}")
    curves = learning_curves(rows)  # each job's CSV log, read once for the table and figures
    md += time_to_quality_markdown(rows, curves, TIME_TO_QUALITY)
    paths = [str(out / "study.csv")] + ([str(out / "jobs.csv")] if per_job else [])
    paths += figures(rows, lines, out, curves)
    return {"markdown": md, "summary": lines, "comparisons": compared, "claims": verdicts,
            "paths": paths}  # fmt: skip
