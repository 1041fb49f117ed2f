/* The cluster overview and the node page: a snapshot over HTTP, then deltas over a websocket
   that carries what the page shows: the overview's /ws/cluster/ the node cards (a node's only
   when it moved), the summary, failed jobs and alerts; a node page's /ws/nodes/NAME/ that node's
   whole health at each heartbeat (each core too) and the states of the jobs it lists.
   Node cards, tables, notices and toasts are built as text, never as HTML. */
"use strict";
const Dashboard = (() => {
  const WINDOWS = {900: "15 min", 3600: "1 h", 86400: "24 h", 604800: "7 d"};
  const LIVE_MAX_WINDOW = 3600;  // longer windows are minute rollups: reloaded, not extended
  const $ = (id) => document.getElementById(id);

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs).forEach(([k, v]) => {
      if (k === "class") node.className = v; else if (k === "data") Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    });
    children.forEach((c) => node.append(c));
    return node;
  }

  function pct(value) { return value === null || value === undefined ? "—" : `${Math.round(value)} %`; }

  function rate(bps) {
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let value = bps || 0, i = 0;
    while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
    return `${value.toFixed(value < 10 && i ? 1 : 0)} ${units[i]}`;
  }

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  function meter(label, value) {
    const bar = el("progress", {max: "100"});
    bar.value = value || 0;
    return el("div", {class: "meter"}, el("span", {class: "label"}, label), bar,
              el("span", {class: "figure"}, pct(value)));
  }

  function gpuSummary(util) {
    const gpus = (util && util.gpus) || [];
    if (!gpus.length) return null;
    return gpus.reduce((sum, g) => sum + (g.util || 0), 0) / gpus.length;
  }

  function nodeCard(node) {
    const util = node.utilization || {};
    const state = el("span", {class: `state node-${node.state}`, data: {field: "state"}});
    state.textContent = node.state;
    const name = el("a", {href: `/nodes/${encodeURIComponent(node.name)}/`, class: "node-name"});
    name.textContent = node.name;
    const gpu = gpuSummary(util);
    const card = el("article", {class: `node-card node-${node.state}`, data: {node: node.name}},
      el("header", {}, name, state),
      meter("CPU", util.cpu), meter("Mem", util.mem),
      gpu === null ? el("div", {class: "meter muted"}, el("span", {class: "label"}, "GPU"), "none")
        : meter("GPU", gpu),
      el("footer", {class: "muted"},
         `${node.running ?? 0} / ${node.concurrency ?? 0} running · `,
         el("span", {data: {field: "seen", at: node.last_heartbeat || ""}}, ago(node.last_heartbeat))));
    return card;
  }

  // Toasts: short-lived notices in a corner, text only.
  function toast(text, level = "info") {
    let box = $("toasts");
    if (!box) { box = el("div", {id: "toasts", class: "toasts", "aria-live": "polite"}); document.body.append(box); }
    const item = el("div", {class: `toast toast-${level}`});
    item.textContent = text;
    box.append(item);
    setTimeout(() => item.remove(), 8000);
  }

  function notice(list, text, level = "info") {
    if (!list) return;
    list.querySelector(".empty")?.remove();
    const item = el("li", {class: `notice notice-${level}`},
                    el("time", {title: Portal.exact(new Date())}, Portal.clock(new Date())), " ");
    item.append(text);
    list.prepend(item);
    while (list.children.length > 30) list.lastChild.remove();
  }

  function windowPicker(root, initial, onPick) {
    root.querySelectorAll("button[data-window]").forEach((button) => {
      button.classList.toggle("on", +button.dataset.window === initial);
      button.addEventListener("click", () => {
        root.querySelectorAll("button[data-window]").forEach((b) => b.classList.toggle("on", b === button));
        onPick(+button.dataset.window);
      });
    });
  }

  function cluster({staff}) {
    const cards = $("nodes");
    const nodes = new Map();  // name -> node as last reported
    let windowS = 900;
    let lastLive = 0;

    function showNode(node) {
      const before = nodes.get(node.name);
      // Two processes report nodes (heartbeats, and the loop that marks silent ones offline):
      // a report older than the one shown is stale.
      if (before && before.last_heartbeat && node.last_heartbeat
          && new Date(node.last_heartbeat) < new Date(before.last_heartbeat)) return;
      nodes.set(node.name, Object.assign({}, before || {}, node));
      const card = nodeCard(nodes.get(node.name));
      const old = cards.querySelector(`[data-node="${CSS.escape(node.name)}"]`);
      if (old) old.replaceWith(card); else { cards.querySelector(".empty")?.remove(); cards.append(card); }
      if (before && node.changed && before.state !== node.state) {
        const text = node.state === "offline" ? `node ${node.name} offline: no heartbeat`
          : `node ${node.name} ${node.state}`;
        notice($("notices"), text, node.state === "offline" ? "bad" : "info");
        if (node.state === "offline") toast(text, "bad");
      }
    }

    function showSummary(summary) {
      const s = summary.jobs_by_state;
      Charts.bars($("chart-states"), Object.keys(s), {jobs: Object.values(s)},
                  {showlegend: false, barmode: "group"});
      $("chart-states").data && ($("chart-states").data[0].marker.color = Object.keys(s).map((k) => Charts.COLORS[k]));
      Plotly.redraw($("chart-states"));
      const queues = summary.queues;
      Charts.bars($("chart-queues"), queues.map((q) => q.name),
                  {pending: queues.map((q) => q.pending), queued: queues.map((q) => q.queued),
                   running: queues.map((q) => q.running)});
      const body = $("queue-table").tBodies[0];
      body.replaceChildren(...queues.map((q) => {
        const wait = q.oldest_wait_s === null ? "—" : `${Math.round(q.oldest_wait_s)} s`;
        return el("tr", {}, el("td", {}, q.name), el("td", {}, String(q.pending + q.queued)),
                  el("td", {}, String(q.running)), el("td", {}, wait));
      }));
      const f = summary.finished_per_minute;
      Charts.bars($("chart-finished"), f.t, {succeeded: f.succeeded, failed: f.failed,
                                            cancelled: f.cancelled},
                  {xaxis: {type: "date", gridcolor: "#eef0f3"}});
    }

    async function loadSeries() {
      const series = await getJSON(`/api/v1/cluster/metrics/?window=${windowS}&points=240`);
      await Charts.utilization($("chart-util"), series, windowS * 1000);
    }

    function liveUtilization() {
      // The cluster mean of what the cards show, added to the chart at most every 2 s.
      if (windowS > LIVE_MAX_WINDOW || Date.now() - lastLive < 2000) return;
      const online = [...nodes.values()].filter((n) => n.state !== "offline" && n.utilization);
      if (!online.length) return;
      lastLive = Date.now();
      const mean = (f) => online.reduce((sum, n) => sum + (f(n) || 0), 0) / online.length;
      const gpus = online.map((n) => gpuSummary(n.utilization)).filter((g) => g !== null);
      Charts.extend($("chart-util"), {t: new Date().toISOString(), cpu: mean((n) => n.utilization.cpu),
                                      mem: mean((n) => n.utilization.mem),
                                      gpu: gpus.length ? gpus.reduce((a, b) => a + b) / gpus.length : undefined},
                    windowS * 1000);
    }

    function showAlert(alert) {
      const list = $("alert-list");
      const id = String(alert.id);
      list.querySelector(`[data-alert="${CSS.escape(id)}"]`)?.remove();
      if (!alert.resolved_at) {
        const item = el("li", {data: {alert: id}, class: "alert", title: alert.subject},
                        el("time", {title: Portal.exact(alert.fired_at)}, Portal.when(alert.fired_at)), " ");
        item.append(alert.message);
        list.prepend(item);
      }
      $("alerts").hidden = !list.children.length;
    }

    windowPicker($("windows"), windowS, (w) => { windowS = w; loadSeries().catch(() => {}); });
    setInterval(() => {
      document.querySelectorAll("[data-field=seen]").forEach((s) => { s.textContent = ago(s.dataset.at); });
    }, 1000);
    setInterval(() => { if (windowS > LIVE_MAX_WINDOW) loadSeries().catch(() => {}); }, 60000);

    new Portal.Stream("/ws/cluster/?show=nodes,jobs,alerts", {
      onEvent(event) {
        if (event.type === "node.health") { showNode(event.node ? {...event, name: event.node} : event); liveUtilization(); }
        else if (event.type === "cluster.summary") showSummary(event);
        else if (event.type === "job.notice") { notice($("notices"), event.text); toast(event.text); }
        else if (event.type === "job.state" && event.state === "failed") {
          notice($("notices"), `job ${event.job}${event.name ? ` (${event.name})` : ""} failed`, "bad");
        } else if (event.type === "alert.fired") {
          showAlert(event); notice($("notices"), event.message, "bad"); toast(event.message, "bad");
        } else if (event.type === "alert.resolved") { showAlert(event); notice($("notices"), `resolved: ${event.subject}`); }
      },
      keep: (event) => event.type.startsWith("alert.") || event.type === "job.notice",
      async resync() {
        const [summary] = await Promise.all([getJSON("/api/v1/cluster/"), loadSeries()]);
        cards.querySelectorAll("[data-node]").forEach((c) => c.remove());
        nodes.clear();
        summary.nodes.forEach(showNode);
        if (!summary.nodes.length) cards.replaceChildren(el("p", {class: "muted empty"}, "No node has reported yet."));
        showSummary(summary);
        if (staff) {
          const alerts = await getJSON("/api/v1/alerts/");
          $("alert-list").replaceChildren();
          alerts.reverse().forEach(showAlert);
        }
        return {cluster: summary.stream_seq};
      },
    });
  }

  function node(root) {
    const name = root.dataset.node;
    let windowS = 900;
    let lastLive = 0;
    function show(n) {
      const util = n.utilization || {};
      const state = $("node-state");
      state.textContent = n.state;
      state.className = `state node-${n.state}`;
      $("node-cpu").textContent = pct(util.cpu);
      $("node-mem").textContent = pct(util.mem);
      $("node-gpu").textContent = gpuSummary(util) === null ? "no GPU" : pct(gpuSummary(util));
      $("node-load").textContent = util.load1 === undefined ? "—" : util.load1.toFixed(2);
      $("node-swap").textContent = pct(util.swap);
      $("node-disk").textContent = pct(util.disk);
      $("node-net").textContent = util.net_rx_bps === undefined ? "—"
        : `${rate(util.net_rx_bps)} in · ${rate(util.net_tx_bps)} out`;
      $("node-procs").textContent = util.procs ?? "—";
      $("node-running").textContent = `${n.running ?? 0} / ${n.concurrency ?? 0}`;
      const seen = $("node-seen");
      seen.dataset.at = n.last_heartbeat || "";
      seen.textContent = ago(n.last_heartbeat);
      const cores = util.cpu_cores || [];
      if (cores.length) {
        Charts.bars($("chart-cores"), cores.map((_, i) => `cpu${i}`), {cpu: cores},
                    {showlegend: false, height: 160, yaxis: {range: [0, 100], ticksuffix: "%", gridcolor: "#eef0f3"}});
      }
    }
    async function loadSeries() {
      const series = await getJSON(`/api/v1/nodes/${encodeURIComponent(name)}/metrics/?window=${windowS}&points=240`);
      await Charts.utilization($("chart-node"), series, windowS * 1000);
    }
    windowPicker($("windows"), windowS, (w) => { windowS = w; loadSeries().catch(() => {}); });
    setInterval(() => { const s = $("node-seen"); s.textContent = ago(s.dataset.at); }, 1000);
    // The jobs table is drawn by the server: drawn again (at most every 2 s) when one of the
    // user's jobs starts here or one listed moves on.
    let redraw = null;
    function redrawJobs() {
      redraw = redraw || setTimeout(async () => {
        redraw = null;
        const response = await fetch(location.pathname, {credentials: "same-origin"});
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const rows = page.querySelector("#node-jobs tbody");
        if (rows) $("node-jobs").tBodies[0].replaceWith(document.adoptNode(rows));
      }, 2000);
    }
    const listed = (job) => [...$("node-jobs").querySelectorAll("td:first-child a")]
      .some((a) => a.textContent === String(job));
    // Each node.health on this stream is the node's whole health: none depends on the last, so
    // the snapshot gives no seq for it.
    new Portal.Stream(`/ws/nodes/${encodeURIComponent(name)}/?show=jobs`, {
      onEvent(event) {
        if (event.type === "job.state" && (event.node === name || listed(event.job))) redrawJobs();
        if (event.type !== "node.health" || event.node !== name) return;
        show(event);
        if (windowS <= LIVE_MAX_WINDOW && Date.now() - lastLive >= 2000) {
          lastLive = Date.now();
          const u = event.utilization || {};
          Charts.extend($("chart-node"), {t: new Date().toISOString(), cpu: u.cpu, mem: u.mem,
                                          gpu: gpuSummary(u) ?? undefined}, windowS * 1000);
        }
      },
      async resync() {
        const [nodes] = await Promise.all([getJSON("/api/v1/nodes/"), loadSeries()]);
        const n = nodes.find((x) => x.name === name);
        if (n) show(n);
        return {};
      },
    });
  }

  return {cluster, node, toast, WINDOWS};
})();
