/* Plotly with the portal's look. Labels that come from users (metric names, node names) are
   escaped first: Plotly reads a few HTML-like tags in its labels, and we want text only. */
"use strict";
const Charts = (() => {
  const COLORS = {cpu: "#2f6fed", mem: "#12805c", gpu: "#b54708", succeeded: "#12805c",
                  failed: "#c4320a", cancelled: "#f5b83d", running: "#2f6fed", queued: "#98a2b3",
                  pending: "#d0d5dd", lost: "#7a271a"};
  const CONFIG = {displayModeBar: false, responsive: true};

  function esc(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function layout(extra = {}) {
    return Object.assign({
      margin: {l: 44, r: 12, t: 8, b: 32}, height: 220, showlegend: true,
      legend: {orientation: "h", y: -0.22}, font: {family: "system-ui, sans-serif", size: 12},
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: {gridcolor: "#eef0f3"}, yaxis: {gridcolor: "#eef0f3", rangemode: "tozero"},
    }, extra);
  }

  function draw(el, traces, extra) {
    return Plotly.react(el, traces, layout(extra), CONFIG);
  }

  // Utilization (percent) over time: cpu, mem and, where there are GPUs, gpu.
  // The x axis is the whole window (a single point, or none, still gets a time axis), and the
  // server's empty points are gaps: a time nothing was sampled is not drawn as a line.
  function windowRange(windowMs) {
    const now = Date.now();
    return [new Date(now - windowMs).toISOString(), new Date(now).toISOString()];
  }

  function utilization(el, series, windowMs) {
    // cpu and mem always (live points extend them even when the history is empty); gpu where
    // some node has one.
    const traces = ["cpu", "mem", "gpu"]
      .filter((name) => name !== "gpu" || (series.gpu || []).some((v) => v !== null))
      .map((name) => ({x: series.t, y: series[name], name, type: "scatter", mode: "lines+markers",
                       line: {color: COLORS[name], width: 2}, marker: {size: 3},
                       connectgaps: false}));
    return draw(el, traces, {yaxis: {range: [0, 100], ticksuffix: "%", gridcolor: "#eef0f3"},
                             xaxis: {type: "date", gridcolor: "#eef0f3", nticks: 6,
                                     tickangle: 0,
                                     ...(windowMs ? {range: windowRange(windowMs)} : {})},
                             legend: {orientation: "h", y: -0.3}, margin: {l: 44, r: 12, t: 8,
                                                                          b: 44}});
  }

  // Append live points (one per series) and drop what fell out of the window.
  function extend(el, point, windowMs) {
    if (!el.data) return;
    const update = {x: [], y: []};
    const indices = [];
    el.data.forEach((trace, i) => {
      if (point[trace.name] === undefined) return;
      indices.push(i);
      update.x.push([point.t]);
      update.y.push([point[trace.name]]);
    });
    if (!indices.length) return;
    Plotly.extendTraces(el, update, indices);
    const start = Date.now() - windowMs;
    const xs = el.data[indices[0]].x;
    let drop = 0;
    while (drop < xs.length && new Date(xs[drop]).getTime() < start) drop += 1;
    if (drop) {
      el.data.forEach((trace) => { trace.x = trace.x.slice(drop); trace.y = trace.y.slice(drop); });
      Plotly.redraw(el);
    }
    Plotly.relayout(el, {"xaxis.range": windowRange(windowMs)});
  }

  function bars(el, categories, groups, extra = {}) {
    const traces = Object.entries(groups).map(([name, values]) => ({
      x: categories, y: values, name, type: "bar", marker: {color: COLORS[name]}}));
    return draw(el, traces, Object.assign({barmode: "stack"}, extra));
  }

  // One series per metric name, value by step.
  function metric(el, name, points) {
    return draw(el, [{x: points.map((p) => p.step), y: points.map((p) => p.value),
                      name: esc(name), type: "scatter", mode: "lines+markers",
                      marker: {size: 4}, line: {color: COLORS.cpu}}],
                {height: 200, showlegend: false, xaxis: {title: {text: "step"}, gridcolor: "#eef0f3"},
                 yaxis: {gridcolor: "#eef0f3", rangemode: "normal"}});
  }

  // Several series by step on one chart (loss and val_loss), a legend when more than one.
  const SERIES_COLORS = ["#2f6fed", "#b54708", "#12805c", "#7a5af8"];
  function metrics(el, series) {
    const traces = series.map(({name, points}, i) => ({
      x: points.map((p) => p.step), y: points.map((p) => p.value), name: esc(name),
      type: "scatter", mode: points.length > 60 ? "lines" : "lines+markers", marker: {size: 4},
      line: {color: SERIES_COLORS[i % SERIES_COLORS.length], width: 2}}));
    return draw(el, traces, {height: 200, showlegend: series.length > 1,
                             legend: {orientation: "h", y: 1.12, x: 0},
                             margin: {l: 50, r: 12, t: series.length > 1 ? 24 : 8, b: 36},
                             xaxis: {title: {text: "step"}, gridcolor: "#eef0f3"},
                             yaxis: {gridcolor: "#eef0f3", rangemode: "normal"}});
  }

  // Every attempt as a bar: queued (grey) then running, coloured by how it ended.
  function timeline(el, attempts) {
    const now = Date.now();
    const ms = (t) => (t ? new Date(t).getTime() : null);
    const rows = attempts.map((a) => `#${a.number} · ${esc(a.node || "—")}`);
    const queued = {type: "bar", orientation: "h", name: "waiting", y: rows, base: [], x: [],
                    marker: {color: COLORS.queued}, hovertemplate: "waiting %{x:,.0f} ms<extra></extra>"};
    const ran = {type: "bar", orientation: "h", name: "running", y: rows, base: [], x: [],
                 marker: {color: []}, hovertemplate: "%{customdata}<extra></extra>", customdata: []};
    attempts.forEach((a) => {
      const created = ms(a.created_at), started = ms(a.started_at);
      const finished = ms(a.finished_at) || now;
      queued.base.push(new Date(created).toISOString());
      queued.x.push((started || finished) - created);
      ran.base.push(new Date(started || finished).toISOString());
      ran.x.push(started ? finished - started : 0);
      ran.marker.color.push(COLORS[a.state] || COLORS.running);
      ran.customdata.push(`${a.state} · ${((started ? finished - started : 0) / 1000).toFixed(1)} s`);
    });
    const narrow = el.clientWidth < 500;  // a phone: fewer, unrotated clock times
    return draw(el, [queued, ran], {barmode: "overlay", height: 60 + 34 * attempts.length,
                                    showlegend: false, margin: {l: 110, r: 12, t: 8, b: 44},
                                    xaxis: {type: "date", gridcolor: "#eef0f3", tickangle: 0,
                                            nticks: narrow ? 3 : 8, tickformat: "%H:%M:%S"},
                                    yaxis: {autorange: "reversed", type: "category"}});
  }

  // A fan-out's partitions: how long each took (or has been running), and how much it did.
  // The axis spans a second at least, and a partition that took next to no time still gets a
  // sliver of a bar (its hover says the real figure): every partition shows, not only the
  // slowest of a few milliseconds.
  function partitions(el, parts) {
    const x = parts.map((p) => `#${p.partition}`);
    const seconds = parts.map((p) => Math.max(0, p.seconds || 0));
    const top = Math.max(1, ...seconds);
    const traces = [
      {type: "bar", x, y: seconds.map((s) => Math.max(s, top / 60)), name: "seconds",
       customdata: seconds.map((s) => s.toFixed(s < 10 ? 2 : 0)),
       hovertemplate: "%{x}: %{customdata} s<extra></extra>",
       marker: {color: parts.map((p) => COLORS[p.state] || COLORS.running)}},
    ];
    const counted = parts.some((p) => p.done);  // kinds that count no items draw no dots
    if (counted) {
      traces.push({type: "scatter", mode: "markers", x, y: parts.map((p) => p.done || 0),
                   name: "done", yaxis: "y2", marker: {color: "#111827", size: 6}});
    }
    return draw(el, traces, {
      height: 200, barmode: "overlay", showlegend: counted,
      xaxis: {type: "category", gridcolor: "#eef0f3"},
      yaxis: {title: {text: "seconds"}, gridcolor: "#eef0f3", range: [0, top * 1.05]},
      yaxis2: {title: {text: "done"}, overlaying: "y", side: "right", rangemode: "tozero",
               showgrid: false, visible: counted},
      margin: {l: 50, r: counted ? 50 : 12, t: 8, b: 32}});
  }

  return {esc, utilization, extend, bars, metric, metrics, timeline, partitions, COLORS};
})();
