// The command line's shape: the spec of every command and flag, the help texts
// made from it, and the parsing of argv into what to run. It never reads the
// environment, opens a store or prints: main() does.

import { parseArgs } from "node:util";
import PACKAGE from "../deno.json" with { type: "json" };
import { errorMessage, quote } from "../_messages.ts";
import { usageError } from "./_errors.ts";

/**
 * A flag of one command. A flag name means one thing (one type) in every
 * command that has it.
 */
export interface FlagSpec {
  type: "boolean" | "string";
  /** The value's name in the help: `N` in `--start N` (string flags). */
  value?: string;
  /** Its line in the command's help. */
  help: string;
}

/** One command of the inspector: what it takes and what its help says. */
export interface CommandSpec {
  /** The name of its one positional argument in the help, if it takes one. */
  argument?: string;
  /** Its own flags, listed under "Options:" in its help. */
  flags?: Readonly<Record<string, FlagSpec>>;
  /** What its usage line shows after the argument (`--yes`, `[--raw]`). */
  synopsis?: string;
  /** Its line in the list of commands. */
  summary: string;
  /** Its help, above its options. */
  help: string;
}

/**
 * Every command, in the order of the help. Adding a command is an entry here
 * and a function of the same name in `_commands.ts` (the compiler asks for it).
 */
export const COMMANDS = {
  stats: {
    summary: "count the threads, slots and registry entries of the prefix",
    help:
      "Prints the store, the prefix, the live threads, slots and registry\n" +
      "entries, when the threads expire (kv and redis), and the reader's TTL:\n" +
      "the TTL this inspector would write with (XP_TTL_MS or the default),\n" +
      "which is not the data's: data keeps the TTL its writers gave it.",
  },
  threads: {
    summary: "list the threads with their slot counts and chains",
    help:
      "Lists every live thread of the prefix: its slot count, its id, and the\n" +
      "chain the registry maps the id to (threads are usually registry uuids).",
  },
  show: {
    argument: "threadId",
    synopsis: "[--raw]",
    flags: {
      raw: { type: "boolean", help: "every slot as a hex dump instead" },
      start: {
        type: "string",
        value: "N",
        help: "the first index to print (default 0)",
      },
      end: {
        type: "string",
        value: "N",
        help: "one past the last index to print (default: the end)",
      },
    },
    summary: "print a thread's slots, decoded from MessagePack",
    help:
      "Prints a thread's slots: index, size in bytes, and the slot decoded from\n" +
      'MessagePack as JSON. Values JSON cannot hold are tagged: {"$bytes": hex},\n' +
      '{"$date": iso}, {"$map": [[key, value], ...]}, {"$bigint": "digits"},\n' +
      '{"$number": "NaN"}. A slot that is not MessagePack is shown in hex.',
  },
  watch: {
    argument: "threadId",
    synopsis: "[--from N]",
    flags: {
      from: {
        type: "string",
        value: "N",
        help: "the first index to print (default: only new slots)",
      },
    },
    summary:
      "print a thread's slots as they arrive, like tail -f (Ctrl-C ends)",
    help:
      "Prints a thread's slots as they are appended, by any process, as show\n" +
      "prints them (with --json: one JSON document a line), until Ctrl-C (exit\n" +
      "0) or the thread is deleted or expires. A thread that does not exist\n" +
      "yet is waited for.",
  },
  serve: {
    synopsis: "[--port N]",
    flags: {
      port: {
        type: "string",
        value: "N",
        help: "the port (default: a free one, printed at start)",
      },
      host: {
        type: "string",
        value: "HOST",
        help: "the address to listen on (default 127.0.0.1)",
      },
      token: {
        type: "string",
        value: "TOKEN",
        help:
          "the token requests need (default: a random one, printed, on a host\n" +
          "other than 127.0.0.1, ::1 or localhost; none on those)",
      },
      "allow-write": {
        type: "boolean",
        help: "let the page delete a thread or clear the prefix",
      },
    },
    summary: "serve the web inspector: threads, slots and registry, live",
    help:
      "Serves a web page that shows the store: stats, the threads (slots,\n" +
      "chain, last write, expiry), a thread's slots decoded (live: appended\n" +
      "slots appear as they come), raw hex, the registry as a tree of chains,\n" +
      "search by thread id or chain. Read-only unless --allow-write. Prints its\n" +
      "URL and runs until Ctrl-C (exit 0).",
  },
  registry: {
    summary: "list the registry: uuid -> chain",
    help: "Lists every live registry pair of the prefix, sorted by chain.",
  },
  chain: {
    argument: "chain",
    summary: "print the uuid of a chain",
    help:
      "Prints the uuid a chain (e.g. console.router.greeter) maps to; exits 1\n" +
      "when the chain is not registered.",
  },
  uuid: {
    argument: "uuid",
    summary: "print the chain of a uuid",
    help: "Prints the chain a uuid maps to; exits 1 when the uuid is not\n" +
      "registered.",
  },
  prefixes: {
    summary: "list the prefixes (tenants) that hold data in the store",
    help:
      "Lists every prefix (tenant) of the store that holds threads or registry\n" +
      "entries, with what it holds; `cli --prefix P stats` counts one. It reads\n" +
      "the whole store's key space (kv: one read per prefix; redis: SCAN), as\n" +
      "an admin command may: the library's own calls never do. kv and redis\n" +
      "only; on a Redis Cluster, the node the URL names.",
  },
  "delete-thread": {
    argument: "threadId",
    summary: "delete a thread and all its slots",
    help:
      "Deletes a thread and all its slots; exits 1 when it does not exist.\n" +
      "The registry is left as it is.",
  },
  clear: {
    synopsis: "--yes",
    flags: { yes: { type: "boolean", help: "really delete" } },
    summary:
      "delete every thread and registry entry of the prefix (needs --yes)",
    help:
      "Deletes every thread and every registry entry under the prefix, and only\n" +
      "there (other prefixes on the same store are left alone). Without --yes it\n" +
      "only says what it would delete, and exits 2.",
  },
} as const satisfies Record<string, CommandSpec>;

