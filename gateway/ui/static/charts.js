// Two small SVG charts drawn in the page (no library: a few dozen lines, readable by screen
// readers through their titles and the data tables beside them).
const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function chart(width, height, label) {
  return svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
}

const timeLabel = (seconds, bucket) => new Date(seconds * 1000).toLocaleString([], bucket >= 86400
  ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" });

/** Stacked columns: one column per time bucket, one colour per series. */
export function stackedColumns({ starts, bucket_s: bucket, experts }, colourFor, label, width = 720) {
  const height = 220;
  const left = 36;
  const bottom = 22;
  const names = Object.keys(experts).sort();
  const totals = starts.map((_, i) => names.reduce((sum, name) => sum + experts[name][i], 0));
  const peak = Math.max(1, ...totals);
  const step = (width - left) / Math.max(1, starts.length);
  const y = (count) => (height - bottom) - (count / peak) * (height - bottom - 8);
  const svg = chart(width, height, label);
  for (const tick of [0, Math.round(peak / 2), peak]) {
    svg.append(svgEl("line", { x1: left, x2: width, y1: y(tick), y2: y(tick), stroke: "#d0d7de" }));
    svg.append(svgEl("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, String(tick)));
  }
  starts.forEach((start, i) => {
    let base = 0;
    for (const name of names) {
      const count = experts[name][i];
      if (!count) continue;
      const rect = svgEl("rect", { x: left + i * step + 1, width: Math.max(1, step - 2), y: y(base + count),
        height: y(base) - y(base + count), fill: colourFor(name) });
      rect.append(svgEl("title", {}, `${timeLabel(start, bucket)}: ${name} ${count}`));
      svg.append(rect);
      base += count;
    }
  });
  const every = Math.max(1, Math.ceil(starts.length / 6));
  starts.forEach((start, i) => {
    if (i % every === 0) svg.append(svgEl("text", { x: left + i * step, y: height - 6 }, timeLabel(start, bucket)));
  });
  return svg;
}

/** A histogram of counts over [0, 1] with a vertical line at `threshold`. */
export function histogram(counts, colour, threshold, label) {
  const width = 200;
  const height = 90;
  const bottom = 14;
  const peak = Math.max(1, ...counts);
  const step = width / counts.length;
  const svg = chart(width, height, label);
  counts.forEach((count, i) => {
    const barHeight = (count / peak) * (height - bottom - 4);
    const rect = svgEl("rect", { x: i * step + 1, width: step - 2, y: height - bottom - barHeight, height: barHeight, fill: colour });
    rect.append(svgEl("title", {}, `${(i / counts.length).toFixed(1)}\u2013${((i + 1) / counts.length).toFixed(1)}: ${count}`));
    svg.append(rect);
  });
  svg.append(svgEl("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, stroke: "#8c959f" }));
  if (threshold !== null && threshold !== undefined) {
    svg.append(svgEl("line", { x1: threshold * width, x2: threshold * width, y1: 0, y2: height - bottom, stroke: "#1b1f24", "stroke-width": 2 }));
  }
  for (const tick of [0, 0.5, 1]) {
    svg.append(svgEl("text", { x: tick * width, y: height - 2, "text-anchor": tick === 0 ? "start" : tick === 1 ? "end" : "middle" }, String(tick)));
  }
  return svg;
}
