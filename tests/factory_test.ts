import assert from "node:assert/strict";
import {
  BackendError,
  configFromEnv,
  createSharedBackend,
  DEFAULT_CONFIG,
  getSharedBackend,
  InMemoryBackend,
  resetSharedBackend,
  resolveConfig,
} from "../mod.ts";

Deno.test("createSharedBackend()", async (t) => {
  await t.step(
    "opens a new memory backend by default, a new one per call",
    async () => {
      await using a = await createSharedBackend();
      await using b = await createSharedBackend();
      assert.ok(a instanceof InMemoryBackend);
      assert.notEqual(a, b);
      await a.bufferAppend("t", new Uint8Array([1]));
      assert.equal(await b.bufferThreadExists("t"), false);
    },
  );

  await t.step("passes TTL and limits to the backend", async () => {
    await using backend = await createSharedBackend({
      ttlMs: 5_000,
      maxThreads: 1,
    });
    assert.equal((await backend.stats()).ttlMs, 5_000);
    await backend.bufferAppend("a", new Uint8Array());
    await assert.rejects(
      backend.bufferAppend("b", new Uint8Array()),
      /maxThreads \(1\)/,
    );
  });

  await t.step(
    "rejects a bad config naming the field, before opening anything",
    async () => {
      await assert.rejects(
        createSharedBackend({ backendType: "mongo" as "kv" }),
        (e) => e instanceof TypeError && /backendType/.test(e.message),
      );
      await assert.rejects(
        createSharedBackend({ ttlMs: -5 }),
        (e) => e instanceof RangeError && /ttlMs/.test(e.message),
      );
      await assert.rejects(
        createSharedBackend({ maxSlotsPerThread: 0 }),
        (e) => e instanceof RangeError && /maxSlotsPerThread/.test(e.message),
      );
      await assert.rejects(
        createSharedBackend({ maxThreads: 2.5 }),
        /maxThreads/,
      );
      await assert.rejects(createSharedBackend({ kvPath: "" }), /kvPath/);
    },
  );
});

Deno.test("getSharedBackend() and resetSharedBackend()", async (t) => {
  await t.step("concurrent first calls get one instance", async () => {
    const all = await Promise.all(
      Array.from({ length: 10 }, () => getSharedBackend({ ttlMs: 1_000 })),
    );
    assert.equal(new Set(all).size, 1);
    assert.equal(await getSharedBackend(), all[0]);
    assert.equal(await getSharedBackend({ ttlMs: 1_000 }), all[0]);
    await resetSharedBackend();
  });

  await t.step(
    "a call with a different config rejects and names the difference",
    async () => {
      const first = await getSharedBackend({ ttlMs: 1_000 });
      await assert.rejects(
        getSharedBackend({ ttlMs: 2_000 }),
        (e) =>
          e instanceof BackendError && /ttlMs/.test(e.message) &&
          /resetSharedBackend/.test(e.message),
      );
      assert.equal(
        await getSharedBackend(),
        first,
        "the existing instance is kept",
      );
      await resetSharedBackend();
    },
  );

  await t.step(
    "reset closes the instance and the next call makes a new one",
    async () => {
      const first = await getSharedBackend();
      await resetSharedBackend();
      await assert.rejects(first.ping(), /closed/);
      const second = await getSharedBackend({ maxThreads: 3 });
      assert.notEqual(second, first);
      await resetSharedBackend();
      await resetSharedBackend(); // nothing to reset: no error
    },
  );

  await t.step(
    "a failed creation is forgotten, so the next call can succeed",
    async () => {
      await assert.rejects(getSharedBackend({ ttlMs: -1 }), RangeError);
      const backend = await getSharedBackend({ ttlMs: 10 });
      assert.equal((await backend.stats()).ttlMs, 10);
      await resetSharedBackend();
    },
  );
});

