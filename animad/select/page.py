"""index.html of the review package.

Static: it works from file:// with no network (inline CSS, no fonts, no scripts at all, relative
links only). Every user-supplied string (job name, trigger, prompts, row labels, warnings, file
names) goes through esc(); a Content-Security-Policy forbids scripts as a second line of defence.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

from animad.anima.comfyui import escape_prompt
from animad.fsutil import human_bytes
from animad.safe_text import safe
from animad.select.floor_words import FloorNumbers, verdict
from animad.select.prompts import KIND_LABELS
from animad.train.floor import KNEE_NOISE  # a total drop under this many noise sigmas is no descent at all

# No script-src, so nothing runs even if some text slipped through unescaped; images only from the
# package's own folder (file:), nothing from the network.
CSP = "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
:root{--ink:#1d1d22;--muted:#62626e;--line:#dedee4;--card:#fff;--bg:#f5f5f7;--accent:#1b5fc1}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:var(--bg);color:var(--ink);
  line-height:1.45}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{margin:0 0 4px;font-size:1.9em;overflow-wrap:anywhere}
h2{margin:36px 0 10px;font-size:1.35em;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{margin:0 0 6px;font-size:1.1em}
a{color:var(--accent)}
.muted{color:var(--muted)}
.meta{color:var(--muted);margin:0 0 16px}.meta span+span::before{content:" \\00b7  "}
.note{background:#fff6d1;border:2px solid #e2c44f;padding:14px 18px;border-radius:10px;margin:16px 0}
.note strong.big{font-size:1.25em;display:block;margin-bottom:6px}
.note ol{margin:6px 0 0;padding-left:22px}
.status{padding:12px 16px;border-radius:10px;border:1px solid var(--line);background:var(--card)}
.status.floor{border-left:6px solid #2a9d5c}.status.no_floor_yet,.status.too_short,.status.empty{border-left:6px solid #d9a400}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:.82em;font-weight:600;vertical-align:middle}
.badge.lowest{background:#dff2e6;color:#17673a}.badge.try{background:#fff4cc;color:#7a5a00}.badge.floor{background:#fde5e5;color:#9b2424}
.badge.dip{background:#e3ecfb;color:#1f4f9c}.badge.candidate{background:#fff1d6;color:#8a5a00}
.badge.tail{background:#ece6fb;color:#4b2f9c}.badge.annealed{background:#dcf3f3;color:#1d6464}
.badge.added{background:#f3e8dc;color:#6b4423}.badge.other{background:#eee;color:#444}
td.kind{white-space:nowrap;color:var(--muted)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.picks{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:14px}
.pick p{margin:6px 0}.pick .file{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
figure{margin:0}figure img{display:block;max-width:100%;height:auto;border-radius:6px;border:1px solid var(--line)}
figcaption{color:var(--muted);font-size:.92em;margin-top:6px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:10px;margin:10px 0}
td,th{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
tr:last-child td{border-bottom:0}th{font-weight:600;background:#fafafc}
td.prompt{overflow-wrap:anywhere;max-width:760px}
code{background:#ececf0;padding:1px 5px;border-radius:4px;font-size:.92em;overflow-wrap:anywhere}
.warn{margin:10px 0;border-left:5px solid #d9a400}.warn.error{border-left-color:#c0392b}.warn p{margin:4px 0}
.warn.note{border-left-color:#8a8a96}
details{margin-top:8px}summary{cursor:pointer;color:var(--accent)}details p{margin:6px 0}
.notice{background:#fdecea;border:2px solid #d9534f;padding:12px 16px;border-radius:10px;margin:16px 0}
.notice.about{background:#eef3fb;border-color:#9db5dd}
footer{margin-top:40px;color:var(--muted);font-size:.9em}
"""

