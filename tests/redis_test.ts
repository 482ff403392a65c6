import assert from "node:assert/strict";
import { Cluster, Redis } from "ioredis";
import { RedisBackend } from "../backends/redis.ts";
import type { RedisClientLike } from "../backends/_redis_client.ts";
import { hashSlot, redisKeys } from "../backends/_redis_keys.ts";
import { BackendError, SlotLimitError } from "../errors.ts";
import { runConformanceSuite } from "../testing/conformance.ts";
import { type RedisServer, startRedisServer } from "./_redis_server.ts";
import {
  type AppendJob,
  type AppendOutcome,
  taggedSlot,
} from "./_fixtures/redis_appender.ts";
import { ReplyLosingProxy } from "./_fixtures/redis_proxy.ts";

const APPENDER = new URL("./_fixtures/redis_appender.ts", import.meta.url);

Deno.test("RedisBackend meets the shared-backend contract", async (t) => {
  await using server = await startRedisServer();
  await runConformanceSuite(t, {
    name: "redis",
    open: (config) => RedisBackend.open({ ...config, redisUrl: server.url }),
  });
});

Deno.test("RedisBackend meets the contract on Redis Cluster (one node holding every slot: scripts that touched two slots would fail with CROSSSLOT)", async (t) => {
  await using server = await startRedisServer({
    own: true,
    args: [
      "--cluster-enabled",
      "yes",
      "--cluster-config-file",
      "nodes.conf",
      "--cluster-announce-ip",
      "127.0.0.1",
    ],
  });
  const cli = async (...args: string[]) =>
    new TextDecoder().decode(
      (await new Deno.Command("redis-cli", {
        args: ["-p", String(server.port), ...args],
        stdout: "piped",
        stderr: "null",
      }).output()).stdout,
    );
  assert.match(await cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383"), /OK/);
  await waitUntil(
    async () => (await cli("CLUSTER", "INFO")).includes("cluster_state:ok"),
    5_000,
  );
  const cluster = new Cluster([{ host: "127.0.0.1", port: server.port }], {
    retryDelayOnFailover: 0,
    redisOptions: { protocol: 2, autoResendUnfulfilledCommands: false },
  });
  try {
    await runConformanceSuite(t, {
      name: "redis cluster",
      open: (config) => RedisBackend.open({ ...config, redisClient: cluster }),
    });
  } finally {
    const ended = new Promise((resolve) => cluster.once("end", resolve));
    await cluster.quit();
    await ended;
  }
});

Deno.test("RedisBackend on Redis Cluster when the server runs an append but its reply is lost (a proxy drops it, then cuts the connection)", async (t) => {
  await using proxy = new ReplyLosingProxy();
  await using server = await startRedisServer({
    own: true,
    args: [
      "--cluster-enabled",
      "yes",
      "--cluster-config-file",
      "nodes.conf",
      "--cluster-announce-ip",
      "127.0.0.1",
      "--cluster-announce-port",
      String(proxy.port),
    ],
  });
  proxy.target = server.port;
  const raw = rawClient(server.url);
  try {
    await raw.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
    await waitUntil(
      async () =>
        String(await raw.call("CLUSTER", "INFO")).includes("cluster_state:ok"),
      5_000,
    );

    await t.step(
      "a Cluster client with ioredis' defaults (it resends a command whose connection closed) is accepted: the append whose reply was lost returns its index, and it is stored once",
      async () => {
        const cluster = new Cluster([{ host: "127.0.0.1", port: proxy.port }]);
        try {
          const prefix = `xp-test:${crypto.randomUUID()}:`;
          const backend = await RedisBackend.open({
            redisClient: cluster,
            prefix,
          });
          assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
          proxy.dropReplies();
          const lost = backend.bufferAppend("t", new Uint8Array([2]));
          await waitUntil(
            async () => (await raw.llen(redisKeys(prefix).thread("t"))) === 2,
            2_000,
          );
          proxy.cut();
          assert.equal(await lost, 1);
          // A resend would land within ioredis' retry delays: give it the time.
          await new Promise((resolve) => setTimeout(resolve, 500));
          assert.deepEqual(
            (await raw.lrangeBuffer(redisKeys(prefix).thread("t"), 0, -1)).map(
              (b) => [...b],
            ),
            [[1], [2]],
          );
          assert.equal(await backend.bufferAppend("t", new Uint8Array([3])), 2);
          await backend.bufferClear();
          await backend.close();
        } finally {
          const ended = new Promise((resolve) => cluster.once("end", resolve));
          await cluster.quit().catch(() => cluster.disconnect());
          await ended;
        }
      },
    );

    await t.step(
      "with retryTimeoutMs 0 (no retries) and retryDelayOnFailover 0 the append rejects saying it may have been applied, and it is stored once",
      async () => {
        const cluster = new Cluster(
          [{ host: "127.0.0.1", port: proxy.port }],
          {
            retryDelayOnFailover: 0,
            redisOptions: { protocol: 2, autoResendUnfulfilledCommands: false },
          },
        );
        try {
          const prefix = `xp-test:${crypto.randomUUID()}:`;
          const backend = await RedisBackend.open({
            redisClient: cluster,
            prefix,
            retryTimeoutMs: 0,
          });
          assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
          proxy.dropReplies();
          const lost = backend.bufferAppend("t", new Uint8Array([2])).then(
            (index) => ({ index }),
            (error: Error) => ({ error }),
          );
          await waitUntil(
            async () => (await raw.llen(redisKeys(prefix).thread("t"))) === 2,
            2_000,
          );
          proxy.cut();
          const outcome = await lost;
          assert.ok(
            "error" in outcome,
            `acknowledged as ${JSON.stringify(outcome)}`,
          );
          assert.ok(
            outcome.error instanceof BackendError,
            String(outcome.error),
          );
          assert.match(
            outcome.error.message,
            /may or may not have been applied/,
          );
          // A resend would land within ioredis' retry delays: give it the time.
          await new Promise((resolve) => setTimeout(resolve, 500));
          assert.deepEqual(
            (await raw.lrangeBuffer(redisKeys(prefix).thread("t"), 0, -1)).map(
              (b) => [...b],
            ),
            [[1], [2]],
          );
          await waitUntil(() => backend.ping(), 5_000);
          assert.equal(await backend.bufferAppend("t", new Uint8Array([3])), 2);
          await backend.bufferClear();
          await backend.close();
        } finally {
          const ended = new Promise((resolve) => cluster.once("end", resolve));
          await cluster.quit().catch(() => cluster.disconnect());
          await ended;
        }
      },
    );
  } finally {
    await closeRaw(raw);
  }
});

/** A raw ioredis client for checks the backend does not offer; close with {@linkcode closeRaw}. */
function rawClient(url: string): Redis {
  const client = new Redis(url, { protocol: 2, lazyConnect: false });
  // Compile-time check: a real ioredis client satisfies the interface the backend declares.
  const _asDeclared: RedisClientLike = client;
  return client;
}

async function closeRaw(client: Redis): Promise<void> {
  if (client.status === "end") return;
  const ended = new Promise((resolve) => client.once("end", resolve));
  await client.quit().catch(() => client.disconnect());
  await ended;
}

function runInWorker(job: AppendJob): Promise<AppendOutcome[]> {
  const worker = new Worker(APPENDER, { type: "module" });
  return new Promise<AppendOutcome[]>((resolve, reject) => {
    worker.onmessage = (event) => {
      worker.terminate();
      if (event.data.error) reject(new Error(event.data.error));
      else resolve(event.data.outcomes);
    };
    worker.onerror = (event) => {
      worker.terminate();
      reject(new Error(event.message));
    };
    worker.postMessage(job);
  });
}

async function runInProcess(job: AppendJob): Promise<AppendOutcome[]> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", APPENDER.href, JSON.stringify(job)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(
      `appender process failed (${code}): ${new TextDecoder().decode(stderr)}`,
    );
  }
  return JSON.parse(new TextDecoder().decode(stdout));
}

