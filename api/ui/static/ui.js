// Switchyard web UI: live updates over Server-Sent Events (EventSource), no build step.
"use strict";

// Re-render a part of the page from its fragment URL, at most once per `wait` ms.
function refresher(element, wait, then) {
  let timer = null, again = false, busy = false;
  async function load() {
    busy = true; again = false;
    try {
      const response = await fetch(element.dataset.refresh, {credentials: "same-origin", headers: {"Accept": "text/html"}});
      if (response.ok && !response.redirected) element.innerHTML = await response.text();
      if (then) then();
    } finally {
      busy = false;
      if (again) schedule();
    }
  }
  function schedule() {
    if (busy) { again = true; return; }
    if (timer === null) timer = setTimeout(() => { timer = null; load(); }, wait);
  }
  return schedule;
}

// -- times: <time datetime> as local time and "3 min ago", ISO on hover --------------------------
function ago(ms) {
  const s = Math.round(Math.abs(ms) / 1000), future = ms < 0;
  let text;
  if (s < 5) return "just now";
  if (s < 60) text = s + " s";
  else if (s < 3600) text = Math.floor(s / 60) + " min";
  else if (s < 86400) text = Math.floor(s / 3600) + " h";
  else text = Math.floor(s / 86400) + " d";
  return future ? "in " + text : text + " ago";
}

function localTime(element, now) {
  const at = new Date(element.getAttribute("datetime"));
  if (isNaN(at)) return;
  const clock = at.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
  const sameDay = at.toDateString() === new Date(now).toDateString();
  const day = sameDay ? "" : at.toLocaleDateString([], {year: "numeric", month: "short", day: "numeric"}) + " ";
  element.textContent = day + clock + " · " + ago(now - at.getTime());
  element.title = element.getAttribute("datetime");
}

function localTimes(root) {
  const now = Date.now();
  (root || document).querySelectorAll("time[datetime]").forEach((t) => localTime(t, now));
}

// -- the event log ---------------------------------------------------------------------------------
function logEvent(list, event) {
  const item = document.createElement("li"), details = document.createElement("details");
  const summary = document.createElement("summary"), data = document.createElement("pre");
  item.id = "event-" + event.seq;
  if (["step_failed", "run_failed", "step_retrying"].includes(event.type)) item.className = "failure";
  const seq = document.createElement("span"); seq.className = "seq"; seq.textContent = "#" + event.seq;
  const when = document.createElement("time"); when.setAttribute("datetime", event.created_at); localTime(when, Date.now());
  const what = document.createElement("strong"); what.textContent = event.type;
  summary.append(seq, " ", when, " ", what, event.step_id ? " · " + event.step_id : "");
  const error = event.data && event.data.error;
  if (error && error.code) {
    const text = document.createElement("span"); text.className = "err"; text.textContent = error.code + ": " + error.message;
    summary.append(" — ", text);
  }
  data.textContent = JSON.stringify(event.data, null, 1);  // textContent: quotes and markup as themselves
  details.append(summary, data);
  item.append(details);
  // Follow the newest event unless the reader has scrolled up to read an older one.
  const following = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(item);
  if (following) list.scrollTop = list.scrollHeight;
}

// A failed run's log opens at its first failure, a live or ended one at its newest event.
function openLog(list) {
  const first = list.dataset.firstFailure && document.getElementById("event-" + list.dataset.firstFailure);
  if (first) {
    first.querySelector("details").open = true;
    list.scrollTop = first.offsetTop - list.offsetTop - 8;
  } else {
    list.scrollTop = list.scrollHeight;
  }
}

function followRun(body) {
  const log = document.getElementById("event-log"), state = document.getElementById("live-state");
  let source = null;
  const ended = () => ["succeeded", "failed", "cancelled"].includes(body.querySelector("[data-run-status]").dataset.runStatus);
  // Once the run has ended its stream closes; stop the browser from reconnecting to it.
  const refresh = refresher(body, 150, () => {
    localTimes(body); graphs(body);
    if (ended()) { source.close(); state.textContent = "ended"; }
  });
  source = new EventSource(body.dataset.liveRun + "?after=" + (log.dataset.after || 0));
  // A long attempt sends no event for a while: redraw now and then so its timeline bar keeps growing.
  const ticking = setInterval(() => { if (ended()) clearInterval(ticking); else refresh(); }, 5000);
  source.onopen = () => { state.textContent = "live"; };
  // The stream ended (the run did) or broke: stop if the run has ended, else let the browser reconnect.
  source.onerror = () => {
    if (ended()) { source.close(); state.textContent = "ended"; } else { state.textContent = "reconnecting…"; refresh(); }
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.seq <= Number(log.dataset.after || 0)) return;
    log.dataset.after = event.seq;
    logEvent(log, event);
    refresh();
  };
}

function followTenant(panels) {
  const refresh = refresher(panels, 300, () => localTimes(panels));
  const source = new EventSource(panels.dataset.liveTenant);
  source.addEventListener("run_status", refresh);
  // Approvals and questions do not always change a run's status: look again now and then too.
  setInterval(refresh, 5000);
}

// -- the step graph: fits its box (viewBox), zoom with the buttons or ctrl+wheel, drag to pan ------
const graphViews = {};  // aria-label -> viewBox, kept across the live re-renders of a run's body

function setView(svg, box) {
  svg.setAttribute("viewBox", box.join(" "));
  graphViews[svg.getAttribute("aria-label")] = box;
}