MODEL_ONLY = "LoraLoaderModelOnly"  # ComfyUI's node for a LoRA of the diffusion model alone
LOADER_WIRING = {
    MODEL_ONLY: "node between the model loader and the sampler",
    "LoraLoader": "node (it also applies the half of the LoRA that trained the text encoder), between the model "
                  "and CLIP loaders and the sampler and text encoders",
}
# What each network.type's file is, for the page ("what this file is"); ComfyUI's LoRA loader nodes
# load all three as they are.
NETWORK_WORDS = {"lora": "a LoRA (low-rank pairs, sd-scripts' LoRA format)",
                 "lokr": "a LoKr (a Kronecker product per layer, sd-scripts' networks.lokr / LyCORIS format)",
                 "loha": "a LoHa (a Hadamard product of two low-rank pairs, sd-scripts' networks.loha / LyCORIS "
                         "format)"}
KIND_WORDS = {"lowest": "the lowest loss of the run", "floor": "where the loss stopped improving", "dip": "an earlier dip",
              "candidate": "a possible floor (not confirmed)", "tail": "spread over the slow tail",
              "annealed": "after the learning rate was annealed to 0", "added": "added by hand"}


def esc(value) -> str:
    """Escape any value for HTML text or a quoted attribute.

    Control and bidi characters (an ESC or BEL in a caption, a U+202E in a job name) are shown as
    visible escapes (\\x1b, \\u202e), as status, the logs and summary.json show them: raw, they could
    reorder the page's text or hide in what a user copies from it. Newlines stay (HTML folds them).
    """
    return html.escape(safe("" if value is None else str(value), keep_newlines=True), quote=True)


def href(path: str) -> str:
    """A relative URL for a file in the package: percent-encoded, so no scheme or odd character sneaks in."""
    return esc(quote(str(path), safe="/"))


def image_tag(path: str, alt: str, size, element_id: str) -> str:
    dimensions = f" width='{int(size[0])}' height='{int(size[1])}'" if size else ""
    return f"<img id='{element_id}' src='{href(path)}' alt='{esc(alt)}'{dimensions}>"


def header_html(summary: dict) -> list[str]:
    analysis = summary.get("analysis") or {}
    meta = [f"trigger word: <code>{esc(summary['trigger'])}</code>" if summary.get("trigger") else "no trigger word",
            f"{esc(summary.get('epochs_trained'))} epochs trained",
            esc(summary.get("stopped_reason") or ""), f"written {esc(summary.get('created'))}"]
    trigger = (f" Put <code>{esc(summary['trigger'])}</code> in your prompt." if summary.get("trigger") else "")
    loaders = sorted({pick.get("loader") or MODEL_ONLY for pick in summary.get("shortlist") or []}) or [MODEL_ONLY]
    wired = [f"<strong>{esc(node)}</strong> {LOADER_WIRING.get(node, '')}".strip() for node in loaders]
    # When some epochs trained the text encoder and some did not, each card names its node.
    loader = f"a {wired[0]}" if len(wired) == 1 else "the loader node its card names: " + "; ".join(wired)
    return [
        f"<h1>{esc(summary.get('job'))}</h1>",
        "<p class='meta'>" + "".join(f"<span>{item}</span>" for item in meta if item) + "</p>",
        "<div class='note' id='previews-decide'>"
        "<strong class='big'>Low loss only shortlists; the previews decide.</strong>"
        "The loss curve only tells which epochs are worth a look. Which one is best is a matter of how the "
        "images look, so:<ol>"
        "<li>Compare the rows of the contact sheet by eye against the first row (the model without the LoRA): "
        "likeness, style, and whether prompts unlike the training captions still work.</li>"
        "<li>Pick the epoch you like best: not necessarily the one with the lowest loss.</li>"
        "<li>Copy its <code>.safetensors</code> file (listed under Shortlist) into ComfyUI's "
        f"<code>models/loras</code> folder and load it with {loader}.{network_note(summary)}{trigger}</li>"
        f"{workflow_item(summary)}</ol></div>",
        *try_first_html(summary),
        *about_html(summary),
        *barely_changed_html(summary),
        f"<div class='status {esc(analysis.get('status'))}' id='floor-message'><strong>Loss floor:</strong> "
        f"{esc(floor_sentence(analysis))}{floor_numbers_html(analysis)}</div>",
    ]