Deno.test("RedisBackend on one server: concurrency across isolates and processes, TTL, tenants, connections", async (t) => {
  await using server = await startRedisServer();

  await t.step(
    "4 Workers and 2 processes appending to one thread get dense, unique indexes, and each index holds its bytes",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const base = {
        url: server.url,
        prefix,
        threadId: "shared",
        count: 250,
        concurrency: 16,
        size: 48,
      };
      const results = await Promise.all([
        ...[0, 1, 2, 3].map((writer) => runInWorker({ ...base, writer })),
        ...[4, 5].map((writer) => runInProcess({ ...base, writer })),
      ]);
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
      });
      const slots = await backend.bufferGetThread("shared");
      assert.equal(slots.length, 6 * 250);
      const seen = new Set<number>();
      results.forEach((outcomes, writer) => {
        assert.equal(outcomes.length, 250);
        for (const outcome of outcomes) {
          assert.ok(
            "index" in outcome,
            `writer ${writer}: ${JSON.stringify(outcome)}`,
          );
          assert.ok(!seen.has(outcome.index), `index ${outcome.index} twice`);
          seen.add(outcome.index);
          assert.deepEqual(
            slots[outcome.index],
            taggedSlot(writer, outcome.seq, 48),
          );
        }
      });
      assert.equal(seen.size, 1500);
      await backend.bufferClear();
    },
  );

  await t.step(
    "maxSlotsPerThread and maxThreads hold when 3 processes race at the edge",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const slotJobs = [0, 1, 2].map((writer) =>
        runInProcess({
          url: server.url,
          prefix,
          threadId: "full",
          writer,
          count: 50,
          concurrency: 10,
          size: 8,
          maxSlotsPerThread: 100,
        })
      );
      const threadJobs = [3, 4, 5].map((writer) =>
        runInProcess({
          url: server.url,
          prefix: `${prefix}threads:`,
          threadId: "t",
          writer,
          count: 15,
          concurrency: 15,
          size: 8,
          distinctThreads: true,
          maxThreads: 25,
        })
      );
      const slotOutcomes = (await Promise.all(slotJobs)).flat();
      const threadOutcomes = (await Promise.all(threadJobs)).flat();
      const count = (outcomes: AppendOutcome[], error?: string) =>
        outcomes.filter((o) =>
          error === undefined ? "index" in o : "error" in o && o.error === error
        ).length;
      assert.equal(count(slotOutcomes), 100);
      assert.equal(count(slotOutcomes, "SlotLimitError"), 50);
      assert.equal(count(threadOutcomes), 25);
      assert.equal(count(threadOutcomes, "ThreadLimitError"), 20);
      await using slotsBackend = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
      });
      await using threadsBackend = await RedisBackend.open({
        redisUrl: server.url,
        prefix: `${prefix}threads:`,
      });
      assert.equal(await slotsBackend.bufferThreadLen("full"), 100);
      assert.deepEqual(await slotsBackend.bufferListThreads(), ["full"]);
      assert.equal((await threadsBackend.stats()).threads, 25);
      await slotsBackend.bufferClear();
      await threadsBackend.bufferClear();
    },
  );

  await t.step(
    "an append to a thread holding more slots than this backend's maxSlotsPerThread (written by a backend with a higher limit) is a SlotLimitError, not a ThreadLimitError",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using roomy = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        maxSlotsPerThread: 10,
      });
      await using strict = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        maxSlotsPerThread: 5,
      });
      for (let i = 0; i < 8; i++) {
        await roomy.bufferAppend("t", new Uint8Array([i]));
      }
      await assert.rejects(
        strict.bufferAppend("t", new Uint8Array([9])),
        SlotLimitError,
      );
      // The same inside one script call with another thread's appends.
      const outcomes = await Promise.allSettled([
        strict.bufferAppend("u", new Uint8Array([1])),
        strict.bufferAppend("t", new Uint8Array([9])),
        strict.bufferAppend("u", new Uint8Array([2])),
        strict.bufferAppend("t", new Uint8Array([9])),
      ]);
      assert.deepEqual(outcomes.map((o) => o.status), [
        "fulfilled",
        "rejected",
        "fulfilled",
        "rejected",
      ]);
      for (const o of outcomes) {
        if (o.status === "rejected") {
          assert.ok(o.reason instanceof SlotLimitError, String(o.reason));
        }
      }
      assert.equal(await roomy.bufferThreadLen("t"), 8);
      assert.equal(await roomy.bufferThreadLen("u"), 2);
      await roomy.bufferClear();
    },
  );

  await t.step(
    "with a 1 s TTL a thread and a registry pair vanish whole, and Redis reclaims every key of the tenant",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 1_000,
      });
      const raw = rawClient(server.url);
      try {
        const keys = redisKeys(prefix);
        await backend.bufferAppend("t", new Uint8Array([1]));
        await backend.bufferAppend("t", new Uint8Array([2]));
        await backend.registrySet("chain", "uuid");
        const pttl = await raw.pttl(keys.thread("t"));
        assert.ok(pttl > 900 && pttl <= 1_000, `PTTL ${pttl}`);
        await new Promise((resolve) => setTimeout(resolve, 600));
        await backend.bufferAppend("t", new Uint8Array([3])); // slides
        await new Promise((resolve) => setTimeout(resolve, 600));
        assert.equal(await backend.bufferThreadLen("t"), 3);
        assert.equal(await backend.registryGetChain("uuid"), null);
        assert.equal(await backend.registryGetUuid("chain"), null);
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        assert.equal(await backend.bufferThreadExists("t"), false);
        assert.deepEqual(await backend.bufferListThreads(), []);
        const left = await raw.exists(
          keys.thread("t"),
          keys.threads,
          keys.registry,
          keys.chain("chain"),
          keys.uuid("uuid"),
        );
        assert.equal(left, 0, "expired keys are still stored");
      } finally {
        await closeRaw(raw);
      }
    },
  );

  await t.step(
    "a thread created with ttlMs 0 and then appended to by a backend with a short ttlMs expires whole: unlisted, uncounted, and no longer held against maxThreads",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using lasting = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 0,
        maxThreads: 1,
      });
      await using brief = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 300,
        maxThreads: 1,
      });
      await lasting.bufferAppend("t", new Uint8Array([1]));
      await brief.bufferAppend("t", new Uint8Array([2]));
      await new Promise((resolve) => setTimeout(resolve, 700));
      assert.equal(await brief.bufferThreadExists("t"), false);
      assert.deepEqual(await brief.bufferListThreads(), []);
      assert.equal((await brief.stats()).threads, 0);
      assert.equal(await brief.bufferAppend("u", new Uint8Array([3])), 0);
      await brief.bufferClear();
    },
  );

  await t.step(
    "a registry pair written with ttlMs 0 stays listed and counted when a backend with a short ttlMs writes another pair on the same prefix",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using lasting = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 0,
      });
      await using brief = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 300,
      });
      await lasting.registrySet("kept chain", "kept uuid");
      await brief.registrySet("brief chain", "brief uuid");
      await new Promise((resolve) => setTimeout(resolve, 700));
      assert.equal(await lasting.registryGetChain("kept uuid"), "kept chain");
      assert.deepEqual(
        await lasting.registryListAll(),
        new Map([["kept uuid", "kept chain"]]),
      );
      assert.equal((await lasting.stats()).registryEntries, 1);
      await lasting.registryClear();
      assert.equal(await lasting.registryGetChain("kept uuid"), null);
      assert.equal(await lasting.registryGetUuid("kept chain"), null);
    },
  );

  await t.step(
    "every key of a tenant carries its hash tag (one Cluster slot per tenant), for prefixes a: and a:buffer: and ids holding the other's prefix",
    async () => {
      const run = crypto.randomUUID();
      const prefixes = [`${run}a:`, `${run}a:buffer:`, `${run}{x}:`];
      const backends = await Promise.all(
        prefixes.map((prefix) =>
          RedisBackend.open({ redisUrl: server.url, prefix, ttlMs: 60_000 })
        ),
      );
      const raw = rawClient(server.url);
      try {
        for (const [i, backend] of backends.entries()) {
          for (const id of [...prefixes, "t", "}{", "a:buffer:t"]) {
            await backend.bufferAppend(id, new Uint8Array([i]));
            await backend.registrySet(`chain ${id}`, `uuid ${id}`);
          }
        }
        for (const [i, backend] of backends.entries()) {
          assert.equal((await backend.stats()).threads, 6);
          assert.equal((await backend.stats()).registryEntries, 6);
          for (const slot of await backend.bufferGetThread("t")) {
            assert.deepEqual(slot, new Uint8Array([i]));
          }
        }
        const all: Uint8Array[] = [];
        let cursor = "0";
        do {
          const [next, keys] = await raw.scanBuffer(cursor, "COUNT", 1000);
          cursor = String(next);
          all.push(...keys);
        } while (cursor !== "0");
        const decoder = new TextDecoder();
        const slotsByTenant = new Map<string, Set<number>>();
        for (const key of all) {
          const text = decoder.decode(key);
          const tenant = prefixes.find((p) =>
            text.startsWith(redisKeys(p).tag)
          );
          if (tenant === undefined) continue; // another step's data
          const slots = slotsByTenant.get(tenant) ?? new Set();
          slots.add(hashSlot(key));
          slotsByTenant.set(tenant, slots);
        }
        assert.equal(slotsByTenant.size, 3);
        for (const slots of slotsByTenant.values()) assert.equal(slots.size, 1);
        await backends[0]!.bufferClear();
        await backends[0]!.registryClear();
        assert.equal((await backends[1]!.stats()).threads, 6);
        assert.equal((await backends[1]!.stats()).registryEntries, 6);
        for (const backend of backends) {
          await backend.bufferClear();
          await backend.registryClear();
        }
      } finally {
        await closeRaw(raw);
        for (const backend of backends) await backend.close();
      }
    },
  );

  await t.step(
    "an injected ioredis client, with ioredis' defaults (offline queue, resends after a reconnect) or not, is used and left open by close(); anything else is a TypeError",
    async () => {
      const client = new Redis(server.url, {
        protocol: 2,
        autoResendUnfulfilledCommands: false,
      });
      const resending = new Redis(server.url);
      try {
        const prefix = `xp-test:${crypto.randomUUID()}:`;
        for (const redisClient of [client, resending]) {
          const backend = await RedisBackend.open({ redisClient, prefix });
          assert.equal(await backend.bufferAppend("t", new Uint8Array([5])), 0);
          await backend.bufferClear();
          await backend.close();
          assert.equal(await redisClient.ping(), "PONG");
        }
        await assert.rejects(
          RedisBackend.open({ redisClient: { not: "a client" } }),
          TypeError,
        );
        const nowhere = new Redis("redis://127.0.0.1:1", {
          lazyConnect: true,
          autoResendUnfulfilledCommands: false,
        });
        nowhere.on("error", () => {});
        const started = Date.now();
        try {
          await assert.rejects(
            RedisBackend.open({ redisClient: nowhere }),
            (error: Error) =>
              error instanceof BackendError &&
              error.message.includes("127.0.0.1:1"),
          );
          assert.ok(Date.now() - started < 5_000);
        } finally {
          nowhere.disconnect();
        }
      } finally {
        await closeRaw(client);
        await closeRaw(resending);
      }
    },
  );

  await t.step(
    "redisUrl rejects other schemes with a TypeError",
    async () => {
      await assert.rejects(
        RedisBackend.open({ redisUrl: "http://127.0.0.1:6379" }),
        TypeError,
      );
      await assert.rejects(
        RedisBackend.open({ redisUrl: "nonsense" }),
        TypeError,
      );
    },
  );
});