/** The name of a command. */
export type Command = keyof typeof COMMANDS;

type SpecOf<C extends Command> = (typeof COMMANDS)[C];

/** The positional argument command `C` gets: a string if it takes one. */
export type ArgumentOf<C extends Command> = C extends Command
  ? SpecOf<C> extends { argument: string } ? string : undefined
  : never;

/** The values of command `C`'s own flags, as given on the command line. */
export type FlagValuesOf<C extends Command> = C extends Command
  ? SpecOf<C> extends { flags: infer F } ? {
      -readonly [K in keyof F]?: F[K] extends { type: "boolean" } ? boolean
        : string;
    }
  : Record<never, never>
  : never;

/** The flags that choose the store; `main()` turns them into a config. */
export interface StoreFlags {
  backend?: string | undefined;
  "kv-path"?: string | undefined;
  "redis-url"?: string | undefined;
  prefix?: string | undefined;
  /** Create the KV file when it does not exist (else that is an error). */
  create?: boolean | undefined;
}

/** A command to run, as the command line gives it. */
export interface Invocation<C extends Command = Command> {
  command: C;
  argument: ArgumentOf<C>;
  /** The command's own flags. */
  flags: FlagValuesOf<C>;
  store: StoreFlags;
}

/**
 * What the command line asks for: a text to print (the help, the version),
 * or a command to run.
 */
export type Parsed = { text: string } | ({ text?: undefined } & Invocation);

/** The flags of every command: the store, the output, the help. */
const GLOBAL_FLAGS = {
  backend: { type: "string" },
  "kv-path": { type: "string" },
  "redis-url": { type: "string" },
  prefix: { type: "string" },
  create: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
} as const;

const COMMAND_NAMES = Object.keys(COMMANDS) as Command[];

/** Each command flag, with the commands that have it. */
const FLAG_OWNERS = new Map<
  string,
  { type: FlagSpec["type"]; owners: Command[] }
>();
for (const command of COMMAND_NAMES) {
  const spec: CommandSpec = COMMANDS[command];
  for (const [flag, { type }] of Object.entries(spec.flags ?? {})) {
    const entry = FLAG_OWNERS.get(flag) ?? { type, owners: [] };
    entry.owners.push(command);
    FLAG_OWNERS.set(flag, entry);
  }
}

const PARSE_OPTIONS = {
  ...GLOBAL_FLAGS,
  ...Object.fromEntries(
    [...FLAG_OWNERS].map(([flag, { type }]) => [flag, { type }]),
  ),
};

const COMMON_HELP =
  `Store (default: the environment, as configFromEnv reads it):
  --backend memory|kv|redis   the store (XP_BACKEND; default memory, which is
                              this process's own empty store)
  --kv-path PATH              kv: the KV file (XP_KV_PATH; default Deno's KV)
  --redis-url URL             redis: the server (XP_REDIS_URL or REDIS_URL;
                              default redis://localhost:6379)
  --prefix PREFIX             the tenant (XP_PREFIX; default "xp:")
  --create                    kv: create the KV file if it does not exist (without
                              it, a missing file is an error: a mistyped path)

Output:
  --json                      one JSON document on stdout (errors as JSON on stderr)
  -h, --help                  help (also: help <command>)
  --version                   the version of @xml-pipeline/shared-backend

Exit codes: 0 done, 1 not found, 2 bad usage, 3 store unreachable or failed,
130 interrupted (Ctrl-C; it ends watch and serve with 0).`;

/**
 * Reads the command line: a text to print (help, version), or the command to
 * run with its argument and flags. Throws a usage `CliError` for anything it
 * cannot run.
 */