def try_first_html(summary: dict) -> list[str]:
    """The epoch to render first, why (its numbers), the order of the rest and the rule, in the page's words."""
    first = summary.get("try_first") or (summary.get("analysis") or {}).get("try_first")
    if not isinstance(first, dict) or "epoch" not in first:
        return []
    rest = [e for e in first.get("order") or [] if e != first["epoch"]]
    kinds = {p.get("epoch"): p.get("kind") for p in summary.get("shortlist") or [] if isinstance(p, dict)}
    links = [f"<a href='#pick-{esc(e)}'>epoch {esc(e)}</a>" + (f" ({esc(kinds[e])})" if kinds.get(e) else "")
             for e in rest]
    then = f"<p>Then: {', '.join(links)}.</p>" if links else ""
    return [f"<div class='note' id='try-first'><strong class='big'>Try epoch {esc(first['epoch'])} first.</strong>"
            f"<p id='try-first-reason'>Epoch {esc(first['epoch'])} is {esc(first.get('reason', ''))}</p>{then}"
            f"<p class='muted'>The rule: {esc(first.get('rule', ''))}</p></div>"]


def clean_losses(analysis: dict) -> list[tuple[int, float]]:
    """(epoch, loss) of the curve the floor was read from, without the epochs it left out."""
    ignored = set(analysis.get("ignored_epochs") or [])
    return [(e, float(v)) for e, v in zip(analysis.get("epochs") or [], analysis.get("losses") or [])
            if e not in ignored and isinstance(v, (int, float)) and math.isfinite(v)]


def floor_sentence(analysis: dict) -> str:
    """The floor's verdict in one plain sentence (the numbers behind it are in floor_numbers_html)."""
    numbers = FloorNumbers.from_dict(analysis.get("numbers"))
    if numbers is not None:  # written from the numbers the decision used (select/floor_words.py)
        return verdict(numbers)
    # An older summary.json, without the numbers: its status and epochs only.
    status, lowest = analysis.get("status"), analysis.get("lowest_epoch")
    floor, candidate = analysis.get("floor_epoch"), analysis.get("candidate_epoch")
    epochs = [e for e, _ in clean_losses(analysis)] or list(analysis.get("epochs") or []) or [0]
    if status == "floor":
        return (f"The loss stopped improving around epoch {floor}: the epochs after it are no better beyond chance. "
                f"The lowest loss was at epoch {lowest}.")
    if status == "no_floor_yet" and candidate is not None:
        return (f"The loss may have levelled off around epoch {candidate}, but training ended before that could be "
                f"confirmed. The lowest loss was at epoch {lowest}.")
    if status == "no_floor_yet":
        return (f"The loss was still going down when training ended (lowest at epoch {lowest} of {max(epochs)}): "
                "more epochs may still help.")
    if status == "too_short":
        return f"Only {len(clean_losses(analysis))} epoch(s): too few to tell where the loss stops improving."
    return "No loss was recorded, so there is nothing to judge yet."


def floor_numbers_html(analysis: dict) -> str:
    """The detector's own account, with its numbers, folded away: there for whoever wants to check it."""
    if not analysis.get("message"):
        return ""
    noise = analysis.get("noise")
    wobble = (f"<p>From one epoch to the next the loss wobbles by about {noise:.3g} on its own (its noise): "
              "differences of that size say nothing about which epoch is better.</p>"
              if isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0 else "")
    return (f"<details id='floor-numbers'><summary>The numbers behind this</summary>{wobble}"
            f"<p class='muted'>{esc(analysis['message'])}</p></details>")


def loss_moved(analysis: dict) -> dict | None:
    """How far the loss fell over the run, measured against its noise, or None when it cannot be told.

    Moved means a fall of at least KNEE_NOISE noise sigmas from the first epoch to the lowest (the
    same bar under which the shortlist sees no descent at all).
    """
    curve, noise = clean_losses(analysis), analysis.get("noise")
    if len(curve) < 3 or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise <= 0:
        return None
    first, lowest = curve[0][1], min(v for _, v in curve)
    return {"first": first, "lowest": lowest, "drop": first - lowest, "noise": noise,
            "moved": first - lowest >= KNEE_NOISE * noise}


