/* The Usage page (charts of GET /api/v1/usage/) and the Planner page (a form over
   POST /api/v1/capacity/plan/). Every figure and name is set as text, never as HTML. */
"use strict";
const Usage = (() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#2f6fed", "#12805c", "#b54708", "#7a5af8", "#c4320a", "#0e9384", "#dd2590",
                   "#667085", "#f5b83d", "#1849a9"];
  const CONFIG = {displayModeBar: false, responsive: true};

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  function hours(seconds) { return Math.round((seconds / 3600) * 10) / 10; }
  function secs(value) {
    if (value === null || value === undefined) return "—";
    if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
    if (value < 3600) return `${(value / 60).toFixed(1)} min`;
    return `${(value / 3600).toFixed(1)} h`;
  }
  function pct(fraction) { return `${(fraction * 100).toFixed(1)} %`; }

  function layout(extra) {
    return Object.assign({
      margin: {l: 48, r: 12, t: 8, b: 40}, height: 260, barmode: "stack",
      legend: {orientation: "h", y: -0.2}, font: {family: "system-ui, sans-serif", size: 12},
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: {gridcolor: "#eef0f3", automargin: true}, yaxis: {gridcolor: "#eef0f3", rangemode: "tozero", automargin: true},
    }, extra || {});
  }

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

  function color(names) {
    const map = {};
    names.forEach((name, i) => { map[name] = PALETTE[i % PALETTE.length]; });
    return map;
  }

  function days(el, rows, colors) {
    const teams = [...new Set(rows.map((r) => r.team))].sort();
    const dates = [...new Set(rows.map((r) => r.day))].sort();
    const traces = teams.map((team) => {
      const byDay = {};
      rows.filter((r) => r.team === team).forEach((r) => { byDay[r.day] = r.core_seconds; });
      return {x: dates, y: dates.map((d) => hours(byDay[d] || 0)), name: Charts.esc(team),
              type: "bar", marker: {color: colors[team]}};
    });
    Plotly.react(el, traces, layout({xaxis: {type: "date", gridcolor: "#eef0f3"},
                                     yaxis: {title: {text: "core-hours"}, gridcolor: "#eef0f3", rangemode: "tozero"}}), CONFIG);
  }

  function shares(el, rows) {
    const names = rows.map((r) => Charts.esc(r.team));
    Plotly.react(el, [
      {x: names, y: rows.map((r) => r.usage_fraction * 100), name: "used", type: "bar", marker: {color: "#2f6fed"}},
      {x: names, y: rows.map((r) => r.share_fraction * 100), name: "share", type: "bar", marker: {color: "#d0d5dd"}},
    ], layout({barmode: "group", yaxis: {ticksuffix: "%", gridcolor: "#eef0f3", rangemode: "tozero"}}), CONFIG);
  }

  function users(el, rows) {
    const top = rows.slice().sort((a, b) => b.core_seconds - a.core_seconds).slice(0, 10).reverse();
    Plotly.react(el, [{y: top.map((r) => Charts.esc(r.user)), x: top.map((r) => hours(r.core_seconds)),
                       type: "bar", orientation: "h", marker: {color: "#12805c"}, name: "core-hours"}],
                 layout({showlegend: false, margin: {l: 90, r: 12, t: 8, b: 40},
                         xaxis: {title: {text: "core-hours"}, gridcolor: "#eef0f3"}}), CONFIG);
  }

  function table(rows) {
    const body = $("team-table").tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell("No attempt ended in this period.");
      td.colSpan = 11; td.className = "muted"; tr.append(td); body.append(tr);
      return;
    }
    rows.forEach((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.team), cell(r.jobs), cell(r.attempts), cell(r.lost), cell(r.preempted),
                cell(hours(r.core_seconds)), cell(hours(r.gpu_seconds)), cell(secs(r.wait_p50_seconds)),
                cell(secs(r.wait_p95_seconds)), cell(pct(r.usage_fraction)), cell(pct(r.share_fraction)));
      body.append(tr);
    });
  }

  function totals(rows) {
    const sum = (name) => rows.reduce((acc, r) => acc + r[name], 0);
    const box = $("totals");
    box.replaceChildren();
    [["Jobs", sum("jobs")], ["Attempts", sum("attempts")], ["Core-hours", hours(sum("core_seconds"))],
     ["GPU-hours", hours(sum("gpu_seconds"))], ["Lost", sum("lost")], ["Preempted", sum("preempted")]]
      .forEach(([label, value]) => {
        const div = document.createElement("div");
        const span = document.createElement("span"); span.className = "label"; span.textContent = label;
        const strong = document.createElement("strong"); strong.textContent = value;
        div.append(span, strong); box.append(div);
      });
  }

  function page(url) {
    async function load(since) {
      document.querySelectorAll("#periods button").forEach((b) => b.classList.toggle("on", b.dataset.since === since));
      $("csv").href = `${url}?since=${since}&group_by=team&format=csv`;
      const [byDay, byTeam, byUser] = await Promise.all([
        getJSON(`${url}?since=${since}&group_by=day,team`), getJSON(`${url}?since=${since}&group_by=team`),
        getJSON(`${url}?since=${since}&group_by=user`)]);
      const colors = color(byTeam.rows.map((r) => r.team).sort());
      days($("chart-days"), byDay.rows, colors);
      shares($("chart-shares"), byTeam.rows);
      users($("chart-users"), byUser.rows);
      table(byTeam.rows);
      totals(byTeam.rows);
      document.body.dataset.loaded = since;
    }
    document.querySelectorAll("#periods button").forEach((b) => b.addEventListener("click", () => load(b.dataset.since)));
    load("30d");
  }

  function planner() {
    const form = $("plan-form");
    function number(name) {
      const value = form.elements[name].value.trim();
      return value === "" ? null : Number(value);
    }
    function showErrors(errors) {
      form.querySelectorAll(".field").forEach((field) => {
        const p = field.querySelector(".error");
        const text = (errors[field.dataset.field] || []).join(" ");
        p.textContent = text; p.hidden = !text;
        field.classList.toggle("has-error", Boolean(text));
      });
    }
    function show(answer) {
      $("plan-answer").hidden = false;
      $("plan-slots").textContent = answer.slots_needed.toLocaleString();
      $("plan-nodes").textContent = `${answer.nodes_needed.toLocaleString()} × ${answer.slots_per_node} slots`;
      $("plan-slots-now").textContent = answer.slots_now.toLocaleString();
      $("plan-expected").textContent = answer.expected_s_now === null ? "no node online" : secs(answer.expected_s_now);
      $("plan-bottleneck").textContent = answer.bottleneck;
      $("plan-explanation").textContent = answer.explanation;
      const unit = answer.unit === "rows" ? "rows/s per slot" : "seconds per job";
      $("plan-samples").textContent = `${answer.samples} samples, ${unit}, queue ${answer.queue}`;
      const s = answer.spread;
      const tr = document.createElement("tr");
      [s.min, s.p10, s.median, s.p90, s.max, s.stdev].forEach((v) => tr.append(cell(v.toLocaleString())));
      $("plan-spread").tBodies[0].replaceChildren(tr);
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {kind: form.elements.kind.value, rows: number("rows"), window_s: number("window_s")};
      if (number("partitions") !== null) body.partitions = number("partitions");
      const response = await fetch(form.dataset.url, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", Accept: "application/json",
                  "X-CSRFToken": form.elements.csrfmiddlewaretoken.value},
        body: JSON.stringify(body)});
      const data = await response.json();
      if (response.ok) { showErrors({}); show(data); } else { showErrors(data); $("plan-answer").hidden = true; }
      document.body.dataset.planned = String(response.status);
    });
  }

  return {page, planner};
})();
