"""Renderings of a parity report: the stdout table, JSON, Markdown (a CI job summary), JUnit XML and a PNG plot.

Every renderer reads the JSON form (:meth:`deberta_xf.parity.harness.ParityReport.as_dict`), so the same files can be
regenerated from a saved ``--json`` report. Numbers are max-abs differences in ``%.3e``; every table states the
dtype with its tolerances.
"""

from __future__ import annotations

import importlib.util
import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from deberta_xf.compare import GRAD_PREFIX, gradient_layer
from deberta_xf.errors import DebertaXfError
from deberta_xf.fileio import atomic_path, atomic_write_text

HEAD_OUTPUTS = ("logits", "start_logits", "end_logits")
TABLE_COLUMNS = ("pair", "tensor", "shape", "max abs", "mean abs", "max rel", "atol", "result")


def _num(x: float | None) -> str:
    return "inf" if x is None else f"{x:.3e}"


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _tolerance_line(report: dict[str, Any]) -> str:
    tol = report["tolerances"]
    grads = (f", gradients {tol['grad']:.1e} (masked-LM {tol['grad_mlm']:.1e})" if "grad" in tol else "")
    if "weights" in tol:
        grads += f", training loss {tol['train_loss']:.1e}, final weights {tol['weights']:.1e}"
    return (f"tolerances ({tol['dtype']}): hidden {tol['hidden']:.1e}, logits {tol['logits']:.1e}, "
            f"masked-LM logits {tol['mlm_logits']:.1e}{grads}  [{tol['source']}]")


def _framework_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, fw in report["frameworks"].items():
        versions = " ".join(f"{k} {v}" for k, v in fw["versions"].items()) or "-"
        detail = fw["weights_file"] or "-"
        if fw["status"] not in ("ran", "recorded"):
            detail = fw["note"] or "-"
        elif fw["status"] == "recorded":
            detail += "  (recorded)"
        attention = f"attention {fw.get('attn_implementation') or 'eager'}" if fw["status"] == "ran" else "-"
        rows.append((fw["label"], fw["status"], fw["device_name"] or "-", attention, versions, detail))
    return rows


def _aligned(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> list[str]:
    rows = ([header] if header else []) + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


# === stdout ===

def format_text(report: dict[str, Any], verbose: bool = True) -> str:
    """The human report: environment, tokenizer checks, one row per compared tensor, the verdict."""
    lines = [f"deberta-xf parity: {report['checkpoint']}",
             f"task: {report['task']} (from {report['task_source']})   dtype: {report['dtype']}   "
             f"device: {report['device_request']}",
             _tolerance_line(report),
             f"inputs: {report['inputs']['note']}; shape {_shape(report['inputs']['shape'])}",
             "", "frameworks:"]
    lines += ["  " + line for line in _aligned(_framework_rows(report))]
    tok = report["tokenizer"]
    if tok["checks"]:
        lines += ["", f"tokenizer: {tok['note']}"]
        lines += ["  " + line for line in _aligned(
            [(c["name"], "PASS" if c["passed"] else "FAIL", c["detail"]) for c in tok["checks"]])]
    rows = []
    for pair in report["comparisons"]:
        for t in pair["tensors"]:
            if verbose or not t["passed"]:
                rows.append((pair["pair"], t["name"], _shape(t["shape"]), _num(t["max_abs"]), _num(t["mean_abs"]),
                             _num(t["max_rel"]), f"{t['atol']:.1e}", "PASS" if t["passed"] else "FAIL"))
    if rows:
        lines += [""] + _aligned(rows, TABLE_COLUMNS)
    if report["comparisons"]:
        lines += ["", "pairs:"]
        for pair in report["comparisons"]:
            lines += _pair_lines(pair)
    for t in (t for p in report["comparisons"] for t in p["tensors"] if t["note"]):
        lines.append(f"  note: {t['name']}: {t['note']}")
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    if report["notes"]:
        lines += [""] + [f"note: {n}" for n in report["notes"]]
    lines += ["", format_verdict(report)]
    if failed:
        lines += _failed_check_lines(failed)
    return "\n".join(lines) + "\n"


def format_verdict(report: dict[str, Any]) -> str:
    """One line: PASSED / FAILED, how many checks, the checkpoint and dtype, and the worst difference."""
    checks = report["checks"]
    failed = sum(c["status"] == "failed" for c in checks)
    skipped = sum(c["status"] == "skipped" for c in checks)
    context = [report["checkpoint"], report["dtype"]]
    pairs = report["comparisons"]
    if pairs:
        worst = max(pairs, key=lambda p: float("inf") if p["max_abs"] is None else p["max_abs"])
        context.append(f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''}, worst max abs {_num(worst['max_abs'])}"
                       + (f" ({worst['pair']})" if len(pairs) > 1 else ""))
    if failed:
        head = f"FAILED: {failed} of {len(checks)} checks"
    else:
        head = f"PASSED: {len(checks) - skipped} checks" + (f" ({skipped} skipped)" if skipped else "")
    return f"{head}  [{'; '.join(context)}]"