function zoom(svg, factor) {
  const [x, y, w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
  const fit = svg.dataset.fit.split(" ").map(Number);
  const nw = Math.min(Math.max(w * factor, fit[2] / 20), fit[2] * 2), nh = nw * h / w;
  setView(svg, [x + (w - nw) / 2, y + (h - nh) / 2, nw, nh]);
}

function graphs(root) {
  root.querySelectorAll("svg.graph[data-fit]").forEach((svg) => {
    const kept = graphViews[svg.getAttribute("aria-label")];
    if (kept) svg.setAttribute("viewBox", kept.join(" "));
    const tools = svg.previousElementSibling;
    if (tools) tools.querySelectorAll("[data-zoom]").forEach((button) => button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "fit") setView(svg, svg.dataset.fit.split(" ").map(Number));
      else zoom(svg, how === "in" ? 0.7 : 1 / 0.7);
    }));
    svg.addEventListener("wheel", (e) => { if (e.ctrlKey) { e.preventDefault(); zoom(svg, e.deltaY < 0 ? 0.85 : 1 / 0.85); } });
    let drag = null;
    svg.addEventListener("pointerdown", (e) => { drag = {x: e.clientX, y: e.clientY, box: svg.getAttribute("viewBox").split(" ").map(Number)}; });
    svg.addEventListener("pointerup", () => { drag = null; });
    svg.addEventListener("pointerleave", () => { drag = null; });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const [x, y, w, h] = drag.box, k = w / svg.clientWidth;
      setView(svg, [x - (e.clientX - drag.x) * k, y - (e.clientY - drag.y) * k, w, h]);
    });
  });
}

// -- analytics: uPlot charts (vendored, api/ui/static/vendor) with axes and values on hover ----------
function chartValue(chart, v) {
  if (v == null) return "—";
  return chart.percent ? (v * 100).toFixed(1) + "%" : String(Number(v.toFixed(4)));
}

function drawChart(box) {
  const c = JSON.parse(box.dataset.chart), muted = "#4f5863", grid = {stroke: "#e3e7eb", width: 1};
  const opts = {
    width: Math.max(box.clientWidth, 280), height: 220,
    cursor: {points: {size: 8}, drag: {x: false, y: false}},
    // A rate tops at 100%; a count at its largest bucket (never a made-up top: empty charts are not drawn).
    scales: {x: {time: true, range: (u, min, max) => { const half = c.t.length > 1 ? (c.t[1] - c.t[0]) / 2 : 30; return [min - half, max + half]; }},
             y: {range: (u, min, max) => [0, c.percent ? 1 : Math.max(max, 1) * 1.08]}},
    axes: [{stroke: muted, grid},
           {stroke: muted, grid, size: 64, values: (u, splits) => splits.map((v) => chartValue(c, v))}],
    series: [
      {label: "Bucket", value: (u, ts) => ts == null ? "—" : new Date(ts * 1000).toLocaleString()},
      {label: c.title, stroke: "#0b57d0", fill: "rgba(11, 87, 208, 0.3)", width: 1,
       paths: uPlot.paths.bars({size: [0.8, 48]}), points: {show: false}, value: (u, v) => chartValue(c, v)},
    ],
  };
  const plot = new uPlot(opts, [c.t, c.v], box);
  box.plot = plot;  // for scripts and tests that read or point at the chart
  window.addEventListener("resize", () => plot.setSize({width: Math.max(box.clientWidth, 280), height: 220}));
}

// -- the workflow editor: the API checks the draft as you type (debounced), the preview follows ----
function followEditor(form) {
  const text = form.querySelector("#definition"), format = form.querySelector("#format");
  const result = document.getElementById("editor-check");
  let timer = null, sent = 0;
  async function checkNow() {
    const mine = ++sent;
    const response = await fetch(form.dataset.check, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": document.body.dataset.csrf},
      body: JSON.stringify({text: text.value, format: format.value}),
    });
    if (!response.ok || mine !== sent) return;  // a later keystroke's check supersedes this one
    const answer = await response.json();
    result.innerHTML = answer.html;
    text.setAttribute("aria-invalid", answer.ok ? "false" : "true");
    graphs(result);
  }
  const later = () => { clearTimeout(timer); timer = setTimeout(checkNow, 350); };
  text.addEventListener("input", later);
  format.addEventListener("change", later);
}

// The runs list's bulk selection: a box ticks every run of the page, and the bar counts the ticked ones.
function bulkSelection(form) {
  const boxes = () => [...form.querySelectorAll('input[name="run_id"]')];
  const count = form.querySelector("[data-bulk-count]");
  const update = () => { count.textContent = `${boxes().filter((b) => b.checked).length} ticked`; };
  form.querySelector("[data-bulk-all]").addEventListener("change", (e) => {
    boxes().forEach((b) => { b.checked = e.target.checked; });
    update();
  });
  form.addEventListener("change", update);
}

document.addEventListener("DOMContentLoaded", () => {
  const bulkForm = document.querySelector("form[data-bulk]");
  if (bulkForm) bulkSelection(bulkForm);
  const editorForm = document.getElementById("editor-form");
  if (editorForm) followEditor(editorForm);
  if (typeof uPlot !== "undefined") document.querySelectorAll("[data-chart]").forEach(drawChart);
  localTimes(document);
  setInterval(() => localTimes(document), 30000);
  graphs(document);
  const log = document.getElementById("event-log");
  if (log) openLog(log);
  const body = document.getElementById("run-body");
  if (body) followRun(body);
  const panels = document.getElementById("command-panels");
  if (panels) followTenant(panels);
});
