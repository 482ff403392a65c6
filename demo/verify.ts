/**
 * The demo's verification: reads a whole store back through the public API
 * and checks what a user of the package relies on, optionally against the
 * journal of what the agents were told (the index every append returned,
 * the uuid every chain got). Every failed check is one line in
 * `problems`; `ok` is true only when there are none.
 *
 * Checks, on any store:
 * - every listed thread has as many slots as `bufferThreadLen` says, and
 *   every slot decodes as a `ContextBuffer` slot;
 * - no message id (the demo payload's `id`) is stored twice;
 * - `stats()` counts the same threads, slots and registry entries as the
 *   listings;
 * - every registry entry maps both ways (`registryGetChain(uuid) = chain`,
 *   `registryGetUuid(chain) = uuid`) and no chain has two uuids.
 *
 * And with a journal:
 * - per thread, the indexes the appends returned are exactly `0..n-1`, each
 *   once, `n` being the thread's stored length (dense, unique, none lost);
 * - the slot at index `i` is the message whose append returned `i`;
 * - every chain was given one uuid by every agent, and the registry still
 *   maps it to that uuid;
 * - every message an agent waited for (`ContextBuffer.waitFor`) was found,
 *   at the index its append returned (the agents report what they saw).
 *
 * @module
 */

import { type BufferSlot, ContextBuffer, type SharedBackend } from "../mod.ts";
import type { AppendRecord } from "./_agents.ts";

/** What the agents were told, gathered from every Worker. */
export interface DemoJournal {
  /** Every append: thread, the index it returned, the message id. */
  appends: readonly AppendRecord[];
  /** Every `[chain, uuid]` the registry gave an agent. */
  chains: readonly (readonly [string, string])[];
  /** Problems the agents saw themselves (a wait that failed, or found another message than the one appended). */
  mismatches?: readonly string[];
}

/** The outcome of {@linkcode verifyStore}. */
export interface VerifyResult {
  /** True when no check failed. */
  ok: boolean;
  /** One line per failed check. */
  problems: string[];
  /** Threads listed. */
  threads: number;
  /** Slots read. */
  slots: number;
  /** Registry entries listed. */
  registryEntries: number;
}

/**
 * Reads the store of `backend` (its prefix) back and checks it.
 *
 * @param backend The backend to read; left open.
 * @param journal What the agents were told; without it only the store's own consistency is checked.
 * @returns The counts and the problems found.
 */
export async function verifyStore(
  backend: SharedBackend,
  journal?: DemoJournal,
): Promise<VerifyResult> {
  const problems: string[] = [];
  const buffer = new ContextBuffer<{ id?: unknown }>(backend);
  const threadIds = await backend.bufferListThreads();
  /** Per thread, the message id at each index (`undefined`: did not decode). */
  const stored = new Map<string, (string | undefined)[]>();
  const where = new Map<string, string>();
  let slots = 0;

  for (const threadId of threadIds) {
    const length = await backend.bufferThreadLen(threadId);
    const decoded = await readThread(buffer, threadId);
    if (decoded.length !== length) {
      problems.push(
        `thread ${threadId}: bufferThreadLen says ${length} slots, bufferGetThread returned ${decoded.length}`,
      );
    }
    slots += decoded.length;
    const ids: (string | undefined)[] = [];
    decoded.forEach((slot, i) => {
      let id: string | undefined;
      if (slot instanceof Error) {
        problems.push(
          `thread ${threadId}: slot ${i} does not decode: ${slot.message}`,
        );
      } else if (slot === null) {
        problems.push(`thread ${threadId}: slot ${i} is missing`);
      } else if (journal !== undefined) {
        if (typeof slot.payload?.id === "string") {
          id = slot.payload.id;
        } else {
          problems.push(
            `thread ${threadId}: slot ${i} is not a demo message (no id)`,
          );
        }
      }
      if (id !== undefined) {
        const at = `${threadId}[${i}]`;
        const before = where.get(id);
        if (before !== undefined) {
          problems.push(`message ${id} is stored twice: ${before} and ${at}`);
        } else {
          where.set(id, at);
        }
      }
      ids.push(id);
    });
    stored.set(threadId, ids);
  }

  // The registry: a bijection, both directions readable.
  const entries = await backend.registryListAll();
  const chainOwners = new Map<string, string>();
  for (const [uuid, chain] of entries) {
    const other = chainOwners.get(chain);
    if (other !== undefined) {
      problems.push(
        `chain "${chain}" is listed with two uuids: ${other} and ${uuid}`,
      );
    }
    chainOwners.set(chain, uuid);
    const back = await backend.registryGetChain(uuid);
    if (back !== chain) {
      problems.push(
        `uuid ${uuid} is listed for chain "${chain}" but maps to ${
          back === null ? "no chain" : `"${back}"`
        }`,
      );
    }
    const forth = await backend.registryGetUuid(chain);
    if (forth !== uuid) {
      problems.push(
        `chain "${chain}" is listed with uuid ${uuid} but maps to ${
          forth ?? "no uuid"
        }`,
      );
    }
  }

  const stats = await backend.stats();
  if (stats.threads !== threadIds.length) {
    problems.push(
      `stats() counts ${stats.threads} threads, bufferListThreads() lists ${threadIds.length}`,
    );
  }
  if (stats.slots !== slots) {
    problems.push(
      `stats() counts ${stats.slots} slots, the threads hold ${slots}`,
    );
  }
  if (stats.registryEntries !== entries.size) {
    problems.push(
      `stats() counts ${stats.registryEntries} registry entries, registryListAll() lists ${entries.size}`,
    );
  }

  if (journal !== undefined) checkJournal(journal, stored, entries, problems);
  for (const mismatch of journal?.mismatches ?? []) problems.push(mismatch);

  return {
    ok: problems.length === 0,
    problems,
    threads: threadIds.length,
    slots,
    registryEntries: entries.size,
  };
}

