/* Live updates: a websocket per page, a snapshot over HTTP first and after any gap in `seq`,
   reconnect with backoff and jitter. Everything user-supplied is set as text, never as HTML. */
"use strict";
const Portal = (() => {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const indicator = document.getElementById("live-indicator");

  function setStatus(state) {
    if (!indicator) return;
    indicator.hidden = false;  // shown only on pages that stream: elsewhere it would say nothing
    indicator.dataset.state = state;
    indicator.querySelector(".live-text").textContent = state;
  }

  // One way to write a time: in UTC, said so; exact on hover ("2026-12-04 20:15:28 UTC"), and
  // relative ("3 min ago") where that says more. <time datetime=... data-relative> is kept so.
  const pad = (n) => String(n).padStart(2, "0");
  function exact(t) {
    const d = new Date(t);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${clock(d)}`;
  }
  function clock(t) {
    const d = new Date(t);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }
  function when(t) {
    const seconds = (Date.now() - new Date(t)) / 1000;
    if (seconds < -60 || seconds >= 86400) return exact(t).replace(/:\d\d UTC$/, " UTC");
    if (seconds < 45) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    return `${Math.round(seconds / 3600)} h ago`;
  }
  function stampTimes(root = document) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const at = el.getAttribute("datetime");
      if (!at || Number.isNaN(new Date(at).getTime())) return;
      el.title = exact(at);
      if (el.dataset.relative !== undefined) el.textContent = when(at);
    });
  }
  stampTimes();
  setInterval(() => stampTimes(), 30000);

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  class Stream {
    constructor(path, {onEvent, resync, keep = () => false}) {
      this.path = path;
      this.onEvent = onEvent;
      this.resync = resync;
      this.keep = keep;  // events still worth applying after a snapshot that gave no seq
      this.seq = {};  // per stream, the last seq applied
      this.base = {};  // per stream, the seq the last snapshot included
      this.failures = 0;
      this.syncing = null;
      this.connect();
    }

    connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      this.ws = new WebSocket(`${scheme}://${location.host}${this.path}`);
      setStatus(this.failures ? "reconnecting" : "connecting");
      this.ws.onopen = () => { this.failures = 0; };
      this.ws.onmessage = (message) => this.receive(JSON.parse(message.data));
      this.ws.onclose = (event) => {
        if (event.code === 4401 || event.code === 4404) { setStatus("denied"); return; }
        this.failures += 1;
        setStatus("reconnecting");
        const delay = Math.min(30000, 500 * 2 ** Math.min(this.failures, 6)) * (0.5 + Math.random() / 2);
        setTimeout(() => this.connect(), delay);
      };
    }

    sync() {
      // While a snapshot loads, frames are held; the snapshot says which seq it includes, and
      // the held frames after it are applied then (on a stream it gives no seq for, only the
      // events `keep` accepts).
      this.held = [];
      this.syncing = this.resync().then((seqs) => {
        this.seq = Object.assign({}, seqs || {});
        this.base = Object.assign({}, seqs || {});
        this.syncing = null;
        setStatus("live");
        const held = this.held;
        this.held = [];
        held.forEach((frame) => {
          if (this.seq[frame.stream] !== undefined) this.receive(frame);
          else frame.events.filter(this.keep).forEach((event) => this.onEvent(event));
        });
      }).catch(() => {
        // Shown as stale until a snapshot loads: tried again while the socket is open.
        this.syncing = null;
        this.held = [];
        setStatus("stale");
        setTimeout(() => { if (this.ws.readyState === WebSocket.OPEN) this.sync(); }, 5000);
      });
    }

    receive(frame) {
      // The server says hello once it has joined the streams: a snapshot taken after that
      // misses nothing (one taken on open could).
      if (frame.type === "hello") { this.sync(); return; }
      if (frame.type !== "batch") return;
      if (this.syncing) { this.held.push(frame); return; }
      const last = this.seq[frame.stream];
      if (last !== undefined && frame.seq <= last) {
        // Numbered before the snapshot: it is in it. Numbered after but arriving late (two
        // processes publish to a stream): what it says may be newer than what is shown.
        const base = this.base[frame.stream];
        if (base === undefined) frame.events.filter(this.keep).forEach((event) => this.onEvent(event));
        else if (frame.seq > base) this.sync();
        return;
      }
      if (last !== undefined && frame.seq !== last + 1) { this.sync(); return; }
      this.seq[frame.stream] = frame.seq;
      frame.events.forEach((event) => this.onEvent(event));
    }
  }

  // Charts (charts.js and Plotly) are loaded only by the pages that draw them.
  const hasCharts = () => typeof Charts !== "undefined" && typeof Plotly !== "undefined";

  function setState(el, state) {
    el.textContent = state;
    el.className = `state state-${state}`;
  }

  function watchJob(root) {
    const id = root.dataset.job;
    const $ = (sel) => document.getElementById(sel);
    const log = $("job-log");
    const gang = root.dataset.gang === "1";  // its lines say which rank wrote them
    let lastLogSeq = 0;
    log.querySelectorAll("[data-seq]").forEach((line) => { lastLogSeq = Math.max(lastLogSeq, +line.dataset.seq); });

    // Progress, with a rate and an ETA from the last 20 s of reports. Every sample is the
    // fraction done, whoever gave it (the snapshot has only the fraction, live reports also count
    // done of total): the rate in items is the fraction's rate times the total. Until reports
    // span a few seconds, nothing is said rather than a guess.
    const samples = [];
    const RATE_AFTER_MS = 3000;
    let total = null, unit = "";
    function showProgress(fraction, done, reportedTotal, reportedUnit) {
      if (fraction === null || fraction === undefined) return;
      $("job-progress").value = fraction;
      $("job-progress-text").textContent = `${Math.round(fraction * 100)} %`;
      if (reportedTotal) { total = reportedTotal; unit = reportedUnit || unit; }
      const now = Date.now();
      if (samples.length && fraction < samples[samples.length - 1].x) samples.length = 0;  // a new attempt
      samples.push({t: now, x: fraction});
      while (samples.length > 2 && now - samples[0].t > 20000) samples.shift();
      const first = samples[0];
      const perSecond = now - first.t >= RATE_AFTER_MS ? (fraction - first.x) / ((now - first.t) / 1000) : 0;
      let text = "";
      if (perSecond > 0) {
        if (total) {
          const items = perSecond * total;
          text = `${items.toFixed(items < 10 ? 1 : 0)} ${unit || "items"}/s · `;
        }
        text += `ETA ${duration((1 - fraction) / perSecond)}`;
      }
      $("job-rate").textContent = fraction >= 1 ? "" : text;
    }
    function duration(seconds) {
      const s = Math.max(0, Math.round(seconds));
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
      return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
    }

    // The log: follow the tail (or not), pause (lines wait), search (others hidden).
    const follow = $("log-follow"), pause = $("log-pause"), search = $("log-search");
    let paused = false;
    let waiting = [];
    function matches(line) {
      const q = search.value.trim().toLowerCase();
      return !q || line.textContent.toLowerCase().includes(q);
    }
    function filter() {
      let hits = 0;
      log.querySelectorAll(".line").forEach((line) => {
        const hit = matches(line);
        line.hidden = !hit;
        hits += hit ? 1 : 0;
      });
      $("log-hits").textContent = search.value.trim() ? `${hits} matching` : "";
    }
    // Each line with its time; a marker where another attempt's lines begin (a retried job
    // says "sleeping 120 s" once per attempt).
    const keyOf = (el) => el.dataset.key || "";
    let lastAttempt = [...log.querySelectorAll(".line[data-key]")].map((el) => keyOf(el).split(":")[0]).pop() || null;
    function logLine(className, key, parts) {
      const line = document.createElement("span");
      line.className = className;
      if (key) line.dataset.key = key;
      line.append(...parts, "\n");
      return line;
    }
    function place(line) {
      if (paused) { waiting.push(line); pause.textContent = `Resume (${waiting.length})`; return; }
      line.hidden = !matches(line);
      log.appendChild(line);
    }
    function appendLog(key, level, text, ts) {
      if (log.querySelector(`[data-key="${key}"]`)) return;
      const attempt = key.split(":")[0];
      if (attempt !== lastAttempt) {
        place(logLine("line attempt-mark", "", [`── attempt ${attempt} ──`]));
        lastAttempt = attempt;
      }
      const stamp = document.createElement("span");
      stamp.className = "ts";
      stamp.textContent = ts ? clock(ts).replace(" UTC", "") : "";
      if (ts) stamp.title = exact(ts);
      place(logLine(`line level-${level}`, key, [stamp, ` ${text}`]));
      if (follow.checked && !paused) log.scrollTop = log.scrollHeight;
    }
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        waiting.forEach((line) => { line.hidden = !matches(line); log.appendChild(line); });
        waiting = [];
        if (follow.checked) log.scrollTop = log.scrollHeight;
      }
    });
    search.addEventListener("input", filter);
    follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });
    log.scrollTop = log.scrollHeight;

    // Attempts: a table and a timeline, from the job's snapshot; the running bar grows.
    let lastAttempts = null;
    setInterval(() => {
      if (lastAttempts && hasCharts() && !TERMINAL.has($("job-state").textContent)) {
        Charts.timeline($("job-timeline"), lastAttempts);
      }
    }, 5000);
    function showAttempts(attempts) {
      if (!attempts) return;
      lastAttempts = attempts;
      const rows = attempts.map((a) => {
        const tr = document.createElement("tr");
        const time = (t) => (t ? clock(t) : "—");
        [a.number, a.state, a.node || "—", time(a.started_at), time(a.finished_at), a.error]
          .forEach((value) => { const td = document.createElement("td"); td.textContent = value; tr.append(td); });
        return tr;
      });
      $("attempts").tBodies[0].replaceChildren(...rows);
      if (hasCharts() && attempts.length) Charts.timeline($("job-timeline"), attempts);
    }

    function showArtifacts(list) {
      $("artifacts-box").hidden = !list.length;
      $("artifacts").replaceChildren(...list.map((a) => {
        const item = document.createElement("li");
        const link = document.createElement("a");
        link.href = a.url;
        link.setAttribute("download", "");
        link.textContent = a.name;
        const size = document.createElement("span");
        size.className = "muted";
        size.textContent = ` ${(a.size / 1024).toFixed(1)} kB`;
        item.append(link, size);
        return item;
      }));
    }

    // Metric charts: one per name, except that a validation series (val_loss) is drawn over
    // its training one (loss). A series of a single point is a figure, not a chart.
    const charts = new Map();  // chart key -> its box
    const metricPoints = new Map();  // series name -> [{step, value}]
    const chartKey = (name) => {
      const base = name.startsWith("val_") ? name.slice(4) : null;
      return base && (base === "loss" || metricPoints.has(base)) ? base : name;
    };
    function chartFor(key) {
      if (charts.has(key)) return charts.get(key);
      $("job-metrics-box").hidden = false;
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = key;
      const box = document.createElement("div");
      box.className = "chart";
      figure.append(caption, box);
      $("job-metrics").append(figure);
      charts.set(key, box);
      // A new chart can change the grid: the others take their new widths.
      charts.forEach((other) => { if (other !== box && other.data) Plotly.Plots.resize(other); });
      return box;
    }
    function drawChart(key) {
      const box = chartFor(key);
      const names = [...metricPoints.keys()].filter((name) => chartKey(name) === key);
      const caption = box.parentElement.querySelector("figcaption");
      caption.textContent = names.join(" · ");
      if (names.every((name) => metricPoints.get(name).length <= 1)) {
        if (box.data) Plotly.purge(box);
        box.className = "metric-figure";
        box.textContent = names.map((name) => {
          const point = metricPoints.get(name)[0];
          const digits = point && Math.abs(point.value) >= 100 ? 0 : 3;
          return point ? Number(point.value).toLocaleString(undefined, {maximumFractionDigits: digits}) : "—";
        }).join(" · ");
        return;
      }
      box.className = "chart";
      Charts.metrics(box, names.map((name) => ({name, points: metricPoints.get(name)})));
    }
    function showMetrics(series) {
      Object.entries(series).forEach(([name, points]) => metricPoints.set(name, points.slice()));
      new Set([...metricPoints.keys()].map(chartKey)).forEach(drawChart);
    }
    function addMetric(event) {
      const points = metricPoints.get(event.name) || [];
      if (points.length && event.step <= points[points.length - 1].step) return;  // had it
      points.push({step: event.step, value: event.value});
      metricPoints.set(event.name, points);
      drawChart(chartKey(event.name));
    }

    // A fan-out's partitions: one row each, updated by their own events on this job's stream;
    // their durations side by side show skew and stragglers.
    const partitions = new Map();
    function showPartition(p) {
      const before = partitions.get(String(p.id)) || {};
      const part = Object.assign(before, p);
      partitions.set(String(p.id), part);
      $("partitions-box").hidden = false;
      let row = $("partitions").querySelector(`tr[data-job="${CSS.escape(String(p.id))}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.job = p.id;
        for (let i = 0; i < 7; i += 1) row.append(document.createElement("td"));
        const rows = [...$("partitions").tBodies[0].rows];
        const after = rows.find((r) => +r.dataset.partition > part.partition);
        $("partitions").tBodies[0].insertBefore(row, after || null);
      }
      row.dataset.partition = part.partition;
      const seconds = part.started_at ? ((part.finished_at ? new Date(part.finished_at) : new Date()) - new Date(part.started_at)) / 1000 : null;
      const done = part.done === null || part.done === undefined ? "—" : `${Number(part.done).toLocaleString()} ${part.unit || ""}`;
      const link = document.createElement("a");
      link.href = `/jobs/${part.id}/`;
      link.textContent = part.partition;
      row.cells[0].replaceChildren(link);
      const pill = row.cells[1].firstChild || row.cells[1].appendChild(document.createElement("span"));
      setState(pill, part.state);
      [part.node || "—", part.attempt, done, seconds === null ? "—" : `${seconds.toFixed(1)} s`, part.error || part.message || ""]
        .forEach((value, i) => { row.cells[i + 2].textContent = value; });
      part.seconds = seconds;
      drawPartitions();
    }
    let partitionsDrawn = 0;
    let partitionsLater = null;
    function drawPartitions() {
      const parts = [...partitions.values()].sort((a, b) => a.partition - b.partition);
      const ended = parts.filter((p) => TERMINAL.has(p.state)).length;
      $("partitions-summary").textContent = `${ended} of ${parts.length} ended`;
      if (!hasCharts()) return;
      const wait = 1000 - (Date.now() - partitionsDrawn);
      if (wait > 0) {  // at most once a second, and the last change is always drawn
        partitionsLater = partitionsLater || setTimeout(() => { partitionsLater = null; drawPartitions(); }, wait);
        return;
      }
      partitionsDrawn = Date.now();
      Charts.partitions($("partitions-chart"), parts);
    }
    function onPartitionEvent(event) {
      if (event.type !== "job.state" && event.type !== "job.progress") return;
      const part = {id: event.job};
      ["state", "node", "attempt", "progress", "done", "total", "unit", "message", "error"].forEach((k) => {
        if (event[k] !== undefined) part[k] = event[k];
      });
      if (event.started_at) part.started_at = event.started_at;
      if (event.finished_at) part.finished_at = event.finished_at;
      if (partitions.has(String(event.job)) || event.partition !== undefined) showPartition(part);
      else getJSON(`/api/v1/jobs/${event.job}/`).then(showPartition).catch(() => {});
    }

    // While it waits for admission, its place in line moves as others are let in.
    setInterval(() => {
      if ($("job-state").textContent === "pending") getJSON(`/api/v1/jobs/${id}/`).then(showJob).catch(() => {});
    }, 5000);

    const shown = () => `${$("job-state").textContent}:${$("job-attempt").textContent}`;
    let attemptsDrawn = shown();
    function showJob(job) {
      if (job.state) setState($("job-state"), job.state);
      if (job.attempt !== undefined) $("job-attempt").textContent = job.attempt;
      if (job.node !== undefined) $("job-node").textContent = job.node || "—";
      if (job.message !== undefined) $("job-message").textContent = job.message;
      // Waiting for admission: its place among its team's waiting jobs (the snapshot has it).
      if (job.place_in_line !== undefined) $("job-line").textContent = job.place_in_line || "";
      if (job.state) $("job-line-box").hidden = job.state !== "pending" || !$("job-line").textContent;
      if (job.error) { $("job-error").textContent = job.error; $("job-error").hidden = false; }
      if (job.progress !== undefined) showProgress(job.progress);
      if (job.result !== undefined && job.result !== null) {
        $("job-result").textContent = JSON.stringify(job.result, null, 2);
        $("job-result-box").hidden = false;
      }
      if (job.state && TERMINAL.has(job.state)) { $("cancel-form").hidden = true; $("job-rate").textContent = ""; }
      if (job.state && $("retry-form")) $("retry-form").hidden = job.state !== "failed" && job.state !== "cancelled";
      if (job.attempts) { attemptsDrawn = shown(); showAttempts(job.attempts); }
      else if (shown() !== attemptsDrawn) {
        attemptsDrawn = shown();
        getJSON(`/api/v1/jobs/${id}/`).then((fresh) => showAttempts(fresh.attempts)).catch(() => {});
      }
    }

    new Stream(`/ws/jobs/${id}/`, {
      onEvent(event) {
        if (event.job !== undefined && String(event.job) !== String(id)) { onPartitionEvent(event); return; }
        if (event.type === "job.artifact") { getJSON(`/api/v1/jobs/${id}/artifacts/`).then(showArtifacts).catch(() => {}); return; }
        if (event.type === "job.state") {
          showJob(event);
          // The final state event carries no result: the snapshot has it.
          if (TERMINAL.has(event.state) && event.result === undefined) {
            getJSON(`/api/v1/jobs/${id}/`).then(showJob).catch(() => {});
          }
        } else if (event.type === "job.progress") {
          showProgress(event.progress, event.done, event.total, event.unit);
          if (event.message !== undefined) $("job-message").textContent = event.message;
        } else if (event.type === "job.log") appendLog(`${event.attempt}:${event.rank || 0}:${event.seq}`, event.level,
          event.rank === undefined ? event.text : `[rank ${event.rank}] ${event.text}`, event.ts);
        else if (event.type === "job.metric" && hasCharts()) addMetric(event);
      },
      async resync() {
        const job = await getJSON(`/api/v1/jobs/${id}/`);
        showJob(job);
        (job.partitions || []).forEach(showPartition);
        const page = await getJSON(`/api/v1/jobs/${id}/logs/?after=${lastLogSeq}`);
        page.lines.forEach((line) => appendLog(`${line.attempt}:${line.rank}:${line.line}`, line.level,
          gang ? `[rank ${line.rank}] ${line.text}` : line.text, line.ts));
        lastLogSeq = page.next_after;
        if (hasCharts()) showMetrics((await getJSON(`/api/v1/jobs/${id}/metrics/`)).series);
        return {[`job-${id}`]: job.stream_seq};
      },
    });
  }

  function watchList(table) {
    // Rows on the page follow their jobs in place. A new job that matches the filters goes on
    // top where the top is its place (newest first, first page); elsewhere it is only counted.
    const filter = table.dataset.state || "", kind = table.dataset.kind || "";
    const q = (table.dataset.q || "").toLowerCase();
    const internal = new Set((table.dataset.internal || "").split(",").filter(Boolean));
    const onTop = table.dataset.liveNew === "1";
    const seen = new Set();
    function cell(child) {
      const td = document.createElement("td");
      td.append(child);
      return td;
    }
    function matches(event) {
      return event.type === "job.state" && event.kind && !internal.has(event.kind) &&
        (!filter || filter === event.state) && (!kind || kind === event.kind) &&
        (!q || String(event.name || "").toLowerCase().includes(q));
    }
    function addRow(event) {
      // Built as text, never HTML.
      const id = String(event.job || event.id);
      const link = document.createElement("a");
      link.href = `/jobs/${id}/`;
      link.textContent = id;
      const state = document.createElement("span");
      state.dataset.field = "state";
      const progress = document.createElement("progress");
      progress.max = 1;
      progress.value = 0;
      progress.dataset.field = "progress";
      const row = document.createElement("tr");
      row.dataset.job = id;
      const node = cell(event.node || "");
      node.dataset.field = "node";
      const created = document.createElement("time");
      created.textContent = when(new Date());
      created.title = exact(new Date());
      row.append(cell(link), cell(event.name || ""), cell(event.kind || ""), cell(state),
                 cell(progress), cell(event.team || ""), cell(event.owner || ""), node,
                 cell(created), cell("—"));
      row.cells[1].className = "name";
      setState(state, event.state);
      table.tBodies[0].querySelector("tr.empty")?.remove();
      table.tBodies[0].prepend(row);
      return row;
    }
    function announce(event) {
      const id = String(event.job || event.id);
      if (seen.has(id)) return;
      seen.add(id);
      document.getElementById("new-count").textContent = seen.size;
      document.getElementById("new-jobs").hidden = false;
    }
    function update(event) {
      let row = table.querySelector(`tr[data-job="${event.job || event.id}"]`);
      if (!row && matches(event)) {
        if (onTop) row = addRow(event);
        else { announce(event); return; }
      }
      if (!row) return;
      if (event.state) setState(row.querySelector('[data-field="state"]'), event.state);
      if (event.progress !== undefined && event.progress !== null) row.querySelector('[data-field="progress"]').value = event.progress;
      if (event.node !== undefined) row.querySelector('[data-field="node"]').textContent = event.node;
    }
    const query = new URLSearchParams({limit: "50"});
    if (filter) query.set("state", filter);
    if (kind) query.set("kind", kind);
    if (q) query.set("q", table.dataset.q);
    new Stream("/ws/cluster/?show=jobs", {
      onEvent(event) { if (event.type === "job.state" || event.type === "job.progress") update(event); },
      // A job's final state cannot go stale, whenever it arrives.
      keep: (event) => event.type === "job.state" && TERMINAL.has(event.state),
      async resync() {
        if (!onTop) return {};  // the rows shown are not the newest: nothing to add from there
        // Rows shown follow, and jobs made while the socket was away (or before it could carry
        // them: a user's first job makes their team) are added, oldest first, newest on top.
        const page = await getJSON(`/api/v1/jobs/?${query}`);
        [...page.results].reverse().forEach((job) => update({type: "job.state", ...job}));
        return {};
      },
    });
  }

  return {watchJob, watchList, Stream, exact, clock, when, stampTimes};
})();
