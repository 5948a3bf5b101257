// The benchmarks' table cells for repeated timings.

/** Median, minimum and maximum of `ms` (milliseconds) as Markdown table cells. */
export function spread(ms) {
  const v = [...ms].sort((a, b) => a - b);
  return [v[Math.floor(v.length / 2)], v[0], v[v.length - 1]].map((x) => x.toFixed(1)).join(" | ");
}
