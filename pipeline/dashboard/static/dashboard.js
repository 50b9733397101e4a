// LineSight dashboard: renders /events (Server-Sent Events) into the page. No libraries, no CDN.
"use strict";
const csrf = document.getElementById("csrf").value;
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + "%");
const time = (ns) => new Date(ns / 1e6).toLocaleTimeString();
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
function pchart(l) {
  const points = l.pchart, W = 390, H = 130, L = 46, P = 6;
  const s = svg("svg", { width: W, height: H, class: "pchart", role: "img" });
  s.append(Object.assign(svg("title", {}), { textContent: "p-chart: reject fraction per interval with 3-sigma limits" }));
  const top = Math.max(0.05, ...points.map((p) => Math.max(p.p, p.ucl || 0))) * 1.1;
  const x = (i) => L + (i * (W - L - P)) / Math.max(1, points.length - 1);
  const y = (v) => H - P - (v / top) * (H - 2 * P);
  const label = (v) => { const t = svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#56606b" });
    t.textContent = pct(v); return t; };
  s.append(svg("line", { x1: L, y1: y(0), x2: W - P, y2: y(0), stroke: "#bbb" }), label(0), label(top / 1.1));
  const path = (key) => points.map((p, i) => (p[key] == null ? null : `${x(i)},${y(p[key])}`)).filter(Boolean).join(" ");
  // limits depend on each interval's n: a step per interval, centred on its point
  const half = points.length > 1 ? (x(1) - x(0)) / 2 : 8;
  const steps = (key) => points.map((p, i) => (p[key] == null ? "" :
    `M${Math.max(L, x(i) - half)},${y(p[key])}H${Math.min(W - P, x(i) + half)}`)).join("");
  const limited = points.filter((p) => p.ucl != null).length;
  s.setAttribute("data-limited", limited);
  s.append(svg("path", { d: steps("ucl"), fill: "none", stroke: "#c62828", "stroke-dasharray": "4 3", class: "ucl" }));
  s.append(svg("path", { d: steps("lcl"), fill: "none", stroke: "#c62828", "stroke-dasharray": "4 3", class: "lcl" }));
  s.append(svg("path", { d: steps("center"), fill: "none", stroke: "#1f8a4c", class: "center" }));
  s.append(svg("polyline", { points: path("p"), fill: "none", stroke: "#1d2b3a" }));
  points.forEach((p, i) => s.append(svg("circle", { cx: x(i), cy: y(p.p), r: 3, fill: p.out ? "#c62828" : "#1d2b3a" })));
  const note = el("small", { class: "muted" }, `p-chart: reject fraction per ${l.pchart_interval_s} s; ` +
    (limited ? "green p̄, red dashed 3σ limits, red dot out of control"
             : `limits after ${l.pchart_min_baseline} intervals`));
  return el("div", {}, note, el("br"), s);
}
function renderHealth(h) {
  const box = $("health");
  box.replaceChildren();
  for (const [name, v] of Object.entries(h)) {
    box.append(el("span", { class: v.ok ? "ok" : "bad", title: v.detail || "", "data-service": name }, `${name}: ${v.ok ? "ok" : "DOWN"}`));
  }
}
function renderLines(lines) {
  const box = $("lines");
  if (!lines.length) return;
  box.replaceChildren();
  for (const l of lines) {
    const classes = Object.entries(l.by_class).map(([k, v]) => `${k} ${pct(v)} (${l.by_class_count[k]})`).join(", ") || "none";
    const models = Object.entries(l.models).map(([k, v]) => `${k}: ${v}`).join(", ") || "–";
    const measured = Object.entries(l.last_measurements || {})
      .map(([k, v]) => `${k} ${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v}`).join(", ") || "–";
    const state = l.running ? el("span", { class: "badge ok" }, "running")
      : el("span", { class: "badge bad" }, l.silent_s == null ? "no frames yet" : `NO FRAMES for ${l.silent_s.toFixed(0)} s`);
    box.append(el("div", { class: "card" + (l.running ? "" : " stopped"), "data-line": l.line },
      el("h3", {}, l.line, " ", state),
      el("div", { class: "kv" },
        "throughput", el("span", { class: "num throughput" }, l.throughput_per_s.toFixed(1) + "/s"),
        "units", el("span", { class: "total" }, l.total),
        "rejected", el("span", { class: "rejected" }, `${l.rejected} (${pct(l.reject_rate)}; last 10 s ${pct(l.reject_rate_recent)})`),
        "by defect class", el("span", {}, classes),
        "model live", el("span", { class: "models" }, models),
        "recipe", el("span", { class: "recipe" }, l.recipe || "none (product routing)"),
        "last measured", el("span", { class: "measured" }, measured)),
      ...(l.cameras && l.cameras.length ? [cameraPanel(l.cameras)] : []),
      pchart(l)));
  }
}
// The line's station cameras (the gateway's camera status, through the alert service).
const age = (s) => (s == null ? "never" : s < 1 ? "now" : s < 120 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`);
function cameraPanel(cams) {
  const rows = cams.map((c) => el("tr", { class: c.connected ? "" : "lost", "data-station": c.station, "data-camera": c.camera },
    el("td", {}, c.station), el("td", { class: "serial" }, c.camera),
    el("td", {}, el("span", { class: "badge " + (c.connected ? "ok" : "bad") }, c.connected ? "connected" : "LOST")),
    el("td", { class: "fps" + (c.drift != null ? " warn-text" : ""), title: `line: ${c.units_per_s.toFixed(1)} units/s` },
      `${c.fps.toFixed(1)}/s`),
    el("td", { class: "drops" + (c.drops ? " warn-text" : ""), title: `incomplete ${c.incomplete}, missing ${c.missing}` },
      c.drops),
    el("td", { class: "last-frame" }, age(c.last_frame_age_s)),
    el("td", { class: "reconnects" }, c.reconnects)));
  const rate = Math.max(...cams.map((c) => c.units_per_s));
  return el("table", { class: "cameras" },
    el("caption", {}, `Cameras (line ${rate.toFixed(1)} units/s; drops: incomplete + missing frames)`),
    el("thead", {}, el("tr", {}, ...["Station", "Camera", "State", "Frame rate", "Drops", "Last frame", "Reconnects"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}
function renderAlerts(alerts) {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren();
  const shown = alerts.filter((a) => a.open || a.state === "active");
  $("no-alerts").hidden = shown.length > 0;
  for (const a of shown) {
    const ack = a.open
      ? el("button", { type: "button", class: "ack", "data-id": a.alert_id }, "Acknowledge")
      : el("span", { class: "muted" }, `ack. by ${a.acknowledged_by}`);
    body.append(el("tr", { class: `${a.severity}${a.open ? "" : " acked"}`, "data-kind": a.kind, "data-id": a.alert_id },
      el("td", {}, a.severity), el("td", {}, a.line), el("td", {}, a.kind), el("td", {}, a.state),
      el("td", {}, time(a.first_seen_ns)), el("td", {}, time(a.last_seen_ns)), el("td", {}, a.message), el("td", {}, ack)));
  }
}
function renderRejects(rejects) {
  const box = $("rejects");
  box.replaceChildren();
  if (!rejects.length) box.append(el("p", { class: "muted" }, "No rejects yet."));
  for (const r of rejects) {
    const unit = encodeURIComponent(r.unit_id);
    let pics = el("div", { class: "muted" }, "no frame");
    if (r.has_image && r.measured) {
      // A measurement inspection (vial, blister, label): the failed checks say where and why.
      pics = el("img", { src: `/rejects/${unit}`, alt: r.defect, title: "frame as captured", class: "wide" });
    } else if (r.has_image) {
      // Side by side: the frame as captured, and where the model saw the defect (occlusion heat
      // map computed through Triton on first view; a text instead when it cannot be had).
      const heat = el("img", { src: `/rejects/${unit}/heatmap.png`, class: "heatmap", loading: "lazy",
        alt: `where the model saw the defect (${r.defect})`, title: "where the model saw the defect" });
      heat.addEventListener("error", () => heat.replaceWith(
        el("div", { class: "heatmap-missing muted", title: "heat map needs the inference server" }, "heat map unavailable")));
      pics = el("div", { class: "pair" },
        el("img", { src: `/rejects/${unit}`, alt: r.defect, title: "frame as captured" }), heat);
    }
    const why = r.measured
      ? el("ul", { class: "reasons" }, ...(r.reasons || []).map((t) => el("li", {}, t)))
      : el("small", { class: "muted" }, "right: where the model saw the defect");
    box.append(el("figure", { class: "reject", "data-unit": r.unit_id }, pics,
      el("figcaption", {}, `${r.defect} ${r.score == null ? "" : r.score.toFixed(2)}`, el("br"),
        why, r.unit_id.slice(-10))));
  }
}
let lastRejects = "";
function render(state) {
  renderHealth(state.health || {});
  renderLines(state.lines);
  renderAlerts(state.alerts);
  const key = state.rejects.map((r) => r.unit_id).join();
  if (key !== lastRejects) { lastRejects = key; renderRejects(state.rejects); }
  const st = $("status");
  st.textContent = "live " + new Date(state.server_time_ns / 1e6).toLocaleTimeString();
  st.className = "badge ok";
}
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button.ack");
  if (!b) return;
  b.disabled = true;
  const body = new URLSearchParams({ csrf });
  const r = await fetch(`/alerts/${encodeURIComponent(b.dataset.id)}/ack`, {
    method: "POST", body, headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!r.ok) { b.disabled = false; alert(await r.text()); return; }
  const s = await fetch("/api/state", { headers: { Accept: "application/json" } });
  if (s.ok) render(await s.json());
});
function connect() {
  const es = new EventSource("/events");
  es.addEventListener("state", (e) => render(JSON.parse(e.data)));
  es.onerror = () => {
    const st = $("status");
    st.textContent = "connection lost – retrying";
    st.className = "badge bad";
    if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(async () => {
      const r = await fetch("/api/state"); if (r.status === 401) location.href = "/login"; else connect(); }, 2000); }
  };
}
connect();
