// Time-series plots drawn as SVG: one line per numeric column, time on the x axis.
// Drag across the plot to zoom in on a time range; double-click or "Reset zoom" to go back.
// The data is a JSON block the server wrote (escaped); it is read, never run.
// A training's curves are the same plot with the step on the x axis, their data fetched as
// JSON from the server while the training runs (names are set as text, never as markup).
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const M = { left: 58, right: 14, top: 12, bottom: 30 };
  const COLOURS = 6;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span, count) {
    const raw = span / Math.max(count, 1);
    const power = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const scaled = raw / power;
    return (scaled < 1.5 ? 1 : scaled < 3 ? 2 : scaled < 7 ? 5 : 10) * power;
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800, 2592000, 7776000, 31536000].map((s) => s * 1000);

  function timeTicks(x0, x1, count) {
    const wanted = (x1 - x0) / Math.max(count, 1);
    const step = TIME_STEPS.find((s) => s >= wanted) || TIME_STEPS[TIME_STEPS.length - 1];
    const ticks = [];
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) ticks.push(t);
    return { ticks, step };
  }

  function timeLabel(ms, step) {
    const iso = new Date(ms).toISOString(); // UTC, as the data is
    if (step < 60000) return iso.slice(11, 19);
    if (step < 86400000) return iso.slice(11, 16) === "00:00" ? iso.slice(5, 10) : iso.slice(11, 16);
    return iso.slice(0, 10);
  }

  function numberLabel(value, step) {
    const digits = Math.max(0, -Math.floor(Math.log10(step || 1)));
    return value.toFixed(Math.min(digits, 6));
  }

  class Plot {
    constructor(figure, data) {
      this.figure = figure;
      this.data = data || JSON.parse(figure.querySelector("script.plot-data").textContent);
      this.full = [this.data.t[0], this.data.t[this.data.t.length - 1]];
      this.view = this.full.slice();
      this.hidden = new Set();
      this.svg = el("svg", { role: "img", "aria-label": "time series plot" }, figure);
      this.bar = document.createElement("div");
      this.bar.className = "plot-bar";
      figure.appendChild(this.bar);
      this.buildBar();
      this.listen();
      this.draw();
      new ResizeObserver(() => this.draw()).observe(figure);
    }

    update(data) {
      const zoomed = this.view[0] !== this.full[0] || this.view[1] !== this.full[1];
      const names = (d) => d.series.map((series) => series.name).join("\n");
      const renamed = names(data) !== names(this.data);
      this.data = data;
      this.full = [data.t[0], data.t[data.t.length - 1]];
      if (!zoomed) this.view = this.full.slice();
      if (renamed) {
        this.bar.replaceChildren();
        this.buildBar();
      }
      this.draw();
    }

    buildBar() {
      const legend = document.createElement("div");
      legend.className = "legend";
      this.data.series.forEach((series, index) => {
        const key = document.createElement("button");
        key.type = "button";
        key.className = "key";
        const swatch = document.createElement("span");
        swatch.className = `swatch c${index % COLOURS}`;
        key.append(swatch, document.createTextNode(series.name));
        key.addEventListener("click", () => {
          this.hidden.has(index) ? this.hidden.delete(index) : this.hidden.add(index);
          key.classList.toggle("off", this.hidden.has(index));
          this.draw();
        });
        legend.appendChild(key);
      });
      this.readout = document.createElement("span");
      this.readout.className = "readout";
      const reset = document.createElement("button");
      reset.type = "button";
      reset.className = "button secondary small";
      reset.textContent = "Reset zoom";
      reset.addEventListener("click", () => this.zoom(this.full[0], this.full[1]));
      this.bar.append(legend, this.readout, reset);
    }

    size() {
      const box = this.svg.getBoundingClientRect();
      return { w: Math.max(box.width, 200), h: Math.max(box.height, 160) };
    }

    scales() {
      const { w, h } = this.size();
      const [x0, x1] = this.view;
      const t = this.data.t;
      let lo = Infinity;
      let hi = -Infinity;
      this.data.series.forEach((series, s) => {
        if (this.hidden.has(s)) return;
        series.values.forEach((v, i) => {
          if (v === null || t[i] < x0 || t[i] > x1) return;
          lo = Math.min(lo, v);
          hi = Math.max(hi, v);
        });
      });
      if (!isFinite(lo)) { lo = 0; hi = 1; }
      if (lo === hi) { lo -= 1; hi += 1; }
      const pad = (hi - lo) * 0.06;
      lo -= pad; hi += pad;
      const sx = (ms) => M.left + ((ms - x0) / (x1 - x0 || 1)) * (w - M.left - M.right);
      const sy = (v) => h - M.bottom - ((v - lo) / (hi - lo)) * (h - M.top - M.bottom);
      return { w, h, x0, x1, lo, hi, sx, sy };
    }

    draw() {
      const sc = this.scales();
      this.sc = sc;
      this.svg.replaceChildren();
      this.svg.setAttribute("viewBox", `0 0 ${sc.w} ${sc.h}`);
      el("rect", { class: "frame", x: M.left, y: M.top, width: sc.w - M.left - M.right, height: sc.h - M.top - M.bottom }, this.svg);
      this.drawAxes(sc);
      const clip = `clip-${Math.random().toString(36).slice(2)}`;
      const defs = el("defs", {}, this.svg);
      el("rect", { x: M.left, y: M.top, width: sc.w - M.left - M.right, height: sc.h - M.top - M.bottom }, el("clipPath", { id: clip }, defs));
      const lines = el("g", { "clip-path": `url(#${clip})` }, this.svg);
      this.data.series.forEach((series, s) => {
        if (!this.hidden.has(s)) this.drawLine(lines, series.values, s, sc);
      });
      this.cursor = el("line", { class: "cursor", y1: M.top, y2: sc.h - M.bottom, x1: -10, x2: -10 }, this.svg);
      this.brush = el("rect", { class: "brush", y: M.top, height: sc.h - M.top - M.bottom, width: 0, x: -10 }, this.svg);
    }

    drawAxes(sc) {
      const axis = el("g", { class: "axis" }, this.svg);
      const steps = this.data.axis === "step";
      const { ticks, step } = steps ? stepTicks(sc.x0, sc.x1, Math.floor(sc.w / 80)) : timeTicks(sc.x0, sc.x1, Math.floor(sc.w / 110));
      for (const t of ticks) {
        const x = sc.sx(t);
        el("line", { class: "grid-line", x1: x, x2: x, y1: M.top, y2: sc.h - M.bottom }, axis);
        el("text", { x, y: sc.h - 10, "text-anchor": "middle" }, axis).textContent = steps ? numberLabel(t, step) : timeLabel(t, step);
      }
      const ystep = niceStep(sc.hi - sc.lo, Math.floor(sc.h / 60));
      for (let v = Math.ceil(sc.lo / ystep) * ystep; v <= sc.hi; v += ystep) {
        const y = sc.sy(v);
        el("line", { class: "grid-line", x1: M.left, x2: sc.w - M.right, y1: y, y2: y }, axis);
        el("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, axis).textContent = numberLabel(v, ystep);
      }
    }

    drawLine(group, values, s, sc) {
      const t = this.data.t;
      let points = [];
      const flush = () => {
        if (points.length > 1) el("polyline", { class: `line c${s % COLOURS}`, points: points.join(" ") }, group);
        points = [];
      };
      for (let i = 0; i < t.length; i += 1) {
        if (values[i] === null) { flush(); continue; }
        if (t[i] < sc.x0 && (i + 1 >= t.length || t[i + 1] < sc.x0)) continue;
        if (t[i] > sc.x1 && i > 0 && t[i - 1] > sc.x1) break;
        points.push(`${sc.sx(t[i]).toFixed(1)},${sc.sy(values[i]).toFixed(1)}`);
      }
      flush();
    }

    timeAt(clientX) {
      const box = this.svg.getBoundingClientRect();
      const x = ((clientX - box.left) / box.width) * this.sc.w;
      const inner = Math.min(Math.max(x, M.left), this.sc.w - M.right);
      return { x: inner, t: this.sc.x0 + ((inner - M.left) / (this.sc.w - M.left - M.right)) * (this.sc.x1 - this.sc.x0) };
    }

    showReadout(t) {
      const times = this.data.t;
      let best = 0;
      for (let i = 1; i < times.length; i += 1) if (Math.abs(times[i] - t) < Math.abs(times[best] - t)) best = i;
      const parts = this.data.series
        .filter((_, s) => !this.hidden.has(s))
        .map((series) => `${series.name}=${series.values[best] === null ? "–" : series.values[best]}`);
      const where = this.data.axis === "step" ? `step ${times[best]}` : new Date(times[best]).toISOString().slice(0, 19).replace("T", " ");
      this.readout.textContent = `${where}  ${parts.join("  ")}`;
      const x = this.sc.sx(times[best]);
      this.cursor.setAttribute("x1", x);
      this.cursor.setAttribute("x2", x);
    }

    listen() {
      let start = null;
      this.svg.addEventListener("pointerdown", (event) => {
        start = this.timeAt(event.clientX);
        this.svg.setPointerCapture(event.pointerId);
      });
      this.svg.addEventListener("pointermove", (event) => {
        const at = this.timeAt(event.clientX);
        this.showReadout(at.t);
        if (start === null) return;
        this.brush.setAttribute("x", Math.min(start.x, at.x));
        this.brush.setAttribute("width", Math.abs(at.x - start.x));
      });
      this.svg.addEventListener("pointerup", (event) => {
        if (start === null) return;
        const end = this.timeAt(event.clientX);
        const from = start;
        start = null;
        if (Math.abs(end.x - from.x) > 4) this.zoom(Math.min(from.t, end.t), Math.max(from.t, end.t));
        else this.brush.setAttribute("width", 0);
      });
      this.svg.addEventListener("dblclick", () => this.zoom(this.full[0], this.full[1]));
    }

    zoom(x0, x1) {
      this.view = [x0, x1];
      this.figure.dataset.view = `${x0},${x1}`;
      this.draw();
    }
  }

  function stepTicks(x0, x1, count) {
    const step = Math.max(1, niceStep(x1 - x0, count));
    const ticks = [];
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) ticks.push(t);
    return { ticks, step };
  }

  // metrics.jsonl's lines as a plot: x is each line's "step" (else its position), one line
  // per numeric metric
  function curves(steps) {
    const names = [];
    for (const line of steps) {
      for (const [name, value] of Object.entries(line)) {
        if (name !== "step" && typeof value === "number" && !names.includes(name)) names.push(name);
      }
    }
    return {
      axis: "step",
      t: steps.map((line, i) => (typeof line.step === "number" ? line.step : i + 1)),
      series: names.map((name) => ({ name, values: steps.map((line) => (typeof line[name] === "number" ? line[name] : null)) })),
    };
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function followMetrics(figure) {
    while (figure.isConnected) {
      try {
        const answer = await fetch(figure.dataset.metricsSrc, { credentials: "same-origin", cache: "no-store" });
        if (!answer.ok) throw new Error(String(answer.status));
        const found = await answer.json();
        const data = curves(found.steps || []);
        if (data.t.length) {
          const empty = figure.querySelector(".plot-empty");
          if (empty) empty.remove();
          if (figure.plot) figure.plot.update(data);
          else figure.plot = new Plot(figure, data);
          figure.dataset.steps = String(data.t.length);
        }
        if (!figure.dataset.metricsEvery || ["done", "error", "killed"].includes(found.status)) return;
      } catch (error) {
        await sleep(3000); // the server restarting, or the network: try again later
      }
      await sleep(Number(figure.dataset.metricsEvery || 1000));
    }
  }

  function start(root) {
    root.querySelectorAll("figure[data-plot]:not([data-ready])").forEach((figure) => {
      figure.dataset.ready = "1";
      figure.plot = new Plot(figure);
    });
    root.querySelectorAll("figure[data-metrics-src]:not([data-ready])").forEach((figure) => {
      figure.dataset.ready = "1";
      followMetrics(figure);
    });
  }

  window.addEventListener("DOMContentLoaded", () => start(document));
  document.addEventListener("orchestra:updated", (event) => start(event.detail));
})();