export function parseCommandLine(args: string[]): Parsed {
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: negativeValuesInline(args),
      strict: true,
      allowPositionals: true,
      options: PARSE_OPTIONS,
    }));
  } catch (error) {
    throw usageError(parseErrorMessage(error, args));
  }
  if (values.version === true) {
    return {
      text: values.json === true
        ? `${
          JSON.stringify({ name: PACKAGE.name, version: PACKAGE.version })
        }\n`
        : `${PACKAGE.name} ${PACKAGE.version}\n`,
    };
  }
  let [name, ...rest] = positionals;
  let help = values.help === true;
  if (name === "help") {
    help = true;
    [name, ...rest] = rest;
  }
  if (name === undefined) {
    if (help) return { text: mainHelp() };
    throw usageError("Missing a command");
  }
  if (!Object.hasOwn(COMMANDS, name)) {
    throw usageError(
      `Unknown command ${quote(name)}: expected one of ${
        COMMAND_NAMES.join(", ")
      }`,
    );
  }
  const command = name as Command;
  if (help) return { text: commandHelp(command) };
  const spec: CommandSpec = COMMANDS[command];
  const flags: Record<string, string | boolean> = {};
  for (const [flag, { owners }] of FLAG_OWNERS) {
    const value = values[flag];
    if (value === undefined) continue;
    if (!owners.includes(command)) {
      throw usageError(
        `--${flag} is not an option of ${command} (only of ${
          owners.join(", ")
        })`,
      );
    }
    flags[flag] = value;
  }
  const wanted = spec.argument === undefined ? 0 : 1;
  if (rest.length !== wanted) {
    throw usageError(
      wanted === 0
        ? `${command} takes no arguments, got ${
          rest.map((a) => quote(a)).join(" ")
        }`
        : rest.length === 0
        ? `${command} needs a <${spec.argument}>`
        : `${command} takes one <${spec.argument}>, got ${rest.length} (quote it, or put it after --)`,
    );
  }
  return {
    command,
    argument: rest[0],
    flags,
    store: {
      backend: values.backend as string | undefined,
      "kv-path": values["kv-path"] as string | undefined,
      "redis-url": values["redis-url"] as string | undefined,
      prefix: values.prefix as string | undefined,
      create: values.create as boolean | undefined,
    },
  } as Invocation;
}

/** The string flags: those that take a value. */
const STRING_FLAGS = new Set(
  Object.entries(PARSE_OPTIONS).flatMap(([flag, { type }]) =>
    type === "string" ? [`--${flag}`] : []
  ),
);

/**
 * `--start -1` as `--start=-1`: a value that looks like a negative number
 * is the flag's value (which its own check then refuses, naming the flag)
 * rather than node:util's "argument is ambiguous".
 */
function negativeValuesInline(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      out.push(...args.slice(i));
      break;
    }
    const next = args[i + 1];
    if (
      STRING_FLAGS.has(arg) && next !== undefined && /^-\d/.test(next)
    ) {
      out.push(`${arg}=${next}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

/** node:util's parse error in the inspector's words where it is unclear. */
function parseErrorMessage(error: unknown, args: string[]): string {
  const message = errorMessage(error);
  const ambiguous = /^Option '(--[\w-]+)[^']*' argument is ambiguous/.exec(
    message,
  );
  if (ambiguous !== null) {
    const flag = ambiguous[1]!;
    const value = args[args.indexOf(flag) + 1] ?? "";
    return `${flag} needs a value, got the option ${
      quote(value)
    } (write ${flag}=${value} for a value that starts with "-")`;
  }
  return message;
}

function mainHelp(): string {
  const width = Math.max(...COMMAND_NAMES.map((c) => usage(c).length));
  return `Usage: cli [store options] <command> [arguments] [--json]

Inspects a shared-backend store: context-buffer threads and the chain <-> uuid
registry.

Commands:
${
    COMMAND_NAMES.map((c) =>
      `  ${usage(c).padEnd(width)}  ${COMMANDS[c].summary}`
    ).join("\n")
  }

${COMMON_HELP}

Examples:
  deno task cli --backend kv --kv-path state.db stats
  deno task cli --backend redis --redis-url redis://host:6379 threads --json
  XP_BACKEND=kv XP_KV_PATH=state.db deno task cli show <threadId> --raw
`;
}

/** A command's usage line: `show <threadId> [--raw]`. */
function usage(command: Command): string {
  const spec: CommandSpec = COMMANDS[command];
  return [
    command,
    ...(spec.argument === undefined ? [] : [`<${spec.argument}>`]),
    ...(spec.synopsis === undefined ? [] : [spec.synopsis]),
  ].join(" ");
}

function commandHelp(command: Command): string {
  const spec: CommandSpec = COMMANDS[command];
  return `Usage: cli [store options] ${usage(command)} [--json]

${spec.help}${spec.flags === undefined ? "" : `\n\n${optionsHelp(spec.flags)}`}

${COMMON_HELP}
`;
}

/** The "Options:" block of a command's help: one line per flag. */
function optionsHelp(flags: Readonly<Record<string, FlagSpec>>): string {
  const rows = Object.entries(flags).map(([flag, spec]) => ({
    name: spec.value === undefined ? `--${flag}` : `--${flag} ${spec.value}`,
    help: spec.help,
  }));
  const width = Math.max(11, ...rows.map((row) => row.name.length)) + 2;
  return `Options:\n${
    rows.map((row) =>
      `  ${row.name.padEnd(width)}${
        row.help.replaceAll("\n", `\n  ${" ".repeat(width)}`)
      }`
    ).join("\n")
  }`;
}
