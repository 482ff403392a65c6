// The inspector (cli/main.ts): every command against real stores (a temporary KV
// file, a real redis-server, memory where it means something), in this
// isolate through main() and as a subprocess through the command line; its
// usage errors, unreachable stores and --help.

import assert from "node:assert/strict";
import { type CliIo, EXIT_CODES, main } from "../cli/main.ts";
import {
  type BackendConfig,
  ContextBuffer,
  createSharedBackend,
  InMemoryBackend,
  serializeSlot,
  ThreadRegistry,
} from "../mod.ts";
import { startRedisServer } from "./_redis_server.ts";
import { denoRun, type ProcessResult } from "./_fixtures/deno_run.ts";

const CLI = new URL("../cli/main.ts", import.meta.url).pathname;

type Result = ProcessResult;

/** Runs main() in this isolate with the given environment only. */
async function cli(
  args: string[],
  io: Omit<CliIo, "stdout" | "stderr"> = {},
): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    env: {},
    ...io,
    stdout: (text) => stdout += text,
    stderr: (text) => stderr += text,
  });
  return { code, stdout, stderr };
}

/** Runs the command line as a subprocess: `deno run -A cli/main.ts ...args`. */
function cliProcess(
  args: string[],
  env: Record<string, string> = {},
): Promise<Result> {
  return denoRun(["run", "-A", CLI, ...args], { env, clearEnv: true });
}