Deno.test("RedisBackend reading a 4 MiB slot leaves no timer or socket behind after close() (sanitizers on: ioredis 6 has no redis-parser interval)", async () => {
  await using server = await startRedisServer();
  const backend = await RedisBackend.open({
    redisUrl: server.url,
    prefix: `xp-test:${crypto.randomUUID()}:`,
  });
  const big = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i * 7) & 0xff);
  assert.equal(await backend.bufferAppend("big", big), 0);
  const [slot] = await backend.bufferGetThread("big");
  assert.equal(slot?.byteLength, big.byteLength);
  assert.ok(slot!.every((byte, i) => byte === big[i]));
  assert.equal(Object.getPrototypeOf(slot), Uint8Array.prototype);
  await backend.bufferClear();
  await backend.close();
});

Deno.test("RedisBackend uses the password and db index of redisUrl, and never shows the password", async () => {
  await using server = await startRedisServer({
    own: true,
    password: "s3cr3t-pass",
  });
  const url = `redis://:s3cr3t-pass@127.0.0.1:${server.port}/3`;
  await using backend = await RedisBackend.open({
    redisUrl: url,
    prefix: "p:",
  });
  await backend.bufferAppend("t", new Uint8Array([1, 2, 3]));
  const raw = rawClient(url);
  try {
    assert.equal(await raw.exists(redisKeys("p:").thread("t")), 1);
    await raw.select(0);
    assert.equal(await raw.exists(redisKeys("p:").thread("t")), 0);
  } finally {
    await closeRaw(raw);
  }
  const error = await RedisBackend.open({
    redisUrl: `redis://:wrong-pass@127.0.0.1:${server.port}`,
  }).catch((e) => e);
  assert.ok(error instanceof BackendError, String(error));
  assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${server.port}`));
  assert.ok(!error.message.includes("wrong-pass"), error.message);
});

const hasOpenssl = await new Deno.Command("openssl", {
  args: ["version"],
  stdout: "null",
  stderr: "null",
}).output().then((o) => o.success, () => false);

Deno.test({
  name:
    "RedisBackend connects with rediss:// (TLS, db index) to a server with a certificate of a test CA",
  ignore: !hasOpenssl,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "xp-redis-tls-" });
    try {
      const openssl = async (...args: string[]) => {
        const { success, stderr } = await new Deno.Command("openssl", {
          args,
          cwd: dir,
          stdout: "null",
          stderr: "piped",
        }).output();
        assert.ok(success, new TextDecoder().decode(stderr));
      };
      await openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=xp-test-ca",
      );
      await openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
      );
      await Deno.writeTextFile(
        `${dir}/ext.cnf`,
        "subjectAltName=IP:127.0.0.1\n",
      );
      await openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
      );
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const tlsPort = (listener.addr as Deno.NetAddr).port;
      listener.close();
      await using _server = await startRedisServer({
        own: true,
        args: [
          "--tls-port",
          String(tlsPort),
          "--tls-cert-file",
          `${dir}/server.crt`,
          "--tls-key-file",
          `${dir}/server.key`,
          "--tls-ca-cert-file",
          `${dir}/ca.crt`,
          "--tls-auth-clients",
          "no",
        ],
      });
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("./_fixtures/redis_tls.ts", import.meta.url).href,
          `rediss://127.0.0.1:${tlsPort}/1`,
        ],
        env: { DENO_CERT: `${dir}/ca.crt` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(
        code,
        0,
        new TextDecoder().decode(stderr),
      );
      assert.equal(new TextDecoder().decode(stdout).trim(), "ok");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("RedisBackend: an unreachable server (refusing, or accepting but silent) rejects within 5 s naming host:port, never the password", async () => {
  const refused = Date.now();
  const error = await RedisBackend.open({
    redisUrl: "redis://user:topsecret@127.0.0.1:1/0",
  }).catch((e) => e);
  assert.ok(Date.now() - refused < 5_000);
  assert.ok(error instanceof BackendError);
  assert.match(error.message, /127\.0\.0\.1:1\b/);
  assert.ok(!error.message.includes("topsecret"));

  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) accepted.push(conn);
    } catch {
      // closed
    }
  })();
  try {
    const silent = Date.now();
    const hung = await RedisBackend.open({
      redisUrl: `redis://:topsecret@127.0.0.1:${port}`,
    }).catch((e) => e);
    assert.ok(Date.now() - silent < 5_000, `${Date.now() - silent} ms`);
    assert.ok(hung instanceof BackendError, String(hung));
    assert.match(hung.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.ok(!hung.message.includes("topsecret"));
  } finally {
    listener.close();
    await accepting;
    for (const conn of accepted) conn.close();
  }
});