Deno.test("configFromEnv()", async (t) => {
  await t.step("reads every XP_ variable", () => {
    assert.deepEqual(
      configFromEnv({
        XP_BACKEND: "kv",
        XP_PREFIX: "tenant-a:",
        XP_TTL_MS: "60000",
        XP_REDIS_URL: "redis://xp:6379",
        REDIS_URL: "redis://plain:6379",
        XP_KV_PATH: "/tmp/state.db",
        XP_MAX_SLOTS_PER_THREAD: "50",
        XP_MAX_THREADS: "7",
        XP_MAX_SLOT_BYTES: "1048576",
        UNRELATED: "x",
      }),
      {
        backendType: "kv",
        prefix: "tenant-a:",
        ttlMs: 60_000,
        redisUrl: "redis://xp:6379",
        kvPath: "/tmp/state.db",
        maxSlotsPerThread: 50,
        maxThreads: 7,
        maxSlotBytes: 1_048_576,
      },
    );
  });

  await t.step("XP_REDIS_URL wins over REDIS_URL, which is used alone", () => {
    assert.equal(
      configFromEnv({ REDIS_URL: "redis://a:1" }).redisUrl,
      "redis://a:1",
    );
    assert.equal(
      configFromEnv({ REDIS_URL: "redis://a:1", XP_REDIS_URL: "redis://b:2" })
        .redisUrl,
      "redis://b:2",
    );
  });

  await t.step(
    "XP_TTL_MS=0 is kept; unset and empty variables are left to the defaults",
    () => {
      assert.deepEqual(configFromEnv({ XP_TTL_MS: "0" }), { ttlMs: 0 });
      assert.deepEqual(configFromEnv({ XP_TTL_MS: "", XP_BACKEND: "" }), {});
      assert.deepEqual(configFromEnv({}), {});
    },
  );

  await t.step("bad numbers are a RangeError naming the variable", () => {
    for (
      const value of [
        "-1",
        "1.5",
        "abc",
        "1e3",
        "0x10",
        " ",
        "99999999999999999999",
      ]
    ) {
      assert.throws(
        () => configFromEnv({ XP_TTL_MS: value }),
        (e) => e instanceof RangeError && /XP_TTL_MS/.test(e.message),
        value,
      );
    }
    assert.throws(
      () => configFromEnv({ XP_MAX_THREADS: "ten" }),
      /XP_MAX_THREADS/,
    );
    assert.throws(
      () => configFromEnv({ XP_MAX_SLOTS_PER_THREAD: "-3" }),
      /XP_MAX_SLOTS_PER_THREAD/,
    );
  });

  await t.step(
    "a value below its option's least value is a RangeError naming the variable, not the option",
    () => {
      for (const name of ["XP_MAX_THREADS", "XP_MAX_SLOTS_PER_THREAD"]) {
        assert.throws(
          () => configFromEnv({ [name]: "0" }),
          (e) =>
            e instanceof RangeError &&
            e.message.startsWith(`Invalid ${name}: expected an integer >= 1`),
          name,
        );
      }
      assert.equal(configFromEnv({ XP_TTL_MS: "0" }).ttlMs, 0);
    },
  );

  await t.step(
    "XP_PREFIX set to an empty string is a RangeError, never silently the default prefix",
    () => {
      assert.throws(
        () => configFromEnv({ XP_PREFIX: "" }),
        (e) => e instanceof RangeError && /XP_PREFIX/.test(e.message),
      );
      assert.equal(configFromEnv({ XP_PREFIX: "a:" }).prefix, "a:");
    },
  );

  await t.step(
    "XP_RETRY_TIMEOUT_MS and XP_DURABLE_REPLICAS set retryTimeoutMs and durableReplicas",
    () => {
      assert.deepEqual(
        configFromEnv({
          XP_RETRY_TIMEOUT_MS: "2500",
          XP_DURABLE_REPLICAS: "1",
        }),
        { retryTimeoutMs: 2_500, durableReplicas: 1 },
      );
      assert.throws(
        () => configFromEnv({ XP_DURABLE_REPLICAS: "-1" }),
        /XP_DURABLE_REPLICAS/,
      );
    },
  );

  await t.step(
    "an unknown XP_BACKEND is a TypeError naming it; manager is an alias of kv",
    () => {
      assert.throws(
        () => configFromEnv({ XP_BACKEND: "mongo" }),
        (e) => e instanceof TypeError && /XP_BACKEND/.test(e.message),
      );
      assert.equal(
        resolveConfig(configFromEnv({ XP_BACKEND: "manager" })).backendType,
        "kv",
      );
    },
  );

  await t.step(
    "reads only its own variables: --allow-env=XP_BACKEND is enough, an unreadable one counts as unset",
    async () => {
      const { code, stdout, stderr } = await new Deno.Command(
        Deno.execPath(),
        {
          args: [
            "run",
            "--allow-env=XP_BACKEND",
            "--allow-read",
            new URL("./_fixtures/config_from_env.ts", import.meta.url).pathname,
          ],
          env: { XP_BACKEND: "kv", XP_TTL_MS: "5", NO_COLOR: "1" },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        },
      ).output();
      const decoder = new TextDecoder();
      assert.equal(code, 0, decoder.decode(stderr));
      assert.deepEqual(JSON.parse(decoder.decode(stdout)), {
        backendType: "kv",
      });
    },
  );

  await t.step("reads Deno.env when given no object", () => {
    Deno.env.set("XP_MAX_THREADS", "42");
    try {
      assert.equal(configFromEnv().maxThreads, 42);
    } finally {
      Deno.env.delete("XP_MAX_THREADS");
    }
  });
});

