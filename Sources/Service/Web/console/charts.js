// The admin view's activity section: the last 30 days as figures and as charts (SVG drawn with DOM calls,
// colours from console.css; each chart has an accessible name, and every number is also in a table), the
// server's status and the agents.

import { byId, element } from "./conversation.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 200;
const PAD = { left: 40, right: 8, top: 12, bottom: 26 };
const shortDay = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", timeZone: "UTC" });
const longDay = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const number = new Intl.NumberFormat();
const BREAKERS = { closed: "Closed", open: "Open", half_open: "Half open" };

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** "under 1 s", "45 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
export function duration(seconds) {
  const s = Math.round(seconds);
  if (seconds < 1) return "under 1 s";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${s % 3600 >= 60 ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
  return `${Math.floor(s / 86400)} d${s % 86400 >= 3600 ? ` ${Math.floor((s % 86400) / 3600)} h` : ""}`;
}

// A step of 1, 2 or 5 × 10ⁿ that divides 0…max into at most four intervals.
function tickStep(max) {
  const rough = Math.max(1, max / 4);
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map((f) => f * power).find((step) => step >= rough);
}

// The same for seconds, in steps a clock reads well (15 s, 1 min, 30 min, 1 d, …).
const CLOCK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400];
function durationStep(max) {
  const rough = Math.max(1, max / 4);
  return CLOCK_STEPS.find((step) => step >= rough) ?? 86400 * Math.ceil(rough / 86400);
}

const COUNTS = { step: tickStep, format: (value) => number.format(value) };
const DURATIONS = { step: durationStep, format: duration };

/**
 * A bar chart of `days[i][key]` as an <svg role="img"> named `name(values)`; a day whose value is null has no bar.
 * `scale` says how to space the axis and write a value (COUNTS or DURATIONS).
 */
function barChart(days, key, className, name, scale = COUNTS) {
  const values = days.map((d) => d[key] ?? 0);
  const max = Math.max(0, ...values);
  const step = scale.step(max);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const y = (value) => PAD.top + plotHeight * (1 - value / top);
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: `chart ${className}`, role: "img", "aria-label": name(values, max) });
  for (let value = 0; value <= top; value += step) {
    chart.append(
      svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }),
      svg("text", { class: "axis", x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end" }, scale.format(value)),
    );
  }
  const slot = plotWidth / Math.max(1, days.length);
  days.forEach((d, i) => {
    const x = PAD.left + i * slot;
    if (d[key] !== null) {
      const bar = svg("rect", { class: "bar", x: x + slot * 0.15, y: y(d[key]), width: slot * 0.7, height: Math.max(0, y(0) - y(d[key])) });
      bar.append(svg("title", {}, `${longDay.format(new Date(d.date))}: ${scale.format(d[key])}`));
      chart.append(bar);
    }
    // Dates under the last bar and every seventh one before it.
    const last = i === days.length - 1;
    if ((days.length - 1 - i) % 7 === 0) {
      const at = last ? x + slot : x + slot / 2;
      chart.append(svg("text", { class: "axis", x: at, y: HEIGHT - 8, "text-anchor": last ? "end" : "middle" }, shortDay.format(new Date(d.date))));
    }
  });
  return chart;
}

/** "Messages per day over 30 days: 120 in all, most on 3 Dec 2026 (40)". */
function totalName(label, days) {
  return (values, max) => {
    const total = values.reduce((a, b) => a + b, 0);
    const peak = days[values.indexOf(max)];
    return `${label} over ${days.length} days: ${number.format(total)} in all` +
      (max > 0 ? `, most on ${longDay.format(new Date(peak.date))} (${number.format(max)})` : "");
  };
}

/** "Median first reply per day over 30 days: 4 s overall, slowest on 3 Dec 2026 (1 min 5 s)". */
function replyName(days, overall) {
  return (values, max) => {
    const answered = days.filter((d) => d.firstReplyMedianSeconds !== null);
    if (!answered.length) return `Median first reply per day over ${days.length} days: no replies`;
    const slowest = answered.find((d) => d.firstReplyMedianSeconds === max) ?? answered[0];
    return `Median first reply per day over ${days.length} days: ${duration(overall)} overall, ` +
      `slowest on ${longDay.format(new Date(slowest.date))} (${duration(slowest.firstReplyMedianSeconds)})`;
  };
}

const percent = (share) => `${Math.round(share * 100)} %`;

