/**
 * {@linkcode ThreadRegistry}: dotted call chains (`console.router.greeter`)
 * mapped to opaque uuids over any {@linkcode SharedBackend}, race-free, so
 * that agents in many isolates, processes or machines see the same uuid for
 * the same chain and never see the topology.
 *
 * @example Call down a chain and respond back up
 * ```ts
 * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const registry = new ThreadRegistry(backend);
 * const root = await registry.initializeRoot("hello-world");
 * const toGreeter = await registry.extendChain(root, "greeter");
 * assert.equal(await registry.lookup(toGreeter), "system.hello-world.greeter");
 * assert.deepEqual(await registry.pruneForResponse(toGreeter), { target: "hello-world", uuid: root });
 * ```
 *
 * @module
 */

import type { SharedBackend } from "./protocol.ts";
import { describe, quote } from "./_messages.ts";
import { checkBackend, checkNonEmptyString } from "./_validate.ts";

/**
 * Where a response goes: the previous hop of the chain, and the uuid of the
 * chain that ends there. Returned by {@linkcode ThreadRegistry.pruneForResponse}.
 *
 * @example
 * ```ts
 * import { type PruneResult, ThreadRegistry } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const registry = new ThreadRegistry(backend);
 * const uuid = await registry.getOrCreate("console.router.greeter");
 * const result: PruneResult | null = await registry.pruneForResponse(uuid);
 * assert.equal(result?.target, "router");
 * assert.equal(result?.uuid, await registry.getOrCreate("console.router"));
 * ```
 */
export interface PruneResult {
  /** The hop the response goes to: the last hop of the pruned chain. */
  target: string;
  /** The uuid of the pruned chain (the chain without its last hop). */
  uuid: string;
}

/**
 * Options of {@linkcode ThreadRegistry.startChain}.
 *
 * @example
 * ```ts
 * import { type StartChainOptions, ThreadRegistry } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const registry = new ThreadRegistry(backend);
 * const first = await registry.startChain("console", "router");
 * const options: StartChainOptions = { fresh: true };
 * assert.notEqual(await registry.startChain("console", "router", options), first);
 * ```
 */
export interface StartChainOptions {
  /**
   * Start a new conversation: map the chain to a new uuid even if it has
   * one (whose thread then stays behind, unmapped).
   *
   * @default {false}
   */
  fresh?: boolean;
}

/** The first hop of every root chain: `system.<organismName>`. */
const ROOT_HOP = "system";

/**
 * A registry of call chains over any {@linkcode SharedBackend}: a bijection
 * between dotted chains of hops (`console.router.greeter`, each hop a
 * listener's name) and uuids. Agents pass uuids around as thread ids; the
 * registry turns them back into chains to route calls and responses.
 *
 * **Race-free.** Every create-if-missing goes through the backend's atomic
 * `registrySetIfAbsent` with a fresh `crypto.randomUUID()`, so processes
 * racing to create the same chain all get the one uuid that won (the Python
 * original checked, then set, so two processes could give one chain two
 * uuids). `extendChain` and `pruneForResponse` are two steps: they read the
 * chain of a uuid, then get or create the longer or shorter chain. The read
 * is a snapshot. `getOrCreate`, `startChain` and `initializeRoot` always map
 * a fresh uuid, so they never move one; but {@linkcode ThreadRegistry.registerThread}
 * (with a new chain) and the backend's `registrySet` can move a uuid to
 * another chain, and `cleanup` or expiry can remove it, between the two
 * steps: then the result follows the chain the uuid had when it was read
 * (and `pruneForResponse` of an exhausted one-hop chain removes the uuid,
 * whatever it maps to by then). Do not move a uuid that is in use.
 *
 * **Chains.** A chain is one or more hops joined by `.`; a hop is a non-empty
 * string without `.` (any other characters are fine). Chains are validated:
 * an empty segment (`"a..b"`, `".a"`, `"a."`) is a `RangeError` naming the
 * argument, as is a hop that contains a `.`; an empty or non-string chain or
 * hop is a `TypeError`. A chain, like a uuid, is at most 1024 UTF-8 bytes
 * (the backend's limit, a `RangeError` naming `chain`).
 *
 * **Lifetime.** Pairs live as the backend's TTL says: `ttlMs` after they were
 * created (looking a chain up, or creating it again, does not refresh it),
 * and as long as their thread is appended to through a `ContextBuffer`,
 * which refreshes the pair of the thread it appends to.
 * {@linkcode ThreadRegistry.cleanup} removes one at once.
 *
 * The registry does not own the backend: closing it is the caller's job.
 *
 * @example The original's scenario: root, call, respond
 * ```ts
 * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 *
 * await using backend = new InMemoryBackend();
 * const registry = new ThreadRegistry(backend);
 * const uuid = await registry.getOrCreate("console.router.greeter");
 * assert.equal(await registry.getOrCreate("console.router.greeter"), uuid);
 * assert.equal(await registry.lookup(uuid), "console.router.greeter");
 *
 * const next = await registry.extendChain(uuid, "calculator");
 * assert.equal(await registry.lookup(next), "console.router.greeter.calculator");
 * const back = await registry.pruneForResponse(next);
 * assert.deepEqual(back, { target: "greeter", uuid });
 * ```
 */