def barely_changed_html(summary: dict) -> list[str]:
    moved = loss_moved(summary.get("analysis") or {})
    if moved is None or moved["moved"]:
        return []
    training = summary.get("training") or {}
    epochs, steps = training.get("epochs_trained"), training.get("steps")
    per_epoch = (f" (now {steps / epochs:.3g} optimizer steps an epoch)"
                 if isinstance(epochs, int) and epochs > 0 and isinstance(steps, int) else "")
    return [
        "<div class='notice' id='barely-changed'><strong>This LoRA barely changed the model.</strong> "
        f"Its loss went from {moved['first']:.4g} to at best {moved['lowest']:.4g}: a fall smaller than "
        f"{KNEE_NOISE:g} times the loss's own wobble from epoch to epoch ({moved['noise']:.2g}). "
        "If the previews look like the no-LoRA row, it learned little: give it more steps"
        f"{esc(per_epoch)} with a smaller batch, more repeats or more epochs, or raise the learning rate.</div>"]


def about_html(summary: dict) -> list[str]:
    """The job's own description (job.yaml `description`), e.g. what `animad demo` says about its previews."""
    description = (summary.get("training") or {}).get("description")
    return [f"<div class='notice about' id='about'>{esc(description)}</div>"] if description else []


def workflow_item(summary: dict) -> str:
    """The list item that says how to reproduce a preview in ComfyUI (the graph is inside every PNG)."""
    if not summary.get("previews"):
        return ""
    workflow = summary.get("comfyui_workflow")
    link = (f" <a id='comfyui-workflow' href='{href(workflow)}'>{esc(workflow)}</a> is the same workflow as a "
            "file, for ComfyUI's Load button." if workflow else "")
    return ("<li>To see an epoch with your own prompts, drag a preview into ComfyUI to open its workflow: every "
            f"preview PNG carries the graph that made it (model files, LoRA, strength, prompts, seed, sampler).{link}"
            "</li>")


def kind_label(entry: dict) -> str:
    return str(entry.get("label") or KIND_LABELS.get(entry.get("kind"), entry.get("kind") or ""))


def prompts_table(summary: dict) -> list[str]:
    """Every prompt with its kind, seed, and the text to paste into ComfyUI (brackets escaped)."""
    prompts, seeds = summary.get("prompts") or [], summary.get("seeds") or []
    kinds = summary.get("prompt_kinds") or []
    rows = []
    for index, prompt in enumerate(prompts):
        kind = kinds[index] if index < len(kinds) and isinstance(kinds[index], dict) else {}
        typed = escape_prompt(prompt)  # exactly the text the PNG's graph holds
        comfy = (f"<td class='prompt'><code>{esc(typed)}</code></td>" if typed != prompt
                 else "<td class='muted'>as it is</td>")
        rows.append(f"<tr><td>{index + 1}</td><td class='kind'>{esc(kind_label(kind))}</td>"
                    f"<td>{esc(seeds[index] if index < len(seeds) else '')}</td>"
                    f"<td class='prompt'>{esc(prompt)}</td>{comfy}</tr>")
    return [
        "<p id='prompt-kinds' class='muted'>The prompts test what the guides test: <strong>dataset captions</strong> "
        "(does the LoRA reproduce its training images?), a <strong>caption without the trigger</strong> (how much "
        "does the trigger carry?) and <strong>novel scenes</strong> that keep the subject and change its setting, "
        "clothing or action (does it generalise, or only copy?).</p>",
        "<p id='escaping' class='muted'>In ComfyUI, brackets are prompt weights: <code>(tag)</code> means "
        "<code>tag</code> at 1.1x and the brackets are dropped. A caption <code>hatsune miku (vocaloid)</code> "
        "must be typed as <code>hatsune miku \\(vocaloid\\)</code> to be the same prompt. The ComfyUI column "
        "below is ready to paste.</p>",
        "<table id='prompts'><tr><th>#</th><th>kind</th><th>seed</th><th>prompt</th><th>in ComfyUI</th></tr>"
        f"{''.join(rows)}</table>",
    ]