/** Reads a child's output a line at a time. */
class Lines {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** The next line, without its newline; fails after 10 s or at the end. */
  async line(): Promise<string> {
    const deadline = Date.now() + 10_000;
    while (!this.#buffer.includes("\n")) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const chunk = await Promise.race([
        this.#reader.read(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no line within 10 s: ${this.#buffer}`)),
            Math.max(0, deadline - Date.now()),
          );
        }),
      ]).finally(() => clearTimeout(timer));
      if (chunk.done) throw new Error(`ended without a line: ${this.#buffer}`);
      this.#buffer += chunk.value;
    }
    const end = this.#buffer.indexOf("\n");
    const line = this.#buffer.slice(0, end);
    this.#buffer = this.#buffer.slice(end + 1);
    return line;
  }

  /** Everything left, once the child has ended. */
  async rest(): Promise<string> {
    for (;;) {
      const chunk = await this.#reader.read();
      if (chunk.done) return this.#buffer;
      this.#buffer += chunk.value;
    }
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

/** `deno run -A cli/main.ts ...args` left running, its output read by line; disposing kills it. */
function spawnCli(args: string[]): AsyncDisposable & {
  process: Deno.ChildProcess;
  stdout: Lines;
  stderr: Lines;
} {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1" },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new Lines(process.stdout);
  const stderr = new Lines(process.stderr);
  return {
    process,
    stdout,
    stderr,
    async [Symbol.asyncDispose]() {
      try {
        process.kill("SIGKILL");
      } catch {
        // already ended
      }
      await process.status;
      await stdout.cancel();
      await stderr.cancel();
    },
  };
}

function ok(result: Result): Result {
  assert.equal(result.code, 0, `exit ${result.code}: ${result.stderr}`);
  return result;
}

/** A store the command suite runs on: its flags, its config, its cleanup. */
interface Store extends AsyncDisposable {
  name: string;
  /** The store flags of the command line. */
  flags: string[];
  /** The same store as environment variables. */
  env: Record<string, string>;
  config: BackendConfig;
}

async function kvStore(): Promise<Store> {
  const dir = await Deno.makeTempDir({ prefix: "xp-cli-test-" });
  const kvPath = `${dir}/state.db`;
  return {
    name: "kv",
    flags: ["--backend", "kv", "--kv-path", kvPath],
    env: { XP_BACKEND: "kv", XP_KV_PATH: kvPath },
    config: { backendType: "kv", kvPath },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

async function redisStore(): Promise<Store> {
  const server = await startRedisServer();
  return {
    name: "redis",
    flags: ["--backend", "redis", "--redis-url", server.url],
    env: { XP_BACKEND: "redis", XP_REDIS_URL: server.url },
    config: { backendType: "redis", redisUrl: server.url },
    [Symbol.asyncDispose]: () => server.stop(),
  };
}

/**
 * Fills `prefix` of a store with what an inspector meets: a chain with two
 * ContextBuffer messages on its uuid, a slot of tagged types, a slot that is
 * not MessagePack. Returns the chain's uuid.
 */
async function fill(config: BackendConfig, prefix: string): Promise<string> {
  await using backend = await createSharedBackend({ ...config, prefix });
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer<{ text: string }>(backend);
  const uuid = await registry.getOrCreate("console.router.greeter");
  await buffer.append(uuid, { text: "Hello?" }, {
    fromId: "router",
    toId: "greeter",
  });
  await buffer.append(uuid, { text: "Hello, console!" }, {
    fromId: "greeter",
    toId: "router",
  });
  await backend.bufferAppend(
    "typed",
    serializeSlot({
      at: new Date(Date.UTC(2026, 0, 31)),
      tags: new Map([["k", 1]]),
      big: 2n ** 60n,
      bytes: new Uint8Array([0xde, 0xad]),
    }),
  );
  await backend.bufferAppend("garbage", new Uint8Array([0xc1, 0x41, 0x42]));
  return uuid;
}

for (const open of [kvStore, redisStore]) {
  Deno.test(`every command on ${open.name.replace("Store", "")}`, async (t) => {
    await using store = await open();
    const prefix = "cli-test:";
    const uuid = await fill(store.config, prefix);
    // A neighbour tenant that no command may touch.
    await fill(store.config, "neighbour:");
    const run = (...args: string[]) =>
      cli([...store.flags, "--prefix", prefix, ...args]);

    await t.step(
      "stats counts the prefix's threads, slots and registry",
      async () => {
        const text = ok(await run("stats")).stdout;
        assert.match(text, /^threads {11}3$/m);
        assert.match(text, /^slots {13}4$/m);
        assert.match(text, /^registry entries {2}1$/m);
        assert.match(text, new RegExp(`^store {13}${store.name}: `, "m"));
        const json = JSON.parse(ok(await run("stats", "--json")).stdout);
        assert.deepEqual(
          { ...json, store: undefined, threadExpiry: undefined },
          {
            backend: store.name,
            store: undefined,
            prefix,
            threads: 3,
            slots: 4,
            registryEntries: 1,
            readerTtlMs: 86_400_000,
            threadExpiry: undefined,
          },
        );
      },
    );

    await t.step(
      "stats says the TTL is the reader's, and when the data expires",
      async () => {
        // Written with a 1 h TTL, read by an inspector whose default is 1 d.
        await using writer = await createSharedBackend({
          ...store.config,
          prefix: "short:",
          ttlMs: 3_600_000,
        });
        await writer.bufferAppend("t", new Uint8Array([1]));
        const result = ok(
          await cli([...store.flags, "--prefix", "short:", "stats"]),
        );
        assert.match(
          result.stdout,
          /^reader's ttl {6}1 d \(86400000 ms\), sliding: this inspector's own \(XP_TTL_MS\), not the data's$/m,
        );
        assert.match(
          result.stdout,
          /^threads expire {4}in (59 min \d+ s|1 h)$/m,
        );
        const json = JSON.parse(
          ok(
            await cli([
              ...store.flags,
              "--prefix",
              "short:",
              "stats",
              "--json",
            ]),
          )
            .stdout,
        );
        assert.equal(json.readerTtlMs, 86_400_000);
        assert.equal(json.ttlMs, undefined);
        const left = json.threadExpiry.soonest - Date.now();
        assert.ok(left > 3_500_000 && left <= 3_600_000, `${left} ms`);
        assert.equal(json.threadExpiry.latest, json.threadExpiry.soonest);
        await writer.bufferClear();
      },
    );

    await t.step("prefixes lists the prefixes that hold data", async () => {
      await using other = await createSharedBackend({
        ...store.config,
        prefix: "{odd}%7B:",
      });
      await other.registrySet("a.b", "u-1");
      const json = JSON.parse(ok(await run("prefixes", "--json")).stdout);
      assert.deepEqual(json, [
        { prefix: "cli-test:", threads: true, registry: true },
        { prefix: "neighbour:", threads: true, registry: true },
        { prefix: "{odd}%7B:", threads: false, registry: true },
      ]);
      const text = ok(await run("prefixes")).stdout;
      assert.match(text, /^PREFIX {8}HOLDS$/m);
      assert.match(text, /^"cli-test:" {3}threads, registry$/m);
      assert.match(text, /^"\{odd\}%7B:" {3}registry$/m);
      await other.registryClear();
    });

    await t.step(
      "the store can come from the environment, flags win",
      async () => {
        const fromEnv = await cli(["stats", "--json"], {
          env: { ...store.env, XP_PREFIX: prefix },
        });
        assert.equal(JSON.parse(ok(fromEnv).stdout).slots, 4);
        const overridden = await cli(
          ["stats", "--json", "--prefix", "empty:"],
          {
            env: { ...store.env, XP_PREFIX: prefix },
          },
        );
        assert.equal(JSON.parse(ok(overridden).stdout).slots, 0);
      },
    );

    await t.step("threads lists ids, slot counts and chains", async () => {
      const text = ok(await run("threads")).stdout;
      assert.match(text, /^SLOTS {2}THREAD/);
      assert.match(
        text,
        new RegExp(`^ {4}2 {2}${uuid} {2}console\\.router\\.greeter$`, "m"),
      );
      assert.deepEqual(
        JSON.parse(ok(await run("threads", "--json")).stdout),
        [
          { threadId: "garbage", slots: 1, chain: null },
          { threadId: "typed", slots: 1, chain: null },
          { threadId: uuid, slots: 2, chain: "console.router.greeter" },
        ].sort((a, b) => a.threadId < b.threadId ? -1 : 1),
      );
    });

    await t.step("show decodes slots to JSON with index and size", async () => {
      const text = ok(await run("show", uuid)).stdout;
      assert.match(
        text,
        new RegExp(
          `^thread ${uuid} \\(chain console\\.router\\.greeter\\): 2 slots$`,
          "m",
        ),
      );
      assert.match(
        text,
        /^#0 {2}\d+ B {2}\{"v":1,.*"payload":\{"text":"Hello\?"\}\}$/m,
      );
      assert.match(
        text,
        /^#1 {2}\d+ B {2}\{.*"fromId":"greeter".*"Hello, console!"/m,
      );
      const json = JSON.parse(ok(await run("show", uuid, "--json")).stdout);
      assert.equal(json.length, 2);
      assert.equal(json.chain, "console.router.greeter");
      assert.deepEqual(json.slots.map((s: { index: number }) => s.index), [
        0,
        1,
      ]);
      assert.equal(json.slots[1].value.payload.text, "Hello, console!");
      assert.ok(json.slots[1].size > 0);
    });

    await t.step("show tags the values JSON cannot hold", async () => {
      const json = JSON.parse(ok(await run("show", "typed", "--json")).stdout);
      assert.deepEqual(json.slots[0].value, {
        at: { $date: "2026-01-31T00:00:00.000Z" },
        tags: { $map: [["k", 1]] },
        big: { $bigint: String(2n ** 60n) },
        bytes: { $bytes: "dead" },
      });
    });

    await t.step(
      "show prints a slot that is not MessagePack in hex",
      async () => {
        const result = ok(await run("show", "garbage"));
        assert.match(
          result.stdout,
          /^#0 {2}3 B {2}\(not MessagePack: deserializeSlot: malformed MessagePack/m,
        );
        assert.match(result.stdout, /^ {2}00000000 {2}c1 41 42 +\|\.AB\|$/m);
        const json = JSON.parse(
          ok(await run("show", "garbage", "--json")).stdout,
        );
        assert.equal(json.slots[0].hex, "c14142");
        assert.match(json.slots[0].error, /malformed MessagePack/);
      },
    );

    await t.step(
      "show --raw is a hex dump, --start/--end a range",
      async () => {
        const text =
          ok(await run("show", uuid, "--raw", "--start", "1")).stdout;
        assert.match(text, /2 slots, showing 1 from #1$/m);
        assert.match(text, /^#1 {2}\d+ B$/m);
        assert.match(
          text,
          /^ {2}00000000 {2}([0-9a-f]{2} ){7}[0-9a-f]{2} {2}/m,
        );
        assert.doesNotMatch(text, /^#0/m);
        const json = JSON.parse(
          ok(await run("show", uuid, "--raw", "--json", "--end", "1")).stdout,
        );
        assert.equal(json.slots.length, 1);
        assert.match(json.slots[0].hex, /^[0-9a-f]+$/);
        assert.equal(json.slots[0].hex.length, 2 * json.slots[0].size);
      },
    );

    await t.step("show of a missing thread exits 1", async () => {
      const result = await run("show", "nope");
      assert.equal(result.code, EXIT_CODES.notFound);
      assert.match(result.stderr, /no thread "nope" under prefix "cli-test:"/);
    });

    await t.step(
      "watch prints slots as they arrive (--json a line each, --from N) until Ctrl-C, exit 0",
      async () => {
        await using watcher = spawnCli([
          ...store.flags,
          "--prefix",
          prefix,
          "watch",
          uuid,
          "--from",
          "1",
          "--json",
        ]);
        assert.match(await watcher.stderr.line(), /watching thread .*Ctrl-C/);
        // Slot 1 was there before the watch; 2 and 3 come from another process's appends.
        const first = JSON.parse(await watcher.stdout.line());
        assert.equal(first.index, 1);
        assert.equal(first.value.payload.text, "Hello, console!");
        await using writer = await createSharedBackend({
          ...store.config,
          prefix,
        });
        const buffer = new ContextBuffer<{ text: string }>(writer);
        await buffer.append(uuid, { text: "<b>live</b>" }, {
          fromId: "router",
          toId: "greeter",
        });
        await writer.bufferAppend(uuid, new Uint8Array([0xc1]));
        const second = JSON.parse(await watcher.stdout.line());
        assert.deepEqual([second.index, second.value.payload.text], [
          2,
          "<b>live</b>",
        ]);
        const third = JSON.parse(await watcher.stdout.line());
        assert.deepEqual([third.index, third.hex], [3, "c1"]);
        watcher.process.kill("SIGINT");
        assert.equal((await watcher.process.status).code, 0);
        assert.equal(await watcher.stdout.rest(), "");
        // Without --json: show's lines.
        await using text = spawnCli([
          ...store.flags,
          "--prefix",
          prefix,
          "watch",
          uuid,
          "--from=2",
        ]);
        assert.match(
          await text.stdout.line(),
          /^#2 {2}\d+ B {2}\{"v":1,.*"<b>live<\/b>"/,
        );
        assert.match(
          await text.stdout.line(),
          /^#3 {2}1 B {2}\(not MessagePack/,
        );
        text.process.kill("SIGINT");
        assert.equal((await text.process.status).code, 0);
        await writer.bufferDeleteThread(uuid);
        await buffer.append(uuid, { text: "Hello?" }, {
          fromId: "router",
          toId: "greeter",
        });
        await buffer.append(uuid, { text: "Hello, console!" }, {
          fromId: "greeter",
          toId: "router",
        });
      },
    );

    await t.step("registry lists uuid -> chain", async () => {
      const text = ok(await run("registry")).stdout;
      assert.match(text, /^UUID {2,}CHAIN$/m);
      assert.match(
        text,
        new RegExp(`^${uuid} {2}console\\.router\\.greeter$`, "m"),
      );
      assert.deepEqual(JSON.parse(ok(await run("registry", "--json")).stdout), [
        { uuid, chain: "console.router.greeter" },
      ]);
    });

    await t.step(
      "chain and uuid look up both directions, 1 when absent",
      async () => {
        assert.equal(
          ok(await run("chain", "console.router.greeter")).stdout,
          `${uuid}\n`,
        );
        assert.equal(
          ok(await run("uuid", uuid)).stdout,
          "console.router.greeter\n",
        );
        assert.deepEqual(
          JSON.parse(ok(await run("uuid", uuid, "--json")).stdout),
          {
            uuid,
            chain: "console.router.greeter",
          },
        );
        const missing = await run("chain", "console.nobody");
        assert.equal(missing.code, EXIT_CODES.notFound);
        assert.match(
          missing.stderr,
          /chain "console\.nobody" is not registered/,
        );
        const json = await run("uuid", "no-such-uuid", "--json");
        assert.equal(json.code, EXIT_CODES.notFound);
        assert.equal(JSON.parse(json.stderr).exitCode, 1);
      },
    );

    await t.step(
      "delete-thread deletes one thread, 1 when absent",
      async () => {
        assert.equal(
          ok(await run("delete-thread", "garbage")).stdout,
          "deleted thread garbage (1 slots)\n",
        );
        assert.equal(
          (await run("delete-thread", "garbage")).code,
          EXIT_CODES.notFound,
        );
        assert.equal(
          JSON.parse(ok(await run("stats", "--json")).stdout).threads,
          2,
        );
      },
    );

    await t.step(
      "clear refuses without --yes, then clears this prefix only",
      async () => {
        const refused = await run("clear");
        assert.equal(refused.code, EXIT_CODES.usage);
        assert.match(
          refused.stderr,
          /clear would delete 2 threads \(3 slots\) and 1 registry entries under prefix "cli-test:".*--yes/,
        );
        assert.equal(
          JSON.parse(ok(await run("stats", "--json")).stdout).slots,
          3,
        );
        const json = JSON.parse(
          ok(await run("clear", "--yes", "--json")).stdout,
        );
        assert.deepEqual(json, {
          cleared: { threads: 2, slots: 3, registryEntries: 1 },
        });
        const after = JSON.parse(ok(await run("stats", "--json")).stdout);
        assert.deepEqual([after.threads, after.registryEntries], [0, 0]);
        assert.match(
          ok(await run("threads")).stdout,
          /^no threads under prefix "cli-test:"/,
        );
        assert.match(ok(await run("registry")).stdout, /^no registry entries/);
        const neighbour = await cli([
          ...store.flags,
          "--prefix",
          "neighbour:",
          "stats",
          "--json",
        ]);
        assert.equal(JSON.parse(ok(neighbour).stdout).slots, 4);
      },
    );

    await t.step(
      "the command line runs as a process with the same results",
      async () => {
        const result = await cliProcess(["registry", "--json"], {
          ...store.env,
          XP_PREFIX: "neighbour:",
        });
        assert.equal(result.code, 0, result.stderr);
        assert.equal(
          JSON.parse(result.stdout)[0].chain,
          "console.router.greeter",
        );
        const missing = await cliProcess([...store.flags, "show", "nope"]);
        assert.equal(missing.code, EXIT_CODES.notFound);
      },
    );
  });
}

Deno.test("every command on a given memory backend, which stays open", async () => {
  await using backend = new InMemoryBackend();
  const uuid = await new ThreadRegistry(backend).getOrCreate("a.b");
  await new ContextBuffer(backend).append(uuid, "hi", {
    fromId: "a",
    toId: "b",
  });
  const run = (...args: string[]) => cli(args, { backend });
  assert.match(
    ok(await run("stats")).stdout,
    /^store {13}the given memory backend$/m,
  );
  assert.match(
    ok(await run("threads")).stdout,
    new RegExp(`1 {2}${uuid} {2}a\\.b`),
  );
  assert.match(ok(await run("show", uuid)).stdout, /"payload":"hi"/);
  assert.equal(ok(await run("chain", "a.b")).stdout, `${uuid}\n`);
  assert.equal(ok(await run("uuid", uuid)).stdout, "a.b\n");
  const missing = await run("show", "nope");
  assert.equal(missing.code, EXIT_CODES.notFound);
  assert.match(missing.stderr, /no thread "nope" in the given memory backend/);
  assert.equal((await run("--backend", "kv", "stats")).code, EXIT_CODES.usage);
  ok(await run("clear", "--yes"));
  assert.equal((await backend.stats()).threads, 0);
  assert.equal(await backend.ping(), true); // left open
});

Deno.test("the memory backend from the configuration is empty, and the CLI says so", async () => {
  const result = ok(await cli(["stats", "--json"]));
  assert.equal(JSON.parse(result.stdout).backend, "memory");
  assert.match(
    result.stderr,
    /note: the memory backend is this process's own, empty store/,
  );
});

Deno.test("bad usage exits 2 with a message, before any store is opened", async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /Missing a command/],
    [
      ["frobnicate"],
      /Unknown command "frobnicate": expected one of stats, threads, show/,
    ],
    [["stats", "--frobnicate"], /Unknown option '--frobnicate'/],
    [["stats", "extra"], /stats takes no arguments, got "extra"/],
    [["show"], /show needs a <threadId>/],
    [["chain", "a", "b"], /chain takes one <chain>, got 2/],
    [["stats", "--raw"], /--raw is not an option of stats \(only of show\)/],
    [
      ["threads", "--yes"],
      /--yes is not an option of threads \(only of clear\)/,
    ],
    [
      ["show", "t", "--start=-1"],
      /Invalid --start: expected a non-negative integer/,
    ],
    [
      ["show", "t", "--start", "-1"],
      /Invalid --start: expected a non-negative integer, got "-1"/,
    ],
    [
      ["--prefix", "-x", "stats"],
      /--prefix needs a value, got the option "-x" \(write --prefix=-x/,
    ],
    [
      ["--backend", "redis", "--redis-url", "http://x", "stats"],
      /Invalid --redis-url: expected a redis:\/\/ or rediss:\/\/ URL, got "http:\/\/x"/,
    ],
    [["prefixes"], /prefixes lists the prefixes of a kv or redis store/],
    [["show", "t", "--end", "x"], /Invalid --end/],
    [
      ["--backend", "sqlite", "stats"],
      /Invalid --backend: expected memory, kv or redis, got "sqlite"/,
    ],
    [["--backend", "kv", "--kv-path", "", "stats"], /Invalid --kv-path/],
    [["--backend"], /Option '--backend <value>' argument missing/],
  ];
  for (const [args, message] of cases) {
    await t.step(`cli ${args.join(" ") || "(nothing)"}`, async () => {
      const result = await cli(args);
      assert.equal(result.code, EXIT_CODES.usage, result.stderr);
      assert.match(result.stderr, message);
      assert.match(result.stderr, /Run 'cli --help'/);
      assert.equal(result.stdout, "");
    });
  }
  await t.step("a Redis URL from the environment that is not one", async () => {
    const result = await cli(["stats"], {
      env: { XP_BACKEND: "redis", XP_REDIS_URL: "http://x" },
    });
    assert.equal(result.code, EXIT_CODES.usage);
    assert.match(result.stderr, /Invalid XP_REDIS_URL: expected a redis:\/\//);
  });
  await t.step("a bad variable names it", async () => {
    const result = await cli(["stats"], { env: { XP_TTL_MS: "soon" } });
    assert.equal(result.code, EXIT_CODES.usage);
    assert.match(result.stderr, /XP_TTL_MS/);
  });
  await t.step("with --json the error is JSON", async () => {
    const result = await cli(["frobnicate", "--json"]);
    assert.equal(result.code, EXIT_CODES.usage);
    assert.equal(JSON.parse(result.stderr).exitCode, 2);
    assert.match(JSON.parse(result.stderr).error, /Unknown command/);
  });
  await t.step("a thread id over 1024 bytes is a usage error", async () => {
    const result = await cli(["show", "x".repeat(1025)]);
    assert.equal(result.code, EXIT_CODES.usage);
    assert.match(result.stderr, /threadId/);
  });
  await t.step("as a process, the exit code is the command's", async () => {
    const result = await cliProcess(["frobnicate"]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /Unknown command "frobnicate"/);
  });
});

Deno.test("--help works on every command without opening the store", async (t) => {
  // An unreachable store: --help must not try it.
  const env = { XP_BACKEND: "redis", XP_REDIS_URL: "redis://127.0.0.1:1" };
  await t.step("cli --help lists every command", async () => {
    const text = ok(await cli(["--help"], { env })).stdout;
    for (
      const command of [
        "stats",
        "threads",
        "show <threadId>",
        "watch <threadId>",
        "serve",
        "registry",
        "chain <chain>",
        "uuid <uuid>",
        "prefixes",
        "delete-thread <threadId>",
        "clear --yes",
      ]
    ) {
      assert.match(
        text,
        new RegExp(`^ {2}${command.replace(/[<>]/g, "\\$&")}`, "m"),
      );
    }
    assert.match(text, /Exit codes: 0 done, 1 not found, 2 bad usage, 3 store/);
    assert.equal(ok(await cli(["-h"], { env })).stdout, text);
    assert.equal(ok(await cli(["help"], { env })).stdout, text);
  });
  for (
    const command of [
      "stats",
      "threads",
      "show",
      "watch",
      "serve",
      "registry",
      "chain",
      "uuid",
      "prefixes",
      "delete-thread",
      "clear",
    ]
  ) {
    await t.step(`cli ${command} --help`, async () => {
      const text = ok(await cli([command, "--help"], { env })).stdout;
      assert.match(
        text,
        new RegExp(`^Usage: cli \\[store options\\] ${command}`),
      );
      assert.match(text, /--backend memory\|kv\|redis/);
      assert.equal(ok(await cli(["help", command], { env })).stdout, text);
    });
  }
  await t.step("as a process", async () => {
    const result = await cliProcess(["show", "--help"]);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /--raw/);
  });
});

Deno.test("an unreachable store exits 3 within 5 s, naming it without the password", async (t) => {
  await t.step("redis refusing connections", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    const started = Date.now();
    const result = await cli([
      "--backend",
      "redis",
      "--redis-url",
      `redis://:hunter2@127.0.0.1:${port}`,
      "stats",
    ]);
    assert.equal(result.code, EXIT_CODES.unreachable);
    assert.ok(Date.now() - started < 5_500);
    assert.match(result.stderr, new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.doesNotMatch(result.stderr + result.stdout, /hunter2/);
  });

  await t.step("redis accepting connections but never answering", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      try {
        for await (const conn of listener) held.push(conn);
      } catch {
        // closed
      }
    })();
    try {
      const started = Date.now();
      const result = await cli(["stats", "--json"], {
        env: {
          XP_BACKEND: "redis",
          XP_REDIS_URL: `redis://user:s%40cret@127.0.0.1:${port}`,
        },
      });
      assert.equal(result.code, EXIT_CODES.unreachable);
      assert.ok(Date.now() - started < 5_500, `${Date.now() - started} ms`);
      const error = JSON.parse(result.stderr);
      assert.equal(error.exitCode, 3);
      assert.match(error.error, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.doesNotMatch(result.stderr, /s%40cret|s@cret/);
    } finally {
      listener.close();
      await accepting;
      for (const conn of held) conn.close();
    }
  });

  await t.step("a KV path that cannot be opened", async () => {
    const result = await cli([
      "--backend",
      "kv",
      "--kv-path",
      "/nonexistent-dir/state.db",
      "--create",
      "threads",
    ]);
    assert.equal(result.code, EXIT_CODES.unreachable);
    assert.match(result.stderr, /\/nonexistent-dir\/state\.db/);
  });

  await t.step("as a process", async () => {
    const result = await cliProcess([
      "--backend",
      "redis",
      "--redis-url",
      "redis://:hunter2@127.0.0.1:1",
      "stats",
    ]);
    assert.equal(result.code, 3);
    assert.match(result.stderr, /127\.0\.0\.1:1/);
    assert.doesNotMatch(result.stderr, /hunter2/);
  });
});

Deno.test("watch from code: ends when the signal aborts, or when the thread is deleted", async () => {
  await using backend = new InMemoryBackend();
  await backend.bufferAppend("t1", serializeSlot({ n: 0 }));
  const lines: string[] = [];
  const notes: string[] = [];
  const stop = new AbortController();
  const watching = main(["watch", "t1", "--from", "0"], {
    backend,
    signal: stop.signal,
    stdout: (text) => lines.push(text),
    stderr: (text) => notes.push(text),
  });
  await backend.bufferAppend("t1", serializeSlot({ n: 1 }));
  while (lines.length < 2) await new Promise((r) => setTimeout(r, 5));
  stop.abort();
  assert.equal(await watching, EXIT_CODES.ok);
  assert.match(
    lines.join(""),
    /^#0 {2}4 B {2}\{"n":0\}\n#1 {2}4 B {2}\{"n":1\}\n$/,
  );
  assert.match(
    notes[0]!,
    /^cli: watching thread t1 in the given memory backend: \d slots, printing from #0; Ctrl-C to stop\n$/,
  );

  notes.length = 0;
  const deleted = main(["watch", "t1"], {
    backend,
    stdout: () => {},
    stderr: (text) => notes.push(text),
  });
  while (notes.length === 0) await new Promise((r) => setTimeout(r, 5));
  await backend.bufferDeleteThread("t1");
  assert.equal(await deleted, EXIT_CODES.ok);
  assert.match(notes[1]!, /thread t1 was deleted or expired/);

  const bad = await cli(["watch", "t1", "--from", "x"], { backend });
  assert.equal(bad.code, EXIT_CODES.usage);
  assert.match(bad.stderr, /Invalid --from/);
});

Deno.test("Ctrl-C interrupts a command that is not streaming: exit 130 at once", async () => {
  // A Redis that accepts connections and never answers: stats would wait 4 s.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) held.push(conn);
    } catch {
      // closed
    }
  })();
  try {
    await using stats = spawnCli([
      "--backend",
      "redis",
      "--redis-url",
      `redis://127.0.0.1:${port}`,
      "stats",
    ]);
    while (held.length === 0) await new Promise((r) => setTimeout(r, 10));
    const interruptedAt = Date.now();
    stats.process.kill("SIGINT");
    assert.equal((await stats.process.status).code, EXIT_CODES.interrupted);
    assert.ok(Date.now() - interruptedAt < 2_000);
    assert.equal(await stats.stderr.line(), "cli: interrupted");
  } finally {
    listener.close();
    await accepting;
    for (const conn of held) conn.close();
  }
});

