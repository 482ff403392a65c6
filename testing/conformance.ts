/**
 * The conformance suite: every behaviour of the shared-backend contract that
 * one process can observe, as `t.step`s of one `Deno.test`. Every backend of
 * this package runs it; run it on your own {@linkcode SharedBackend} to check
 * that it behaves the same.
 *
 * @example Run the suite on a backend
 * ```ts
 * import { runConformanceSuite } from "@xml-pipeline/shared-backend/testing";
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 *
 * Deno.test("InMemoryBackend meets the contract", async (t) => {
 *   let now = 0;
 *   await runConformanceSuite(t, {
 *     name: "memory",
 *     open: (config) => Promise.resolve(new InMemoryBackend({ ...config, now: () => now })),
 *     advanceTime: (ms) => {
 *       now += ms;
 *     },
 *     sharedStore: false,
 *   });
 * });
 * ```
 *
 * @module
 */

// This module owns the suite's public face: the harness type, the runner
// (prefixes, skips, cleanup, the clock) and the order of the sections. It
// holds no check: each section's checks live in `_checks_<section>.ts`, the
// fixtures they share in `_fixtures.ts`.

import { delay } from "../_async.ts";
import type { BackendConfig } from "../config.ts";
import { BackendClosedError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";
import { APPEND_ID_CHECKS } from "./_checks_append_ids.ts";
import { BUFFER_CHECKS } from "./_checks_buffer.ts";
import { DELETION_CHECKS } from "./_checks_deletion.ts";
import { ID_CHECKS } from "./_checks_ids.ts";
import { LIFECYCLE_CHECKS } from "./_checks_lifecycle.ts";
import { LIMIT_CHECKS } from "./_checks_limits.ts";
import { READ_CHECKS } from "./_checks_reads.ts";
import { REGISTRY_CHECKS } from "./_checks_registry.ts";
import { TENANT_CHECKS } from "./_checks_tenants.ts";
import { TTL_CHECKS } from "./_checks_ttl.ts";
import { WATCH_CHECKS } from "./_checks_watch.ts";
import type { Check, Open, TimeControl } from "./_fixtures.ts";

// The types this module's signatures name, so that its documentation is whole
// when `./testing` is read alone.
export type { BackendConfig } from "../config.ts";
export type * from "../protocol.ts";

/**
 * How the suite opens backends of the implementation under test.
 *
 * @example A harness for backends that share one store
 * ```ts
 * import type { ConformanceHarness } from "@xml-pipeline/shared-backend/testing";
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 * import assert from "node:assert/strict";
 *
 * const harness: ConformanceHarness = {
 *   name: "kv in memory",
 *   open: (config) => KvBackend.open({ ...config, kvPath: ":memory:" }),
 *   sharedStore: false, // each ":memory:" KV is its own store
 *   realTtlMs: 4_000,
 * };
 * await using backend = await harness.open({ prefix: "p:" });
 * assert.equal(backend.kind, "kv");
 * ```
 */
export interface ConformanceHarness {
  /** The backend's name, shown in the test output. */
  name: string;
  /**
   * Opens a new backend with the given config (prefix, TTL and limits set by
   * the suite), adding whatever the harness needs to reach its store.
   */
  open(config: BackendConfig): Promise<SharedBackend>;
  /**
   * Moves the backends' clock forward. When given, TTL checks use a long TTL
   * and this clock; when absent, they use a real TTL of
   * {@linkcode ConformanceHarness.realTtlMs} and sleep.
   */
  advanceTime?: (ms: number) => void | Promise<void>;
  /**
   * The TTL, in milliseconds, of the real-time TTL checks (at least 3000:
   * the checks need margins of a second). They sleep about twice as long.
   *
   * @default {4000}
   */
  realTtlMs?: number;
  /**
   * Whether backends opened in one run share one store (a KV file, a Redis
   * server), so that tenant isolation and cross-instance behaviour can be
   * checked. The suite keeps its steps apart with unique prefixes.
   *
   * @default {true}
   */
  sharedStore?: boolean;
  /**
   * The prefix under which the suite's prefixes are made.
   *
   * @default {"xp-conformance:"}
   */
  prefix?: string;
  /**
   * Declared skips: each step whose name contains a key is reported as
   * ignored, with the value as the reason in its name.
   *
   * @default {{}}
   */
  skip?: Record<string, string>;
}

/**
 * The contract's sections, in the order their checks run (the step prefixes
 * and the test output follow this order). A new section is one module beside
 * this one and one line here.
 */
const SECTIONS: readonly (readonly Check[])[] = [
  BUFFER_CHECKS,
  READ_CHECKS,
  ID_CHECKS,
  LIMIT_CHECKS,
  DELETION_CHECKS,
  REGISTRY_CHECKS,
  TTL_CHECKS,
  TENANT_CHECKS,
  LIFECYCLE_CHECKS,
  APPEND_ID_CHECKS,
  WATCH_CHECKS,
];

/**
 * Runs every check of the shared-backend contract that one process can
 * observe, each as a `t.step` named by the behaviour it checks. Each step
 * opens its backends through `harness.open` under a prefix of its own,
 * clears what it wrote and closes them.
 *
 * Checks that need several backends on one store are skipped, with the
 * reason, when `harness.sharedStore` is false; so is any step named in
 * `harness.skip`.
 *
 * @param t The test context of the `Deno.test` that runs the suite.
 * @param harness How to open the backends under test.
 * @returns When every step has run; a failing step fails the test.
 *
 * @example
 * ```ts
 * import { runConformanceSuite } from "@xml-pipeline/shared-backend/testing";
 * import { KvBackend } from "@xml-pipeline/shared-backend/kv";
 *
 * Deno.test("KvBackend meets the contract", async (t) => {
 *   const kvPath = await Deno.makeTempFile({ suffix: ".db" });
 *   try {
 *     await runConformanceSuite(t, {
 *       name: "kv",
 *       open: (config) => KvBackend.open({ ...config, kvPath }),
 *     });
 *   } finally {
 *     await Deno.remove(kvPath);
 *   }
 * });
 * ```
 */
export async function runConformanceSuite(
  t: Deno.TestContext,
  harness: ConformanceHarness,
): Promise<void> {
  const base = `${harness.prefix ?? "xp-conformance:"}${
    crypto.randomUUID().slice(0, 8)
  }:`;
  const time = timeControl(harness);
  const shared = harness.sharedStore ?? true;
  for (const [number, check] of SECTIONS.flat().entries()) {
    const reason = check.needsSharedStore && !shared
      ? `the ${harness.name} harness declares that its backends share no store`
      : Object.entries(harness.skip ?? {}).find(([key]) =>
        check.name.includes(key)
      )?.[1];
    if (reason !== undefined) {
      await t.step({
        name: `${check.name} (skipped: ${reason})`,
        ignore: true,
        fn: () => {},
      });
      continue;
    }
    await t.step(`${harness.name}: ${check.name}`, async () => {
      const opened: [SharedBackend, BackendConfig][] = [];
      const open: Open = async (config = {}) => {
        const { tenant, ...rest } = config;
        const full = {
          ttlMs: 0,
          ...rest,
          prefix: `${base}${number}:${tenant ?? ""}`,
        };
        const backend = await harness.open(full);
        opened.push([backend, full]);
        return backend;
      };
      try {
        await check.fn(open, time);
      } finally {
        await cleanUp(harness, opened);
      }
    });
  }
}

/**
 * Clears what a step wrote and closes its backends. A backend the step closed
 * itself is cleared through a new one with its config, so that nothing is left
 * behind on a store that outlives the test (a shared Redis, say).
 */
async function cleanUp(
  harness: ConformanceHarness,
  opened: [SharedBackend, BackendConfig][],
): Promise<void> {
  for (const [backend, config] of opened) {
    try {
      await backend.bufferClear();
      await backend.registryClear();
      await backend.close();
    } catch (error) {
      if (!(error instanceof BackendClosedError)) throw error;
      await using again = await harness.open(config);
      await again.bufferClear();
      await again.registryClear();
    }
  }
}

function timeControl(harness: ConformanceHarness): TimeControl {
  const advance = harness.advanceTime;
  if (advance !== undefined) {
    let now = 0;
    return {
      ttlMs: 60_000,
      slackMs: 1_000,
      exact: true,
      now: () => now,
      async until(at) {
        if (at > now) {
          await advance(at - now);
          now = at;
        }
      },
    };
  }
  return {
    ttlMs: Math.max(harness.realTtlMs ?? 4_000, 3_000),
    slackMs: 1_000,
    exact: false,
    now: () => performance.now(),
    async until(at) {
      const wait = at - performance.now();
      if (wait > 0) await delay(wait);
    },
  };
}