export class ThreadRegistry {
  /** The backend the pairs are stored in. */
  readonly backend: SharedBackend;
  #rootChain: string | null = null;
  #rootUuid: string | null = null;

  /**
   * Makes a registry over a backend. Nothing is read or written.
   *
   * @param backend The backend to store pairs in; it stays the caller's to close.
   * @throws {TypeError} `backend` is not a backend.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend(); // or await createSharedBackend(...)
   * const registry = new ThreadRegistry(backend);
   * assert.equal(registry.rootUuid, null);
   * ```
   */
  constructor(backend: SharedBackend) {
    checkBackend("backend", backend);
    this.backend = backend;
  }

  /**
   * The root chain of the last {@linkcode ThreadRegistry.initializeRoot}
   * call on this instance (`system.<organismName>`), or `null` before it.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * await registry.initializeRoot("shop");
   * assert.equal(registry.rootChain, "system.shop");
   * ```
   */
  get rootChain(): string | null {
    return this.#rootChain;
  }

  /**
   * The root uuid the last {@linkcode ThreadRegistry.initializeRoot} call on
   * this instance returned, or `null` before it.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const root = await registry.initializeRoot("shop");
   * assert.equal(registry.rootUuid, root);
   * ```
   */
  get rootUuid(): string | null {
    return this.#rootUuid;
  }

  /**
   * Gets or creates the organism's root chain, `system.<organismName>`.
   * Every process that calls it on the same store gets the same uuid (the
   * first to create it wins); calling it again returns that uuid.
   *
   * @param organismName The organism's name: one hop (non-empty, no `.`).
   * @returns The root chain's uuid.
   * @throws {TypeError} `organismName` is not a non-empty string.
   * @throws {RangeError} `organismName` contains a `.`.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const [a, b] = await Promise.all([
   *   new ThreadRegistry(backend).initializeRoot("shop"),
   *   new ThreadRegistry(backend).initializeRoot("shop"),
   * ]);
   * assert.equal(a, b);
   * ```
   */
  async initializeRoot(organismName: string): Promise<string> {
    checkHop("organismName", organismName);
    const chain = `${ROOT_HOP}.${organismName}`;
    const uuid = await this.getOrCreate(chain);
    this.#rootChain = chain;
    this.#rootUuid = uuid;
    return uuid;
  }

