// How the inspector writes values for people and for JSON: tables, labelled
// lines, hex dumps, decoded slots as JSON, ids, counts and durations. Pure
// functions of their arguments: it never touches a store and never prints.

/** Rows under headers, columns padded to their widest cell; the last column is not padded. */
export function table(
  headers: string[],
  rows: string[][],
  alignRight: boolean[] = [],
): string {
  const widths = headers.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) =>
      i === cells.length - 1
        ? cell
        : alignRight[i]
        ? cell.padStart(widths[i]!)
        : cell.padEnd(widths[i]!)
    ).join("  ") + "\n";
  return line(headers) + rows.map(line).join("");
}

/** One `label  value` line per pair, the values in one column. */
export function fields(pairs: [label: string, value: string][]): string {
  return pairs.map(([label, value]) => `${label.padEnd(17)} ${value}\n`)
    .join("");
}

/** A decoded slot as JSON, with the values JSON cannot hold tagged. */
export function toJson(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: hex(value) };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (value instanceof Map) {
    return { $map: [...value].map(([k, v]) => [toJson(k), toJson(v)]) };
  }
  if (typeof value === "bigint") return { $bigint: value.toString() };
  if (typeof value === "number" && !Number.isFinite(value)) {
    return { $number: String(value) };
  }
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, toJson(v)]),
    );
  }
  return value;
}

/** The bytes as lowercase hex, two digits a byte. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `xxd`-style: offset, 16 bytes in hex, the printable ASCII. */
export function hexDump(bytes: Uint8Array): string {
  if (bytes.length === 0) return "  (empty)\n";
  let text = "";
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const row = bytes.subarray(offset, offset + 16);
    const cells = Array.from(row, (b) => b.toString(16).padStart(2, "0"));
    const left = cells.slice(0, 8).join(" ");
    const right = cells.slice(8).join(" ");
    const ascii = Array.from(
      row,
      (b) => b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".",
    ).join("");
    text += `  ${offset.toString(16).padStart(8, "0")}  ${left.padEnd(23)}  ${
      right.padEnd(23)
    }  |${ascii}|\n`;
  }
  return text;
}

/** An id as is, or JSON-quoted when it has control characters or edge spaces. */
export function printable(id: string): string {
  // deno-lint-ignore no-control-regex
  return /[\x00-\x1f\x7f]|^\s|\s$/.test(id) ? JSON.stringify(id) : id;
}

/** A count with thousands separators: `12,345`. */
export function number(n: number): string {
  return n.toLocaleString("en-US");
}

/** Milliseconds in the largest unit that divides them: `1 d`, `90 min`, `1500 ms`. */
export function duration(ms: number): string {
  const units: [number, string][] = [
    [86_400_000, "d"],
    [3_600_000, "h"],
    [60_000, "min"],
    [1_000, "s"],
  ];
  for (const [size, unit] of units) {
    if (ms >= size && ms % size === 0) return `${ms / size} ${unit}`;
  }
  return `${ms} ms`;
}

/** Milliseconds for people, in the two largest units: `23 h 59 min`, `4 min 5 s`, `12 s`, `800 ms`. */
export function roughDuration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  const units: [number, string][] = [
    [86_400_000, "d"],
    [3_600_000, "h"],
    [60_000, "min"],
    [1_000, "s"],
  ];
  const i = units.findIndex(([size]) => ms >= size);
  const [size, unit] = units[i]!;
  const whole = Math.floor(ms / size);
  const next = units[i + 1];
  if (next === undefined) return `${whole} ${unit}`;
  const rest = Math.floor((ms - whole * size) / next[0]);
  return rest === 0
    ? `${whole} ${unit}`
    : `${whole} ${unit} ${rest} ${next[1]}`;
}
