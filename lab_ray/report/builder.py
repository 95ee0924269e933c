"""`write_report(run_dir, cfg)`: runs/<name>/report/{report.md, report.html, *.png, dataset_card.md}.

Every section reads its own inputs and, when they are absent, says what is
missing and which command produces it, so a report on a run that only
generated data (or only evaluated) still renders.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from lab_ray.report import plots
from lab_ray.report.doc import Doc
from lab_ray.report.inputs import RunInputs, read_run
from lab_ray.storage import StoragePath


def _fmt(v, metric: str | None = None) -> str:
    if v is None:
        return "-"
    if metric == "accuracy":
        return f"{v:.0%}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _stats_leaves(inp: RunInputs) -> dict[str, dict]:
    return dict((inp.stats or {}).get("leaves") or {})


def _generation_seconds(stats: dict | None) -> float | None:
    if not stats:
        return None
    total = stats.get("total") or {}
    for source in (total, stats):
        for key in ("seconds", "wall_s", "wall_seconds", "elapsed_s"):
            if isinstance(source.get(key), (int, float)) and source[key] > 0:
                return float(source[key])
    return None


def section_overview(doc: Doc, inp: RunInputs, cfg) -> None:
    doc.h("Overview")
    recipe = inp.recipe or {}
    total = (inp.stats or {}).get("total") or {}
    rows = [["run directory", str(inp.run_dir)],
            ["taxonomy", recipe.get("taxonomy") or (cfg.taxonomy.path if cfg is not None else "-")],
            ["teacher", recipe.get("teacher") or (cfg.teacher.model if cfg is not None else "-")],
            ["leaves", len(inp.leaves)],
            ["accepted samples", f"{total['kept']} of {total['rows']} candidates" if total else "-"]]
    for phase, p in (recipe.get("phases") or {}).items():
        rows.append([f"{phase} samples", f"{p.get('samples', '-')} (short {p.get('short', '-')}, long {p.get('long', '-')})"])
    final = (inp.journal or {}).get("final_checkpoint")
    rows.append(["final model", final or "-"])
    if inp.eval:
        s = (inp.eval.get("summary") or {})
        t, b = s.get("trained") or {}, s.get("base") or {}
        rows.append(["MMLU-branch accuracy (base -> trained)",
                     f"{_fmt(b.get('mmlu_branch'), 'accuracy')} -> {_fmt(t.get('mmlu_branch'), 'accuracy')}"])
        rows.append(["MT-Bench-branch score (base -> trained)",
                     f"{_fmt(b.get('mt_bench_branch'))} -> {_fmt(t.get('mt_bench_branch'))}"])
    doc.table(["", ""], rows)
    if inp.missing:
        doc.p("Missing inputs: " + "; ".join(inp.missing.values()) + ".")


def section_samples(doc: Doc, inp: RunInputs, out: Path, dpi: int) -> None:
    doc.h("Samples per leaf")
    stats = _stats_leaves(inp)
    if not stats and not inp.samples:
        doc.missing(f"{inp.missing.get('stats', 'no generation statistics')}; "
                    f"{inp.missing.get('samples', '')} (run `lab-ray generate`)")
        return
    leaves = sorted(set(stats) | set(inp.samples))
    merged = {}
    rows = []
    for leaf in leaves:
        st, sa = stats.get(leaf, {}), inp.samples.get(leaf, {})
        kind = st.get("kind") or sa.get("kind") or "-"
        kept = st.get("kept", sa.get("rows", 0))
        merged[leaf] = {"kind": kind, "kept": kept, "rows": st.get("rows", kept)}
        rows.append([leaf, kind, sa.get("phase", "-"), st.get("rows", "-"), kept, sa.get("rows", 0),
                     f"{sa.get('short', 0)} / {sa.get('long', 0)}"])
    doc.table(["leaf", "kind", "training file", "candidates", "accepted", "in training data", "short / long"], rows)
    doc.img(plots.samples_per_leaf(merged, out / "samples_per_leaf.png", dpi).name, "samples per leaf")
    mixing = (inp.recipe or {}).get("mixing") or {}
    if mixing:
        doc.p("Mixing recipe (sdg.mixing; data/recipe.yaml): samples of each leaf's training split that "
              "training takes (a subsample, or repeats up to the rule's cap).")
        doc.table(["training file", "leaf", "rule", "available", "held out", "taken", "repeats"],
                  [[name, leaf, e.get("rule") if e.get("rule") is not None else "-", e.get("available"),
                    e.get("heldout"), e.get("taken"), e.get("repeats")]
                   for name, block in mixing.items() for leaf, e in sorted((block.get("leaves") or {}).items())])
    if "samples" in inp.missing:
        doc.missing(inp.missing["samples"])


def _generation_stats(doc: Doc, inp: RunInputs, heading: str) -> dict:
    """The per-leaf generation stats under a new heading, or {} with the reason shown."""
    doc.h(heading)
    stats = _stats_leaves(inp)
    if not stats:
        doc.missing(f"{inp.missing.get('stats', 'no generation statistics')} (run `lab-ray generate`)")
    return stats


def section_funnel(doc: Doc, inp: RunInputs, out: Path, dpi: int) -> None:
    stats = _generation_stats(doc, inp, "Generation funnel")
    if not stats:
        return
    doc.img(plots.funnel(stats, out / "funnel.png", dpi).name, "stage funnel")
    rows = []
    for leaf, s in sorted(stats.items()):
        for i, st in enumerate(s.get("stages") or []):
            dropped = ", ".join(f"{r} {n}" for r, n in (st.get("dropped") or {}).items()) or "-"
            stage = st.get("stage") + (f" (fan-out x{st['fanout']})" if st.get("fanout") else "")
            tokens = (st.get("prompt_tokens") or 0) + (st.get("completion_tokens") or 0)
            per_kept = f"{tokens / s['kept']:.0f}" if tokens and s.get("kept") else "-"
            rows.append([leaf if i == 0 else "", stage, st.get("in"), st.get("kept"), dropped,
                         tokens or "-", per_kept])
        if not s.get("stages"):
            rows.append([leaf, "(all)", s.get("rows"), s.get("kept"),
                         ", ".join(f"{r} {n}" for r, n in (s.get("dropped") or {}).items()) or "-", "-", "-"])
    # Tokens per stage over the leaf's accepted samples: where the teacher's cost of a sample goes.
    doc.table(["leaf", "stage", "in", "kept", "dropped (reason count)", "teacher tokens",
               "tokens per accepted sample"], rows)


def section_teacher(doc: Doc, inp: RunInputs, out: Path, dpi: int) -> None:
    stats = _generation_stats(doc, inp, "Teacher tokens and throughput")
    if not stats:
        return
    total = (inp.stats or {}).get("total") or {}
    pt = total.get("prompt_tokens", sum(s.get("prompt_tokens", 0) for s in stats.values()))
    ct = total.get("completion_tokens", sum(s.get("completion_tokens", 0) for s in stats.values()))
    cached = total.get("cached_prompt_tokens") or 0

    def per_accepted(s: dict, kept: int) -> list[str]:
        billed = s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
        out = [f"{billed / max(1, kept):.0f}"]
        if cached:  # the prompt tokens the teacher reused were not computed again
            out.append(f"{(billed - (s.get('cached_prompt_tokens') or 0)) / max(1, kept):.0f}")
        return out

    rows = [[leaf, s.get("prompt_tokens", 0), s.get("completion_tokens", 0), *per_accepted(s, s.get("kept", 0))]
            for leaf, s in sorted(stats.items())]
    rows.append(["total", pt, ct, *per_accepted({**total, "prompt_tokens": pt, "completion_tokens": ct},
                                                total.get("kept", 0) or 1)])
    doc.table(["leaf", "prompt tokens", "completion tokens", "teacher tokens per accepted sample",
               *(["computed per accepted sample"] if cached else [])], rows)
    if cached:  # vLLM's prefix cache, the CPU teacher's shared prefixes: prompt tokens not computed again
        doc.p(f"{cached} of the {pt} prompt tokens ({cached / max(1, pt):.0%}) came from the teacher's prefix "
              f"cache: {(pt - cached + ct) / max(1, total.get('kept', 0) or 1):.0f} computed tokens per accepted sample.")
    secs = _generation_seconds(inp.stats)
    if secs:
        doc.p(f"Generation took {secs:.0f} s: {ct / secs:.1f} completion tokens/s, {(pt + ct) / secs:.1f} "
              f"total tokens/s, {total.get('rows', 0) / secs * 60:.1f} candidate rows/min.")
    else:
        doc.missing("throughput: stats.json records no generation wall time (total.seconds), "
                    "so only token counts are shown")
    if inp.mcq_meta:
        gen = inp.mcq_meta.get("generation") or {}
        t = sum(g.get("prompt_tokens", 0) + g.get("completion_tokens", 0) for g in gen.values())
        if t:
            doc.p(f"Evaluation MCQ generation used {t} further teacher tokens.")
    doc.img(plots.teacher_tokens(stats, out / "teacher_tokens.png", dpi).name, "teacher tokens per leaf")


def section_judges(doc: Doc, inp: RunInputs, cfg) -> None:
    """What each judge's verdicts rest on, per leaf: its reference levels (sdg/calibration.json),
    whether they separate, how many rows it judged per request."""
    from lab_ray.sdg.judge_batch import CALIBRATION_KEY
    from lab_ray.sdg.stages import JUDGES

    if not inp.calibration or cfg.get("sdg") is None:
        return
    doc.h("Judges")
    sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
    rows = []
    for judge_cls in JUDGES:
        judge = judge_cls(None, sdg, inp.calibration)
        per_leaf = inp.calibration.get(judge.stage) or {}
        k = (inp.calibration.get(CALIBRATION_KEY) or {}).get(judge.stage) or {}
        for leaf, ref in sorted(per_leaf.items()):
            mode = ("calibrated" if judge.separates(ref) else
                    "skipped (sdg.judge.unseparated=skip)" if leaf in judge.skipped else "raw score, raw threshold")
            rows.append([judge.stage, leaf, f"{ref[0]:.3f}", f"{ref[1]:.3f}", mode, k.get(leaf, 1)])
    doc.p("Each judge scored the leaf's own seeds (good) and rows built to be bad before generation. Where the "
          "two levels are too close to tell apart, its verdicts carry no calibrated meaning for that leaf.")
    doc.table(["judge", "leaf", "bad references", "good references", "verdicts", "rows per request"], rows)


def _curves(inp: RunInputs) -> tuple[dict[str, dict], list[list]]:
    curves: dict[str, dict] = {}
    ckpt_step: dict[str, tuple[str, int]] = {}
    for r in inp.metrics:
        if r.get("event") not in ("step", "final") or "phase" not in r:
            continue
        c = curves.setdefault(r["phase"], {"steps": [], "loss": [], "checkpoints": [], "selected": []})
        if r.get("event") == "step" and isinstance(r.get("loss"), (int, float)):
            c["steps"].append(r.get("step", len(c["steps"]) + 1))
            c["loss"].append(float(r["loss"]))
        if r.get("checkpoint"):
            c["checkpoints"].append(r.get("step", 0))
            ckpt_step[str(r["checkpoint"])] = (r["phase"], r.get("step", 0))
            ckpt_step.setdefault(Path(str(r["checkpoint"])).name + "|" + r["phase"], (r["phase"], r.get("step", 0)))
    selection = dict((inp.journal or {}).get("selection") or {})
    for r in inp.metrics:  # score events carry the selection when the journal is absent
        if r.get("event") == "score" and r.get("selected"):
            selection.setdefault(r.get("group", "?"), {"selected": r.get("checkpoint")})
    rows = []
    for group, sel in selection.items():
        path = sel.get("selected")
        if not path:
            continue
        where = ckpt_step.get(str(path))
        if where is None:
            for ph in curves:
                where = where or ckpt_step.get(Path(str(path)).name + "|" + ph)
        if where:
            curves[where[0]]["selected"].append(where[1])
        scores = (sel.get("scores") or {}).get(path, {})
        metric = sel.get("metric")
        rows.append([group, f"{where[0]} step {where[1]}" if where else Path(str(path)).name, metric or "-",
                     _fmt(scores.get(metric)) if metric else "-", len(sel.get("scores") or {}) or "-"])
    return {k: v for k, v in curves.items() if v["steps"]}, rows


def section_training(doc: Doc, inp: RunInputs, out: Path, dpi: int) -> None:
    doc.h("Training")
    if not inp.metrics:
        doc.missing(f"{inp.missing.get('train', 'no training metrics')} (run `lab-ray train`)")
        return
    curves, sel_rows = _curves(inp)
    if curves:
        doc.img(plots.loss_curves(curves, out / "loss.png", dpi).name, "loss per phase")
        rows = []
        phases = ((inp.journal or {}).get("phases") or {})
        for ph, c in curves.items():
            e = phases.get(ph, {})
            rows.append([ph, e.get("status", "-"), len(c["steps"]), _fmt(c["loss"][0]), _fmt(c["loss"][-1]),
                         f"{e['wall_s']:.0f}" if isinstance(e.get("wall_s"), (int, float)) else "-",
                         len(c["checkpoints"])])
        doc.table(["phase", "status", "steps", "first loss", "last loss", "wall s", "checkpoints"], rows)
    else:
        doc.missing("training metrics hold no loss values")
    if sel_rows:
        doc.p("Checkpoint selection (the selected checkpoints are marked in red on the loss curves):")
        doc.table(["group", "selected", "metric", "value", "candidates"], sel_rows)
    else:
        doc.missing("no checkpoint selection recorded (train/journal.json or score events)")


def section_eval(doc: Doc, inp: RunInputs, out: Path, dpi: int) -> None:
    doc.h("Evaluation: base vs trained")
    if not inp.eval or not inp.eval.get("comparison"):
        doc.missing(f"{inp.missing.get('eval', 'no evaluation results')} (run `lab-ray eval MODEL --base`)")
        return
    ev = inp.eval
    doc.p(f"Model {ev.get('model')} against base {ev.get('base_model') or '(not scored)'}. Knowledge: "
          "teacher-written multiple-choice questions from each knowledge leaf's documents, scored by the "
          "student's likelihood of each option (MMLU-branch). Skills: the leaf's held-out seed questions, "
          "greedy answers judged by the teacher on 1-10 against the seed answer (MT-Bench-branch).")
    rows = []
    for leaf, r in sorted(ev["comparison"].items()):
        m = r.get("metric")
        d = r.get("delta")
        delta = "-" if d is None else (f"{d * 100:+.0f} pt" if m == "accuracy" else f"{d:+.2f}")
        rows.append([leaf, r.get("kind"), "accuracy" if m == "accuracy" else "judge 1-10", r.get("n"),
                     _fmt(r.get("base"), m), _fmt(r.get("trained"), m), delta])
    doc.table(["leaf", "kind", "metric", "n", "base", "trained", "delta"], rows)
    doc.img(plots.eval_scores(ev["comparison"], out / "eval_scores.png", dpi).name, "eval scores")
    gen = ev.get("generation") or {}
    for leaf, g in gen.items():
        doc.p(f"{leaf}: {g.get('valid', 0)} valid teacher MCQs from {g.get('requests', 0)} requests over "
              f"{g.get('chunks', 0)} chunks" + (f"; {g['cloze']} cloze MCQs from the seed Q/A added (fallback)"
                                                 if g.get("cloze") else "") + ".")


def section_examples(doc: Doc, inp: RunInputs, max_chars: int) -> None:
    doc.h("Example samples")
    if not inp.samples:
        doc.missing(f"{inp.missing.get('samples', 'no samples')} (run `lab-ray generate`)")
        return
    for leaf, s in sorted(inp.samples.items()):
        doc.h(leaf, 3)
        for rec in s["examples"]:
            lines = []
            for m in rec.get("messages", []):
                text = str(m.get("content", ""))
                text = text if len(text) <= max_chars else text[:max_chars] + " [...]"
                lines.append(f"[{m.get('role', '?')}]\n{text}")
            doc.code("\n\n".join(lines))


def write_dataset_card(inp: RunInputs, cfg, out: Path) -> Path:
    """dataset_card.md: what taxonomy, which teacher, counts, licences of the source documents."""
    recipe = inp.recipe or {}
    stats = _stats_leaves(inp)
    tax_path = recipe.get("taxonomy") or (cfg.taxonomy.path if cfg is not None else None)
    teacher = recipe.get("teacher") or (cfg.teacher.model if cfg is not None else "unknown")
    doc = Doc(f"Dataset card: {inp.run_dir.name}")
    doc.h("Summary")
    total = (inp.stats or {}).get("total") or {}
    doc.p(f"Synthetic instruction data generated with the LAB method (arXiv 2403.01081) by lab-ray from the "
          f"taxonomy at {tax_path or 'an unrecorded path'}, with {teacher} as generator and judge. "
          + (f"{total.get('kept')} samples were accepted out of {total.get('rows')} candidates." if total else ""))
    doc.h("Files")
    rows = [[phase, p.get("path", f"data/{phase}"), p.get("branches", "-"), p.get("samples", "-"),
             p.get("short", "-"), p.get("long", "-")] for phase, p in (recipe.get("phases") or {}).items()]
    if rows:
        doc.table(["phase", "path", "branches", "samples", "short", "long"], rows)
        doc.p("Format: InstructLab messages JSONL, one {id, messages: [{role, content}], metadata: {leaf, branch, "
              "kind, length, scores, ...}} per line.")
    else:
        doc.missing(inp.missing.get("recipe", "no recipe.yaml") + " (run `lab-ray generate`)")
    doc.h("Taxonomy and sources")
    tax = None
    if tax_path and cfg is not None:
        try:
            from lab_ray.taxonomy.loader import load_taxonomy

            tax = load_taxonomy(tax_path, cfg.taxonomy)
        except Exception as e:  # noqa: BLE001 - the card still renders without it
            doc.missing(f"the taxonomy at {tax_path} could not be read: {e}")
    leaf_rows = []
    leaves = {leaf.path: leaf for leaf in (tax.leaves if tax else [])}
    for name in sorted(set(leaves) | set(stats) | set(inp.samples)):
        leaf, st = leaves.get(name), stats.get(name, {})
        doc_ref, licences = "-", "-"
        if leaf is not None and leaf.document is not None:
            doc_ref = f"{leaf.document.repo}@{leaf.document.commit[:12]} ({', '.join(leaf.document.patterns)})"
        if leaf is not None and leaf.is_knowledge:
            licences = ", ".join(leaf.licenses) or "none recorded"
        kind = (leaf.kind if leaf else None) or st.get("kind") or inp.samples.get(name, {}).get("kind", "-")
        leaf_rows.append([name, kind, len(leaf.examples) if leaf else "-", st.get("kept", inp.samples.get(name, {}).get("rows", "-")),
                          doc_ref, licences])
    doc.table(["leaf", "kind", "seed examples", "accepted samples", "source document", "licence"], leaf_rows)
    doc.h("How it was made")
    doc.p("Skills: instructions generated per leaf from its seed examples, judged (off-topic, harmful, "
          "beyond an LLM), answered with a persona fitting the leaf, and each pair judged on a 3-point scale; "
          "grounded skills first generate new contexts. Knowledge: the leaf's documents are chunked, Q/A "
          "written per chunk and judged for faithfulness, relevance and question quality. Near duplicates "
          "are removed per leaf.")
    doc.h("Limitations")
    doc.p("The data is only as good as the teacher: a small teacher produces weak and sometimes unfaithful "
          "samples that its own judgements let through. The seed examples of each leaf are not part of the "
          "data (they are held out for evaluation). Documents keep their own licences (above).")
    path = out / "dataset_card.md"
    path.write_text(doc.markdown(), encoding="utf-8")
    return path


def write_report(run_dir, cfg) -> StoragePath:
    """Write runs/<name>/report/{report.md, report.html, *.png, dataset_card.md}; returns report.md's path.

    cfg (the run's config) supplies the taxonomy location for the dataset card
    and the report settings. On an object store the report is built in a local
    scratch directory and published as a whole."""
    run_dir = StoragePath(run_dir)
    target = run_dir / "report"
    if target.is_local:
        _build_report(run_dir, cfg, target.local_path())
        return target / "report.md"
    with tempfile.TemporaryDirectory(prefix="lab-ray-report-") as tmp:
        _build_report(run_dir, cfg, Path(tmp))
        target.rmtree()
        target.upload_dir(Path(tmp))
    return target / "report.md"


def _build_report(run_dir: StoragePath, cfg, out: Path) -> None:
    rc = cfg.report
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # plots of sections that are now missing must not linger
        old.unlink()
    inp = read_run(run_dir, int(rc.examples_per_leaf))
    doc = Doc(f"lab-ray run report: {run_dir.name}")
    doc.p(f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} from {run_dir}. Dataset card: dataset_card.md.")
    section_overview(doc, inp, cfg)
    section_samples(doc, inp, out, int(rc.dpi))
    section_funnel(doc, inp, out, int(rc.dpi))
    section_teacher(doc, inp, out, int(rc.dpi))
    section_judges(doc, inp, cfg)
    section_training(doc, inp, out, int(rc.dpi))
    section_eval(doc, inp, out, int(rc.dpi))
    section_examples(doc, inp, int(rc.max_example_chars))
    write_dataset_card(inp, cfg, out)
    (out / "report.html").write_text(doc.html(), encoding="utf-8")
    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
