// What each command does: it reads or changes the store through the
// SharedBackend protocol and returns what to print, as text and as JSON. It
// never parses the command line, opens or closes a store, or prints: main() does.

import type { SharedBackend } from "../protocol.ts";
import { errorMessage, quote } from "../_messages.ts";
import { deserializeSlot } from "../serialize.ts";
import type { AdminAccess } from "./_admin.ts";
import type { ArgumentOf, Command, FlagValuesOf, Invocation } from "./_args.ts";
import { CliError, usageError } from "./_errors.ts";
import { serve } from "./_serve.ts";
import {
  duration,
  fields,
  hex,
  hexDump,
  number,
  printable,
  roughDuration,
  table,
  toJson,
} from "./_format.ts";

/** What a command prints: text for people, and the JSON document for `--json`. */
export interface Output {
  text: string;
  json: unknown;
}

/** The store a command runs on, as messages name it. */
export interface Where {
  /** The store: `kv: state.db`, `the given memory backend`. */
  store: string;
  /** The prefix, or `null` when it is not known (a backend given to `main()`). */
  prefix: string | null;
}

/**
 * Where a streaming command (`watch`, `serve`) prints as it goes, and what
 * ends it. A command that printed everything here returns `null`.
 */
export interface Channel {
  /** Prints to stdout at once. */
  write(text: string): void;
  /** Prints a note for people to stderr (not part of the output). */
  note(text: string): void;
  /** Whether `--json` was given: `write` one JSON document a line. */
  json: boolean;
  /** Aborts on Ctrl-C (or when the caller of `main()` says): the command ends, exit 0. */
  signal: AbortSignal;
}

/** What command `C` is given. */
export interface CommandContext<C extends Command = Command> {
  backend: SharedBackend;
  argument: ArgumentOf<C>;
  flags: FlagValuesOf<C>;
  where: Where;
  /** The end of a message about the store: `under prefix "xp:" of kv: state.db`. */
  under: string;
  /** What the store tells beyond the protocol (kv, redis), opened on first use. */
  admin: AdminAccess;
  /** The output of a streaming command. */
  out: Channel;
}

type Run<C extends Command> = (
  context: CommandContext<C>,
) => Promise<Output | null>;

/** Every command's function, by the name of its spec in `_args.ts`. */
const RUN: { readonly [C in Command]: Run<C> } = {
  stats,
  threads,
  show,
  watch,
  serve,
  registry,
  chain,
  uuid,
  prefixes,
  "delete-thread": deleteThread,
  clear,
};

/** The commands that run until Ctrl-C, printing as they go. */
export const STREAMING: ReadonlySet<string> = new Set(["watch", "serve"]);

/** Runs a parsed command on an open backend; `null`: it printed through `out`. */
export function runCommand(
  { command, argument, flags }: Invocation,
  backend: SharedBackend,
  where: Where,
  admin: AdminAccess,
  out: Channel,
): Promise<Output | null> {
  // The parser gave `command` the argument and flags of its own spec.
  const run = RUN[command] as Run<Command>;
  return run({
    backend,
    argument,
    flags,
    where,
    under: underWhere(where),
    admin,
    out,
  });
}

/** `under prefix "xp:" of kv: state.db`, or `in the given kv backend`. */
export function underWhere(where: Where): string {
  return where.prefix === null
    ? `in ${where.store}`
    : `under prefix ${quote(where.prefix)} of ${where.store}`;
}

async function stats(
  { backend, where, admin }: CommandContext<"stats">,
): Promise<Output> {
  const stats = await backend.stats();
  const expiry = await dataExpiry(backend, where, admin);
  const now = Date.now();
  return {
    text: fields([
      ["store", where.store],
      ["prefix", where.prefix === null ? "-" : JSON.stringify(where.prefix)],
      ["threads", number(stats.threads)],
      ["slots", number(stats.slots)],
      ["registry entries", number(stats.registryEntries)],
      [
        "threads expire",
        expiry === null
          ? "(not known: the store does not tell)"
          : expiry.soonest === undefined
          ? "-"
          : expiry.soonest === expiry.latest
          ? expiresIn(expiry.soonest, now)
          : `soonest ${expiresIn(expiry.soonest, now)}, latest ${
            expiresIn(expiry.latest!, now)
          }`,
      ],
      [
        "reader's ttl",
        `${
          stats.ttlMs === 0
            ? "none (0)"
            : `${duration(stats.ttlMs)} (${stats.ttlMs} ms), sliding`
        }: this inspector's own (XP_TTL_MS), not the data's`,
      ],
    ]),
    json: {
      backend: stats.kind,
      store: where.store,
      prefix: where.prefix,
      threads: stats.threads,
      slots: stats.slots,
      registryEntries: stats.registryEntries,
      readerTtlMs: stats.ttlMs,
      threadExpiry: expiry === null ? null : {
        soonest: expiry.soonest ?? null,
        latest: expiry.latest ?? null,
      },
    },
  };
}

