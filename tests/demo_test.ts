// The demo (demo/main.ts) end to end as a subprocess on kv, redis and memory,
// its flags, and its verification (demo/verify.ts): it passes on what the
// agents wrote and fails loudly on a corrupted store.

import assert from "node:assert/strict";
import {
  createSharedBackend,
  InMemoryBackend,
  type SharedBackend,
} from "../mod.ts";
import { playAgents } from "../demo/_agents.ts";
import { type DemoJournal, verifyStore } from "../demo/verify.ts";
import { startRedisServer } from "./_redis_server.ts";
import { denoRun, type ProcessResult } from "./_fixtures/deno_run.ts";

const DEMO = new URL("../demo/main.ts", import.meta.url).pathname;

type Run = ProcessResult;

function demo(...args: string[]): Promise<Run> {
  return denoRun(["run", "-A", DEMO, ...args]);
}

/** Asserts a run exited 0 with its verified report, and returns the report's fields. */
function assertVerified(run: Run, slots: number): Map<string, string> {
  assert.equal(run.code, 0, `demo failed:\n${run.stdout}\n${run.stderr}`);
  const fields = new Map<string, string>();
  for (const line of run.stdout.split("\n")) {
    const m = line.match(/^([a-zA-Z][a-zA-Z ]*?) {2,}(.*)$/);
    if (m !== null) fields.set(m[1]!, m[2]!);
  }
  assert.equal(fields.get("verified"), "OK", run.stdout);
  assert.match(
    fields.get("slots appended") ?? "",
    new RegExp(
      `^${slots.toLocaleString("en-US")} in [\\d.]+ s: [\\d,]+ appends/s$`,
    ),
  );
  assert.match(fields.get("threads") ?? "", /^\d+, each written by/);
  assert.match(
    fields.get("registry entries") ?? "",
    /^\d+ chain <-> uuid pairs/,
  );
  return fields;
}

function prefixOf(run: Run): string {
  const m = run.stdout.match(/prefix "([^"]+)"/);
  assert.ok(m !== null, run.stdout);
  return m[1]!;
}

Deno.test("the demo runs on a temporary kv file by default, verifies it and removes it", async () => {
  const run = await demo("--workers", "3", "--slots", "240");
  const fields = assertVerified(run, 240);
  assert.match(
    fields.get("backend") ?? "",
    /^kv: .*demo\.db, a temporary file removed afterwards$/,
  );
  assert.match(fields.get("Workers") ?? "", /^3 isolates x 4 agent lanes/);
  // Progress goes to stderr, as plain lines when stderr is not a terminal.
  assert.match(run.stderr, /^ {2}240\/240 slots appended \([\d,]+\/s\)$/m);
  assert.doesNotMatch(run.stderr, /\r/);
  const path = fields.get("backend")!.match(/^kv: (.*demo\.db),/)![1]!;
  await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
});

Deno.test("the demo runs on redis with Workers, verifies it and clears its prefix", async () => {
  await using server = await startRedisServer();
  const run = await demo(
    "--backend",
    "redis",
    "--redis-url",
    server.url,
    "--workers",
    "3",
    "--slots",
    "240",
  );
  const fields = assertVerified(run, 240);
  assert.equal(fields.get("backend"), `redis: ${server.url}`);
  await using backend = await createSharedBackend({
    backendType: "redis",
    redisUrl: server.url,
    prefix: prefixOf(run),
  });
  const stats = await backend.stats();
  assert.deepEqual([stats.threads, stats.registryEntries], [0, 0]);
});