def _failed_check_lines(failed: list[dict[str, Any]], limit: int = 20) -> list[str]:
    lines = [f"  {c['suite']} :: {c['name']}: {c['message']}" for c in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more")
    return lines


def format_quiet(report: dict[str, Any]) -> str:
    """``--quiet``: the verdict line; after a failure also the failing tensors, the failing pairs (first
    diverging layer, differing weights) and the other failed checks (tokenizer, loading)."""
    lines = [format_verdict(report)]
    if report["passed"]:
        return lines[0] + "\n"
    rows = [(pair["pair"], t["name"], _shape(t["shape"]), _num(t["max_abs"]), _num(t["mean_abs"]),
             _num(t["max_rel"]), f"{t['atol']:.1e}", "FAIL")
            for pair in report["comparisons"] for t in pair["tensors"] if not t["passed"]]
    if rows:
        lines += ["  " + line for line in _aligned(rows, TABLE_COLUMNS)]
    for pair in report["comparisons"]:
        if pair["passed"]:
            continue
        lines += _pair_lines(pair)
        lines += [f"        note: {t['name']}: {t['note']}" for t in pair["tensors"] if t["note"] and not t["passed"]]
    compared = {pair["pair"] for pair in report["comparisons"]}
    lines += _failed_check_lines([c for c in report["checks"]
                                  if c["status"] == "failed" and c["suite"] not in compared])
    return "\n".join(lines) + "\n"


def _pair_lines(pair: dict[str, Any]) -> list[str]:
    """A pair's verdict line (worst tensor, first diverging layer) and the weights that differ between its files."""
    line = f"  {'PASS' if pair['passed'] else 'FAIL'}  {pair['pair']}: worst max abs {_num(pair['max_abs'])}"
    if pair["worst"]:
        line += f" ({pair['worst']['name']})"
    if pair["first_diverging_layer"]:
        line += f"; first diverging layer: {pair['first_diverging_layer']}"
    return [line] + ["        " + s for s in _loss_curve_lines(pair) + _weights_diff_lines(pair.get("weights_diff"))]


def _loss_curve_lines(pair: dict[str, Any]) -> list[str]:
    """--train-steps: the loss before each step in both frameworks of a pair, and where the curves part."""
    curves = pair.get("train_loss")
    if not curves:
        return []
    parted = curves["parted_at"]
    return [f"loss per step, {name}: " + " ".join(_num(x) for x in curves[side])
            for side, name in (("reference", pair["reference"]), ("candidate", pair["candidate"]))] + \
        [f"the loss curves part at step {parted}" if parted is not None else "the loss curves agree at every step"]


def loss_curves(report: dict[str, Any]) -> dict[str, list[float | None]]:
    """--train-steps: the loss before each step of every framework (by label), read from the pairs."""
    curves: dict[str, list[float | None]] = {}
    for pair in report["comparisons"]:
        if pair.get("train_loss"):
            for side in ("reference", "candidate"):
                curves.setdefault(pair[side], pair["train_loss"][side])
    return curves


def _weights_diff_lines(diff: dict[str, Any] | None) -> list[str]:
    if not diff:
        return []
    a, b = diff["files"]
    if diff["error"]:
        return [f"weights {a} vs {b}: {diff['error']}"]
    if not diff["num_differing"]:
        return [f"weights: {a} and {b} hold the same values"]
    out = [f"weights: {diff['num_differing']} tensor(s) differ between {a} and {b}:"]
    for d in diff["differing"]:
        out.append(f"  {d['name']}: " + (d.get("note") or f"max abs {d['max_abs']:.3e} "
                                                           f"({d['changed']} of {d['size']} values)"))
    return out


# === JSON ===

def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


# === Markdown ===

def format_markdown(report: dict[str, Any]) -> str:
    """A compact summary for a CI job page: verdict, environment, per-pair worst, failures, full table folded."""
    ok = report["passed"]
    md = [f"## {'✅' if ok else '❌'} deberta-xf parity: `{report['checkpoint']}`", "",
          f"**{report['task']}** · dtype **{report['dtype']}** · device `{report['device_request']}` · "
          f"{_tolerance_line(report)}", "",
          f"Inputs: {report['inputs']['note']}; shape `{_shape(report['inputs']['shape'])}`", "",
          "| framework | status | device | attention | versions | weights file / note |", "|---|---|---|---|---|---|"]
    for row in _framework_rows(report):
        md.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    tok = report["tokenizer"]
    if tok["checks"]:
        md += ["", f"**Tokenizer** ({tok['note']})", "", "| check | result | detail |", "|---|---|---|"]
        md += [f"| {c['name']} | {'✅' if c['passed'] else '❌'} | {_md_cell(c['detail'])} |" for c in tok["checks"]]
    if report["comparisons"]:
        md += ["", "| pair | result | tensors | worst max abs | worst tensor | first diverging layer |",
               "|---|---|---|---|---|---|"]
        for p in report["comparisons"]:
            worst = p["worst"]["name"] if p["worst"] else "-"
            md.append(f"| {p['pair']} | {'✅' if p['passed'] else '❌'} | {len(p['tensors'])} | "
                      f"{_num(p['max_abs'])} | `{worst}` | {p['first_diverging_layer'] or '-'} |")
            for line in _weights_diff_lines(p.get("weights_diff")):
                md.append(f"| | | | | | {_md_cell(line.strip())} |")
    summaries = [(p, kind, p.get(key)) for p in report["comparisons"]
                 for kind, key in (("gradients", "gradients"), ("final weights", "final_weights")) if p.get(key)]
    if summaries:
        md += ["", "| pair | compared | tensors | failed | worst max abs | worst parameter | max rel |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {p['pair']} | {kind} | {g['compared']} | {g['failed']} | {_num(g['max_abs'])} | `{g['worst']}` | "
               f"{_num(g['max_rel'])} |" for p, kind, g in summaries]
    curves = loss_curves(report)
    if curves:
        md += ["", "| step | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
        steps = max(len(c) for c in curves.values())
        md += [f"| {i} | " + " | ".join(_num(c[i]) if i < len(c) else "-" for c in curves.values()) + " |"
               for i in range(steps)]
        md += [f"- {p['pair']}: " + (f"the loss curves part at step {p['train_loss']['parted_at']}"
                                     if p["train_loss"]["parted_at"] is not None else "the loss curves agree")
               for p in report["comparisons"] if p.get("train_loss")]
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    if failed:
        md += ["", f"**{len(failed)} failed check(s)**", ""]
        md += [f"- `{c['suite']}` · `{c['name']}`: {c['message']}" for c in failed[:30]]
        if len(failed) > 30:
            md.append(f"- … and {len(failed) - 30} more")
    if report["notes"]:
        md += [""] + [f"> {n}" for n in report["notes"]]
    rows = [f"| {p['pair']} | `{t['name']}` | {_shape(t['shape'])} | {_num(t['max_abs'])} | {_num(t['mean_abs'])} | "
            f"{_num(t['max_rel'])} | {t['atol']:.1e} | {'PASS' if t['passed'] else '**FAIL**'} |"
            for p in report["comparisons"] for t in p["tensors"]]
    if rows:
        md += ["", "<details><summary>Every compared tensor</summary>", "",
               "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)] + rows + ["", "</details>"]
    return "\n".join(md) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# === JUnit XML ===

def format_junit(report: dict[str, Any]) -> str:
    """One ``testsuite`` per group (tokenizer, load, each framework pair) and one ``testcase`` per check."""
    checks = report["checks"]
    root = ET.Element("testsuites", name="deberta-xf parity", tests=str(len(checks)),
                      failures=str(sum(c["status"] == "failed" for c in checks)),
                      skipped=str(sum(c["status"] == "skipped" for c in checks)), errors="0")
    suites: dict[str, ET.Element] = {}
    for c in checks:
        suite = suites.get(c["suite"])
        if suite is None:
            suite = ET.SubElement(root, "testsuite", name=f"parity {c['suite']}", tests="0", failures="0",
                                  skipped="0", errors="0", timestamp=report["created"])
            props = ET.SubElement(suite, "properties")
            for key, value in (("checkpoint", report["checkpoint"]), ("task", report["task"]),
                               ("dtype", report["dtype"]), ("tolerances", _tolerance_line(report))):
                ET.SubElement(props, "property", name=key, value=str(value))
            suites[c["suite"]] = suite
        case = ET.SubElement(suite, "testcase", classname=f"parity.{c['suite']}", name=c["name"])
        suite.set("tests", str(int(suite.get("tests")) + 1))
        if c["status"] == "failed":
            failure = ET.SubElement(case, "failure", message=c["message"], type="ParityMismatch")
            failure.text = f"{c['suite']} :: {c['name']}: {c['message']}"
            suite.set("failures", str(int(suite.get("failures")) + 1))
        elif c["status"] == "skipped":
            ET.SubElement(case, "skipped", message=c["message"])
            suite.set("skipped", str(int(suite.get("skipped")) + 1))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# === Plot ===

def check_plot_support() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise DebertaXfError("--plot needs matplotlib, which is not installed: pip install 'deberta-xf[plot]'")


def write_plot(report: dict[str, Any], path: str) -> None:
    """Max abs difference per layer (log scale), one line per framework pair, with the hidden-state tolerance."""
    check_plot_support()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-12  # identical values (0) sit on the floor of the log axis; a missing number (inf) on top
    grads = any(t["name"].startswith(GRAD_PREFIX) for p in report["comparisons"] for t in p["tensors"])
    curves = loss_curves(report)
    panels = 1 + grads + bool(curves)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 4.5 if panels == 1 else 4 * panels), dpi=110, squeeze=False)
    ax, extra = axes[0][0], [row[0] for row in axes[1:]]
    if grads:
        _gradient_panel(extra.pop(0), report, floor)
    if curves:
        _loss_panel(extra.pop(0), report, curves)
    layers = max((int(t["name"].split(".")[1]) + 1 for p in report["comparisons"] for t in p["tensors"]
                  if t["name"].startswith("hidden_states.")), default=0)
    has_head = False
    for pair in report["comparisons"]:
        points = sorted((int(t["name"].split(".")[1]), t["max_abs"]) for t in pair["tensors"]
                        if t["name"].startswith("hidden_states."))
        head = [t["max_abs"] for t in pair["tensors"] if t["name"] in HEAD_OUTPUTS]
        if head:  # the task head's outputs, one point after the last layer
            has_head = True
            points.append((layers, None if None in head else max(head)))
        if not points:
            continue
        xs = [i for i, _ in points]
        ys = [max(v, floor) if v is not None else 1e3 for _, v in points]
        style = "-o" if pair["passed"] else "-x"
        ax.plot(xs, ys, style, label=pair["pair"] + ("" if pair["passed"] else "  (FAIL)"))
    tol = report["tolerances"]
    ax.axhline(tol["hidden"], color="red", linestyle="--", linewidth=1, label=f"hidden atol {tol['hidden']:.1e}")
    ax.set_yscale("log")
    if has_head:
        head_atol = tol["mlm_logits"] if report["task"] == "masked-lm" else tol["logits"]
        ax.axhline(head_atol, color="purple", linestyle=":", linewidth=1, label=f"head atol {head_atol:.1e}")
    ticks = ["emb"] + [str(i) for i in range(1, layers)] + (["head"] if has_head else [])
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks)
    ax.set_xlabel("hidden state (emb = embedding output, i = after layer i); head = task logits")
    ax.set_ylabel(f"max |difference|  (0 drawn at {floor:.0e})")
    name = "/".join(os.path.normpath(report["checkpoint"]).split(os.sep)[-2:])
    ax.set_title(f"{name}  ·  {report['task']}  ·  "
                 f"{report['dtype']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if report["comparisons"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _gradient_panel(ax, report: dict[str, Any], floor: float) -> None:
    """``--backward``: the worst gradient max abs per layer (all parameters of a layer), one line per pair."""
    positions: dict[int, str] = {}
    for pair in report["comparisons"]:
        per_layer: dict[int, float | None] = {}
        for t in pair["tensors"]:
            if not t["name"].startswith(GRAD_PREFIX):
                continue
            position, label = gradient_layer(t["name"])
            positions[position] = label
            old = per_layer.get(position, 0.0)
            per_layer[position] = None if t["max_abs"] is None or old is None else max(old, t["max_abs"])
        if not per_layer:
            continue
        order = sorted(per_layer)
        ys = [max(per_layer[p], floor) if per_layer[p] is not None else 1e3 for p in order]
        ax.plot(range(len(order)), ys, "-o" if pair["passed"] else "-x",
                label=pair["pair"] + ("" if pair["passed"] else "  (FAIL)"))
    tol = report["tolerances"]
    atol = tol["grad_mlm"] if report["task"] == "masked-lm" else tol["grad"]
    ax.axhline(atol, color="red", linestyle="--", linewidth=1, label=f"gradient atol {atol:.1e}")
    ax.set_yscale("log")
    labels = [positions[p].replace("layer ", "L").replace("relative-position embeddings", "rel")
              .replace("convolution (after layer 0)", "conv").replace("embeddings", "emb") for p in sorted(positions)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_xlabel("parameters of (emb = embeddings, rel = relative positions, Li = layer i, head = task head)")
    ax.set_ylabel("gradient max |difference|")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _loss_panel(ax, report: dict[str, Any], curves: dict[str, list[float | None]]) -> None:
    """``--train-steps``: the loss before each step, one line per framework; a dotted line where a pair's curves
    part."""
    for label, curve in curves.items():
        ax.plot(range(len(curve)), [float("nan") if x is None else x for x in curve], "-o", markersize=3,
                label=label)
    for pair in report["comparisons"]:
        parted = (pair.get("train_loss") or {}).get("parted_at")
        if parted is not None:
            ax.axvline(parted, color="red", linestyle=":", linewidth=1, label=f"{pair['pair']} part at step {parted}")
    training = report["inputs"].get("training") or {}
    ax.locator_params(axis="x", integer=True)
    ax.set_xlabel("optimizer step (the loss before the step)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{training.get('optimizer', '')} lr {training.get('lr', '')}"
                 + (f", batches of {training['batch_size']}" if training.get("batch_size") else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


# === Files ===

def write_text(path: str, text: str) -> None:
    atomic_write_text(path, text)