async function waitUntil(
  condition: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

Deno.test("RedisBackend with retryTimeoutMs 0 (no retries) across a server crash (appendonly yes, SIGKILL): calls fail within 5 s naming the server, every acknowledged append survives, none is applied twice, and it reconnects by itself", async () => {
  await using server: RedisServer = await startRedisServer({
    own: true,
    appendonly: true,
  });
  await using backend = await RedisBackend.open({
    redisUrl: server.url,
    prefix: "crash:",
    maxSlotsPerThread: 1_000_000,
    retryTimeoutMs: 0,
  });
  const acked = new Map<number, Uint8Array>();
  const failures: { message: string; ms: number }[] = [];
  let seq = 0;
  let stop = false;
  const lane = async () => {
    while (!stop) {
      const slot = taggedSlot(7, seq++, 32);
      const started = Date.now();
      try {
        acked.set(await backend.bufferAppend("t", slot), slot);
      } catch (error) {
        assert.ok(error instanceof BackendError, String(error));
        failures.push({ message: error.message, ms: Date.now() - started });
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  };
  const lanes = Array.from({ length: 8 }, lane);
  await new Promise((resolve) => setTimeout(resolve, 500));
  await server.restart({ signal: "SIGKILL", downMs: 500 });
  await waitUntil(() => backend.ping(), 5_000);
  const ackedBefore = acked.size;
  await new Promise((resolve) => setTimeout(resolve, 500));
  stop = true;
  await Promise.all(lanes);
  assert.ok(acked.size > ackedBefore, "no append succeeded after the restart");
  assert.ok(failures.length > 0, "the crash went unnoticed");
  for (const failure of failures) {
    assert.ok(failure.ms < 5_000, `a call took ${failure.ms} ms to fail`);
    assert.match(failure.message, new RegExp(`127\\.0\\.0\\.1:${server.port}`));
  }
  const slots = await backend.bufferGetThread("t");
  for (const [index, slot] of acked) {
    assert.deepEqual(slots[index], slot, `acknowledged slot ${index} lost`);
  }
  const tags = new Set(slots.map((s) => new DataView(s.buffer).getUint32(4)));
  assert.equal(tags.size, slots.length, "a slot was applied twice");
  assert.ok(slots.length <= seq);
  await backend.bufferClear();
});

Deno.test("RedisBackend with retryTimeoutMs 0 (no retries) and a server that stops answering (SIGSTOP): calls reject within 5 s, ping() resolves false, and it recovers after SIGCONT", async () => {
  await using server = await startRedisServer({ own: true });
  await using backend = await RedisBackend.open({
    redisUrl: server.url,
    prefix: "hang:",
    retryTimeoutMs: 0,
  });
  assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
  Deno.kill(server.pid!, "SIGSTOP");
  try {
    const started = Date.now();
    const [append, ping] = await Promise.allSettled([
      backend.bufferAppend("t", new Uint8Array([2])),
      backend.ping(),
    ]);
    assert.ok(Date.now() - started < 5_000, `${Date.now() - started} ms`);
    assert.equal(append.status, "rejected");
    assert.ok(append.reason instanceof BackendError);
    assert.match(append.reason.message, /may or may not have been applied/);
    assert.deepEqual(ping, { status: "fulfilled", value: false });
  } finally {
    Deno.kill(server.pid!, "SIGCONT");
  }
  await waitUntil(() => backend.ping(), 5_000);
  const index = await backend.bufferAppend("t", new Uint8Array([3]));
  const slots = await backend.bufferGetThread("t");
  assert.deepEqual(slots[index], new Uint8Array([3]));
  await backend.bufferClear();
});

Deno.test("RedisBackend on connections that lose replies or go silent (through a proxy)", async (t) => {
  await t.step(
    "ping() alone recovers from a connection that went silent for good (half-open): the watchdog cuts it and the backend reconnects",
    async () => {
      await using proxy = new ReplyLosingProxy();
      await using server = await startRedisServer({ own: true });
      proxy.target = server.port;
      await using backend = await RedisBackend.open({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        prefix: `xp-test:${crypto.randomUUID()}:`,
      });
      assert.equal(await backend.ping(), true);
      proxy.stall();
      assert.equal(await backend.ping(), false);
      await waitUntil(() => backend.ping(), 8_000);
      assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
      await backend.bufferClear();
    },
  );

  await t.step(
    "with retryTimeoutMs 0 (no retries), calls never hang: an append whose reply was lost on a connection that came back at once, and one sent to a server that stopped answering, both reject within 5 s, and close() resolves",
    async () => {
      await using proxy = new ReplyLosingProxy();
      await using flaky = await startRedisServer({ own: true });
      await using stopped = await startRedisServer({ own: true });
      proxy.target = flaky.port;
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const options = {
        protocol: 2 as const,
        autoResendUnfulfilledCommands: false,
      };
      const clients = [
        new Redis(`redis://127.0.0.1:${proxy.port}`, options),
        new Redis(stopped.url, options),
      ];
      for (const client of clients) client.on("error", () => {});
      const raw = rawClient(flaky.url);
      try {
        const [lossy, hung] = await Promise.all(
          clients.map((redisClient) =>
            RedisBackend.open({ redisClient, prefix, retryTimeoutMs: 0 })
          ),
        );
        for (const backend of [lossy!, hung!]) {
          assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
        }
        const settled = <T>(promise: Promise<T>) =>
          Promise.race([
            promise.then(
              (value) => ({ value }),
              (error: Error) => ({ error }),
            ),
            new Promise<"pending">((resolve) => {
              const timer = setTimeout(() => resolve("pending"), 6_000);
              promise.catch(() => {}).finally(() => clearTimeout(timer));
            }),
          ]);
        const started = Date.now();
        // The reply is lost, then the connection comes back at once:
        // ioredis itself never settles the call.
        proxy.dropReplies();
        const lost = settled(lossy!.bufferAppend("t", new Uint8Array([2])));
        await waitUntil(
          async () => (await raw.llen(redisKeys(prefix).thread("t"))) === 2,
          2_000,
        );
        proxy.cut();
        // The server stops answering.
        Deno.kill(stopped.pid!, "SIGSTOP");
        let unanswered;
        try {
          unanswered = await settled(
            hung!.bufferAppend("t", new Uint8Array([2])),
          );
        } finally {
          Deno.kill(stopped.pid!, "SIGCONT");
        }
        for (const outcome of [await lost, unanswered]) {
          assert.ok(
            outcome !== "pending" && "error" in outcome,
            `not rejected: ${JSON.stringify(outcome)}`,
          );
          assert.ok(outcome.error instanceof BackendError);
          assert.match(
            outcome.error.message,
            /may or may not have been applied/,
          );
        }
        assert.ok(Date.now() - started < 5_500, `${Date.now() - started} ms`);
        assert.equal(await raw.llen(redisKeys(prefix).thread("t")), 2);
        await lossy!.bufferClear();
        await hung!.bufferClear();
        await Promise.all([lossy!.close(), hung!.close()]);
      } finally {
        await closeRaw(raw);
        for (const client of clients) await closeRaw(client);
      }
    },
  );
});

Deno.test("RedisBackend issue 10 defects on Redis", async (t) => {
  await using server = await startRedisServer();

  await t.step(
    "defect 2: a thread appended to by a backend with a shorter ttlMs (on one prefix) is unlisted, uncounted and off maxThreads once it expires",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using lasting = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 60_000,
        maxThreads: 1,
      });
      await using brief = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 300,
      });
      await lasting.bufferAppend("t", new Uint8Array([1]));
      await brief.bufferAppend("t", new Uint8Array([2]));
      await new Promise((resolve) => setTimeout(resolve, 800));
      assert.equal(await lasting.bufferThreadExists("t"), false);
      assert.equal(await lasting.bufferThreadLen("t"), 0);
      assert.deepEqual(await lasting.bufferListThreads(), []);
      assert.equal((await lasting.stats()).threads, 0);
      assert.equal(await lasting.bufferAppend("u", new Uint8Array([3])), 0);
      await lasting.bufferClear();
    },
  );

  await t.step(
    "defect 6: the thread index expires with its longest-lived thread: 100 expired threads leave no key of the tenant behind, with no list, stats or read after their expiry",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const keys = redisKeys(prefix);
      const backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 1_000,
      });
      const raw = rawClient(server.url);
      try {
        await Promise.all(
          Array.from(
            { length: 100 },
            (_, i) => backend.bufferAppend(`t${i}`, new Uint8Array([i])),
          ),
        );
        await backend.bufferAppend("t0", new Uint8Array([1]), {
          appendId: "kept with the thread",
        });
        assert.equal(await raw.zcard(keys.threads), 100);
        const ttl = await raw.pttl(keys.threads);
        assert.ok(ttl > 0 && ttl <= 1_000, `index PTTL ${ttl}`);
        await new Promise((resolve) => setTimeout(resolve, 1_600));
        assert.equal(await raw.exists(keys.threads), 0, "index left behind");
        const left = await scanTag(raw, keys.tag);
        // Only the backend's op records (see _redis_keys.ts) outlive the data,
        // by their own TTL.
        assert.deepEqual(
          left.filter((key) => !key.startsWith(`${keys.tag}:p:`)),
          [],
        );
        for (const key of left) {
          const pttl = await raw.pttl(key);
          assert.ok(pttl > 0 && pttl <= 70_000, `${key}: PTTL ${pttl}`);
        }
      } finally {
        await backend.close();
        await closeRaw(raw);
      }
    },
  );

  await t.step(
    "defect 6 with ttlMs 0 on the prefix: the index stays while a persistent thread is listed, and expires with the others once it is deleted",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const keys = redisKeys(prefix);
      await using lasting = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 0,
      });
      await using brief = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
        ttlMs: 500,
      });
      const raw = rawClient(server.url);
      try {
        await lasting.bufferAppend("kept", new Uint8Array([1]));
        await brief.bufferAppend("brief", new Uint8Array([2]));
        assert.equal(await raw.pttl(keys.threads), -1);
        await new Promise((resolve) => setTimeout(resolve, 700));
        assert.deepEqual(await lasting.bufferListThreads(), ["kept"]);
        await brief.bufferAppend("brief", new Uint8Array([3]));
        assert.equal(await lasting.bufferDeleteThread("kept"), true);
        const ttl = await raw.pttl(keys.threads);
        assert.ok(ttl > 0 && ttl <= 500, `index PTTL ${ttl}`);
        await new Promise((resolve) => setTimeout(resolve, 700));
        assert.equal(await raw.exists(keys.threads), 0);
      } finally {
        await closeRaw(raw);
      }
    },
  );

  await t.step(
    "defect 4: each slot a read returns owns its own ArrayBuffer (ioredis Buffers may share a pool)",
    async () => {
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix: `xp-test:${crypto.randomUUID()}:`,
      });
      for (let i = 0; i < 8; i++) {
        await backend.bufferAppend("t", new Uint8Array([i, i, i]));
      }
      const reads = [
        ...await backend.bufferGetThread("t"),
        ...await backend.bufferGetRange("t", 2, 6),
        (await backend.bufferGetSlot("t", 3))!,
      ];
      const buffers = new Set<ArrayBufferLike>();
      for (const slot of reads) {
        assert.equal(slot.byteOffset, 0);
        assert.equal(slot.buffer.byteLength, slot.byteLength);
        buffers.add(slot.buffer);
      }
      assert.equal(buffers.size, reads.length);
      await backend.bufferClear();
    },
  );

  await t.step(
    "registryRefresh is one atomic step: racing a registrySet that moves the uuid to another chain never maps the old chain back",
    async () => {
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      await using a = await RedisBackend.open({ redisUrl: server.url, prefix });
      await using b = await RedisBackend.open({ redisUrl: server.url, prefix });
      for (let round = 0; round < 200; round++) {
        const uuid = `u${round}`;
        await a.registrySet(`old ${round}`, uuid);
        const [refreshed] = await Promise.all([
          a.registryRefresh(uuid),
          b.registrySet(`new ${round}`, uuid),
        ]);
        assert.equal(refreshed, true);
        assert.equal(await a.registryGetChain(uuid), `new ${round}`);
        assert.equal(await a.registryGetUuid(`old ${round}`), null);
      }
      await a.registryClear();
    },
  );
});