Deno.test("the demo on a given kv path keeps the file and, with --keep, its data", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xp-demo-test-" });
  try {
    const kvPath = `${dir}/kept.db`;
    const run = await demo("--kv-path", kvPath, "--slots", "80", "--keep");
    assertVerified(run, 80);
    assert.match(
      run.stdout,
      /kept: inspect with {2}deno task cli --backend kv --kv-path .*kept\.db --prefix demo-/,
    );
    await using backend = await createSharedBackend({
      backendType: "kv",
      kvPath,
      prefix: prefixOf(run),
    });
    assert.equal((await backend.stats()).slots, 80);
    assert.equal((await verifyStore(backend)).ok, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the demo on memory runs in one isolate and says so", async () => {
  const run = await demo("--backend", "memory", "--slots", "400");
  const fields = assertVerified(run, 400);
  assert.match(run.stdout, /in ONE isolate/);
  assert.match(
    fields.get("Workers") ?? "",
    /^none: 4 agent groups x 4 lanes in this one isolate$/,
  );
});

Deno.test("the demo exits 1 with the problems when its store was corrupted", async (t) => {
  const cases: [string, string[], RegExp][] = [
    ["garbage-slot", ["--slots", "120"], /slot \d+ does not decode/],
    [
      "lost-slot",
      ["--backend", "memory"],
      /slot \d+ holds w\d+#\d+, but its append returned \d+ to w\d+#\d+/,
    ],
    [
      "broken-registry",
      ["--backend", "memory"],
      /chain ".*" was given uuid .* but the registry maps it to/,
    ],
  ];
  for (const [fault, args, problem] of cases) {
    await t.step(`--inject-fault ${fault}`, async () => {
      const run = await demo(
        ...args,
        "--workers",
        "2",
        "--inject-fault",
        fault,
      );
      assert.equal(run.code, 1, run.stdout + run.stderr);
      assert.match(run.stderr, /injected fault: /);
      assert.match(run.stdout, /^verified {10}FAILED: \d+ problems$/m);
      assert.match(run.stdout, problem);
      assert.doesNotMatch(run.stdout, /verified {10}OK/);
    });
  }
});

Deno.test("the demo rejects bad flags with exit code 2 and an unreachable store with 3", async (t) => {
  await t.step("--help prints the usage and exits 0", async () => {
    const run = await demo("--help");
    assert.equal(run.code, 0);
    assert.match(run.stdout, /^Usage: deno task demo/);
    assert.match(run.stdout, /--backend kv\|redis\|memory/);
  });
  for (
    const [args, message] of [
      [["--workers", "0"], /Invalid --workers/],
      [["--slots", "many"], /Invalid --slots/],
      [["--backend", "sqlite"], /Invalid --backend/],
      [["--frobnicate"], /Unknown option '--frobnicate'/],
      [
        ["--backend", "memory", "--kv-path", "x.db"],
        /--kv-path needs --backend kv/,
      ],
      [["--inject-fault", "meteor"], /Invalid --inject-fault/],
    ] as const
  ) {
    await t.step(`${args.join(" ")} exits 2`, async () => {
      const run = await demo(...args);
      assert.equal(run.code, 2, run.stderr);
      assert.match(run.stderr, message);
      assert.equal(run.stdout, "");
    });
  }
  await t.step(
    "an unreachable redis exits 3 naming host:port, not the password",
    async () => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (listener.addr as Deno.NetAddr).port;
      listener.close();
      const started = Date.now();
      const run = await demo(
        "--backend",
        "redis",
        "--redis-url",
        `redis://:hunter2@127.0.0.1:${port}`,
      );
      assert.equal(run.code, 3, run.stderr);
      assert.ok(Date.now() - started < 10_000);
      assert.match(run.stderr, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.doesNotMatch(run.stdout + run.stderr, /hunter2/);
    },
  );
});

// The verification itself, in this isolate: the agents on a memory backend,
// then the store corrupted in one way per step.

async function playedStore(): Promise<
  { backend: SharedBackend; journal: DemoJournal }
> {
  const backend = new InMemoryBackend({ prefix: "verify:" });
  const reports = await Promise.all(
    [0, 1, 2].map((worker) =>
      playAgents(backend, { worker, turns: 20, conversations: 3, lanes: 2 })
    ),
  );
  return {
    backend,
    journal: {
      appends: reports.flatMap((r) => r.appends),
      chains: reports.flatMap((r) => r.chains),
      mismatches: reports.flatMap((r) => r.mismatches),
    },
  };
}

/** A backend that answers one registry direction wrongly: a store whose two directions disagree. */
function withBrokenRegistry(
  backend: SharedBackend,
  chain: string,
): SharedBackend {
  return new Proxy(backend, {
    get(target, property) {
      if (property === "registryGetUuid") {
        return async (c: string) =>
          c === chain
            ? "00000000-0000-0000-0000-000000000000"
            : await target.registryGetUuid(c);
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("verifyStore() passes what the agents wrote and fails on each corruption", async (t) => {
  await t.step("an intact store verifies, with the counts", async () => {
    const { backend, journal } = await playedStore();
    await using _ = backend;
    const result = await verifyStore(backend, journal);
    assert.deepEqual(result.problems, []);
    assert.equal(result.ok, true);
    assert.equal(result.slots, 3 * 20 * 4);
    assert.equal(result.slots, journal.appends.length);
    assert.equal(result.threads, 3 * 4);
    assert.equal(result.registryEntries, 3 * 4);
  });

  await t.step(
    "a garbage slot is a problem, with or without the journal",
    async () => {
      const { backend, journal } = await playedStore();
      await using _ = backend;
      const [thread] = await backend.bufferListThreads();
      const index = await backend.bufferAppend(thread!, new Uint8Array([0xc1]));
      for (
        const result of [
          await verifyStore(backend, journal),
          await verifyStore(backend),
        ]
      ) {
        assert.equal(result.ok, false);
        assert.ok(
          result.problems.some((p) =>
            p.includes(`slot ${index} does not decode`)
          ),
          result.problems.join("\n"),
        );
      }
      assert.ok(
        (await verifyStore(backend, journal)).problems.some((p) =>
          p.includes(`slot ${index} (undecodable) was returned to no append`)
        ),
      );
    },
  );

  await t.step(
    "a registry whose directions disagree is a problem",
    async () => {
      const { backend, journal } = await playedStore();
      await using _ = backend;
      const result = await verifyStore(
        withBrokenRegistry(backend, "console-1.router"),
        journal,
      );
      assert.equal(result.ok, false);
      assert.ok(
        result.problems.some((p) =>
          /^chain "console-1\.router" is listed with uuid \S+ but maps to 00000000-/
            .test(p)
        ),
        result.problems.join("\n"),
      );
    },
  );

  await t.step("a chain moved to another uuid is a problem", async () => {
    const { backend, journal } = await playedStore();
    await using _ = backend;
    const other = await backend.registryGetUuid("console-0");
    await backend.registrySet("console-2", other!);
    const result = await verifyStore(backend, journal);
    assert.equal(result.ok, false);
    assert.ok(
      result.problems.some((p) =>
        /^chain "console-0" was given uuid \S+ but the registry maps it to nothing$/
          .test(p)
      ),
      result.problems.join("\n"),
    );
  });

  await t.step("a duplicated or a lost index is a problem", async () => {
    const { backend, journal } = await playedStore();
    await using _ = backend;
    const [first, second] = journal.appends.filter((a) =>
      a.threadId === journal.appends[0]!.threadId
    );
    const duplicated: DemoJournal = {
      ...journal,
      appends: journal.appends.map((a) =>
        a === second ? { ...a, index: first!.index } : a
      ),
    };
    const problems = (await verifyStore(backend, duplicated)).problems;
    assert.ok(
      problems.some((p) =>
        p.includes(`index ${first!.index} was returned to 2 appends`)
      ),
      problems.join("\n"),
    );
    assert.ok(
      problems.some((p) =>
        p.includes(
          `slot ${second!.index} (${second!.id}) was returned to no append`,
        )
      ),
    );

    const lost: DemoJournal = {
      ...journal,
      appends: journal.appends.filter((a) => a !== second),
    };
    assert.equal((await verifyStore(backend, lost)).ok, false);
  });

  await t.step(
    "a slot another writer appended directly is a problem",
    async () => {
      const { backend, journal } = await playedStore();
      await using _ = backend;
      const [thread] = await backend.bufferListThreads();
      await backend.bufferAppend(thread!, new Uint8Array([0x90])); // an empty MessagePack array
      const result = await verifyStore(backend, journal);
      assert.equal(result.ok, false);
    },
  );

  await t.step(
    "the agents' own read-back mismatches are problems",
    async () => {
      const { backend, journal } = await playedStore();
      await using _ = backend;
      const result = await verifyStore(backend, {
        ...journal,
        mismatches: ["Worker 9 read back nonsense"],
      });
      assert.deepEqual(result.problems, ["Worker 9 read back nonsense"]);
    },
  );
});
