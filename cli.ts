/**
 * The inspector: a command-line tool to look into a live store (threads,
 * their slots decoded from MessagePack, the chain <-> uuid registry) and to
 * delete a thread or clear a tenant.
 *
 * ```sh
 * deno run -A jsr:@xml-pipeline/shared-backend/cli --backend kv --kv-path state.db stats
 * deno run -A jsr:@xml-pipeline/shared-backend/cli --backend redis --redis-url redis://host:6379 threads
 * XP_BACKEND=kv XP_KV_PATH=state.db deno task cli show 0b7c-uuid --raw
 * ```
 *
 * Commands: `stats`, `threads`, `show <threadId>`, `registry`,
 * `chain <chain>`, `uuid <uuid>`, `delete-thread <threadId>`, `clear --yes`;
 * `--help` on each. The store comes from the same environment variables as
 * {@linkcode configFromEnv} (`XP_BACKEND`, `XP_KV_PATH`, `XP_REDIS_URL`,
 * `XP_PREFIX`, ...), overridden by `--backend`, `--kv-path`, `--redis-url`
 * and `--prefix`. `--json` prints one JSON document for scripts. Exit codes
 * are in {@linkcode EXIT_CODES}.
 *
 * Importing this module runs nothing: the command line runs only when it is
 * the main module; {@linkcode main} runs it from code.
 *
 * @example Run the inspector from code on a memory backend
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { ContextBuffer, InMemoryBackend } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * await new ContextBuffer(backend).append("t1", { text: "hi" }, { fromId: "a", toId: "b" });
 *
 * let output = "";
 * const code = await main(["threads", "--json"], { backend, stdout: (text) => output += text });
 * assert.equal(code, 0);
 * assert.deepEqual(JSON.parse(output), [{ threadId: "t1", slots: 1, chain: null }]);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type BackendConfig,
  BackendError,
  configFromEnv,
  createSharedBackend,
  deserializeSlot,
  type SharedBackend,
} from "./mod.ts";

export type { BackendKind, BackendStats, SharedBackend } from "./protocol.ts";

/**
 * The exit codes of the inspector.
 *
 * | code | meaning |
 * | --- | --- |
 * | 0 | done |
 * | 1 | not found (`show`, `chain`, `uuid`, `delete-thread` of something that does not exist), or another failure |
 * | 2 | bad usage: unknown command or flag, a missing or extra argument, a bad value, `clear` without `--yes` |
 * | 3 | the store cannot be opened or reached, or it failed |
 *
 * @example
 * ```ts
 * import { EXIT_CODES, main } from "@xml-pipeline/shared-backend/cli";
 * import assert from "node:assert/strict";
 *
 * const code = await main(["frobnicate"], { stderr: () => {}, env: {} });
 * assert.equal(code, EXIT_CODES.usage);
 * ```
 */
export const EXIT_CODES: Readonly<{
  ok: 0;
  notFound: 1;
  usage: 2;
  unreachable: 3;
}> = Object.freeze({ ok: 0, notFound: 1, usage: 2, unreachable: 3 });

/**
 * Where {@linkcode main} reads its configuration and writes its output. Every
 * field is optional: the defaults are the process's.
 *
 * @example Capture the output
 * ```ts
 * import { type CliIo, main } from "@xml-pipeline/shared-backend/cli";
 * import assert from "node:assert/strict";
 *
 * let output = "";
 * const io: CliIo = { stdout: (text) => output += text, env: {} };
 * assert.equal(await main(["--help"], io), 0);
 * assert.match(output, /Commands:/);
 * ```
 */
export interface CliIo {
  /**
   * Receives what the command prints (text ending in a newline).
   *
   * @default {writes to Deno.stdout}
   */
  stdout?: (text: string) => void;
  /**
   * Receives errors and notes.
   *
   * @default {writes to Deno.stderr}
   */
  stderr?: (text: string) => void;
  /**
   * The environment variables the configuration is read from, as
   * {@linkcode configFromEnv} reads them.
   *
   * @default {Deno.env.toObject(), or none without --allow-env}
   */
  env?: Record<string, string | undefined>;
  /**
   * An open backend to inspect instead of opening one from the
   * configuration; it is left open. The store flags are then not allowed.
   *
   * @default {undefined}
   */
  backend?: SharedBackend;
}

const COMMANDS = [
  "stats",
  "threads",
  "show",
  "registry",
  "chain",
  "uuid",
  "delete-thread",
  "clear",
] as const;
type Command = typeof COMMANDS[number];

