// ThreadRegistry on every store: the Python original's scenario, the
// semantics of each method, argument checks, and racing writers (real Workers
// on kv and redis; concurrent calls in one isolate on memory).

import assert from "node:assert/strict";
import { InMemoryBackend } from "../backends/memory.ts";
import { ThreadRegistry } from "../registry.ts";
import type { SharedBackend } from "../protocol.ts";
import {
  freshPrefix,
  openBackend,
  runInWorkers,
  type Store,
  storeVariants,
  testOnEveryStore,
} from "./_fixtures/context_harness.ts";
import {
  type RegistryTask,
  type RegistryTaskResult,
  runTask,
} from "./_fixtures/context_tasks.ts";

const UUID =
  /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

async function registrySuite(t: Deno.TestContext, store: Store): Promise<void> {
  const step = (
    name: string,
    fn: (registry: ThreadRegistry) => Promise<void>,
  ) =>
    t.step(`${store.name}: ${name}`, async () => {
      await using backend = await openBackend(store, freshPrefix("registry"));
      await fn(new ThreadRegistry(backend));
    });

  await step(
    "the original's scenario: root, getOrCreate, lookup, extend, prune back to the caller",
    async (registry) => {
      const root = await registry.initializeRoot("hello-world");
      assert.match(root, UUID);
      assert.equal(registry.rootUuid, root);
      assert.equal(registry.rootChain, "system.hello-world");
      assert.equal(await registry.lookup(root), "system.hello-world");
      assert.equal(await registry.initializeRoot("hello-world"), root);

      const greeter = await registry.getOrCreate("console.router.greeter");
      assert.match(greeter, UUID);
      assert.notEqual(greeter, root);
      assert.equal(
        await registry.getOrCreate("console.router.greeter"),
        greeter,
      );
      assert.equal(await registry.lookup(greeter), "console.router.greeter");

      const calculator = await registry.extendChain(greeter, "calculator");
      assert.equal(
        await registry.lookup(calculator),
        "console.router.greeter.calculator",
      );
      assert.equal(
        await registry.extendChain(greeter, "calculator"),
        calculator,
      );

      // The calculator responds to the greeter, the greeter to the router, ...
      assert.deepEqual(await registry.pruneForResponse(calculator), {
        target: "greeter",
        uuid: greeter,
      });
      const router = await registry.getOrCreate("console.router");
      assert.deepEqual(await registry.pruneForResponse(greeter), {
        target: "router",
        uuid: router,
      });
      const console_ = await registry.getOrCreate("console");
      assert.deepEqual(await registry.pruneForResponse(router), {
        target: "console",
        uuid: console_,
      });
      // ... and the console has no caller: the chain is exhausted and cleaned up.
      assert.equal(await registry.pruneForResponse(console_), null);
      assert.equal(await registry.lookup(console_), null);
      // The responders' uuids stay (other calls on those chains may run).
      assert.equal(
        await registry.lookup(calculator),
        "console.router.greeter.calculator",
      );
    },
  );

  await step(
    "initializeRoot gives every registry on the store the same root uuid",
    async (registry) => {
      const prefix = freshPrefix("root");
      await using a = await openBackend(store, prefix);
      // On memory, two backends are two stores: the registries share one.
      await using other = store.sharedAcrossIsolates
        ? await openBackend(store, prefix)
        : null;
      const b = other ?? a;
      const roots = await Promise.all([
        new ThreadRegistry(a).initializeRoot("shop"),
        new ThreadRegistry(b).initializeRoot("shop"),
        new ThreadRegistry(a).initializeRoot("shop"),
      ]);
      assert.equal(new Set(roots).size, 1);
      if (store.sharedAcrossIsolates) {
        assert.equal(
          await new ThreadRegistry(b).lookup(roots[0]!),
          "system.shop",
        );
      }
      // Another organism has its own root.
      assert.notEqual(await registry.initializeRoot("other"), roots[0]);
    },
  );

  await step(
    "pruneForResponse of an unknown uuid is null and changes nothing",
    async (registry) => {
      const uuid = await registry.getOrCreate("a.b");
      assert.equal(await registry.pruneForResponse(crypto.randomUUID()), null);
      assert.deepEqual(await registry.dump(), new Map([[uuid, "a.b"]]));
    },
  );

  await step(
    "extendChain of an unknown uuid starts a chain of the next hop alone",
    async (registry) => {
      const uuid = await registry.extendChain(crypto.randomUUID(), "greeter");
      assert.equal(await registry.lookup(uuid), "greeter");
      assert.equal(await registry.pruneForResponse(uuid), null);
      assert.equal(await registry.lookup(uuid), null);
    },
  );

  await step(
    "startChain is getOrCreate of initiator.target",
    async (registry) => {
      const uuid = await registry.startChain("console", "router");
      assert.equal(uuid, await registry.getOrCreate("console.router"));
      assert.deepEqual(await registry.pruneForResponse(uuid), {
        target: "console",
        uuid: await registry.getOrCreate("console"),
      });
    },
  );

  await step(
    "startChain of an existing chain continues its conversation; { fresh: true } maps the chain to a new uuid (issue 10)",
    async (registry) => {
      const old = await registry.startChain("console", "router");
      assert.equal(await registry.startChain("console", "router"), old);
      assert.equal(
        await registry.startChain("console", "router", { fresh: false }),
        old,
      );
      const fresh = await registry.startChain("console", "router", {
        fresh: true,
      });
      assert.match(fresh, UUID);
      assert.notEqual(fresh, old);
      assert.equal(await registry.lookup(fresh), "console.router");
      assert.equal(
        await registry.lookup(old),
        null,
        "the old uuid is unmapped",
      );
      assert.equal(await registry.startChain("console", "router"), fresh);
      assert.equal(await registry.getOrCreate("console.router"), fresh);
      // Another chain is untouched.
      const other = await registry.startChain("console", "greeter");
      await registry.startChain("console", "router", { fresh: true });
      assert.equal(await registry.lookup(other), "console.greeter");
      await assert.rejects(
        registry.startChain("console", "router", { fresh: "yes" as never }),
        (error: Error) =>
          error instanceof TypeError && /Invalid fresh/.test(error.message),
      );
      await assert.rejects(
        registry.startChain("console", "router", null as never),
        /Invalid options/,
      );
      await assert.rejects(
        registry.startChain("con.sole", "router", { fresh: true }),
        /Invalid initiator/,
      );
    },
  );

  await step(
    "registerThread maps an outside uuid unless the chain has one, and returns the chain's uuid",
    async (registry) => {
      assert.equal(
        await registry.registerThread("ext-1", "webhook", "router"),
        "ext-1",
      );
      assert.equal(await registry.lookup("ext-1"), "webhook.router");
      assert.equal(await registry.getOrCreate("webhook.router"), "ext-1");
      assert.equal(
        await registry.registerThread("ext-2", "webhook", "router"),
        "ext-1",
      );
      assert.equal(await registry.lookup("ext-2"), null);
      const racing = await Promise.all(
        ["r1", "r2", "r3", "r4"].map((uuid) =>
          registry.registerThread(uuid, "mail", "router")
        ),
      );
      assert.equal(new Set(racing).size, 1);
      assert.equal(await registry.lookup(racing[0]!), "mail.router");
    },
  );

  await step(
    "cleanup removes one pair; dump lists the live ones",
    async (registry) => {
      const ab = await registry.getOrCreate("a.b");
      const ac = await registry.getOrCreate("a.c");
      assert.deepEqual(
        await registry.dump(),
        new Map([[ab, "a.b"], [ac, "a.c"]]),
      );
      assert.equal(await registry.cleanup(ab), true);
      assert.equal(await registry.cleanup(ab), false);
      assert.deepEqual(await registry.dump(), new Map([[ac, "a.c"]]));
      const again = await registry.getOrCreate("a.b");
      assert.notEqual(again, ab);
    },
  );

  await step(
    "hops may hold any character but a dot: spaces, colons, globs, emoji, __proto__",
    async (registry) => {
      const hops = [
        "my agent",
        "a:b",
        "*",
        "[x]",
        "back\\slash",
        "🤖",
        "__proto__",
      ];
      let uuid = await registry.initializeRoot("org:1");
      let chain = "system.org:1";
      for (const hop of hops) {
        uuid = await registry.extendChain(uuid, hop);
        chain = `${chain}.${hop}`;
        assert.equal(await registry.lookup(uuid), chain);
      }
      for (const hop of [...hops].reverse().slice(1)) {
        const back = await registry.pruneForResponse(uuid);
        assert.ok(back !== null);
        assert.equal(back.target, hop);
        uuid = back.uuid;
      }
      assert.equal(await registry.lookup(uuid), "system.org:1.my agent");
    },
  );

  await step(
    "bad chains and hops are a TypeError or RangeError naming the argument, and write nothing",
    async (registry) => {
      for (const chain of ["a..b", ".a", "a.", "."]) {
        await assert.rejects(registry.getOrCreate(chain), (error: Error) => {
          assert.ok(error instanceof RangeError);
          assert.match(error.message, /Invalid chain: .*empty segment/);
          return true;
        });
      }
      await assert.rejects(registry.getOrCreate(""), TypeError);
      await assert.rejects(registry.getOrCreate(42 as never), /Invalid chain/);
      await assert.rejects(registry.getOrCreate("a".repeat(1025)), RangeError);
      const uuid = await registry.getOrCreate("a");
      await assert.rejects(
        registry.extendChain(uuid, "b.c"),
        (error: Error) => {
          assert.ok(error instanceof RangeError);
          assert.match(error.message, /Invalid nextHop: "b\.c" contains "\."/);
          return true;
        },
      );
      await assert.rejects(registry.extendChain(uuid, ""), /Invalid nextHop/);
      await assert.rejects(registry.extendChain("", "b"), /uuid/);
      await assert.rejects(
        registry.initializeRoot("a.b"),
        /Invalid organismName/,
      );
      await assert.rejects(
        registry.startChain("a.b", "c"),
        /Invalid initiator/,
      );
      await assert.rejects(registry.startChain("a", ""), /Invalid target/);
      await assert.rejects(
        registry.registerThread("u", "a", "b.c"),
        /Invalid target/,
      );
      await assert.rejects(registry.registerThread("", "a", "b"), /uuid/);
      await assert.rejects(registry.lookup(""), /uuid/);
      await assert.rejects(registry.pruneForResponse(""), /uuid/);
      assert.deepEqual(await registry.dump(), new Map([[uuid, "a"]]));
      assert.throws(() => new ThreadRegistry({} as never), /Invalid backend/);
    },
  );

  await step(
    store.sharedAcrossIsolates
      ? "4 Workers racing getOrCreate/extendChain/initializeRoot on the same chains all get the same uuids"
      : "12 concurrent callers in one isolate racing getOrCreate/extendChain/initializeRoot all get the same uuids",
    async () => {
      const prefix = freshPrefix("registry-race");
      const base: Omit<RegistryTask, "seed"> = {
        kind: "registry",
        organism: "race",
        chains: Array.from(
          { length: 12 },
          (_, i) => `console.router.agent${i % 4}.tool${i}`,
        )
          .concat(["console", "console.router", "console.router.agent0"]),
        base: "console.router",
        hops: Array.from({ length: 8 }, (_, i) => `hop${i}`),
      };
      const writers = store.sharedAcrossIsolates ? 4 : 12;
      const tasks = Array.from(
        { length: writers },
        (_, seed) => ({ ...base, seed }),
      );
      let results: RegistryTaskResult[];
      await using backend = await openBackend(store, prefix);
      if (store.sharedAcrossIsolates) {
        results = await runInWorkers<RegistryTaskResult>(
          store.config(prefix),
          tasks,
        );
      } else {
        results = await Promise.all(
          tasks.map((task) =>
            runTask(backend, task) as Promise<RegistryTaskResult>
          ),
        );
      }
      const [first, ...others] = results;
      assert.ok(first !== undefined);
      for (const other of others) assert.deepEqual(other, first);

      const registry = new ThreadRegistry(backend);
      assert.equal(await registry.lookup(first.root), "system.race");
      for (const [chain, uuid] of first.chains) {
        assert.equal(await registry.lookup(uuid), chain);
      }
      for (const [hop, uuid] of first.extended) {
        assert.equal(await registry.lookup(uuid), `console.router.${hop}`);
      }
      // One pair per distinct chain: no writer's losing uuid was left behind.
      const distinct = new Set([
        "system.race",
        ...base.chains,
        ...base.hops.map((hop) => `console.router.${hop}`),
      ]);
      assert.equal((await registry.dump()).size, distinct.size);
    },
  );
}

