// LineSight review station: a lot's review units, one decision per unit, e-signed. No libraries.
"use strict";
const csrf = document.getElementById("csrf").value;
const role = document.getElementById("who").dataset.role;
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
const num = (x, d = 3) => (x == null ? "–" : Number(x).toFixed(d));
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(2) + " %");
const seg = (s) => encodeURIComponent(s === "" ? "-" : s);
let lot = "", current = null, openedAt = 0;

async function getJson(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
  return r.json();
}
async function post(url, data) {
  const body = new URLSearchParams({ ...data, csrf });
  const r = await fetch(url, { method: "POST", body, headers: { Accept: "application/json", "X-CSRF-Token": csrf } });
  let payload = {};
  try { payload = await r.json(); } catch (e) { payload = { refused: `${r.status}` }; }
  return { ok: r.ok, status: r.status, payload };
}

async function loadLots() {
  const { lots } = await getJson("/api/review/lots");
  const sel = $("lot");
  for (const l of lots) sel.append(el("option", { value: l.lot }, `${l.lot} (${l.review} review of ${l.units})`));
  const query = new URLSearchParams(location.search);
  const wanted = query.get("lot");
  if (wanted) { sel.value = wanted; await loadLot(wanted, query.get("unit")); }
}

function renderSummary(s, rules) {
  const box = $("summary");
  box.replaceChildren();
  const c = s.counts;
  const facts = [
    ["review units", `${s.review_units} of ${s.units} (${pct(s.review_fraction)}, limit ${pct(s.max_review_fraction)})`],
    ["undecided", c.undecided], ["awaiting QA", c.awaiting_qa], ["recovered", c.recovered],
    ["confirmed defective", c.confirmed_defective], ["kept rejected", c.kept_rejected],
    ["QA confirms good", rules.qa_confirms ? "yes" : "no"]];
  box.append(el("div", { class: "kv" }, ...facts.flatMap(([k, v]) => [el("span", {}, k), el("strong", { "data-fact": k }, v)])));
  if (s.over_limit) box.append(el("p", { class: "error", id: "over-limit" }, "Review rate above the recipe's limit."));
  box.append(el("p", { id: "release", class: s.release_refusals.length ? "error" : "ok-text" },
    s.release_refusals.length ? "Release refused: " + s.release_refusals.join("; ") : "Review complete: nothing refuses release."));
  const showSample = s.plan && role === "qa" && c.undecided === 0 && c.awaiting_qa === 0;
  $("sample-panel").hidden = !showSample;
  if (s.plan) $("sample-plan").textContent = s.plan.describe + (s.sample
    ? ` Latest result: ${s.sample.defective} defective, ${s.sample.accepted ? "accepted" : "REJECTED"} by ${s.sample.user}.`
    : " Not yet sampled.");
}

function renderQueue(units) {
  const body = $("queue").querySelector("tbody");
  body.replaceChildren();
  $("queue-empty").textContent = units.length ? "" : "No review units in this lot.";
  for (const u of units) {
    const worst = u.stations.find((s) => s.verdict !== "pass") || u.stations[0];
    const tr = el("tr", { "data-unit": u.unit_id, class: `status-${u.status}` },
      el("td", {}, el("a", { href: "#", class: "open" }, u.unit_id)), el("td", { class: "status" }, u.status.replace("_", " ")),
      el("td", {}, `${u.verdict} (${worst.defect})`), el("td", {}, num(worst.score)),
      el("td", {}, u.stations.map((s) => `${s.station || "camera"}: ${s.verdict}`).join(", ")),
      el("td", {}, new Date(worst.capture_time).toLocaleString()));
    tr.querySelector("a.open").addEventListener("click", (ev) => { ev.preventDefault(); openUnit(u); });
    body.append(tr);
  }
}

function openUnit(u) {
  current = u;
  openedAt = performance.now();
  $("unit-panel").hidden = false;
  $("unit-id").textContent = `${u.unit_id} — ${u.status.replace("_", " ")}`;
  const frames = $("frames");
  frames.replaceChildren();
  for (const s of u.stations) {
    const fig = el("figure", { class: `station verdict-${s.verdict}`, "data-station": s.station });
    const caption = `${s.station || "camera"} (${s.camera}): ${s.verdict} ${s.defect}, score ${num(s.score)}` +
      (s.review_threshold != null ? ` (review > ${num(s.review_threshold, 2)}, reject > ${num(s.threshold, 2)})` : "");
    if (s.has_frame) {
      const img = el("img", { src: `/review/frames/${seg(u.unit_id)}/${seg(s.station)}`, alt: `frame ${s.station}`, class: "frame" });
      img.addEventListener("error", () => img.replaceWith(el("span", { class: "heatmap-missing" }, "frame not available")));
      fig.append(img);
      const heat = el("img", { src: `/review/frames/${seg(u.unit_id)}/${seg(s.station)}/heatmap.png?product=${encodeURIComponent(u.product)}`,
        alt: "heat map", class: "frame heat" });
      heat.addEventListener("error", () => heat.replaceWith(el("span", { class: "heatmap-missing" }, "no heat map")));
      fig.append(heat);
    } else {
      fig.append(el("span", { class: "heatmap-missing" }, "passed here: frame not kept"));
    }
    fig.append(el("figcaption", {}, caption));
    frames.append(fig);
  }
  const probs = $("probs");
  probs.replaceChildren(el("tr", {}, el("th", {}, "station"), el("th", {}, "class"), el("th", {}, "probability")));
  for (const s of u.stations) for (const [k, v] of Object.entries(s.class_scores).sort((a, b) => b[1] - a[1]))
    probs.append(el("tr", {}, el("td", {}, s.station || "camera"), el("td", {}, k), el("td", {}, num(v))));
  const reasons = $("reasons");
  reasons.replaceChildren(...u.stations.flatMap((s) => s.reasons.map((r) => el("li", {}, r))));
  const defect = $("defect");
  defect.replaceChildren(...u.classes.map((c) => el("option", { value: c }, c)));
  $("decide-result").textContent = "";
  $("decide-form").reset();
  // A decided unit stays decided; only QA acts on a good awaiting confirmation.
  const open = u.status === "undecided" || (u.status === "awaiting_qa" && role === "qa");
  $("decide-form").querySelector("fieldset").hidden = !open;
  const past = $("decisions");
  past.replaceChildren(...u.decisions.map((d) => el("p", { class: "muted" },
    `${d.decision}${d.defect ? " (" + d.defect + ")" : ""} by ${d.user} (${d.role}) at ${d.decided_time}, ${d.audit_record}`)));
}