/** Per command: its one positional argument (if any), its own flags, its help. */
const SPEC: Record<
  Command,
  { argument?: string; flags: string[]; summary: string; help: string }
> = {
  stats: {
    flags: [],
    summary: "count the threads, slots and registry entries of the prefix",
    help:
      "Prints the store, the prefix, the live threads, slots and registry\n" +
      "entries, and the TTL.",
  },
  threads: {
    flags: [],
    summary: "list the threads with their slot counts and chains",
    help:
      "Lists every live thread of the prefix: its slot count, its id, and the\n" +
      "chain the registry maps the id to (threads are usually registry uuids).",
  },
  show: {
    argument: "threadId",
    flags: ["raw", "start", "end"],
    summary: "print a thread's slots, decoded from MessagePack",
    help:
      "Prints a thread's slots: index, size in bytes, and the slot decoded from\n" +
      'MessagePack as JSON. Values JSON cannot hold are tagged: {"$bytes": hex},\n' +
      '{"$date": iso}, {"$map": [[key, value], ...]}, {"$bigint": "digits"},\n' +
      '{"$number": "NaN"}. A slot that is not MessagePack is shown in hex.\n\n' +
      "Options:\n" +
      "  --raw        every slot as a hex dump instead\n" +
      "  --start N    the first index to print (default 0)\n" +
      "  --end N      one past the last index to print (default: the end)",
  },
  registry: {
    flags: [],
    summary: "list the registry: uuid -> chain",
    help: "Lists every live registry pair of the prefix, sorted by chain.",
  },
  chain: {
    argument: "chain",
    flags: [],
    summary: "print the uuid of a chain",
    help:
      "Prints the uuid a chain (e.g. console.router.greeter) maps to; exits 1\n" +
      "when the chain is not registered.",
  },
  uuid: {
    argument: "uuid",
    flags: [],
    summary: "print the chain of a uuid",
    help: "Prints the chain a uuid maps to; exits 1 when the uuid is not\n" +
      "registered.",
  },
  "delete-thread": {
    argument: "threadId",
    flags: [],
    summary: "delete a thread and all its slots",
    help:
      "Deletes a thread and all its slots; exits 1 when it does not exist.\n" +
      "The registry is left as it is.",
  },
  clear: {
    flags: ["yes"],
    summary:
      "delete every thread and registry entry of the prefix (needs --yes)",
    help:
      "Deletes every thread and every registry entry under the prefix, and only\n" +
      "there (other prefixes on the same store are left alone). Without --yes it\n" +
      "only says what it would delete, and exits 2.\n\n" +
      "Options:\n" +
      "  --yes        really delete",
  },
};

const COMMON_HELP =
  `Store (default: the environment, as configFromEnv reads it):
  --backend memory|kv|redis   the store (XP_BACKEND; default memory, which is
                              this process's own empty store)
  --kv-path PATH              kv: the KV file (XP_KV_PATH; default Deno's KV)
  --redis-url URL             redis: the server (XP_REDIS_URL or REDIS_URL;
                              default redis://localhost:6379)
  --prefix PREFIX             the tenant (XP_PREFIX; default "xp:")

Output:
  --json                      one JSON document on stdout (errors as JSON on stderr)
  -h, --help                  help (also: help <command>)

Exit codes: 0 done, 1 not found, 2 bad usage, 3 store unreachable or failed.`;

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => usage(c).length));
  return `Usage: cli [store options] <command> [arguments] [--json]

Inspects a shared-backend store: context-buffer threads and the chain <-> uuid
registry.

Commands:
${
    COMMANDS.map((c) => `  ${usage(c).padEnd(width)}  ${SPEC[c].summary}`)
      .join("\n")
  }

${COMMON_HELP}

Examples:
  deno task cli --backend kv --kv-path state.db stats
  deno task cli --backend redis --redis-url redis://host:6379 threads --json
  XP_BACKEND=kv XP_KV_PATH=state.db deno task cli show <threadId> --raw
`;
}

function usage(command: Command): string {
  const spec = SPEC[command];
  return [
    command,
    ...(spec.argument === undefined ? [] : [`<${spec.argument}>`]),
    ...(command === "clear" ? ["--yes"] : []),
    ...(command === "show" ? ["[--raw]"] : []),
  ].join(" ");
}

function commandHelp(command: Command): string {
  return `Usage: cli [store options] ${usage(command)} [--json]

${SPEC[command].help}

${COMMON_HELP}
`;
}