  /**
   * Gets the uuid of a chain, creating one if the chain has none: one atomic
   * `registrySetIfAbsent` with a fresh uuid, so concurrent callers anywhere
   * all get the same uuid.
   *
   * @param chain The chain: hops joined by `.`.
   * @returns The chain's uuid.
   * @throws {TypeError} `chain` is not a non-empty string.
   * @throws {RangeError} `chain` has an empty segment, or is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const uuids = await Promise.all([1, 2, 3].map(() => registry.getOrCreate("a.b")));
   * assert.equal(new Set(uuids).size, 1);
   * await assert.rejects(registry.getOrCreate("a..b"), RangeError);
   * ```
   */
  getOrCreate(chain: string): Promise<string> {
    try {
      checkChain("chain", chain);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.backend.registrySetIfAbsent(chain, crypto.randomUUID());
  }

  /**
   * Looks up the chain of a uuid.
   *
   * @param uuid The uuid.
   * @returns Its chain, or `null` if it is not registered (or expired).
   * @throws {TypeError} `uuid` is not a non-empty string.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const uuid = await registry.getOrCreate("a.b");
   * assert.equal(await registry.lookup(uuid), "a.b");
   * assert.equal(await registry.lookup(crypto.randomUUID()), null);
   * ```
   */
  lookup(uuid: string): Promise<string | null> {
    return this.backend.registryGetChain(uuid);
  }

  /**
   * Gets or creates the uuid of the chain `uuid` stands for, extended by
   * one hop: the thread id for a call from the chain's last hop to
   * `nextHop`. An unknown (or expired) `uuid` starts a new chain made of
   * `nextHop` alone, as the Python original did. Two steps (read the chain,
   * then get or create): see the class documentation for a uuid moved in
   * between.
   *
   * @param uuid The caller's thread id.
   * @param nextHop The callee: one hop (non-empty, no `.`).
   * @returns The uuid of `<chain of uuid>.<nextHop>` (or of `nextHop`).
   * @throws {TypeError} `uuid` or `nextHop` is not a non-empty string.
   * @throws {RangeError} `nextHop` contains a `.`, or the new chain is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const router = await registry.getOrCreate("console.router");
   * const greeter = await registry.extendChain(router, "greeter");
   * assert.equal(greeter, await registry.getOrCreate("console.router.greeter"));
   * await assert.rejects(registry.extendChain(router, "a.b"), /nextHop/);
   * ```
   */
  async extendChain(uuid: string, nextHop: string): Promise<string> {
    checkHop("nextHop", nextHop);
    const chain = await this.backend.registryGetChain(uuid);
    return await this.getOrCreate(
      chain === null ? nextHop : `${chain}.${nextHop}`,
    );
  }

  /**
   * Routes a response back to the caller: drops the last hop of the chain
   * `uuid` stands for and gets or creates the uuid of what remains.
   *
   * - `a.b.c` gives `{ target: "b", uuid: <uuid of a.b> }`. The responder's
   *   uuid stays registered: other calls on the same chain may still be
   *   running (it goes with its TTL, or with {@linkcode ThreadRegistry.cleanup}).
   * - A chain of one hop is exhausted (there is no caller to respond to):
   *   its uuid is removed and the result is `null`.
   * - An unknown (or expired) uuid gives `null`; nothing changes.
   *
   * @param uuid The responder's thread id.
   * @returns Where the response goes, or `null` when there is no caller.
   * @throws {TypeError} `uuid` is not a non-empty string.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const console_ = await registry.getOrCreate("console");
   * const router = await registry.getOrCreate("console.router");
   * assert.deepEqual(await registry.pruneForResponse(router), { target: "console", uuid: console_ });
   * assert.equal(await registry.pruneForResponse(console_), null); // exhausted: removed
   * assert.equal(await registry.lookup(console_), null);
   * ```
   */
  async pruneForResponse(uuid: string): Promise<PruneResult | null> {
    const chain = await this.backend.registryGetChain(uuid);
    if (chain === null) return null;
    const cut = chain.lastIndexOf(".");
    if (cut === -1) {
      await this.backend.registryDelete(uuid);
      return null;
    }
    const pruned = chain.slice(0, cut);
    const target = pruned.slice(pruned.lastIndexOf(".") + 1);
    return { target, uuid: await this.getOrCreate(pruned) };
  }

  /**
   * Gets the uuid of the two-hop chain `<initiator>.<target>`: the thread of
   * a conversation `initiator` has with `target`.
   *
   * **An existing chain continues.** Like {@linkcode ThreadRegistry.getOrCreate},
   * this returns the uuid the chain already has, if any: the conversation
   * goes on in the same thread, and its earlier slots are still there (every
   * process that starts the chain gets that one uuid). To start a new
   * conversation instead, pass `{ fresh: true }`: the chain is mapped to a
   * new uuid (one `registrySet`), so its thread starts empty; the old uuid
   * is unmapped (its thread stays until it is deleted or expires, and
   * `lookup` of the old uuid gives `null`). Two processes that start the same
   * chain fresh at once get two uuids, and the chain keeps the last one.
   *
   * @param initiator The caller: one hop (non-empty, no `.`).
   * @param target The callee: one hop (non-empty, no `.`).
   * @param options `{ fresh: true }` to start a new conversation on the chain.
   * @returns The chain's uuid.
   * @throws {TypeError} `initiator` or `target` is not a non-empty string, or
   * `fresh` is not a boolean.
   * @throws {RangeError} `initiator` or `target` contains a `.`.
   *
   * @example The same chain, the same conversation
   * ```ts
   * import { ContextBuffer, ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const buffer = new ContextBuffer(backend);
   * const uuid = await registry.startChain("console", "router");
   * assert.equal(await registry.lookup(uuid), "console.router");
   * await buffer.append(uuid, "hello", { fromId: "console", toId: "router" });
   *
   * // Started again: the same thread, with its slot.
   * assert.equal(await registry.startChain("console", "router"), uuid);
   * assert.equal(await buffer.threadLength(uuid), 1);
   * ```
   *
   * @example A fresh conversation on the same chain
   * ```ts
   * import { ContextBuffer, ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const buffer = new ContextBuffer(backend);
   * const old = await registry.startChain("console", "router");
   * await buffer.append(old, "hello", { fromId: "console", toId: "router" });
   *
   * const fresh = await registry.startChain("console", "router", { fresh: true });
   * assert.notEqual(fresh, old);
   * assert.equal(await registry.lookup(fresh), "console.router");
   * assert.equal(await registry.lookup(old), null);
   * assert.equal(await buffer.threadLength(fresh), 0);
   * assert.equal(await registry.startChain("console", "router"), fresh);
   * ```
   */
  async startChain(
    initiator: string,
    target: string,
    options: StartChainOptions = {},
  ): Promise<string> {
    checkHop("initiator", initiator);
    checkHop("target", target);
    if (options === null || typeof options !== "object") {
      throw new TypeError(
        `Invalid options: expected an object or undefined, got ${
          describe(options)
        }`,
      );
    }
    const { fresh } = options;
    if (fresh !== undefined && typeof fresh !== "boolean") {
      throw new TypeError(
        `Invalid fresh: expected a boolean or undefined, got ${
          describe(fresh)
        }`,
      );
    }
    const chain = `${initiator}.${target}`;
    if (fresh !== true) return await this.getOrCreate(chain);
    const uuid = crypto.randomUUID();
    await this.backend.registrySet(chain, uuid);
    return uuid;
  }

  /**
   * Registers a thread id that came from outside (a message that already
   * carries one) as the chain `<initiator>.<target>`, unless that chain
   * already has a uuid: one atomic `registrySetIfAbsent`. Compare the result
   * with `uuid`: when they differ, the chain was registered first with the
   * returned uuid, and `uuid` was left as it was. When the chain is new and
   * `uuid` was registered to another chain, it moves to this one (the
   * registry is a bijection).
   *
   * @param uuid The thread id to register.
   * @param initiator The caller: one hop (non-empty, no `.`).
   * @param target The callee: one hop (non-empty, no `.`).
   * @returns The uuid the chain maps to afterwards.
   * @throws {TypeError} An argument is not a non-empty string.
   * @throws {RangeError} `initiator` or `target` contains a `.`, or `uuid` is over 1024 UTF-8 bytes.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * assert.equal(await registry.registerThread("ext-1", "webhook", "router"), "ext-1");
   * assert.equal(await registry.lookup("ext-1"), "webhook.router");
   * assert.equal(await registry.registerThread("ext-2", "webhook", "router"), "ext-1");
   * assert.equal(await registry.lookup("ext-2"), null);
   * ```
   */
  registerThread(
    uuid: string,
    initiator: string,
    target: string,
  ): Promise<string> {
    try {
      checkHop("initiator", initiator);
      checkHop("target", target);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.backend.registrySetIfAbsent(`${initiator}.${target}`, uuid);
  }

  /**
   * Removes a uuid and its chain.
   *
   * @param uuid The uuid.
   * @returns `true` if it was registered.
   * @throws {TypeError} `uuid` is not a non-empty string.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const uuid = await registry.getOrCreate("a.b");
   * assert.equal(await registry.cleanup(uuid), true);
   * assert.equal(await registry.lookup(uuid), null);
   * assert.notEqual(await registry.getOrCreate("a.b"), uuid);
   * ```
   */
  cleanup(uuid: string): Promise<boolean> {
    return this.backend.registryDelete(uuid);
  }

  /**
   * Reads every live pair of the backend's prefix, for debugging.
   *
   * @returns A map from uuid to chain.
   *
   * @example
   * ```ts
   * import { ThreadRegistry } from "@xml-pipeline/shared-backend/context";
   * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
   * import assert from "node:assert/strict";
   *
   * await using backend = new InMemoryBackend();
   * const registry = new ThreadRegistry(backend);
   * const uuid = await registry.getOrCreate("a.b");
   * assert.deepEqual(await registry.dump(), new Map([[uuid, "a.b"]]));
   * ```
   */
  dump(): Promise<Map<string, string>> {
    return this.backend.registryListAll();
  }
}

/** Throws unless `value` is one hop: a non-empty string without `.`. */
function checkHop(name: string, value: unknown): asserts value is string {
  checkNonEmptyString(name, value);
  if (value.includes(".")) {
    throw new RangeError(
      `Invalid ${name}: ${
        quote(value)
      } contains ".", but a hop is one segment of a chain`,
    );
  }
}

/** Throws unless `value` is hops joined by `.`, none empty. */
function checkChain(name: string, value: unknown): asserts value is string {
  checkNonEmptyString(name, value);
  const position = value.split(".").indexOf("");
  if (position !== -1) {
    throw new RangeError(
      `Invalid ${name}: ${
        quote(value)
      } has an empty segment at position ${position}`,
    );
  }
}
