/**
 * Slot-append throughput, one group per question, each with its baseline in
 * the same group: `deno bench -A bench/append_bench.ts`.
 *
 * Every iteration appends 256 200-byte slots (`bench/_shapes.ts`), either
 * awaited one by one or all in flight at once; the per-slot rate is
 * 256 / (time per iteration).
 * Threads are deleted outside the timing before they reach the slot limit.
 *
 * @module
 */

import { InMemoryBackend } from "../backends/memory.ts";
// The kv and redis groups register themselves: one `deno bench` run, one table.
import "./_append_kv.ts";
import "./_append_redis.ts";
import { type Append, SHAPES, SLOT } from "./_shapes.ts";

// The naive store a user would hand-write: an async function pushing onto a Map.
const raw = new Map<string, Uint8Array[]>();
// deno-lint-ignore require-await
async function rawAppend(threadId: string, slot: Uint8Array): Promise<number> {
  let slots = raw.get(threadId);
  if (slots === undefined) raw.set(threadId, slots = []);
  return slots.push(slot) - 1;
}

const memory = new InMemoryBackend({
  maxSlotsPerThread: 1_000_000,
  maxThreads: 1_000,
});
const appendToMemory: Append = (threadId, slot) =>
  memory.bufferAppend(threadId, slot);
// Without TTL: no clock read per append (Date.now() costs about 50 ns here).
const memoryNoTtl = new InMemoryBackend({
  maxSlotsPerThread: 1_000_000,
  ttlMs: 0,
});
const appendToMemoryNoTtl: Append = (threadId, slot) =>
  memoryNoTtl.bufferAppend(threadId, slot);

/** Runs `work`, timing only it, and resets both stores every 64 iterations. */
function measured(
  work: () => Promise<void>,
): (b: Deno.BenchContext) => Promise<void> {
  let iterations = 0;
  return async (b) => {
    if (++iterations % 64 === 0) {
      raw.clear();
      await memory.bufferClear();
      await memoryNoTtl.bufferClear();
    }
    b.start();
    await work();
    b.end();
  };
}

for (const [shape, threads, run] of SHAPES) {
  const group = `memory: append 256 slots, ${shape}`;
  Deno.bench({
    name: "baseline: async push onto Map<string, Uint8Array[]>",
    group,
    baseline: true,
    fn: measured(() => run(rawAppend, threads)),
  });
  Deno.bench({
    name: "InMemoryBackend.bufferAppend (sliding TTL)",
    group,
    fn: measured(() => run(appendToMemory, threads)),
  });
  Deno.bench({
    name: "InMemoryBackend.bufferAppend (ttlMs 0)",
    group,
    fn: measured(() => run(appendToMemoryNoTtl, threads)),
  });
}

// Reading a 1 000-slot thread.
const rawLong = Array.from({ length: 1_000 }, () => SLOT.slice());
const long = new InMemoryBackend();
for (let i = 0; i < 1_000; i++) await long.bufferAppend("long", SLOT);
// deno-lint-ignore require-await
const rawGet = async (threadId: string) => threadId === "long" ? rawLong : [];
Deno.bench({
  name: "baseline: async Map get of the array",
  group: "memory: read a 1 000-slot thread",
  baseline: true,
  fn: async () => {
    await rawGet("long");
  },
});
// The naive copy a user would write: one buffer for the whole read, a view
// per slot (what this backend did before each slot got its own ArrayBuffer:
// cheaper, but transferring one slot detached them all).
// deno-lint-ignore require-await
const sharedCopy = async (threadId: string) => {
  const slots = threadId === "long" ? rawLong : [];
  let total = 0;
  for (const slot of slots) total += slot.byteLength;
  const buffer = new Uint8Array(total);
  let offset = 0;
  return slots.map((slot) => {
    buffer.set(slot, offset);
    return buffer.subarray(offset, offset += slot.byteLength);
  });
};
Deno.bench({
  name: "one shared buffer, a view per slot (slots alias)",
  group: "memory: read a 1 000-slot thread",
  fn: async () => {
    await sharedCopy("long");
  },
});
Deno.bench({
  name: "a copy per slot (new Uint8Array + set each)",
  group: "memory: read a 1 000-slot thread",
  // deno-lint-ignore require-await
  fn: async () => {
    rawLong.map((slot) => {
      const copy = new Uint8Array(slot.byteLength);
      copy.set(slot);
      return copy;
    });
  },
});
Deno.bench({
  name: "InMemoryBackend.bufferGetThread (each slot its own ArrayBuffer)",
  group: "memory: read a 1 000-slot thread",
  fn: async () => {
    await long.bufferGetThread("long");
  },
});
