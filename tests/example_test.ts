// The example service (examples/agent-service) under `deno serve --parallel`
// with 2 and 4 isolates on one temporary KV file: bounded concurrent HTTP
// requests on 127.0.0.1, then the store is read back and checked (dense,
// each index once, as many slots as successful answers, each body at the
// index its answer gave).

import assert from "node:assert/strict";
import { ContextBuffer, KvBackend, ThreadRegistry } from "../mod.ts";
import { drive } from "../examples/agent-service/_load.ts";
import { startService } from "../examples/agent-service/_server.ts";

/** What one message request sent, and the answer. */
interface Sent {
  threadId: string;
  tag: string;
  index?: number;
}

const MESSAGES = 1_000;
const CONNECTIONS = 16;
/** Three conversations: one hot (half the messages), two sharing the rest. */
const SHARE = [0, 0, 1, 2];

for (const isolates of [2, 4]) {
  Deno.test(`the agent service on ${isolates} isolates stores every answered message once, at the index it answered`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "example_test_" });
    const kvPath = `${dir}/agents.db`;
    try {
      await using service = await startService({
        isolates,
        env: { XP_KV_PATH: kvPath },
      });
      const conversations: { uuid: string; chain: string }[] = [];
      const opened = await drive({
        url: service.url,
        connections: 3,
        count: 3,
        request: (n) => ({
          path: "/conversations",
          body: { from: "console", to: `agent${n}` },
        }),
        onResponse: (_n, status, body) => {
          assert.equal(status, 201, JSON.stringify(body));
          conversations.push(body as { uuid: string; chain: string });
        },
      });
      assert.equal(opened.ok, 3);

      const sent: Sent[] = [];
      const load = await drive({
        url: service.url,
        connections: CONNECTIONS,
        isolates,
        count: MESSAGES,
        request: (n) => {
          const threadId = conversations[SHARE[n % SHARE.length]!]!.uuid;
          const tag = `message-${n}-${crypto.randomUUID()}`;
          sent[n] = { threadId, tag };
          return {
            path: `/conversations/${threadId}/messages`,
            body: { from: "console", to: "agent", payload: { n, tag } },
          };
        },
        onResponse: (n, status, body) => {
          if (status !== 201) return;
          const answer = body as { threadId: string; index: number };
          assert.equal(answer.threadId, sent[n]!.threadId);
          sent[n]!.index = answer.index;
        },
      });
      await service.stop();
      assert.match(service.output(), new RegExp(`with ${isolates} threads`));
      // Failures are allowed (a store under contention may give up), but
      // only as 503s, and what failed must not be stored.
      assert.ok(load.ok > MESSAGES / 2, `${load.ok} ok: ${load.firstFailure}`);
      assert.equal(load.ok + load.failed, MESSAGES);
      if (load.failed > 0) assert.match(load.firstFailure!, /^503 /);

      await using backend = await KvBackend.open({ kvPath });
      const buffer = new ContextBuffer<{ n: number; tag: string }>(backend);
      const registry = new ThreadRegistry(backend);
      for (const { uuid, chain } of conversations) {
        assert.equal(await registry.lookup(uuid), chain);
        const answered = sent.filter((s) =>
          s.threadId === uuid && s.index !== undefined
        );
        const slots = (await buffer.getThread(uuid)) ?? [];
        assert.equal(slots.length, answered.length, `thread ${chain}`);
        const byIndex = new Map(answered.map((s) => [s.index!, s]));
        assert.equal(byIndex.size, answered.length, "an index given twice");
        slots.forEach((slot, i) => {
          assert.equal(slot.slotIndex, i);
          const expected = byIndex.get(i);
          assert.ok(expected !== undefined, `index ${i} was never answered`);
          assert.equal(slot.payload.tag, expected.tag);
          assert.equal(slot.fromId, "console");
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
