"""index.html of the review package: static, works from file:// offline, no scripts, every user string escaped."""

from __future__ import annotations

import html
from urllib.parse import quote

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f6f8;color:#1d1d22}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin-top:32px}
.note{background:#fff7d6;border:1px solid #e8d68a;padding:12px 16px;border-radius:8px;font-size:1.05em}
.muted{color:#666}.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px 16px;margin:10px 0}
.picks{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.kind{display:inline-block;padding:1px 8px;border-radius:10px;background:#e6f2ea;color:#1b6b3a;font-size:.85em}
img{max-width:100%;height:auto;border-radius:4px}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #e2e2e2;text-align:left;vertical-align:top}
code{background:#eee;padding:1px 4px;border-radius:3px}
.warn{border-left:4px solid #d9a400}.warn p{margin:4px 0}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def href(path: str) -> str:
    """A relative link that stays a link (no scheme can sneak in) and survives odd characters."""
    return esc(quote(path, safe="/"))


def render_page(summary: dict) -> str:
    job = summary["job"]
    analysis = summary["analysis"]
    picks = summary["shortlist"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(job)} review</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(job)}</h1>",
        f"<p class='muted'>trigger: <code>{esc(summary.get('trigger') or '(none)')}</code> · "
        f"{esc(summary.get('epochs_trained') or len(analysis.get('epochs') or []))} epochs trained · "
        f"{esc(summary.get('stopped_reason', ''))}</p>",
        "<p class='note'><strong>Low loss only shortlists; the previews decide.</strong> "
        "Compare the rows below by eye, pick the epoch you like, and load its file in ComfyUI "
        "(copy it into <code>models/loras</code> and use a <em>LoraLoaderModelOnly</em> node).</p>",
    ]
    if summary.get("contact_sheet"):
        parts += ["<h2>Previews</h2>",
                  "<p class='muted'>Rows are epochs (the first is the model without the LoRA), columns are "
                  "prompts; same seeds and settings everywhere.</p>",
                  f"<a href='{href(summary['contact_sheet'])}'><img id='contact-sheet' "
                  f"src='{href(summary['contact_sheet'])}' alt='contact sheet'></a>"]
        prompts = summary.get("prompts") or []
        seeds = summary.get("seeds") or []
        if prompts:
            rows = "".join(f"<tr><td>{i + 1}</td><td>{esc(p)}</td><td>{esc(seeds[i] if i < len(seeds) else '')}</td>"
                           "</tr>" for i, p in enumerate(prompts))
            parts.append(f"<table class='card'><tr><th>#</th><th>prompt</th><th>seed</th></tr>{rows}</table>")
    parts.append("<h2>Shortlist</h2><div class='picks'>")
    for pick in picks:
        file_html = (f"<a class='lora' href='{href(pick['file'])}'>{esc(pick['file'])}</a>" if pick.get("file")
                     else "<span class='muted'>(epoch file not kept)</span>")
        parts.append(f"<div class='card pick' id='pick-{esc(pick['epoch'])}'><h3>epoch {esc(pick['epoch'])} "
                     f"<span class='kind'>{esc(pick['kind'])}</span></h3>"
                     f"<p>loss {esc(format(pick['loss'], '.5g'))}</p><p>{esc(pick['reason'])}</p>"
                     f"<p>{file_html}</p></div>")
    parts.append("</div>")
    parts += ["<h2>Loss curve</h2>", f"<p>{esc(analysis.get('message', ''))}</p>"]
    if summary.get("loss_plot"):
        parts.append(f"<img id='loss-plot' src='{href(summary['loss_plot'])}' alt='loss curve'>")
    floor = analysis.get("floor_epoch")
    parts.append(f"<p class='muted'>curve: {esc(summary.get('curve_source'))} · floor epoch: "
                 f"{esc(floor if floor is not None else 'none yet')} · lowest epoch: "
                 f"{esc(analysis.get('lowest_epoch'))} · noise σ {esc(format(analysis.get('noise') or 0, '.3g'))}</p>")
    warnings = summary.get("warnings") or []
    parts.append(f"<h2>Dataset warnings ({len(warnings)})</h2>")
    if not warnings:
        parts.append("<p class='muted'>None.</p>")
    for w in warnings:
        where = f" · {esc(w.get('where'))}" if w.get("where") else ""
        fix = f"<p class='muted'>→ {esc(w.get('fix'))}</p>" if w.get("fix") else ""
        parts.append(f"<div class='card warn'><p><code>{esc(w.get('file'))}</code>{where}</p>"
                     f"<p>{esc(w.get('message'))}</p>{fix}</div>")
    settings = summary.get("settings") or {}
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in settings.items())
    parts += ["<h2>Preview settings</h2>", f"<table class='card'>{rows}</table>",
              "<p class='muted'>Details: <a href='summary.json'>summary.json</a></p>",
              "</main></body></html>"]
    return "\n".join(parts)
