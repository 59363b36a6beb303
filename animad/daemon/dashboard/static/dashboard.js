// The dashboard page: polls /api/status (what `animad status --json` prints) and the selected job's
// /api/jobs/<id>, and draws them. Every user-provided string goes into the page as text
// (textContent), never as markup; the token comes from the page the server rendered, and is sent
// as the X-Animad-Token header, never in a URL.
"use strict";

const TOKEN = document.querySelector('meta[name="animad-token"]').content;
const POLL_MS = 2000;
const ACTIONS = {  // which buttons a status offers (the server applies the same rules: daemon/actions.py)
  accepting: ["cancel"], queued: ["pause", "resume", "cancel"], running: ["pause", "cancel"],
  selecting: ["pause", "cancel"], paused: ["resume", "cancel"], failed: ["retry"],
  cancelled: ["retry"], done: [],
};
let selected = null;  // the job whose details are shown
let chosenByHand = false;
let lastJob = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, {headers: {"X-Animad-Token": TOKEN}, cache: "no-store"});
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function post(url, body) {
  const response = await fetch(url, {method: "POST", cache: "no-store",
    headers: {"X-Animad-Token": TOKEN, "Content-Type": "application/json"}, body: JSON.stringify(body || {})});
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: `${response.status}`}; }
  say(data.ok ? data.message + (data.note ? ` (note: ${data.note})` : "") : `Not done: ${data.error}`, !data.ok);
  refresh();
}

function say(text, bad) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = bad ? "error" : "";
}

function showDaemon(status) {
  const d = status.daemon, w = status.window;
  const when = w.next_change ? `, ${w.open ? "closes" : "opens"} ${new Date(w.next_change).toLocaleString()}` : "";
  document.getElementById("daemon").textContent =
    `daemon: ${d.running ? `running (pid ${d.pid})` : "not running"}; window ${w.open ? "open" : "closed"}${when}`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function showQueue(jobs) {
  const body = document.querySelector("#queue tbody");
  const rows = [];
  for (const job of jobs) {
    const tr = el("tr");
    tr.id = `job-${job.id}`;
    tr.dataset.status = job.status;
    if (job.id === selected) tr.className = "selected";
    tr.append(el("td", job.id), el("td", job.name, "name"), el("td", job.shown.status, "status"),
              el("td", job.shown.gpu || ""), el("td", job.shown.line, "progress"));
    const buttons = el("td");
    for (const verb of ACTIONS[job.status] || []) {
      if (verb === "pause" && job.held && job.status === "queued") continue;
      if (verb === "resume" && !job.held && job.status === "queued") continue;
      const button = el("button", verb);
      button.type = "button";
      button.dataset.verb = verb;
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        if (verb === "cancel" && !confirm(`Cancel job ${job.id}? Its files are kept; retry continues it.`)) return;
        post(`/api/jobs/${job.id}/${verb}`);
      });
      buttons.append(button);
    }
    tr.append(buttons);
    tr.addEventListener("click", () => { selected = job.id; chosenByHand = true; refresh(); });
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("queue-empty").hidden = jobs.length > 0;
}

function showInbox(inbox) {
  const list = document.getElementById("inbox");
  list.replaceChildren(...inbox.map((entry) => {
    const item = el("li");
    item.append(el("strong", entry.folder.split("/").pop()), document.createTextNode(`: ${entry.shown}`));
    return item;
  }));
  document.getElementById("inbox-empty").hidden = inbox.length > 0;
}

function pickJob(jobs) {
  if (chosenByHand && jobs.some((j) => j.id === selected)) return selected;
  const running = jobs.find((j) => j.status === "running" || j.status === "selecting");
  if (running) return running.id;
  return jobs.length ? jobs[jobs.length - 1].id : null;
}

