// Read-only admin views of a whole Deno KV store, for the inspector: the
// prefixes (tenants) that hold data, and when threads expire, read through the
// key layout of _kv_keys.ts. It never writes, and the backend never uses it:
// the library's own calls stay within their prefix.

import { KvKeys } from "./_kv_keys.ts";

/** A prefix (tenant) of a store, and what it holds. */
export interface KvPrefixInfo {
  prefix: string;
  /** It has thread records (live or not yet reclaimed). */
  threads: boolean;
  /** It has registry records (live or not yet reclaimed). */
  registry: boolean;
}

/** The most keys one `getMany` reads (Deno KV's limit). */
const GET_MANY_KEYS = 10;

/**
 * The prefixes of `kv` that hold threads or registry entries, in key order.
 * One `list` of one key per string first part (it skips from one prefix to
 * the next), plus two per prefix to tell what it holds: the cost grows with
 * the number of prefixes, not of keys.
 */
export async function kvPrefixes(kv: Deno.Kv): Promise<KvPrefixInfo[]> {
  const found: KvPrefixInfo[] = [];
  // Strings sort after byte arrays and before numbers: start at the least
  // string, stop at the first first part that is not one.
  let start: Deno.KvKey = [""];
  for (;;) {
    const first = await firstKey(kv, { prefix: [], start });
    const part = first?.[0];
    if (typeof part !== "string") break;
    const keys = new KvKeys(part);
    const [threads, registry] = await Promise.all([
      firstKey(kv, { prefix: keys.heads() }),
      firstKey(kv, { prefix: keys.chains() }),
    ]);
    if (threads !== undefined || registry !== undefined) {
      found.push({
        prefix: part,
        threads: threads !== undefined,
        registry: registry !== undefined,
      });
    }
    // [part + "\0"] sorts after every key [part, ...] (a key part's type tag
    // is below 0xff, the escape of "\0") and is the least that does.
    start = [`${part}\0`];
  }
  return found;
}

/**
 * When each thread of `prefix` expires, from its head: ms since the epoch,
 * 0 for never. A thread without a head is left out. Reads the heads 10 at
 * a time.
 */
export async function kvThreadExpiries(
  kv: Deno.Kv,
  prefix: string,
  threadIds: readonly string[],
): Promise<Map<string, number>> {
  const keys = new KvKeys(prefix);
  const expiries = new Map<string, number>();
  const batches: Promise<void>[] = [];
  // An id whose keys do not fit has no head (the backend refuses it).
  const fitting = threadIds.filter((id) => keys.threadFits(id));
  for (let i = 0; i < fitting.length; i += GET_MANY_KEYS) {
    const ids = fitting.slice(i, i + GET_MANY_KEYS);
    batches.push(
      kv.getMany<unknown[]>(ids.map((id) => keys.head(id))).then((entries) =>
        entries.forEach((entry, j) => {
          const e = (entry.value as { e?: unknown } | null)?.e;
          if (typeof e === "number") expiries.set(ids[j]!, e);
        })
      ),
    );
  }
  await Promise.all(batches);
  return expiries;
}

async function firstKey(
  kv: Deno.Kv,
  selector: Deno.KvListSelector,
): Promise<Deno.KvKey | undefined> {
  for await (const entry of kv.list(selector, { limit: 1 })) return entry.key;
  return undefined;
}