/**
 * When the prefix's threads expire, soonest and latest (ms since the epoch,
 * 0: never; undefined: no thread), or `null` when the store does not tell.
 */
async function dataExpiry(
  backend: SharedBackend,
  where: Where,
  admin: AdminAccess,
): Promise<{ soonest?: number; latest?: number } | null> {
  const view = await admin.get();
  if (view === null || where.prefix === null) return null;
  const ids = await backend.bufferListThreads();
  const expiries = [...(await view.threadExpiries(where.prefix, ids)).values()];
  if (expiries.length === 0) return {};
  const order = (e: number) => e === 0 ? Infinity : e;
  expiries.sort((a, b) => order(a) - order(b));
  return { soonest: expiries[0]!, latest: expiries[expiries.length - 1]! };
}

/** `in 23 h 59 min` (until `at`, ms since the epoch), or `never` (0). */
function expiresIn(at: number, now: number): string {
  return at === 0 ? "never" : `in ${roughDuration(Math.max(0, at - now))}`;
}

async function prefixes(
  { admin, where }: CommandContext<"prefixes">,
): Promise<Output> {
  const view = await admin.get();
  if (view === null) {
    throw usageError(
      `prefixes lists the prefixes of a kv or redis store, not of ${where.store}`,
    );
  }
  const rows = await view.prefixes();
  const holds = (r: { threads: boolean; registry: boolean }) =>
    [r.threads ? "threads" : "", r.registry ? "registry" : ""]
      .filter((x) => x !== "").join(", ");
  return {
    text: rows.length === 0
      ? `no prefixes with data in ${where.store}\n`
      : table(
        ["PREFIX", "HOLDS"],
        rows.map((r) => [JSON.stringify(r.prefix), holds(r)]),
      ),
    json: rows,
  };
}

async function threads(
  { backend, under }: CommandContext<"threads">,
): Promise<Output> {
  const ids = (await backend.bufferListThreads()).sort();
  const chains = await backend.registryListAll();
  const rows = [];
  for (const threadId of ids) {
    rows.push({
      threadId,
      slots: await backend.bufferThreadLen(threadId),
      chain: chains.get(threadId) ?? null,
    });
  }
  return {
    text: rows.length === 0 ? `no threads ${under}\n` : table(
      ["SLOTS", "THREAD", "CHAIN"],
      rows.map((r) => [
        number(r.slots),
        printable(r.threadId),
        r.chain === null ? "-" : printable(r.chain),
      ]),
      [true, false, false],
    ),
    json: rows,
  };
}

async function show(
  { backend, argument: threadId, flags, under }: CommandContext<"show">,
): Promise<Output> {
  const start = index("--start", flags.start) ?? 0;
  const end = index("--end", flags.end);
  const length = await backend.bufferThreadLen(threadId);
  if (length === 0) {
    throw new CliError("notFound", `no thread ${quote(threadId)} ${under}`);
  }
  const [slots, chain] = await Promise.all([
    backend.bufferGetRange(threadId, start, end),
    backend.registryGetChain(threadId).catch(() => null),
  ]);
  const header = `thread ${printable(threadId)}${
    chain === null ? "" : ` (chain ${printable(chain)})`
  }: ${number(length)} slots${
    slots.length === length ? "" : `, showing ${slots.length} from #${start}`
  }\n`;
  const indexWidth = `#${start + slots.length - 1}`.length;
  const sizeWidth = Math.max(0, ...slots.map((s) => number(s.length).length));
  const shown = slots.map((bytes, i) =>
    showSlot(start + i, bytes, flags.raw === true, indexWidth, sizeWidth)
  );
  return {
    text: header + shown.map((s) => s.text).join(""),
    json: { threadId, chain, length, slots: shown.map((s) => s.json) },
  };
}