def previews_html(summary: dict) -> list[str]:
    parts = ["<h2 id='previews'>Previews</h2>"]
    if not summary.get("contact_sheet"):
        parts.append("<p class='muted'>No previews were rendered for this package.</p>")
        return parts
    sheet = summary["contact_sheet"]
    image = image_tag(sheet, "contact sheet: rows are epochs, columns are prompts", summary.get("contact_sheet_size"),
                      "contact-sheet")
    parts.append(f"<figure><a href='{href(sheet)}'>{image}</a>"
                 "<figcaption>Rows are epochs, the first row is the model without the LoRA; columns are "
                 "prompts. Every image uses the same seed per column and the same settings. Click the sheet for "
                 "full size, or open single images below.</figcaption></figure>")
    prompts = summary.get("prompts") or []
    if prompts:
        parts += prompts_table(summary)
    table: dict[str, dict[int, str]] = {}
    for preview in summary.get("previews") or []:
        table.setdefault(preview["row"], {})[preview["prompt"]] = preview["file"]
    labels = summary.get("row_labels") or {}
    head = "".join(f"<th>prompt {i + 1}</th>" for i in range(len(prompts)))
    body = []
    for row in summary.get("rows") or list(table):
        links = "".join(f"<td><a href='{href(table[row][i + 1])}'>image</a></td>" if i + 1 in table.get(row, {})
                        else "<td class='muted'>missing</td>" for i in range(len(prompts)))
        body.append(f"<tr><td>{esc(labels.get(row, row))}</td>{links}</tr>")
    parts.append(f"<details><summary>Full-size images</summary><table id='preview-files'><tr><th>row</th>{head}</tr>"
                 f"{''.join(body)}</table></details>")
    return parts


def network_note(summary: dict) -> str:
    """One sentence on what the files are, for a LoKr or LoHa (the LoRA default needs no word)."""
    kind = (summary.get("training") or {}).get("network") or "lora"
    if kind == "lora" or kind not in NETWORK_WORDS:
        return ""
    return f" Each file is {esc(NETWORK_WORDS[kind])}; ComfyUI's LoRA loader nodes load it as it is."


def loader_html(pick: dict) -> str:
    if not pick.get("file"):
        return ""
    loader = pick.get("loader") or MODEL_ONLY
    why = " (it also trained the text encoder)" if loader == "LoraLoader" else ""
    return f"<p class='loader muted'>ComfyUI: <code>{esc(loader)}</code>{esc(why)}</p>"


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 3 -> "3rd", 4 -> "4th" (the try-first order on each card)."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def shortlist_html(summary: dict) -> list[str]:
    picks = summary.get("shortlist") or []
    parts = ["<h2 id='shortlist'>Shortlist</h2>"]
    if not picks:
        parts.append("<p class='muted'>No epochs were shortlisted.</p>")
        return parts
    parts.append("<div class='picks'>")
    first = summary.get("try_first") if isinstance(summary.get("try_first"), dict) else {}
    order = [e for e in first.get("order") or []]
    for pick in picks:
        rank = (f" <span class='badge try'>try {ordinal(order.index(pick.get('epoch')) + 1)}</span>"
                if pick.get("epoch") in order else "")
        kind = str(pick.get("kind") or "")
        badge = kind if kind in KIND_WORDS else "other"
        if pick.get("file"):
            size = f" ({human_bytes(pick['bytes'])})" if pick.get("bytes") else ""
            file_html = f"<a class='lora' href='{href(pick['file'])}'>{esc(pick['file'])}</a>{esc(size)}"
        else:
            file_html = "<span class='muted'>the epoch file was not found in the job folder</span>"
        loss = pick.get("loss")
        loss_text = f"{loss:.5g}" if isinstance(loss, (int, float)) else "?"
        parts.append(
            f"<div class='card pick' id='pick-{esc(pick.get('epoch'))}'>"
            f"<h3>epoch {esc(pick.get('epoch'))} <span class='badge {badge}'>{esc(kind)}</span>{rank}</h3>"
            f"<p class='muted'>loss {esc(loss_text)}</p><p class='reason'>{esc(pick.get('reason'))}</p>"
            f"<p class='file'>{file_html}</p>{loader_html(pick)}</div>")
    parts.append("</div>")
    return parts


