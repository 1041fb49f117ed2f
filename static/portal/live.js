/* Live updates: a websocket per page, a snapshot over HTTP first and after any gap in `seq`,
   reconnect with backoff and jitter. Everything user-supplied is set as text, never as HTML. */
"use strict";
const Portal = (() => {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const indicator = document.getElementById("live-indicator");

  function setStatus(state) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.querySelector(".live-text").textContent = state;
  }

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
      this.seq = {};
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
        this.syncing = null;
        const held = this.held;
        this.held = [];
        held.forEach((frame) => {
          if (this.seq[frame.stream] !== undefined) this.receive(frame);
          else frame.events.filter(this.keep).forEach((event) => this.onEvent(event));
        });
      }).catch(() => { this.syncing = null; this.held = []; setStatus("stale"); });
    }

    receive(frame) {
      // The server says hello once it has joined the streams: a snapshot taken after that
      // misses nothing (one taken on open could).
      if (frame.type === "hello") { setStatus("live"); this.sync(); return; }
      if (frame.type !== "batch") return;
      if (this.syncing) { this.held.push(frame); return; }
      const last = this.seq[frame.stream];
      if (last !== undefined && frame.seq <= last) return;
      if (last !== undefined && frame.seq !== last + 1) { this.sync(); return; }
      this.seq[frame.stream] = frame.seq;
      frame.events.forEach((event) => this.onEvent(event));
    }
  }

  function setState(el, state) {
    el.textContent = state;
    el.className = `state state-${state}`;
  }

  function watchJob(root) {
    const id = root.dataset.job;
    const $ = (sel) => document.getElementById(sel);
    const log = $("job-log");
    let lastLogSeq = 0;
    log.querySelectorAll("[data-seq]").forEach((line) => { lastLogSeq = Math.max(lastLogSeq, +line.dataset.seq); });

    function showProgress(fraction) {
      if (fraction === null || fraction === undefined) return;
      $("job-progress").value = fraction;
      $("job-progress-text").textContent = `${Math.round(fraction * 100)} %`;
    }
    function appendLog(key, level, text) {
      if (log.querySelector(`[data-key="${key}"]`)) return;
      const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      const line = document.createElement("span");
      line.className = `line level-${level}`;
      line.dataset.key = key;
      line.textContent = `${text}\n`;
      log.appendChild(line);
      if (follow) log.scrollTop = log.scrollHeight;
    }
    // The attempts table is drawn by the server: redrawn from the page when the state moves on.
    const shown = () => `${$("job-state").textContent}:${$("job-attempt").textContent}`;
    let attemptsDrawn = shown();
    async function redrawAttempts() {
      const response = await fetch(location.pathname, {credentials: "same-origin"});
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const rows = page.querySelector("#attempts tbody");
      if (rows) $("attempts").tBodies[0].replaceWith(document.adoptNode(rows));
    }
    function showJob(job) {
      if (job.state) setState($("job-state"), job.state);
      if (job.attempt !== undefined) $("job-attempt").textContent = job.attempt;
      if (job.node !== undefined) $("job-node").textContent = job.node || "—";
      if (job.message !== undefined) $("job-message").textContent = job.message;
      if (job.error) { $("job-error").textContent = job.error; $("job-error").hidden = false; }
      if (job.progress !== undefined) showProgress(job.progress);
      if (job.result !== undefined && job.result !== null) {
        $("job-result").textContent = JSON.stringify(job.result, null, 2);
        $("job-result-box").hidden = false;
      }
      if (job.state && TERMINAL.has(job.state)) $("cancel-form").hidden = true;
      if (shown() !== attemptsDrawn) { attemptsDrawn = shown(); redrawAttempts().catch(() => {}); }
    }

    new Stream(`/ws/jobs/${id}/`, {
      onEvent(event) {
        if (event.type === "job.state") {
          showJob(event);
          // The final state event carries no result: the snapshot has it.
          if (TERMINAL.has(event.state) && event.result === undefined) {
            getJSON(`/api/v1/jobs/${id}/`).then(showJob).catch(() => {});
          }
        } else if (event.type === "job.progress") {
          showProgress(event.progress);
          if (event.message !== undefined) $("job-message").textContent = event.message;
        } else if (event.type === "job.log") appendLog(`${event.attempt}:${event.seq}`, event.level, event.text);
      },
      async resync() {
        const job = await getJSON(`/api/v1/jobs/${id}/`);
        showJob(job);
        const page = await getJSON(`/api/v1/jobs/${id}/logs/?after=${lastLogSeq}`);
        page.lines.forEach((line) => appendLog(`${line.attempt}:${line.line}`, line.level, line.text));
        lastLogSeq = page.next_after;
        return {[`job-${id}`]: job.stream_seq};
      },
    });
  }

  function watchList(table) {
    const filter = table.dataset.state || "";
    function cell(child) {
      const td = document.createElement("td");
      td.append(child);
      return td;
    }
    function addRow(event) {
      // A job that appeared after the page loaded: newest first, built as text, never HTML.
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
      const created = new Date().toISOString().replace("T", " ").slice(0, 19);
      row.append(cell(link), cell(event.name || ""), cell(event.kind || ""), cell(state),
                 cell(progress), node, cell(created));
      row.cells[1].className = "name";
      setState(state, event.state);
      table.tBodies[0].querySelector("tr.empty")?.remove();
      table.tBodies[0].prepend(row);
      return row;
    }
    function update(event) {
      let row = table.querySelector(`tr[data-job="${event.job || event.id}"]`);
      if (!row && event.type === "job.state" && event.kind && (!filter || filter === event.state)) {
        row = addRow(event);
      }
      if (!row) return;
      if (event.state) setState(row.querySelector('[data-field="state"]'), event.state);
      if (event.progress !== undefined && event.progress !== null) row.querySelector('[data-field="progress"]').value = event.progress;
      if (event.node !== undefined) row.querySelector('[data-field="node"]').textContent = event.node;
    }
    new Stream("/ws/cluster/", {
      onEvent(event) { if (event.type === "job.state" || event.type === "job.progress") update(event); },
      // A job's final state cannot go stale, whenever it arrives.
      keep: (event) => event.type === "job.state" && TERMINAL.has(event.state),
      async resync() {
        const page = await getJSON("/api/v1/jobs/?limit=50");
        page.results.forEach(update);
        return {};
      },
    });
  }

  return {watchJob, watchList, Stream};
})();
