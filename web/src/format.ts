import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

export function when(timestamp: Timestamp | undefined): string {
  if (!timestamp) return "—";
  return timestampDate(timestamp).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });
}

export function clock(date: Date): string {
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** "1 chunk", "2 chunks". */
export function count(n: bigint | number, noun: string): string {
  return `${n} ${noun}${BigInt(n) === 1n ? "" : "s"}`;
}

export function bytes(count: bigint | number): string {
  let value = Number(count);
  for (const unit of ["B", "KB", "MB", "GB"]) {
    if (value < 1024 || unit === "GB") return `${unit === "B" ? value : value.toFixed(1)} ${unit}`;
    value /= 1024;
  }
  return `${value} B`;
}

export function hex(data: Uint8Array, length = 12): string {
  return Array.from(data.slice(0, length / 2), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An enum value's generated name as words: "TEXT_FILE" → "text file". */
export function enumLabel(name: string | undefined): string {
  return (name ?? "unknown").replaceAll("_", " ").toLowerCase();
}