def curve_html(summary: dict) -> list[str]:
    analysis = summary.get("analysis") or {}
    source = ("the stable eval loss (fixed images, noise levels and seeds each epoch)"
              if summary.get("curve_source") == "eval" else "the epoch-average training loss")
    # The floor's verdict is said once, at the top; here only what the plot shows and how it was read.
    facts = [f"curve: {source}"]
    if analysis.get("ignored_epochs"):
        facts.append("left out (spikes, NaN): epochs " + ", ".join(str(e) for e in analysis["ignored_epochs"]))
    parts = ["<h2 id='loss'>Loss curve</h2>"]
    schedule = summary.get("schedule") or {}
    if schedule.get("text"):
        parts.append(f"<p id='schedule'><strong>Schedule followed:</strong> {esc(schedule['text'])}</p>")
    if summary.get("loss_plot"):
        image = image_tag(summary["loss_plot"], "loss curve with the floor and the picks marked",
                          summary.get("loss_plot_size"), "loss-plot")
        parts.append(f"<figure>{image}</figure>")
    parts.append("<p class='muted'>" + " \u00b7 ".join(esc(f) for f in facts if f) + "</p>")
    return parts


def training_html(summary: dict) -> list[str]:
    """What the run trained with and how long it took (summary["training"], from the job folder)."""
    facts = summary.get("training") or {}
    parts = ["<h2 id='training'>Training settings</h2>"]
    if not facts:
        return parts + ["<p class='muted'>The job folder's settings could not be read.</p>"]
    rank = f"{facts.get('dim')} / {facts.get('alpha'):g}" if isinstance(facts.get("alpha"), (int, float)) \
        else f"{facts.get('dim')} / {facts.get('alpha')}"
    if facts.get("init_from"):
        rank += f" (continued from {facts['init_from']})"
    batch = str(facts.get("batch_size"))
    if (facts.get("grad_accum") or 1) > 1 and isinstance(facts.get("batch_size"), int):
        batch += f" x {facts['grad_accum']} accumulated = {facts['batch_size'] * facts['grad_accum']} images a step"
    lr = facts.get("lr")
    kind = facts.get("network") or "lora"
    if kind == "lokr":
        rank += f", factor {facts.get('factor')}"
    rows = [("LoRA rank (dim) / alpha", rank)] if kind == "lora" else [
        ("network", NETWORK_WORDS.get(kind, kind)), ("rank (dim) / alpha", rank)]
    rows += [
        ("optimizer", f"{facts.get('optimizer')}, learning rate {lr:g}" if isinstance(lr, (int, float))
         else facts.get("optimizer")),
        ("resolution", facts.get("resolution")), ("batch size", batch),
        ("epochs trained", f"{facts.get('epochs_trained')} (max_epochs {facts.get('max_epochs')})"),
        ("optimizer steps", facts.get("steps")),
        ("time taken", f"{duration_text(facts.get('seconds'))}: every epoch's training and eval, over every "
                       "launch (caching, pauses and previews not counted)")]
    if facts.get("started") and facts.get("ended"):
        rows.append(("first and last epoch saved", f"{facts['started']} and {facts['ended']}"))
    body = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in rows)
    return parts + [f"<table id='training-settings'>{body}</table>"]