function drawCurve(curve, review, endEpoch) {
  const box = document.getElementById("curve");
  const W = 640, H = 260, L = 52, R = 12, T = 12, B = 30;
  const parts = [];
  const values = curve.flatMap((p) => [p.loss, p.eval_loss]).filter((v) => typeof v === "number" && isFinite(v));
  if (!curve.length || !values.length) {
    const note = svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"});
    note.textContent = "no epoch finished yet";
    box.replaceChildren(note);
    return;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  // To where the run now ends (it moves when a floor is confirmed), so the curve grows across the chart.
  const first = curve[0].epoch, last = Math.max(curve[curve.length - 1].epoch, endEpoch || 0, first + 1);
  const x = (e) => L + (e - first) / (last - first) * (W - L - R);
  const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  const step = (W - L - R) / Math.max(1, last - first);
  for (const p of curve.filter((p) => p.cooldown)) {
    parts.push(svg("rect", {class: "cool", x: x(p.epoch) - step / 2, y: T, width: step, height: H - T - B}));
  }
  parts.push(svg("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}),
             svg("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
  for (const [v, yy] of [[hi, T + 10], [lo, H - B]]) {
    const label = svg("text", {x: L - 6, y: yy, "text-anchor": "end"});
    label.textContent = v.toFixed(3);
    parts.push(label);
  }
  for (const e of [first, last]) {
    const label = svg("text", {x: x(e), y: H - B + 16, "text-anchor": e === first ? "start" : "end"});
    label.textContent = `epoch ${e}`;
    parts.push(label);
  }
  for (const key of ["loss", "eval_loss"]) {
    const points = curve.filter((p) => typeof p[key] === "number").map((p) => `${x(p.epoch).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (points.length) parts.push(svg("polyline", {class: key === "loss" ? "loss" : "eval", points: points.join(" "),
                                                   "data-points": points.length}));
  }
  for (const p of curve.filter((p) => typeof p.eval_loss === "number")) {
    parts.push(svg("circle", {class: "dot", cx: x(p.epoch), cy: y(p.eval_loss), r: 2.5}));
  }
  const byEpoch = new Map(curve.map((p) => [p.epoch, p]));
  const tryFirst = review && review.try_first ? review.try_first.epoch : null;
  for (const pick of (review && review.shortlist) || []) {
    const p = byEpoch.get(pick.epoch);
    const v = p && (typeof p.eval_loss === "number" ? p.eval_loss : p.loss);
    if (typeof v !== "number") continue;
    parts.push(svg("circle", {class: "pick", cx: x(pick.epoch), cy: y(v), r: 4}));
    if (pick.epoch === tryFirst) parts.push(svg("circle", {class: "first", cx: x(pick.epoch), cy: y(v), r: 8}));
  }
  box.replaceChildren(...parts);
  box.dataset.epochs = String(curve.length);
}

function showJob(job, row) {
  const section = document.getElementById("job");
  section.hidden = false;
  document.getElementById("job-title").textContent = `Job ${job.id}: ${job.name}`;
  const rate = job.rate.s_per_it ? ` · ${job.rate.s_per_it.toFixed(2)} s/it` : "";
  document.getElementById("job-line").textContent = row ? `${row.shown.status}: ${row.shown.line}${rate}` : "";
  drawCurve(job.curve, job.review, job.end_epoch);
  const f = job.floor;
  const floor = f.state ? `floor: ${f.state}` : "";
  const cool = f.cooling ? `cooling down, ${f.cooldown_epochs_left} epoch(s) left` : "";
  document.getElementById("job-floor").textContent = [floor, cool].filter(Boolean).join("; ");
  document.getElementById("log").textContent = job.log.join("\n");
  const settings = document.getElementById("settings");
  if (settings.textContent !== job.settings) settings.textContent = job.settings;
  showReview(job);
}

function showReview(job) {
  const box = document.getElementById("review");
  const review = job.review;
  box.hidden = !review;
  if (!review) return;
  document.getElementById("review-link").href = review.url;
  const first = review.try_first;
  document.getElementById("try-first").textContent = first
    ? `Try first: epoch ${first.epoch}${first.reason ? ` (${first.reason})` : ""}` : "";
  document.getElementById("shortlist").replaceChildren(...review.shortlist.map((pick) =>
    el("li", `epoch ${pick.epoch} (${pick.kind}): ${pick.reason || ""}`)));
  const select = document.getElementById("keep-epoch");
  const want = job.epoch_files.map(String);
  if ([...select.options].map((o) => o.value).join() !== want.join()) {
    const pick = first || review.shortlist[0];  // the review's own suggestion, until a person picks
    const keep = select.value || (pick ? String(pick.epoch) : "");
    select.replaceChildren(...want.map((e) => { const o = el("option", e); o.value = e; return o; }));
    if (want.includes(keep)) select.value = keep;
  }
  document.getElementById("kept").textContent = review.kept.length ? `kept: ${review.kept.join(", ")}` : "";
}

async function refresh() {
  try {
    const status = await getJSON("/api/status");
    showDaemon(status);
    selected = pickJob(status.jobs);
    showQueue(status.jobs);
    showInbox(status.inbox);
    if (selected !== null) {
      const job = await getJSON(`/api/jobs/${selected}`);
      lastJob = job;
      showJob(job, status.jobs.find((j) => j.id === selected));
    } else {
      document.getElementById("job").hidden = true;
    }
  } catch (error) {
    document.getElementById("updated").textContent = `cannot reach the daemon (${error.message}); retrying`;
  }
}

document.getElementById("keep").addEventListener("click", () => {
  const epoch = Number(document.getElementById("keep-epoch").value);
  if (lastJob && Number.isInteger(epoch)) post(`/api/jobs/${lastJob.id}/keep`, {epoch});
});

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