/** A failure with its exit code; the message is printed as is. */
class CliError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

const usageError = (message: string) =>
  new CliError(
    EXIT_CODES.usage,
    `${message}\nRun 'cli --help' (or 'cli <command> --help') for usage.`,
  );

/** What a command prints: text for people, and the JSON document for `--json`. */
interface Output {
  text: string;
  json: unknown;
}

const encoder = new TextEncoder();

function writeAll(file: { writeSync(p: Uint8Array): number }, text: string) {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(file.writeSync(bytes));
}

function processEnv(): Record<string, string | undefined> {
  try {
    return Deno.env.toObject();
  } catch {
    return {}; // no --allow-env: flags only
  }
}

/**
 * Runs the inspector with command-line arguments, as `deno task cli` does.
 * It never calls `Deno.exit`: it returns the exit code.
 *
 * @param args The arguments: store options, a command, its arguments and flags.
 * @param io Where the configuration comes from and the output goes; default: the process's.
 * @returns The exit code, one of {@linkcode EXIT_CODES}.
 *
 * @example Look up a chain, as text and as JSON
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { InMemoryBackend, ThreadRegistry } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const uuid = await new ThreadRegistry(backend).getOrCreate("console.router.greeter");
 *
 * let output = "";
 * const io = { backend, stdout: (text: string) => output += text };
 * assert.equal(await main(["chain", "console.router.greeter"], io), 0);
 * assert.equal(output, `${uuid}\n`);
 *
 * output = "";
 * assert.equal(await main(["uuid", uuid, "--json"], io), 0);
 * assert.deepEqual(JSON.parse(output), { uuid, chain: "console.router.greeter" });
 *
 * assert.equal(await main(["chain", "nobody.home"], { ...io, stderr: () => {} }), 1);
 * ```
 *
 * @example Show a thread's slots
 * ```ts
 * import { main } from "@xml-pipeline/shared-backend/cli";
 * import { InMemoryBackend, serializeSlot } from "@xml-pipeline/shared-backend";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * await backend.bufferAppend("t1", serializeSlot({ text: "hi", at: new Date(0) }));
 *
 * let output = "";
 * assert.equal(await main(["show", "t1"], { backend, stdout: (text) => output += text }), 0);
 * assert.match(output, /#0 +\d+ B +\{"text":"hi","at":\{"\$date":"1970-01-01T00:00:00.000Z"\}\}/);
 * ```
 */
export async function main(args: string[], io: CliIo = {}): Promise<number> {
  const stdout = io.stdout ?? ((text: string) => writeAll(Deno.stdout, text));
  const stderr = io.stderr ?? ((text: string) => writeAll(Deno.stderr, text));
  const json = args.includes("--json");
  let secrets: string[] = [];
  const fail = (error: unknown): number => {
    const code = error instanceof CliError
      ? error.code
      : error instanceof BackendError
      ? EXIT_CODES.unreachable
      : error instanceof TypeError || error instanceof RangeError
      ? EXIT_CODES.usage
      : EXIT_CODES.notFound;
    let message = error instanceof Error ? error.message : String(error);
    for (const secret of secrets) message = message.replaceAll(secret, "***");
    stderr(
      json
        ? `${JSON.stringify({ error: message, exitCode: code })}\n`
        : `cli: ${message}\n`,
    );
    return code;
  };

  let parsed;
  try {
    parsed = parseCommandLine(args);
  } catch (error) {
    return fail(error);
  }
  if (parsed.help !== undefined) {
    stdout(parsed.help);
    return EXIT_CODES.ok;
  }
  const { command, argument, values } = parsed;

  let backend: SharedBackend;
  let store: string;
  let prefix: string | null;
  const owned = io.backend === undefined;
  if (io.backend !== undefined) {
    for (const flag of ["backend", "kv-path", "redis-url", "prefix"] as const) {
      if (values[flag] !== undefined) {
        return fail(usageError(`--${flag} cannot be used with io.backend`));
      }
    }
    backend = io.backend;
    store = `the given ${backend.kind} backend`;
    prefix = null; // not known from the protocol
  } else {
    let config: BackendConfig;
    try {
      config = storeConfig(values, io.env ?? processEnv());
    } catch (error) {
      return fail(error);
    }
    secrets = passwords(config.redisUrl);
    store = describeStore(config);
    prefix = config.prefix ?? "xp:";
    if ((config.backendType ?? "memory") === "memory") {
      stderr(
        "cli: note: the memory backend is this process's own, empty store; " +
          "use --backend kv|redis (or XP_BACKEND) to inspect a shared one\n",
      );
    }
    try {
      backend = await createSharedBackend(config);
    } catch (error) {
      return fail(
        new CliError(
          EXIT_CODES.unreachable,
          `cannot open the store ${store}: ${
            error instanceof Error ? error.message : String(error)
          }`,
        ),
      );
    }
  }

  try {
    if (!(await backend.ping())) {
      throw new CliError(
        EXIT_CODES.unreachable,
        `the store ${store} does not answer`,
      );
    }
    const output = await run(command, argument, values, backend, {
      store,
      prefix,
    });
    stdout(json ? `${JSON.stringify(output.json, null, 2)}\n` : output.text);
    return EXIT_CODES.ok;
  } catch (error) {
    return fail(error);
  } finally {
    if (owned) await backend.close().catch(() => {});
  }
}