/** The sessions opened in `days` days as one bar, resolved (share `share`) and not, as an <svg role="img">. */
function shareChart(days, opened, resolved, share) {
  const rest = opened - resolved;
  const shown = Math.round(share * 100);
  const parts = [["Resolved", resolved, shown, "done"], ["Not resolved", rest, 100 - shown, "rest"]];
  const name = `Sessions resolved over ${days} days: ` +
    (opened ? `${number.format(resolved)} of ${number.format(opened)} (${percent(share)}), ${number.format(rest)} not resolved` : "none opened");
  const chart = svg("svg", { class: "chart chart-share", role: "img", "aria-label": name });
  const track = svg("rect", { class: "rest", x: 0, y: 4, width: "100%", height: 24, rx: 4 });
  chart.append(track);
  if (!opened) {
    chart.append(svg("text", { class: "label", x: 0, y: 50 }, "No sessions opened"));
    return chart;
  }
  const bar = svg("rect", { class: "done", x: 0, y: 4, width: `${share * 100}%`, height: 24, rx: 4 });
  chart.append(bar);
  parts.forEach(([label, count, part, className], i) => {
    const text = `${label}: ${number.format(count)} (${part} %)`;
    [bar, track][i].append(svg("title", {}, text));
    const legend = svg("text", { class: "label", x: i ? "100%" : 0, y: 50, "text-anchor": i ? "end" : "start" });
    legend.append(svg("tspan", { class: `key-${className}` }, "\u25A0 "), text);
    chart.append(legend);
  });
  return chart;
}

// <dl> of <div><dt>label</dt><dd>value</dd></div>.
function stats(list, entries) {
  list.replaceChildren(...entries.map(([label, value, state]) => {
    const definition = element("dd", null, String(value));
    if (state) definition.dataset.state = state;
    const group = element("div");
    group.append(element("dt", null, label), definition);
    return group;
  }));
}

function row(cells, headerFirst = true) {
  const tr = element("tr");
  cells.forEach((text, i) => {
    const cell = element(i === 0 && headerFirst ? "th" : "td", null, String(text));
    if (cell.tagName === "TH") cell.scope = "row";
    tr.append(cell);
  });
  return tr;
}

/** Shows `GET /api/admin/status`, the agents of `GET /api/admin/agents` and `GET /api/admin/activity`. */
export function renderActivity(status, agents, activity) {
  const days = activity.days;
  const sum = (key) => days.reduce((a, d) => a + d[key], 0);
  const { opened, resolved, resolvedShare } = activity.sessions;
  const median = activity.firstReply.medianSeconds;
  stats(byId("activity-stats"), [
    ["Messages", number.format(sum("messages"))],
    ["Sessions opened", number.format(opened)],
    ["Resolved", resolvedShare === null ? "—" : `${percent(resolvedShare)} (${resolved} of ${opened})`],
    ["Median first reply", median === null ? "—" : duration(median)],
  ]);
  byId("chart-messages").replaceChildren(barChart(days, "messages", "chart-messages", totalName("Messages per day", days)));
  byId("chart-sessions").replaceChildren(barChart(days, "sessions", "chart-sessions", totalName("Sessions opened per day", days)));
  byId("chart-resolved").replaceChildren(shareChart(days.length, opened, resolved, resolvedShare ?? 0));
  byId("chart-first-reply").replaceChildren(
    barChart(days, "firstReplyMedianSeconds", "chart-first-reply", replyName(days, median), DURATIONS));
  byId("day-rows").replaceChildren(...days.slice().reverse().map((d) => row([
    longDay.format(new Date(d.date)), d.messages, d.sessions,
    d.firstReplyMedianSeconds === null ? "—" : duration(d.firstReplyMedianSeconds),
  ])));

  const counts = status.statistics;
  const storage = status.storage;
  stats(byId("server-stats"), [
    ["Version", status.version],
    ["Up for", duration(status.uptimeSeconds)],
    ["Storage", `${storage.backend}, ${storage.up ? "up" : `down${storage.reason ? ` (${storage.reason})` : ""}`}`, storage.up ? "ok" : "bad"],
    ["Live connections", number.format(status.realtimeConnections)],
    ["Open breakers", `${status.agents.breakersOpen} of ${status.agents.configured}`, status.agents.breakersOpen ? "bad" : "ok"],
    ["Users", number.format(counts.users)],
    ["Sessions", number.format(counts.sessions)],
    ["Active sessions", number.format(counts.activeSessions)],
    ["Resolved sessions", number.format(counts.resolvedSessions)],
    ["Messages stored", number.format(counts.messages)],
  ]);

  byId("agent-rows").replaceChildren(...agents.map((agent) => {
    const tr = row([
      agent.default ? `${agent.name} (default)` : agent.name, agent.kind, BREAKERS[agent.breaker] ?? agent.breaker,
      number.format(agent.requests), number.format(agent.errors), number.format(agent.refused),
      agent.latencyMs ? `${Math.round(agent.latencyMs.p50)} ms / ${Math.round(agent.latencyMs.p95)} ms` : "—",
      agent.lastError ? `${agent.lastError.code}, ${dateTime.format(new Date(agent.lastError.at))}` : "—",
    ]);
    tr.cells[2].dataset.state = agent.breaker === "closed" ? "ok" : "bad";
    return tr;
  }));
  byId("agents-empty").hidden = agents.length > 0;
  byId("activity-updated").textContent = `Updated ${dateTime.format(new Date())}`;
}
