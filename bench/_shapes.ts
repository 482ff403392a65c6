// What every append bench group shares: the slot, the batch, and the four
// shapes (1 or 100 threads, awaited one by one or all in flight), so the
// memory, kv and redis groups measure exactly the same work.

/** Slots per bench iteration; slots/s = SLOTS / time per iteration. */
export const SLOTS = 256;
/** The slot every bench appends: 200 bytes, as a small serialized message. */
export const SLOT: Uint8Array = new Uint8Array(200).map((_, i) => i & 0xff);

/** One way to append a slot to a thread: a backend, or a baseline. */
export type Append = (threadId: string, slot: Uint8Array) => Promise<unknown>;

/** Appends SLOTS slots to `threads`, round robin, one awaited after the other. */
export async function oneByOne(
  append: Append,
  threads: readonly string[],
): Promise<void> {
  for (let i = 0; i < SLOTS; i++) {
    await append(threads[i % threads.length]!, SLOT);
  }
}

/** Appends SLOTS slots to `threads`, round robin, all in flight at once. */
export async function allInFlight(
  append: Append,
  threads: readonly string[],
): Promise<void> {
  const pending = new Array<Promise<unknown>>(SLOTS);
  for (let i = 0; i < SLOTS; i++) {
    pending[i] = append(threads[i % threads.length]!, SLOT);
  }
  await Promise.all(pending);
}

/** Thread ids `${name}-0` .. `${name}-${n - 1}`. */
function threadIds(name: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${name}-${i}`);
}

/** The four shapes, by the name that ends each group's name. */
export const SHAPES: readonly (readonly [
  name: string,
  threads: readonly string[],
  run: typeof oneByOne,
])[] = [
  ["1 thread, awaited one by one", threadIds("one", 1), oneByOne],
  ["1 thread, 256 in flight", threadIds("one", 1), allInFlight],
  ["100 threads, awaited one by one", threadIds("hundred", 100), oneByOne],
  ["100 threads, 256 in flight", threadIds("hundred", 100), allInFlight],
];