/** Every key of a tenant (SCAN over its tag: for checks of what is left). */
async function scanTag(client: Redis, tag: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, found] = await client.scan(
      cursor,
      "MATCH",
      `${tag.replace(/[*?[\]\\]/g, "\\$&")}*`,
      "COUNT",
      1000,
    );
    cursor = next;
    keys.push(...found);
  } while (cursor !== "0");
  return keys.sort();
}

Deno.test("RedisBackend retries until retryTimeoutMs and applies each call once (issue 11)", async (t) => {
  await t.step(
    "lost replies (a proxy drops them, then cuts the connection): the append, a thread deletion and a registry deletion return what was applied, once",
    async () => {
      await using proxy = new ReplyLosingProxy();
      await using server = await startRedisServer({ own: true });
      proxy.target = server.port;
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const keys = redisKeys(prefix);
      await using backend = await RedisBackend.open({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        prefix,
      });
      const raw = rawClient(server.url);
      try {
        const lose = async <T>(
          call: () => Promise<T>,
          applied: () => Promise<boolean>,
        ): Promise<T> => {
          proxy.dropReplies();
          const result = call();
          await waitUntil(applied, 2_000);
          proxy.cut();
          return await result;
        };
        assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
        assert.equal(
          await lose(
            () => backend.bufferAppend("t", new Uint8Array([2])),
            async () => (await raw.llen(keys.thread("t"))) === 2,
          ),
          1,
        );
        assert.equal(
          await lose(
            () =>
              backend.bufferAppend("t", new Uint8Array([3]), {
                appendId: "three",
              }),
            async () => (await raw.llen(keys.thread("t"))) === 3,
          ),
          2,
        );
        assert.deepEqual(
          (await backend.bufferGetThread("t")).map((slot) => [...slot]),
          [[1], [2], [3]],
        );
        await backend.registrySet("chain", "uuid");
        assert.equal(
          await lose(
            () => backend.registryDelete("uuid"),
            async () => (await raw.exists(keys.uuid("uuid"))) === 0,
          ),
          true,
          "a retried registryDelete() says the uuid was mapped",
        );
        assert.equal(
          await lose(
            () => backend.bufferDeleteThread("t"),
            async () => (await raw.exists(keys.thread("t"))) === 0,
          ),
          true,
          "a retried bufferDeleteThread() says the thread existed",
        );
      } finally {
        await closeRaw(raw);
      }
    },
  );

  await t.step(
    "the conformance suite passes behind a proxy that drops replies and cuts connections at random (0 duplicated, 0 lost)",
    async (t) => {
      await using proxy = new ReplyLosingProxy();
      await using server = await startRedisServer({ own: true });
      proxy.target = server.port;
      let cuts = 0;
      let stopped = false;
      const chaos = (async () => {
        while (!stopped) {
          await new Promise((r) => setTimeout(r, 150 + Math.random() * 350));
          if (stopped) break;
          proxy.dropReplies();
          await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
          proxy.cut();
          cuts++;
        }
      })();
      try {
        await runConformanceSuite(t, {
          name: "redis behind a reply-losing proxy",
          open: (config) =>
            RedisBackend.open({
              ...config,
              redisUrl: `redis://127.0.0.1:${proxy.port}`,
            }),
        });
      } finally {
        stopped = true;
        await chaos;
      }
      assert.ok(cuts > 20, `only ${cuts} cuts`);
    },
  );

  await t.step(
    "one appendId from two processes and two Workers at once: one slot, one index for all; after the thread's deletion the ids are free again",
    async () => {
      await using server = await startRedisServer();
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      const base = {
        url: server.url,
        prefix,
        threadId: "shared",
        count: 200,
        concurrency: 32,
        size: 16,
        appendIdPrefix: "msg",
      };
      const results = await Promise.all([
        ...[0, 1].map((writer) => runInProcess({ ...base, writer })),
        ...[2, 3].map((writer) => runInWorker({ ...base, writer })),
      ]);
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix,
      });
      const slots = await backend.bufferGetThread("shared");
      assert.equal(slots.length, 200);
      const bySeq = new Map<number, number>();
      for (const outcomes of results) {
        assert.equal(outcomes.length, 200);
        for (const outcome of outcomes) {
          assert.ok("index" in outcome, JSON.stringify(outcome));
          const known = bySeq.get(outcome.seq);
          if (known === undefined) bySeq.set(outcome.seq, outcome.index);
          else assert.equal(outcome.index, known, `msg-${outcome.seq}`);
        }
      }
      assert.equal(new Set(bySeq.values()).size, 200);
      for (const [seq, index] of bySeq) {
        // Whoever won, the slot at the index is that id's (seq in bytes 4..7).
        assert.equal(new DataView(slots[index]!.buffer).getUint32(4), seq);
      }
      assert.equal(await backend.bufferDeleteThread("shared"), true);
      assert.equal(
        await backend.bufferAppend("shared", new Uint8Array([1]), {
          appendId: "msg-7",
        }),
        0,
      );
      await backend.bufferClear();
    },
  );

  await t.step(
    "a server SIGKILLed and restarted (appendfsync always) under load: every append returns its index, none is lost or stored twice",
    async () => {
      await using server = await startRedisServer({
        own: true,
        appendonly: true,
      });
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix: "restart:",
        maxSlotsPerThread: 1_000_000,
      });
      const acked = new Map<number, Uint8Array>();
      const failures: string[] = [];
      let seq = 0;
      let stop = false;
      const lane = async () => {
        while (!stop) {
          const slot = taggedSlot(9, seq++, 32);
          try {
            const index = await backend.bufferAppend("t", slot);
            assert.ok(!acked.has(index), `index ${index} handed out twice`);
            acked.set(index, slot);
          } catch (error) {
            failures.push(String(error));
          }
        }
      };
      const lanes = Array.from({ length: 16 }, lane);
      await new Promise((resolve) => setTimeout(resolve, 400));
      const before = acked.size;
      await server.restart({ signal: "SIGKILL", downMs: 500 });
      await new Promise((resolve) => setTimeout(resolve, 400));
      stop = true;
      await Promise.all(lanes);
      assert.deepEqual(failures, []);
      assert.ok(acked.size > before, "no append after the restart");
      const slots = await backend.bufferGetThread("t");
      assert.equal(slots.length, acked.size, "dense: only acknowledged slots");
      assert.equal(slots.length, seq);
      for (const [index, slot] of acked) {
        assert.deepEqual(slots[index], slot, `acknowledged slot ${index}`);
      }
      await backend.bufferClear();
    },
  );

  await t.step(
    "a server that stops answering for 5 s (SIGSTOP): the watchdog cuts the connection, the append is retried and returns its index once the server is back, stored once",
    async () => {
      await using server = await startRedisServer({ own: true });
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix: `xp-test:${crypto.randomUUID()}:`,
      });
      assert.equal(await backend.bufferAppend("t", new Uint8Array([1])), 0);
      Deno.kill(server.pid!, "SIGSTOP");
      let index: Promise<number>;
      try {
        index = backend.bufferAppend("t", new Uint8Array([2]));
        await new Promise((resolve) => setTimeout(resolve, 5_000));
      } finally {
        Deno.kill(server.pid!, "SIGCONT");
      }
      assert.equal(await index, 1);
      assert.deepEqual(
        (await backend.bufferGetThread("t")).map((slot) => [...slot]),
        [[1], [2]],
      );
      await backend.bufferClear();
    },
  );

  await t.step(
    "past retryTimeoutMs a call rejects saying whether it was applied: not applied when nothing was sent",
    async () => {
      await using server = await startRedisServer({ own: true });
      await using backend = await RedisBackend.open({
        redisUrl: server.url,
        prefix: `xp-test:${crypto.randomUUID()}:`,
        retryTimeoutMs: 1_000,
      });
      await server.restart({ signal: "SIGKILL", downMs: 0 }).then(() =>
        Deno.kill(server.pid!, "SIGSTOP")
      );
      try {
        // The server is up but stopped: connections never become ready.
        await new Promise((resolve) => setTimeout(resolve, 200));
        const started = Date.now();
        const error = await backend.bufferAppend("t", new Uint8Array([1]))
          .catch((e) => e);
        assert.ok(error instanceof BackendError, String(error));
        assert.match(error.message, /retried for 1000 ms \(retryTimeoutMs\)/);
        assert.match(error.message, /it was not applied$/);
        assert.ok(Date.now() - started < 2_500, `${Date.now() - started} ms`);
      } finally {
        Deno.kill(server.pid!, "SIGCONT");
      }
    },
  );

  await t.step(
    "durableReplicas 1: appends are acknowledged once a replica holds them; with no replica they reject after retryTimeoutMs saying they were applied but not confirmed",
    async () => {
      await using primary = await startRedisServer({
        own: true,
        // A replica syncs at once (Redis 7 waits 5 s for more by default).
        args: ["--repl-diskless-sync-delay", "0"],
      });
      const prefix = `xp-test:${crypto.randomUUID()}:`;
      {
        await using alone = await RedisBackend.open({
          redisUrl: primary.url,
          prefix,
          durableReplicas: 1,
          retryTimeoutMs: 1_500,
        });
        const started = Date.now();
        const error = await alone.bufferAppend("t", new Uint8Array([1]))
          .catch((e) => e);
        assert.ok(error instanceof BackendError, String(error));
        assert.match(
          error.message,
          /it was applied at index 0 on Redis at .*, but only 0 of the 1 replicas it must reach \(durableReplicas\) confirmed it/,
        );
        assert.doesNotMatch(error.message, /may or may not/);
        const took = Date.now() - started;
        assert.ok(took >= 1_400 && took < 3_000, `${took} ms`);
        // Registry writes wait too.
        await assert.rejects(
          alone.registrySet("c", "u"),
          /durableReplicas/,
        );
      }
      await using replica = await startRedisServer({
        own: true,
        args: ["--replicaof", "127.0.0.1", String(primary.port)],
      });
      const raw = rawClient(replica.url);
      try {
        await waitUntil(
          async () =>
            /master_link_status:up/.test(await raw.info("replication")),
          10_000,
        );
        await using durable = await RedisBackend.open({
          redisUrl: primary.url,
          prefix,
          durableReplicas: 1,
        });
        const indexes = await Promise.all(
          Array.from(
            { length: 300 },
            (_, i) => durable.bufferAppend("t", new Uint8Array([i & 0xff])),
          ),
        );
        assert.deepEqual(
          [...indexes].sort((a, b) => a - b),
          Array.from({ length: 300 }, (_, i) => i + 1),
        );
        // Acknowledged means on the replica.
        assert.equal(await raw.llen(redisKeys(prefix).thread("t")), 301);
        await durable.bufferClear();
      } finally {
        await closeRaw(raw);
      }
    },
  );

  await t.step(
    "without --allow-env, opening a Redis backend is a BackendError naming the flag (ioredis' dependency debug reads the environment when it loads)",
    async () => {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-prompt", "--allow-net=127.0.0.1", "-"],
        cwd: new URL("..", import.meta.url).pathname,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      await writer.write(
        new TextEncoder().encode(`
          import { RedisBackend } from ${
          JSON.stringify(new URL("../backends/redis.ts", import.meta.url).href)
        };
          const error = await RedisBackend.open({ redisUrl: "redis://127.0.0.1:1" }).catch((e) => e);
          console.log(JSON.stringify({ name: error.name, message: error.message }));
        `),
      );
      await writer.close();
      const { stdout, stderr } = await child.output();
      const error = JSON.parse(new TextDecoder().decode(stdout) || "null");
      assert.ok(error, new TextDecoder().decode(stderr));
      assert.equal(error.name, "BackendError");
      assert.match(error.message, /--allow-env/);
    },
  );
});

