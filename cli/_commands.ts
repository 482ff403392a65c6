// What each command does: it reads or changes the store through the
// SharedBackend protocol and returns what to print, as text and as JSON. It
// never parses the command line, opens or closes a store, or prints: main() does.

import type { SharedBackend } from "../protocol.ts";
import { errorMessage, quote } from "../_messages.ts";
import { deserializeSlot } from "../serialize.ts";
import type { ArgumentOf, Command, FlagValuesOf, Invocation } from "./_args.ts";
import { CliError, usageError } from "./_errors.ts";
import {
  duration,
  fields,
  hex,
  hexDump,
  number,
  printable,
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

/** What command `C` is given. */
export interface CommandContext<C extends Command = Command> {
  backend: SharedBackend;
  argument: ArgumentOf<C>;
  flags: FlagValuesOf<C>;
  where: Where;
  /** The end of a message about the store: `under prefix "xp:" of kv: state.db`. */
  under: string;
}

type Run<C extends Command> = (context: CommandContext<C>) => Promise<Output>;

/** Every command's function, by the name of its spec in `_args.ts`. */
const RUN: { readonly [C in Command]: Run<C> } = {
  stats,
  threads,
  show,
  registry,
  chain,
  uuid,
  "delete-thread": deleteThread,
  clear,
};

/** Runs a parsed command on an open backend. */
export function runCommand(
  { command, argument, flags }: Invocation,
  backend: SharedBackend,
  where: Where,
): Promise<Output> {
  const under = where.prefix === null
    ? `in ${where.store}`
    : `under prefix ${quote(where.prefix)} of ${where.store}`;
  // The parser gave `command` the argument and flags of its own spec.
  const run = RUN[command] as Run<Command>;
  return run({ backend, argument, flags, where, under });
}

async function stats(
  { backend, where }: CommandContext<"stats">,
): Promise<Output> {
  const stats = await backend.stats();
  return {
    text: fields([
      ["store", where.store],
      ["prefix", where.prefix === null ? "-" : JSON.stringify(where.prefix)],
      ["threads", number(stats.threads)],
      ["slots", number(stats.slots)],
      ["registry entries", number(stats.registryEntries)],
      [
        "ttl",
        stats.ttlMs === 0
          ? "none (0: nothing expires)"
          : `${duration(stats.ttlMs)} (${stats.ttlMs} ms), sliding`,
      ],
    ]),
    json: {
      backend: stats.kind,
      store: where.store,
      prefix: where.prefix,
      threads: stats.threads,
      slots: stats.slots,
      registryEntries: stats.registryEntries,
      ttlMs: stats.ttlMs,
    },
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
  const lines: string[] = [];
  const indexWidth = `#${start + slots.length - 1}`.length;
  const sizeWidth = Math.max(0, ...slots.map((s) => number(s.length).length));
  const items = slots.map((bytes, i) => {
    const at = start + i;
    const head = `#${at}`.padEnd(indexWidth) +
      `  ${number(bytes.length).padStart(sizeWidth)} B`;
    if (flags.raw === true) {
      lines.push(`${head}\n${hexDump(bytes)}`);
      return { index: at, size: bytes.length, hex: hex(bytes) };
    }
    let value: unknown;
    try {
      value = toJson(deserializeSlot(bytes));
    } catch (error) {
      const why = errorMessage(error);
      lines.push(`${head}  (not MessagePack: ${why})\n${hexDump(bytes)}`);
      return { index: at, size: bytes.length, error: why, hex: hex(bytes) };
    }
    lines.push(`${head}  ${JSON.stringify(value)}\n`);
    return { index: at, size: bytes.length, value };
  });
  return {
    text: header + lines.join(""),
    json: { threadId, chain, length, slots: items },
  };
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