def duration_text(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "unknown"
    total = int(round(seconds))
    hours, minutes, rest = total // 3600, total // 60 % 60, total % 60
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def dataset_html(summary: dict) -> list[str]:
    """Intake's dataset report (dataset-report.json in the job folder): its figures and its findings."""
    report = summary.get("dataset_report")
    if not report:
        return []
    parts = ["<h2 id='dataset'>Dataset</h2>"]
    figures = report.get("summary") or {}
    if figures:
        rows = "".join(f"<tr><th>{esc(label)}</th><td>{esc(setting_text(value))}</td></tr>"
                       for label, value in figures.items())
        parts.append(f"<table id='dataset-summary'>{rows}</table>")
    for finding in report.get("findings") or []:
        severity = {"error": "error", "warning": "warning"}.get(finding.get("severity"), "note")
        files = finding.get("files") or []
        listed = (f"<p class='muted'>{esc(', '.join(str(f) for f in files[:8]))}"
                  f"{esc(f' and {len(files) - 8} more') if len(files) > 8 else ''}</p>") if files else ""
        fix = f"<p class='muted'>Fix: {esc(finding.get('fix'))}</p>" if finding.get("fix") else ""
        parts.append(f"<div class='card warn {severity}'><p><strong>{esc(severity)}</strong> "
                     f"<span class='muted'>{esc(finding.get('kind'))}</span></p><p>{esc(finding.get('message'))}</p>"
                     f"{listed}{fix}</div>")
    return parts


def warnings_html(summary: dict) -> list[str]:
    # The dataset report's warnings are also the check's problems: shown once, in the Dataset section.
    reported = {f.get("message") for f in (summary.get("dataset_report") or {}).get("findings") or []}
    warnings = [w for w in summary.get("warnings") or [] if w.get("message") not in reported]
    parts = [f"<h2 id='warnings'>Dataset warnings ({len(warnings)})</h2>"]
    if not warnings:
        parts.append("<p class='muted'>None besides the Dataset section's.</p>" if reported else
                     "<p class='muted'>None: the dataset check found nothing to warn about.</p>")
    for warning in warnings:
        severity = "error" if warning.get("severity") == "error" else "warning"
        where = f" \u00b7 {esc(warning.get('where'))}" if warning.get("where") else ""
        fix = f"<p class='muted'>Fix: {esc(warning.get('fix'))}</p>" if warning.get("fix") else ""
        parts.append(f"<div class='card warn {severity}'><p><code>{esc(warning.get('file'))}</code>{where}</p>"
                     f"<p>{esc(warning.get('message'))}</p>{fix}</div>")
    return parts


def setting_text(value) -> str:
    if isinstance(value, dict):  # model_names: the loaders' widgets and the files they name
        return ", ".join(f"{key} {item}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return "(empty)" if value in ("", None) else str(value)


def settings_html(summary: dict) -> list[str]:
    settings = summary.get("settings") or {}
    rows = "".join(f"<tr><th>{esc(key)}</th><td>{esc(setting_text(value))}</td></tr>" for key, value in settings.items())
    parts = ["<h2 id='settings'>Preview settings</h2>",
             f"<table>{rows}</table>" if rows else "<p class='muted'>none recorded</p>"]
    if summary.get("missing_previews"):
        parts.append(f"<p class='muted'>{len(summary['missing_previews'])} preview image(s) were missing when "
                     "the package was written; summary.json lists them.</p>")
    return parts


def render_page(summary: dict) -> str:
    """Given the package's summary dict, return index.html as a string."""
    previous = summary.get("previous_package")
    folder = summary.get("job_folder")
    where = (f"All epoch files stay in the job's work folder: <code id='epochs-folder'>{esc(Path(folder) / 'epochs')}"
             "</code>." if folder else "All epoch files stay in the job's work folder.")
    footer = [f"<footer><p>Everything on this page is also in <a href='summary.json'>summary.json</a>. {where}</p>"]
    if previous:
        footer.append(f"<p>The package from the previous run is kept next to this folder as "
                      f"<code>{esc(previous)}</code>.</p>")
    footer.append("</footer>")
    parts = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(summary.get('job'))}: LoRA review</title><style>{CSS}</style></head><body><main>",
        *header_html(summary),
        *previews_html(summary),
        *shortlist_html(summary),
        *curve_html(summary),
        *training_html(summary),
        *dataset_html(summary),
        *warnings_html(summary),
        *settings_html(summary),
        *footer,
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
