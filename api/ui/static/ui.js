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

function logEvent(list, event) {
  const item = document.createElement("li");
  const seq = document.createElement("span"); seq.className = "seq"; seq.textContent = "#" + event.seq;
  const when = document.createElement("time"); when.textContent = event.created_at;
  const what = document.createElement("strong"); what.textContent = event.type;
  item.append(seq, " ", when, " ", what, event.step_id ? " · " + event.step_id : "");
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function followRun(body) {
  const log = document.getElementById("event-log"), state = document.getElementById("live-state");
  let source = null;
  const ended = () => ["succeeded", "failed", "cancelled"].includes(body.querySelector("[data-run-status]").dataset.runStatus);
  // Once the run has ended its stream closes; stop the browser from reconnecting to it.
  const refresh = refresher(body, 150, () => { if (ended()) { source.close(); state.textContent = "ended"; } });
  source = new EventSource(body.dataset.liveRun + "?after=" + (log.dataset.after || 0));
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
  const refresh = refresher(panels, 300);
  const source = new EventSource(panels.dataset.liveTenant);
  source.addEventListener("run_status", refresh);
  // Approvals and questions do not always change a run's status: look again now and then too.
  setInterval(refresh, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  const body = document.getElementById("run-body");
  if (body) followRun(body);
  const panels = document.getElementById("command-panels");
  if (panels) followTenant(panels);
});