interface Values {
  backend?: string | undefined;
  "kv-path"?: string | undefined;
  "redis-url"?: string | undefined;
  prefix?: string | undefined;
  json?: boolean | undefined;
  raw?: boolean | undefined;
  yes?: boolean | undefined;
  start?: string | undefined;
  end?: string | undefined;
  help?: boolean | undefined;
}

type Parsed =
  | { help: string }
  | {
    help?: undefined;
    command: Command;
    argument: string | undefined;
    values: Values;
  };

function parseCommandLine(args: string[]): Parsed {
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        backend: { type: "string" },
        "kv-path": { type: "string" },
        "redis-url": { type: "string" },
        prefix: { type: "string" },
        json: { type: "boolean" },
        raw: { type: "boolean" },
        yes: { type: "boolean" },
        start: { type: "string" },
        end: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    throw usageError(error instanceof Error ? error.message : String(error));
  }
  let [name, ...rest] = positionals;
  let help = values.help === true;
  if (name === "help") {
    help = true;
    [name, ...rest] = rest;
  }
  if (name === undefined) {
    if (help) return { help: mainHelp() };
    throw usageError("Missing a command");
  }
  if (!(COMMANDS as readonly string[]).includes(name)) {
    throw usageError(
      `Unknown command ${JSON.stringify(name)}: expected one of ${
        COMMANDS.join(", ")
      }`,
    );
  }
  const command = name as Command;
  if (help) return { help: commandHelp(command) };
  const spec = SPEC[command];
  for (const flag of ["raw", "start", "end", "yes"] as const) {
    if (values[flag] !== undefined && !spec.flags.includes(flag)) {
      throw usageError(
        `--${flag} is not an option of ${command}${
          flag === "yes" ? " (only of clear)" : " (only of show)"
        }`,
      );
    }
  }
  const wanted = spec.argument === undefined ? 0 : 1;
  if (rest.length !== wanted) {
    throw usageError(
      wanted === 0
        ? `${command} takes no arguments, got ${
          rest.map((a) => JSON.stringify(a)).join(" ")
        }`
        : rest.length === 0
        ? `${command} needs a <${spec.argument}>`
        : `${command} takes one <${spec.argument}>, got ${rest.length} (quote it, or put it after --)`,
    );
  }
  return { command, argument: rest[0], values };
}

function storeConfig(
  values: Values,
  env: Record<string, string | undefined>,
): BackendConfig {
  let config: BackendConfig;
  try {
    config = configFromEnv(env);
  } catch (error) {
    throw usageError(error instanceof Error ? error.message : String(error));
  }
  if (values.backend !== undefined) {
    const backend = values.backend;
    if (!["memory", "kv", "redis", "manager"].includes(backend)) {
      throw usageError(
        `Invalid --backend: expected memory, kv or redis, got ${
          JSON.stringify(backend)
        }`,
      );
    }
    config.backendType = backend as NonNullable<BackendConfig["backendType"]>;
  }
  for (
    const [flag, option] of [
      ["kv-path", "kvPath"],
      ["redis-url", "redisUrl"],
      ["prefix", "prefix"],
    ] as const
  ) {
    const value = values[flag];
    if (value === undefined) continue;
    if (value === "" && flag !== "prefix") {
      throw usageError(`Invalid --${flag}: expected a non-empty value`);
    }
    config[option] = value;
  }
  return config;
}

