// The statistics page: asks for a bearer token, fetches the report with it, draws the charts on canvas.
// No library and no network beyond this origin. The token lives in sessionStorage (this tab) only.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const COLOURS = { web: "#2f6fdf", app: "#19a39a", hotline: "#f08c2b", onsite: "#9b59b6" };
  const OTHER = ["#6c7a93", "#c0392b", "#27ae60", "#8e44ad", "#d35400"];
  const colour = (name, i) => COLOURS[name] || OTHER[i % OTHER.length];
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
  const hours = (s) => (s === null || s === undefined ? "–" : (s / 3600).toFixed(1) + " h");
  const num = (x) => (x === null || x === undefined ? "–" : String(Math.round(x * 100) / 100));

  function isoDay(d) { return d.toISOString().slice(0, 10); }
  const today = new Date();
  const tomorrow = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() + 1));
  $("to").value = isoDay(tomorrow);
  $("from").value = isoDay(new Date(tomorrow.getTime() - 30 * 86400000));
  const saved = sessionStorage.getItem("tsop-stats-token");
  if (saved) $("token").value = saved;

  function query(extra) {
    const p = new URLSearchParams();
    if ($("from").value) p.set("from", $("from").value + "T00:00:00Z");
    if ($("to").value) p.set("to", $("to").value + "T00:00:00Z");
    for (const name of ["channel", "service_type", "region", "priority"]) {
      const v = $(name).value.trim();
      if (v) p.set(name, v);
    }
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return p.toString();
  }

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  async function problem(r) {
    try { const b = await r.json(); return r.status + " " + (b.title || "") + ": " + (b.detail || ""); }
    catch (e) { return r.status + " " + r.statusText; }
  }

  async function show() {
    const token = $("token").value.trim();
    $("figures").hidden = true;
    if (!token) { status("Give a token to see the figures.", true); return; }
    sessionStorage.setItem("tsop-stats-token", token);
    status("Loading…");
    let r;
    try {
      r = await fetch("/v1/stats/report?" + query({ granularity: $("granularity").value }),
        { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    } catch (e) { status("The archive did not answer: " + e, true); return; }
    if (!r.ok) { status(await problem(r), true); return; }
    const report = await r.json();
    $("figures").hidden = false;
    tiles(report.total);
    volumes(report.series);
    sla(report.series);
    scores(report.total.scores);
    channels(report.total.by_channel);
    status("Figures from " + report.from.slice(0, 10) + " to " + report.to.slice(0, 10) + " (exclusive), by " +
      report.granularity + ".");
    document.body.dataset.drawn = "yes";
  }

  function tiles(t) {
    const items = [
      ["Submitted", t.submitted], ["Self-service share", pct(t.self_service_share)],
      ["Acceptance rate", pct(t.acceptance_rate)], ["Mean time to assign", hours(t.time_to_assign.mean)],
      ["Time to resolve p50 / p90", hours(t.time_to_resolve.p50) + " / " + hours(t.time_to_resolve.p90)],
      ["SLA respond met", pct(t.sla_respond.rate)], ["SLA resolve met", pct(t.sla_resolve.rate)],
      ["Rating response rate", pct(t.rating_response_rate)], ["Mean score", num(t.mean_score)],
      ["Reopen rate", pct(t.reopen_rate)], ["First-time fix", pct(t.first_time_fix_rate)],
      ["Complaints", t.complaints], ["Backlog at the end", t.backlog], ["Incidents", t.incidents_declared],
    ];
    const box = $("tiles");
    box.replaceChildren();
    for (const [label, value] of items) {
      const d = document.createElement("div");
      d.className = "tile";
      const b = document.createElement("b");
      b.textContent = value;
      const s = document.createElement("span");
      s.textContent = label;
      d.append(b, s);
      box.append(d);
    }
  }

  function legend(id, entries) {
    const box = $(id);
    box.replaceChildren();
    for (const [name, c] of entries) {
      const span = document.createElement("span");
      const i = document.createElement("i");
      i.style.backgroundColor = c;
      span.append(i, document.createTextNode(name));
      box.append(span);
    }
  }

  function canvas(id) {
    const c = $(id);
    const ratio = window.devicePixelRatio || 1;
    const w = 560, h = 260;
    c.width = w * ratio; c.height = h * ratio;
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";
    return { g, w, h, left: 44, right: 8, top: 10, bottom: 28 };
  }

  function axes(k, max, labels, fmt) {
    const { g, w, h, left, right, top, bottom } = k;
    g.strokeStyle = "#c9cfdb"; g.fillStyle = "#5a6275"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + (h - top - bottom) * (1 - i / 4);
      g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
      g.textAlign = "right"; g.fillText(fmt(max * i / 4), left - 4, y + 4);
    }
    const every = Math.max(1, Math.ceil(labels.length / 8));
    const slot = (w - left - right) / Math.max(1, labels.length);
    g.textAlign = "center";
    labels.forEach((l, i) => { if (i % every === 0) g.fillText(l, left + slot * (i + 0.5), h - bottom + 16); });
    return slot;
  }

  function label(start, n) { return n > 12 ? start.slice(5, 10) : start.slice(0, 10); }

  function volumes(series) {
    const k = canvas("chart-volumes");
    const names = [...new Set(series.flatMap((s) => Object.keys(s.by_channel)))].sort();
    const max = Math.max(1, ...series.map((s) => s.submitted));
    const slot = axes(k, max, series.map((s) => label(s.start, series.length)), (v) => String(Math.round(v)));
    const plot = k.h - k.top - k.bottom;
    series.forEach((s, i) => {
      let y = k.h - k.bottom;
      names.forEach((n, j) => {
        const v = s.by_channel[n] || 0;
        const hgt = plot * v / max;
        k.g.fillStyle = colour(n, j);
        k.g.fillRect(k.left + slot * i + slot * 0.15, y - hgt, slot * 0.7, hgt);
        y -= hgt;
      });
    });
    legend("legend-volumes", names.map((n, j) => [n, colour(n, j)]));
  }

  function sla(series) {
    const k = canvas("chart-sla");
    const slot = axes(k, 1, series.map((s) => label(s.start, series.length)), (v) => Math.round(v * 100) + "%");
    const plot = k.h - k.top - k.bottom;
    const clocks = [["respond", "#2f6fdf"], ["resolve", "#19a39a"]];
    clocks.forEach(([clock, c], j) => {
      const w = slot * 0.35;
      series.forEach((s, i) => {
        const rate = s["sla_" + clock].rate;
        if (rate === null) return;
        const hgt = Math.max(2, plot * rate);
        k.g.fillStyle = c;
        k.g.fillRect(k.left + slot * i + slot * 0.15 + w * j, k.h - k.bottom - hgt, w, hgt);
      });
    });
    legend("legend-sla", clocks.map(([n, c]) => [n + " clock met", c]));
  }

  function scores(dist) {
    const k = canvas("chart-scores");
    const keys = ["1", "2", "3", "4", "5"];
    const max = Math.max(1, ...keys.map((s) => dist[s] || 0));
    const slot = axes(k, max, keys.map((s) => "score " + s), (v) => String(Math.round(v)));
    const plot = k.h - k.top - k.bottom;
    const tints = ["#c0392b", "#e67e22", "#f1c40f", "#7dbb42", "#27ae60"];
    keys.forEach((s, i) => {
      const hgt = plot * (dist[s] || 0) / max;
      k.g.fillStyle = tints[i];
      k.g.fillRect(k.left + slot * i + slot * 0.2, k.h - k.bottom - hgt, slot * 0.6, hgt);
    });
  }

  function channels(mix) {
    const k = canvas("chart-channels");
    const names = Object.keys(mix).sort();
    const total = names.reduce((a, n) => a + mix[n], 0);
    const cx = 130, cy = k.h / 2, r = 100;
    let a = -Math.PI / 2;
    if (total === 0) {
      k.g.fillStyle = "#5a6275"; k.g.textAlign = "center"; k.g.fillText("no requests in this range", cx, cy);
    }
    names.forEach((n, j) => {
      const sweep = 2 * Math.PI * mix[n] / total;
      k.g.beginPath(); k.g.moveTo(cx, cy); k.g.arc(cx, cy, r, a, a + sweep); k.g.closePath();
      k.g.fillStyle = colour(n, j); k.g.fill();
      a += sweep;
    });
    k.g.beginPath(); k.g.arc(cx, cy, r * 0.55, 0, 2 * Math.PI); k.g.fillStyle = "#ffffff"; k.g.fill();
    const self = (mix.web || 0) + (mix.app || 0);
    k.g.fillStyle = "#1d2433"; k.g.textAlign = "center"; k.g.font = "bold 18px system-ui, sans-serif";
    if (total) k.g.fillText(Math.round(100 * self / total) + " %", cx, cy + 2);
    k.g.font = "11px system-ui, sans-serif"; k.g.fillText("self-service", cx, cy + 18);
    k.g.textAlign = "left";
    names.forEach((n, j) => {
      k.g.fillStyle = colour(n, j); k.g.fillRect(270, 40 + j * 24, 14, 14);
      k.g.fillStyle = "#1d2433";
      k.g.fillText(n + ": " + mix[n] + " (" + (100 * mix[n] / total).toFixed(1) + " %)", 292, 52 + j * 24);
    });
    legend("legend-channels", names.map((n, j) => [n, colour(n, j)]));
  }

  async function exportAs(format) {
    const token = sessionStorage.getItem("tsop-stats-token") || "";
    status("Exporting " + format + "…");
    const r = await fetch("/v1/stats/export?" + query({ format }), { headers: { Authorization: "Bearer " + token } });
    if (!r.ok) { status(await problem(r), true); return; }
    const blob = await r.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "tsop-stats." + format;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    status("Exported " + blob.size + " bytes as " + format + ".");
  }

  $("ask").addEventListener("submit", (e) => { e.preventDefault(); show(); });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem("tsop-stats-token");
    $("token").value = "";
    $("figures").hidden = true;
    status("Token forgotten.");
  });
  document.querySelectorAll(".exports button").forEach((b) => b.addEventListener("click", () => exportAs(b.dataset.format)));
  if (saved) show();
})();