async function loadLot(name, unit) {
  lot = name;
  if (!lot) return;
  history.replaceState(null, "", `?lot=${encodeURIComponent(lot)}`);
  const data = await getJson(`/api/review/${encodeURIComponent(lot)}`);
  renderSummary(data.summary, data.rules);
  renderQueue(data.units);
  const asked = unit && data.units.find((u) => u.unit_id === unit);
  if (asked) { openUnit(asked); $("unit-panel").scrollIntoView(); return; }
  if (current) {
    const again = data.units.find((u) => u.unit_id === current.unit_id);
    if (again) { const form = $("decide-result").textContent; openUnit(again); $("decide-result").textContent = form; }
  }
}

$("lot").addEventListener("change", (ev) => loadLot(ev.target.value));
$("decide-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!current) return;
  const f = new FormData(ev.target);
  const decision = f.get("decision") || "";
  const res = await post(`/api/review/${encodeURIComponent(lot)}/units/${encodeURIComponent(current.unit_id)}/decision`, {
    decision, defect: decision === "defect" ? f.get("defect") : "", password: f.get("password") || "",
    comment: f.get("comment") || "", seconds_spent: ((performance.now() - openedAt) / 1000).toFixed(1),
  });
  const out = $("decide-result");
  out.className = res.ok ? "ok-text" : "error";
  out.textContent = res.ok ? `Recorded: ${decision}, signed (${res.payload.signature}).` : `Refused: ${res.payload.refused}`;
  $("sign-password").value = "";
  if (!res.ok) return;  // nothing changed: the form keeps what the person chose
  await loadLot(lot);
  await loadPareto();
});
$("sample-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const res = await post(`/api/review/${encodeURIComponent(lot)}/sample`, { defective: f.get("defective"), password: f.get("password") });
  const out = $("sample-result");
  out.className = res.ok ? "ok-text" : "error";
  out.textContent = res.ok ? `Sample ${res.payload.accepted ? "accepted" : "REJECTED"}, signed (${res.payload.signature}).`
                           : `Refused: ${res.payload.refused}`;
  $("sample-password").value = "";
  await loadLot(lot);
});

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
async function loadPareto() {
  const by = $("pareto-by").value;
  const data = await getJson(`/api/review/false-rejects?by=${by}`);
  const box = $("pareto");
  box.replaceChildren();
  if (!data.bars.length) { box.append(el("p", { class: "muted" }, "No good units removed in the last " + data.days + " days.")); }
  else {
    const W = 560, H = 180, L = 36, B = 40, bw = Math.min(60, (W - L) / data.bars.length - 6), top = data.bars[0].units;
    const s = svg("svg", { width: W, height: H, class: "pareto", role: "img", "data-bars": data.bars.length });
    s.append(Object.assign(svg("title", {}), { textContent: `good units removed by ${by} (Pareto), last ${data.days} days` }));
    data.bars.forEach((b, i) => {
      const x = L + i * (bw + 6), h = ((H - B - 18) * b.units) / top;
      s.append(svg("rect", { x, y: H - B - h, width: bw, height: h, fill: "#1d2b3a", "data-key": b.key, "data-units": b.units }));
      const t = svg("text", { x: x + bw / 2, y: H - B + 14, "text-anchor": "middle", "font-size": 10 }); t.textContent = String(b.key).slice(0, 12); s.append(t);
      const n = svg("text", { x: x + bw / 2, y: H - B - h - 3, "text-anchor": "middle", "font-size": 10 }); n.textContent = b.units; s.append(n);
    });
    const pts = data.bars.map((b, i) => `${L + i * (bw + 6) + bw / 2},${18 + (H - B - 18) * (1 - b.cumulative)}`).join(" ");
    s.append(svg("polyline", { points: pts, fill: "none", stroke: "#c62828", class: "cumulative" }));
    box.append(el("small", { class: "muted" }, `${data.total} good units removed (review decided good); red: cumulative share`), el("br"), s);
  }
  const body = $("pareto-units").querySelector("tbody");
  body.replaceChildren(...data.units.map((u) => el("tr", {},
    el("td", {}, el("a", { href: `/review?lot=${encodeURIComponent(u.lot)}&unit=${encodeURIComponent(u.unit_id)}`,
                           class: "unit-link" }, u.unit_id)), el("td", {}, u.lot),
    el("td", {}, u.defect), el("td", {}, num(u.score)), el("td", {}, u.station || "camera"), el("td", {}, u.decided_by))));
}
$("pareto-by").addEventListener("change", loadPareto);

loadLots().catch((e) => { $("queue-empty").textContent = "Cannot load lots: " + e.message; });
loadPareto().catch((e) => { $("pareto").textContent = "Cannot load the Pareto: " + e.message; });