/** One slot as `show` and `watch` print it: a line (and a hex dump), and its JSON. */
function showSlot(
  at: number,
  bytes: Uint8Array,
  raw: boolean,
  indexWidth = 0,
  sizeWidth = 0,
): Output {
  const head = `#${at}`.padEnd(indexWidth) +
    `  ${number(bytes.length).padStart(sizeWidth)} B`;
  if (raw) {
    return {
      text: `${head}\n${hexDump(bytes)}`,
      json: { index: at, size: bytes.length, hex: hex(bytes) },
    };
  }
  let value: unknown;
  try {
    value = toJson(deserializeSlot(bytes));
  } catch (error) {
    const why = errorMessage(error);
    return {
      text: `${head}  (not MessagePack: ${why})\n${hexDump(bytes)}`,
      json: { index: at, size: bytes.length, error: why, hex: hex(bytes) },
    };
  }
  return {
    text: `${head}  ${JSON.stringify(value)}\n`,
    json: { index: at, size: bytes.length, value },
  };
}

async function watch(
  { backend, argument: threadId, flags, out, under }: CommandContext<"watch">,
): Promise<null> {
  const from = index("--from", flags.from);
  const length = await backend.bufferThreadLen(threadId);
  out.note(
    `watching thread ${printable(threadId)} ${under}: ${
      length === 0 ? "no slots yet" : `${number(length)} slots`
    }, printing from #${from ?? length}; Ctrl-C to stop\n`,
  );
  const slots = backend.bufferWatch(threadId, {
    signal: out.signal,
    fromIndex: from ?? length,
  });
  for await (const { index, slot } of slots) {
    const shown = showSlot(index, slot, false);
    out.write(out.json ? `${JSON.stringify(shown.json)}\n` : shown.text);
  }
  if (!out.signal.aborted) {
    out.note(`thread ${printable(threadId)} was deleted or expired\n`);
  }
  return null;
}

/** A `--start`/`--end` value: a non-negative integer, or undefined when not given. */
function index(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw usageError(
      `Invalid ${flag}: expected a non-negative integer, got ${quote(text)}`,
    );
  }
  return Number(text);
}

async function registry(
  { backend, under }: CommandContext<"registry">,
): Promise<Output> {
  const rows = [...await backend.registryListAll()]
    .map(([uuid, chain]) => ({ uuid, chain }))
    .sort((a, b) => compare(a.chain, b.chain) || compare(a.uuid, b.uuid));
  return {
    text: rows.length === 0 ? `no registry entries ${under}\n` : table(
      ["UUID", "CHAIN"],
      rows.map((r) => [printable(r.uuid), printable(r.chain)]),
    ),
    json: rows,
  };
}

async function chain(
  { backend, argument: chain, under }: CommandContext<"chain">,
): Promise<Output> {
  const uuid = await backend.registryGetUuid(chain);
  if (uuid === null) {
    throw new CliError(
      "notFound",
      `chain ${quote(chain)} is not registered ${under}`,
    );
  }
  return { text: `${uuid}\n`, json: { chain, uuid } };
}

async function uuid(
  { backend, argument: uuid, under }: CommandContext<"uuid">,
): Promise<Output> {
  const chain = await backend.registryGetChain(uuid);
  if (chain === null) {
    throw new CliError(
      "notFound",
      `uuid ${quote(uuid)} is not registered ${under}`,
    );
  }
  return { text: `${chain}\n`, json: { uuid, chain } };
}

async function deleteThread(
  { backend, argument: threadId, under }: CommandContext<"delete-thread">,
): Promise<Output> {
  const slots = await backend.bufferThreadLen(threadId);
  if (!(await backend.bufferDeleteThread(threadId))) {
    throw new CliError("notFound", `no thread ${quote(threadId)} ${under}`);
  }
  return {
    text: `deleted thread ${printable(threadId)} (${number(slots)} slots)\n`,
    json: { threadId, deleted: true, slots },
  };
}

async function clear(
  { backend, flags, under }: CommandContext<"clear">,
): Promise<Output> {
  const stats = await backend.stats();
  const what = `${number(stats.threads)} threads (${
    number(stats.slots)
  } slots) and ${number(stats.registryEntries)} registry entries ${under}`;
  if (flags.yes !== true) {
    throw new CliError(
      "usage",
      `clear would delete ${what}: run it again with --yes to delete them`,
    );
  }
  await backend.bufferClear();
  await backend.registryClear();
  return {
    text: `cleared ${what}\n`,
    json: {
      cleared: {
        threads: stats.threads,
        slots: stats.slots,
        registryEntries: stats.registryEntries,
      },
    },
  };
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
