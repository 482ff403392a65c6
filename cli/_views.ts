// What the web inspector's page is sent: the store's summary, a page of
// threads, a thread's slots decoded into rows, one slot in full, the registry.
// Read-only functions of a backend (and the admin view); they never serve,
// print or write.

import { errorMessage } from "../_messages.ts";
import type { SharedBackend } from "../protocol.ts";
import { deserializeSlot } from "../serialize.ts";
import type { AdminAccess } from "./_admin.ts";
import type { Where } from "./_commands.ts";
import { hex, toJson } from "./_format.ts";

/** Payload text longer than this is cut in a row; `/api/slot` has all of it. */
export const PAYLOAD_PREVIEW_CHARS = 2_000;

/** One slot as a row of the page: the `ContextBuffer` fields as columns. */
export interface SlotRow {
  index: number;
  /** Bytes. */
  size: number;
  /** `fromId`, `toId`, `payloadType`, `timestamp` of a `ContextBuffer` slot. */
  from?: string;
  to?: string;
  type?: string;
  time?: string;
  /**
   * The payload of a `ContextBuffer` slot, or the whole decoded slot, as
   * JSON text (values JSON cannot hold tagged, as `show` does).
   */
  payload?: string;
  /** `payload` was cut at {@linkcode PAYLOAD_PREVIEW_CHARS}. */
  cut?: true;
  /** The other metadata of a `ContextBuffer` slot (ownName, isSelfCall, ...). */
  meta?: Record<string, unknown>;
  /** Why the slot is not MessagePack (then `hex` holds its bytes, up to 4 KiB). */
  error?: string;
  hex?: string;
}

const CONTEXT_FIELDS = new Set([
  "v",
  "threadId",
  "fromId",
  "toId",
  "timestamp",
  "payloadType",
  "payload",
]);

/** A slot as a row; `full` keeps the whole payload and adds the hex. */
export function slotRow(
  index: number,
  bytes: Uint8Array,
  full = false,
): SlotRow {
  const row: SlotRow = { index, size: bytes.length };
  let value: unknown;
  try {
    value = deserializeSlot(bytes);
  } catch (error) {
    row.error = errorMessage(error);
    row.hex = hex(full ? bytes : bytes.subarray(0, 4096));
    return row;
  }
  let shown = value;
  if (isContextSlot(value)) {
    row.from = value.fromId;
    row.to = value.toId;
    row.type = value.payloadType;
    row.time = value.timestamp;
    shown = value.payload;
    const meta = Object.entries(value).filter(([k]) => !CONTEXT_FIELDS.has(k));
    if (meta.length > 0) {
      row.meta = toJson(Object.fromEntries(meta)) as Record<string, unknown>;
    }
  }
  const text = JSON.stringify(toJson(shown)) ?? "undefined";
  if (!full && text.length > PAYLOAD_PREVIEW_CHARS) {
    row.payload = text.slice(0, PAYLOAD_PREVIEW_CHARS);
    row.cut = true;
  } else {
    row.payload = text;
  }
  if (full) row.hex = hex(bytes);
  return row;
}

interface ContextSlot {
  v: 1;
  fromId: string;
  toId: string;
  timestamp: string;
  payloadType: string;
  payload: unknown;
}

/** Whether a decoded slot is what `ContextBuffer.append` stores. */
function isContextSlot(value: unknown): value is ContextSlot {
  if (value === null || typeof value !== "object") return false;
  const slot = value as Record<string, unknown>;
  return slot.v === 1 && typeof slot.fromId === "string" &&
    typeof slot.toId === "string" && typeof slot.timestamp === "string" &&
    typeof slot.payloadType === "string" && "payload" in slot;
}

/** The page's header: the store, its counts, what it can tell. */
export async function storeInfo(
  backend: SharedBackend,
  where: Where,
  admin: AdminAccess,
  allowWrite: boolean,
  version: string,
): Promise<unknown> {
  const [stats, view] = await Promise.all([backend.stats(), admin.get()]);
  return {
    store: where.store,
    prefix: where.prefix,
    kind: stats.kind,
    version,
    allowWrite,
    threads: stats.threads,
    slots: stats.slots,
    registryEntries: stats.registryEntries,
    readerTtlMs: stats.ttlMs,
    expiryKnown: view !== null && where.prefix !== null,
  };
}

/** One thread in the list. */
export interface ThreadRow {
  threadId: string;
  slots: number;
  chain: string | null;
  /** The last slot's `timestamp` (a `ContextBuffer` slot), else null. */
  lastWrite: string | null;
  /** Expiry, ms since the epoch, 0 never; null when the store does not tell. */
  expiresAt: number | null;
}

/**
 * A page of the threads whose id or chain contains `query` (any case),
 * sorted by id: `offset`, `limit`, and how many there are.
 */
export async function threadPage(
  backend: SharedBackend,
  where: Where,
  admin: AdminAccess,
  { query, offset, limit }: { query: string; offset: number; limit: number },
): Promise<{ total: number; matched: number; threads: ThreadRow[] }> {
  const [ids, chains, view] = await Promise.all([
    backend.bufferListThreads(),
    backend.registryListAll(),
    admin.get(),
  ]);
  const needle = query.toLowerCase();
  const matching = ids
    .filter((id) =>
      needle === "" || id.toLowerCase().includes(needle) ||
      (chains.get(id)?.toLowerCase().includes(needle) ?? false)
    )
    .sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
  const shown = matching.slice(offset, offset + limit);
  const expiries = view !== null && where.prefix !== null
    ? await view.threadExpiries(where.prefix, shown)
    : null;
  const threads = await Promise.all(shown.map(async (threadId) => {
    const slots = await backend.bufferThreadLen(threadId);
    const last = slots === 0
      ? null
      : await backend.bufferGetSlot(threadId, slots - 1);
    return {
      threadId,
      slots,
      chain: chains.get(threadId) ?? null,
      lastWrite: last === null ? null : slotRow(slots - 1, last).time ?? null,
      expiresAt: expiries === null ? null : expiries.get(threadId) ?? null,
    };
  }));
  return { total: ids.length, matched: matching.length, threads };
}

/**
 * Slots `[start, end)` of a thread as rows, or its last `tail` slots, with
 * its length and chain.
 */
export async function slotPage(
  backend: SharedBackend,
  threadId: string,
  range: { start: number; end: number } | { tail: number },
): Promise<{
  threadId: string;
  chain: string | null;
  length: number;
  start: number;
  rows: SlotRow[];
}> {
  const [length, chain] = await Promise.all([
    backend.bufferThreadLen(threadId),
    backend.registryGetChain(threadId),
  ]);
  const start = "tail" in range
    ? Math.max(0, length - range.tail)
    : Math.min(range.start, length);
  const end = "tail" in range ? length : Math.min(range.end, length);
  const slots = end > start
    ? await backend.bufferGetRange(threadId, start, end)
    : [];
  return {
    threadId,
    chain,
    length,
    start,
    rows: slots.map((bytes, i) => slotRow(start + i, bytes)),
  };
}

/** The registry, sorted by chain: the page draws the tree. */
export async function registryPairs(
  backend: SharedBackend,
): Promise<{ uuid: string; chain: string }[]> {
  return [...await backend.registryListAll()]
    .map(([uuid, chain]) => ({ uuid, chain }))
    .sort((a, b) => a.chain < b.chain ? -1 : a.chain > b.chain ? 1 : 0);
}