/** The passwords in a Redis URL (raw and decoded), to keep out of messages. */
function passwords(url: string | undefined): string[] {
  if (url === undefined) return [];
  try {
    const { password } = new URL(url);
    if (password === "") return [];
    return [...new Set([password, decodeURIComponent(password)])]
      .sort((a, b) => b.length - a.length);
  } catch {
    return [];
  }
}

function describeStore(config: BackendConfig): string {
  switch (config.backendType === "manager" ? "kv" : config.backendType) {
    case "kv":
      return `kv: ${config.kvPath ?? "Deno's default KV"}`;
    case "redis": {
      const url = config.redisUrl ?? "redis://localhost:6379";
      try {
        const parsed = new URL(url);
        return `redis: ${parsed.protocol}//${parsed.host}${
          parsed.pathname === "/" ? "" : parsed.pathname
        }`;
      } catch {
        return "redis: (an unparsable URL)";
      }
    }
    default:
      return "memory (this process)";
  }
}

async function run(
  command: Command,
  argument: string | undefined,
  values: Values,
  backend: SharedBackend,
  where: { store: string; prefix: string | null },
): Promise<Output> {
  const under = where.prefix === null
    ? `in ${where.store}`
    : `under prefix ${JSON.stringify(where.prefix)} of ${where.store}`;
  switch (command) {
    case "stats": {
      const stats = await backend.stats();
      const rows: [string, string][] = [
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
      ];
      return {
        text: rows.map(([k, v]) => `${k.padEnd(17)} ${v}\n`).join(""),
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
    case "threads": {
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
    case "show":
      return await show(backend, argument!, values, under);
    case "registry": {
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
    case "chain": {
      const uuid = await backend.registryGetUuid(argument!);
      if (uuid === null) {
        throw new CliError(
          EXIT_CODES.notFound,
          `chain ${JSON.stringify(argument)} is not registered ${under}`,
        );
      }
      return { text: `${uuid}\n`, json: { chain: argument, uuid } };
    }
    case "uuid": {
      const chain = await backend.registryGetChain(argument!);
      if (chain === null) {
        throw new CliError(
          EXIT_CODES.notFound,
          `uuid ${JSON.stringify(argument)} is not registered ${under}`,
        );
      }
      return { text: `${chain}\n`, json: { uuid: argument, chain } };
    }
    case "delete-thread": {
      const slots = await backend.bufferThreadLen(argument!);
      if (!(await backend.bufferDeleteThread(argument!))) {
        throw new CliError(
          EXIT_CODES.notFound,
          `no thread ${JSON.stringify(argument)} ${under}`,
        );
      }
      return {
        text: `deleted thread ${printable(argument!)} (${
          number(slots)
        } slots)\n`,
        json: { threadId: argument, deleted: true, slots },
      };
    }
    case "clear": {
      const stats = await backend.stats();
      const what = `${number(stats.threads)} threads (${
        number(stats.slots)
      } slots) and ${number(stats.registryEntries)} registry entries ${under}`;
      if (values.yes !== true) {
        throw new CliError(
          EXIT_CODES.usage,
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
  }
}

async function show(
  backend: SharedBackend,
  threadId: string,
  values: Values,
  under: string,
): Promise<Output> {
  const start = index("--start", values.start) ?? 0;
  const end = index("--end", values.end);
  const length = await backend.bufferThreadLen(threadId);
  if (length === 0) {
    throw new CliError(
      EXIT_CODES.notFound,
      `no thread ${JSON.stringify(threadId)} ${under}`,
    );
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
    if (values.raw === true) {
      lines.push(`${head}\n${hexDump(bytes)}`);
      return { index: at, size: bytes.length, hex: hex(bytes) };
    }
    let value: unknown;
    try {
      value = toJson(deserializeSlot(bytes));
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
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

function index(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw usageError(
      `Invalid ${flag}: expected a non-negative integer, got ${
        JSON.stringify(text)
      }`,
    );
  }
  return Number(text);
}

/** A decoded slot as JSON, with the values JSON cannot hold tagged. */
function toJson(value: unknown): unknown {
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

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `xxd`-style: offset, 16 bytes in hex, the printable ASCII. */
function hexDump(bytes: Uint8Array): string {
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

function table(
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

/** An id as is, or JSON-quoted when it has control characters or edge spaces. */
function printable(id: string): string {
  // deno-lint-ignore no-control-regex
  return /[\x00-\x1f\x7f]|^\s|\s$/.test(id) ? JSON.stringify(id) : id;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function number(n: number): string {
  return n.toLocaleString("en-US");
}

function duration(ms: number): string {
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

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