testOnEveryStore("ThreadRegistry", await storeVariants(), registrySuite);

Deno.test("ThreadRegistry on memory with an injected clock: pairs expire ttlMs after they were created", async () => {
  let now = 0;
  await using backend = new InMemoryBackend({ ttlMs: 1_000, now: () => now });
  const registry = new ThreadRegistry(backend);
  const root = await registry.initializeRoot("shop");
  now = 999;
  // Getting or creating it again neither changes nor refreshes it.
  assert.equal(await registry.initializeRoot("shop"), root);
  now = 1_000;
  assert.equal(await registry.lookup(root), null);
  assert.equal(await registry.pruneForResponse(root), null);
  const renewed = await registry.initializeRoot("shop");
  assert.notEqual(renewed, root);
  assert.equal(registry.rootUuid, renewed);
});

/**
 * A backend on which the first `registryGetChain(uuid)` moves `uuid` to the
 * new chain `webhook.<hop>` right after reading it (as a racing
 * `registerThread` in another process would).
 */
function movedAfterRead(
  backend: InMemoryBackend,
  uuid: string,
  hop: string,
): SharedBackend {
  let moved = false;
  return new Proxy(backend, {
    get(target, property) {
      if (property === "registryGetChain") {
        return async (u: string) => {
          const chain = await target.registryGetChain(u);
          if (!moved && u === uuid) {
            moved = true;
            assert.equal(
              await new ThreadRegistry(target).registerThread(
                uuid,
                "webhook",
                hop,
              ),
              uuid,
            );
          }
          return chain;
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("extendChain and pruneForResponse read a snapshot: a uuid registerThread moves between their two steps is routed by the chain it had when read (issue 10 defect 8: the docs said this read could not be stale)", async () => {
  await using backend = new InMemoryBackend();
  const registry = new ThreadRegistry(backend);
  // Only registerThread (and a raw registrySet) can move a uuid:
  // getOrCreate, startChain and initializeRoot map fresh uuids.
  const uuid = await registry.getOrCreate("console.router");
  await registry.getOrCreate("console.greeter");
  assert.equal(await registry.lookup(uuid), "console.router");

  const extended = await new ThreadRegistry(
    movedAfterRead(backend, uuid, "router"),
  ).extendChain(uuid, "greeter");
  assert.equal(await registry.lookup(uuid), "webhook.router", "moved");
  assert.equal(
    await registry.lookup(extended),
    "console.router.greeter",
    "extended as the chain it had when read",
  );

  const other = await registry.getOrCreate("console.router");
  const back = await new ThreadRegistry(movedAfterRead(backend, other, "mail"))
    .pruneForResponse(other);
  assert.equal(back?.target, "console", "pruned as the chain it had when read");
  assert.equal(await registry.lookup(other), "webhook.mail");
});