/**
 * Reads a thread's slots through `ContextBuffer`: all at once, and slot by
 * slot when that fails, so that every bad slot is found, not only the first.
 */
async function readThread(
  buffer: ContextBuffer<{ id?: unknown }>,
  threadId: string,
): Promise<(BufferSlot<{ id?: unknown }> | Error | null)[]> {
  try {
    return [...await buffer.getThread(threadId)];
  } catch {
    const raw = await buffer.backend.bufferGetThread(threadId);
    const slots: (BufferSlot<{ id?: unknown }> | Error | null)[] = [];
    for (let i = 0; i < raw.length; i++) {
      slots.push(
        await buffer.getSlot(threadId, i).catch((error: unknown) =>
          error instanceof Error ? error : new Error(String(error))
        ),
      );
    }
    return slots;
  }
}

function checkJournal(
  journal: DemoJournal,
  stored: Map<string, (string | undefined)[]>,
  entries: Map<string, string>,
  problems: string[],
): void {
  // Per thread: the returned indexes are exactly 0..n-1, and slot i holds
  // the message whose append returned i.
  const returned = new Map<string, Map<number, string[]>>();
  for (const { threadId, index, id } of journal.appends) {
    let byIndex = returned.get(threadId);
    if (byIndex === undefined) returned.set(threadId, byIndex = new Map());
    const ids = byIndex.get(index);
    if (ids === undefined) byIndex.set(index, [id]);
    else ids.push(id);
  }
  for (const [threadId, byIndex] of returned) {
    const ids = stored.get(threadId);
    if (ids === undefined) {
      problems.push(
        `thread ${threadId}: ${byIndex.size} appends returned indexes, but the thread is not in the store`,
      );
      continue;
    }
    for (const [index, appenders] of byIndex) {
      if (appenders.length > 1) {
        problems.push(
          `thread ${threadId}: index ${index} was returned to ${appenders.length} appends (${
            appenders.join(", ")
          })`,
        );
      }
      if (!Number.isInteger(index) || index < 0 || index >= ids.length) {
        problems.push(
          `thread ${threadId}: index ${index} was returned to ${
            appenders[0]
          } but the thread holds ${ids.length} slots`,
        );
      } else if (ids[index] !== undefined && !appenders.includes(ids[index])) {
        problems.push(
          `thread ${threadId}: slot ${index} holds ${
            ids[index]
          }, but its append returned ${index} to ${appenders[0]}`,
        );
      }
    }
    for (let i = 0; i < ids.length; i++) {
      if (!byIndex.has(i)) {
        problems.push(
          `thread ${threadId}: slot ${i} (${
            ids[i] ?? "undecodable"
          }) was returned to no append`,
        );
      }
    }
  }
  for (const threadId of stored.keys()) {
    if (!returned.has(threadId)) {
      problems.push(`thread ${threadId} holds slots that no agent appended`);
    }
  }

  // Every chain got one uuid, from every agent, and still maps to it.
  const given = new Map<string, Set<string>>();
  for (const [chain, uuid] of journal.chains) {
    let uuids = given.get(chain);
    if (uuids === undefined) given.set(chain, uuids = new Set());
    uuids.add(uuid);
  }
  const chainOf = new Map<string, string>();
  for (const [uuid, chain] of entries) chainOf.set(chain, uuid);
  for (const [chain, uuids] of given) {
    if (uuids.size > 1) {
      problems.push(
        `chain "${chain}" was given ${uuids.size} different uuids: ${
          [...uuids].join(", ")
        }`,
      );
    }
    const now = chainOf.get(chain);
    const [first] = uuids;
    if (now !== first) {
      problems.push(
        `chain "${chain}" was given uuid ${first} but the registry maps it to ${
          now ?? "nothing"
        }`,
      );
    }
  }
}