Deno.test("RedisBackend: generated op records cost at most 16 bytes per slot (MEMORY USAGE of a backend's records and INFO memory, over 100 000 appends of 200 bytes to 100 threads, retries on vs off); appendIds cost what they cost", async () => {
  await using server = await startRedisServer({ own: true });
  const raw = rawClient(server.url);
  const slot = new Uint8Array(200).map((_, i) => i);
  const used = async () =>
    Number(/used_memory:(\d+)/.exec(await raw.info("memory"))![1]);
  const measure = async (
    config: { retryTimeoutMs?: number },
    appendId?: (i: number) => string,
  ) => {
    const prefix = `mem-${crypto.randomUUID()}:`;
    await using backend = await RedisBackend.open({
      redisUrl: server.url,
      prefix,
      ttlMs: 3_600_000,
      ...config,
    });
    const before = await used();
    for (let start = 0; start < 100_000; start += 256) {
      await Promise.all(
        Array.from({ length: Math.min(256, 100_000 - start) }, (_, k) => {
          const i = start + k;
          const append = () =>
            backend.bufferAppend(
              `thread-${i % 100}`,
              slot,
              appendId === undefined ? undefined : { appendId: appendId(i) },
            );
          // Without retries (retryTimeoutMs 0) a loaded machine may cut a
          // connection: append again (the count below is what is stored).
          return append().catch(append);
        }),
      );
    }
    const { slots } = await backend.stats();
    const perSlot = ((await used()) - before) / slots;
    const records = await scanTag(raw, `${redisKeys(prefix).tag}:p:`);
    let recordBytes = 0;
    for (const key of records) {
      recordBytes += Number(await raw.call("MEMORY", "USAGE", key));
    }
    return { perSlot, recordsPerSlot: recordBytes / slots };
  };
  try {
    const off = await measure({ retryTimeoutMs: 0 });
    const on = await measure({});
    const ids = await measure({}, (i) => `${crypto.randomUUID()}-${i}`);
    console.log(
      `bytes per slot (INFO used_memory): retries off ${
        off.perSlot.toFixed(1)
      }, on ${on.perSlot.toFixed(1)} (op records by MEMORY USAGE: ${
        on.recordsPerSlot.toFixed(3)
      }), with an appendId of about 40 characters ${ids.perSlot.toFixed(1)}`,
    );
    assert.equal(off.recordsPerSlot, 0);
    assert.ok(on.recordsPerSlot <= 16, `op records: ${on.recordsPerSlot}`);
    assert.ok(
      on.perSlot - off.perSlot <= 16,
      `retries on cost ${on.perSlot - off.perSlot} bytes per slot`,
    );
  } finally {
    await closeRaw(raw);
  }
});