Deno.test("a missing KV file is exit 1 and stays missing; --create creates it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xp-cli-test-" });
  try {
    const path = `${dir}/mistyped.db`;
    const flags = ["--backend", "kv", "--kv-path", path];
    const missing = await cli([...flags, "stats"]);
    assert.equal(missing.code, EXIT_CODES.notFound);
    assert.equal(missing.stdout, "");
    assert.match(
      missing.stderr,
      /no KV file at ".*mistyped\.db": check --kv-path \(or XP_KV_PATH\), or pass --create to create one/,
    );
    const fromEnv = await cli(["threads", "--json"], {
      env: { XP_BACKEND: "kv", XP_KV_PATH: path },
    });
    assert.equal(fromEnv.code, EXIT_CODES.notFound);
    assert.equal(JSON.parse(fromEnv.stderr).exitCode, 1);
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    const created = ok(await cli([...flags, "--create", "stats", "--json"]));
    assert.equal(JSON.parse(created.stdout).threads, 0);
    await Deno.stat(path);
    ok(await cli([...flags, "stats"])); // it exists now
    assert.equal(
      (await cliProcess([...flags.slice(0, 3), `${dir}/other.db`, "stats"]))
        .code,
      1,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--version prints the version of deno.json", async () => {
  const { version } = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  );
  assert.equal(
    ok(await cli(["--version"])).stdout,
    `@xml-pipeline/shared-backend ${version}\n`,
  );
  assert.deepEqual(JSON.parse(ok(await cli(["--version", "--json"])).stdout), {
    name: "@xml-pipeline/shared-backend",
    version,
  });
  const result = await cliProcess(["--version"]);
  assert.equal(result.code, 0);
  assert.equal(result.stdout, `@xml-pipeline/shared-backend ${version}\n`);
});

Deno.test("importing cli/main.ts runs nothing", async () => {
  const output = await denoRun([
    "eval",
    `await import(${
      JSON.stringify(new URL("../cli/main.ts", import.meta.url).href)
    });`,
  ]);
  assert.equal(output.code, 0);
  assert.equal(output.stdout, "");
  assert.equal(output.stderr, "");
});
