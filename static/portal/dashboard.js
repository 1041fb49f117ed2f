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

  // The jobs a node runs that this user may see, as links; the rest of its busy slots counted.
  function nodeJobs(node) {
    const jobs = node.jobs || [];
    const shown = jobs.reduce((sum, j) => sum + (j.slots || 1), 0);
    const other = Math.max(0, (node.running || 0) - shown);
    const box = el("p", {class: "node-jobs", data: {field: "jobs"}});
    jobs.forEach((j) => {
      const link = el("a", {href: `/jobs/${encodeURIComponent(j.id)}/`, title: j.name});
      link.textContent = `${j.id} · ${j.name}`;
      box.append(link, " ");
    });
    if (other) box.append(el("span", {class: "muted"}, `${other} other`));
    if (!jobs.length && !other) box.append(el("span", {class: "muted"}, "no jobs"));
    return box;
  }

  // Follows the jobs this user may see onto and off the nodes: a running job is on the nodes
  // its `node` names (a gang's are joined by "+"), any other state on none.
  function placeJob(nodes, event) {
    const id = String(event.job);
    const on = event.state === "running" && event.node ? event.node.split("+") : [];
    const touched = [];
    nodes.forEach((node, name) => {
      const jobs = node.jobs || [];
      const at = jobs.findIndex((j) => String(j.id) === id);
      if (on.includes(name)) {
        if (at < 0) { node.jobs = [...jobs, {id, name: event.name || event.kind || "", slots: 1}]; touched.push(name); }
      } else if (at >= 0) {
        node.jobs = jobs.filter((_, i) => i !== at);
        touched.push(name);
      }
    });
    return touched;
  }

  // The feed: lines as the server recorded them (a snapshot, then live ones), newest first,
  // each once (by id), at most `limit`; the link below goes on from the oldest one shown.
  function feedList(list, older) {
    const limit = +list.dataset.limit || 20;
    const ids = () => [...list.querySelectorAll("[data-event]")].map((item) => +item.dataset.event);
    function line(e) {
      const item = el("li", {class: `notice notice-${e.level}`, data: {event: String(e.id)}},
                      el("time", {datetime: e.at, title: Portal.exact(e.at)}, Portal.when(e.at)), " ");
      item.querySelector("time").dataset.relative = "";
      const href = e.job ? `/jobs/${encodeURIComponent(e.job)}/` : e.node ? `/nodes/${encodeURIComponent(e.node)}/` : null;
      if (href) { const link = el("a", {href}); link.textContent = e.text; item.append(link); }
      else item.append(e.text);
      return item;
    }
    function tidy() {
      const items = list.querySelectorAll("[data-event]");
      [...items].slice(limit).forEach((item) => item.remove());
      const left = ids();
      list.querySelector(".empty")?.remove();
      if (!left.length) list.append(el("li", {class: "muted empty"}, "Nothing has happened yet."));
      if (older) {
        older.hidden = !left.length;
        older.href = left.length >= limit ? `/events/?from=${Math.min(...left)}` : "/events/";
      }
    }
    return {
      show(events) {  // a snapshot: what the server has, newest first
        list.replaceChildren(...events.map(line));
        tidy();
      },
      add(e) {  // a live line: in its place by id, unless shown already
        if (ids().includes(e.id)) return false;
        const after = [...list.querySelectorAll("[data-event]")].find((item) => +item.dataset.event < e.id);
        list.insertBefore(line(e), after || null);
        tidy();
        return list.querySelector(`[data-event="${e.id}"]`) !== null;
      },
    };
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
         el("span", {data: {field: "seen", at: node.last_heartbeat || ""}}, ago(node.last_heartbeat))),
      nodeJobs(node));
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

    const feed = feedList($("notices"), $("feed-older"));

    function drawNode(name) {
      const card = nodeCard(nodes.get(name));
      const old = cards.querySelector(`[data-node="${CSS.escape(name)}"]`);
      if (old) old.replaceWith(card); else { cards.querySelector(".empty")?.remove(); cards.append(card); }
    }

    function showNode(node) {
      const before = nodes.get(node.name);
      // Two processes report nodes (heartbeats, and the loop that marks silent ones offline):
      // a report older than the one shown is stale.
      if (before && before.last_heartbeat && node.last_heartbeat
          && new Date(node.last_heartbeat) < new Date(before.last_heartbeat)) return;
      nodes.set(node.name, Object.assign({}, before || {}, node));
      drawNode(node.name);
    }

    // A state change goes to the feed once, as the server recorded it; an incident is the
    // alerts box's (staff), so only those who see no alerts get a toast for a bad line.
    function showEvent(e) {
      if (feed.add(e) && e.level === "bad" && !staff) toast(e.text, "bad");
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
        else if (event.type === "feed.event") showEvent(event);
        else if (event.type === "job.state") placeJob(nodes, event).forEach(drawNode);
        else if (event.type === "alert.fired") { showAlert(event); toast(event.message, "bad"); }
        else if (event.type === "alert.resolved") showAlert(event);
      },
      // A feed line is shown once whenever it comes (by its id); a job's end cannot go stale.
      keep: (event) => event.type.startsWith("alert.") || event.type === "feed.event"
        || (event.type === "job.state" && ["succeeded", "failed", "cancelled"].includes(event.state)),
      async resync() {
        const [summary] = await Promise.all([getJSON("/api/v1/cluster/"), loadSeries()]);
        cards.querySelectorAll("[data-node]").forEach((c) => c.remove());
        nodes.clear();
        summary.nodes.forEach(showNode);
        if (!summary.nodes.length) cards.replaceChildren(el("p", {class: "muted empty"}, "No node has reported yet."));
        feed.show(summary.events);
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
      showOther(n.running);
      const seen = $("node-seen");
      seen.dataset.at = n.last_heartbeat || "";
      seen.textContent = ago(n.last_heartbeat);
      const cores = util.cpu_cores || [];
      if (cores.length) {
        Charts.bars($("chart-cores"), cores.map((_, i) => `cpu${i}`), {cpu: cores},
                    {showlegend: false, height: 160, yaxis: {range: [0, 100], ticksuffix: "%", gridcolor: "#eef0f3"}});
      }
    }
    // Its busy slots that run no job listed here run jobs this user may not see.
    function showOther(running) {
      const box = $("node-running-jobs");
      const links = [...box.querySelectorAll("a[data-slots]")];
      const other = Math.max(0, (running || 0) - links.reduce((sum, a) => sum + (+a.dataset.slots || 1), 0));
      const note = box.querySelector("[data-field=other]");
      note.dataset.other = other;
      note.textContent = other ? `${other} other` : links.length ? "" : "nothing";
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
        const running = page.querySelector("#node-running-jobs");
        if (running) $("node-running-jobs").replaceWith(document.adoptNode(running));
      }, 2000);
    }
    const listed = (job) => [...$("node-jobs").querySelectorAll("td:first-child a")]
      .some((a) => a.textContent === String(job))
      || [...$("node-running-jobs").querySelectorAll("a")].some((a) => a.textContent.split(" ")[0] === String(job));
    // Each node.health on this stream is the node's whole health: none depends on the last, so
    // the snapshot gives no seq for it.
    new Portal.Stream(`/ws/nodes/${encodeURIComponent(name)}/?show=jobs`, {
      onEvent(event) {
        if (event.type === "job.state" && ((event.node || "").split("+").includes(name) || listed(event.job))) redrawJobs();
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

  // The events page: its first page follows the feed live; older pages stay as they are.
  function events(list) {
    const feed = feedList(list, null);
    new Portal.Stream("/ws/cluster/", {
      onEvent(event) { if (event.type === "feed.event") feed.add(event); },
      keep: (event) => event.type === "feed.event",
      async resync() {
        const page = await getJSON(`/api/v1/events/?limit=${+list.dataset.limit || 50}`);
        feed.show(page.results);
        return {};
      },
    });
  }

  return {cluster, node, events, toast, WINDOWS};
})();