Deno.test("DEFAULT_CONFIG holds the contract's defaults", () => {
  assert.deepEqual({ ...DEFAULT_CONFIG }, {
    backendType: "memory",
    prefix: "xp:",
    ttlMs: 86_400_000,
    redisUrl: "redis://localhost:6379",
    maxSlotsPerThread: 10_000,
    maxThreads: 1_000,
    maxSlotBytes: 4_194_304,
    retryTimeoutMs: 10_000,
    durableReplicas: 0,
  });
  assert.deepEqual(resolveConfig(), {
    ...DEFAULT_CONFIG,
    kvPath: undefined,
    kv: undefined,
    redisClient: undefined,
  });
});

Deno.test("importing mod.ts loads no ioredis: deno info lists it only as a dynamic import, and importing mod.ts without --allow-env (which ioredis needs when it loads) works", async () => {
  const { stdout, success } = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("../mod.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.ok(success);
  const info = JSON.parse(new TextDecoder().decode(stdout));
  const specifiers: string[] = info.modules.map((m: { specifier: string }) =>
    m.specifier
  );
  assert.ok(
    specifiers.some((s) => s.endsWith("/backends/redis.ts")),
    "mod.ts should reach backends/redis.ts",
  );
  // A literal import("ioredis") (so Deploy, deno install, lockfiles and JSR
  // see it), and only dynamic ones: evaluated when a Redis backend connects.
  const toIoredis = info.modules.flatMap((
    m: {
      dependencies?: {
        code?: { specifier: string };
        isDynamic?: boolean;
      }[];
    },
  ) =>
    (m.dependencies ?? []).filter((d) =>
      /ioredis/.test(d.code?.specifier ?? "")
    )
  );
  assert.ok(toIoredis.length > 0, "deno info should list ioredis");
  assert.ok(toIoredis.every((d: { isDynamic?: boolean }) => d.isDynamic));
  // At run time: ioredis' dependency debug reads the whole environment when
  // it is evaluated, so without --allow-env importing mod.ts would throw.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "-"],
    cwd: new URL("..", import.meta.url).pathname,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(
    new TextEncoder().encode(
      `await import(${
        JSON.stringify(new URL("../mod.ts", import.meta.url).href)
      }); console.log("imported");`,
    ),
  );
  await writer.close();
  const run = await child.output();
  assert.equal(
    new TextDecoder().decode(run.stdout).trim(),
    "imported",
    new TextDecoder().decode(run.stderr),
  );
});
