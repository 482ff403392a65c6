// The web inspector (`cli serve`): its API and live events over real HTTP in
// this isolate (one bufferWatch per thread for every page, the token, the
// Host check, read-only by default), and its page in a real browser (headless
// Chromium through playwright-core) on a store the demo wrote, served by a
// real `cli serve` process.

import assert from "node:assert/strict";
import { main } from "../cli/main.ts";
import {
  ContextBuffer,
  createSharedBackend,
  InMemoryBackend,
  serializeSlot,
  type SharedBackend,
  ThreadRegistry,
} from "../mod.ts";
import { denoRun, ROOT } from "./_fixtures/deno_run.ts";

const CLI = new URL("../cli/main.ts", import.meta.url).pathname;

/** The page's document, as the functions run in the browser use it. */
declare const document: {
  querySelector(selector: string): {
    textContent: string | null;
    replaceChildren(): void;
  } | null;
  querySelectorAll(selector: string): { length: number };
};
const CHROMIUM = "/usr/bin/chromium";

// ---- helpers ----

/** A JSON document from the API: its shape is what the assertions check. */
// deno-lint-ignore no-explicit-any
type Json = any;

/** An inspector served in this isolate by `main(["serve", ...])`. */
interface Served extends AsyncDisposable {
  /** The printed URL (with `?token=` when one is needed). */
  url: string;
  /** `http://host:port` */
  origin: string;
  port: number;
  token: string | null;
  /** Stops it (as Ctrl-C does) and returns main()'s exit code. */
  stop(): Promise<number>;
}

async function serveHere(
  args: string[],
  io: { backend?: SharedBackend; env?: Record<string, string> },
): Promise<Served> {
  let output = "";
  let errors = "";
  const stop = new AbortController();
  const running = main(["serve", "--json", ...args], {
    ...io,
    env: io.env ?? {},
    signal: stop.signal,
    stdout: (text) => output += text,
    stderr: (text) => errors += text,
  });
  let exited: number | undefined;
  running.then((code) => exited = code);
  while (!output.includes("\n")) {
    if (exited !== undefined) {
      throw new Error(`serve exited ${exited}: ${errors}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  const started = JSON.parse(output);
  const url = new URL(started.url);
  let result: Promise<number> | undefined;
  const end = () => {
    stop.abort();
    return result ??= running;
  };
  return {
    url: started.url,
    origin: url.origin,
    port: started.port,
    token: started.token,
    stop: end,
    [Symbol.asyncDispose]: async () => {
      await end();
    },
  };
}

async function getJson(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; body: Json }> {
  const response = await fetch(url, init);
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: response.status, body };
}

/** Server-sent events of one response, read one at a time. */
class Events {
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";

  constructor(response: Response) {
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "text/event-stream");
    this.#reader = response.body!.pipeThrough(new TextDecoderStream())
      .getReader();
  }

  /** The next event (comments and `retry` skipped); fails after 5 s. */
  async next(): Promise<{ event: string; data: Json; id?: string }> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const end = this.#buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const fields: Record<string, string> = {};
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon <= 0) continue;
          fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart();
        }
        if (fields.event === undefined) continue;
        return {
          event: fields.event,
          data: JSON.parse(fields.data ?? "null"),
          ...(fields.id === undefined ? {} : { id: fields.id }),
        };
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const chunk = await Promise.race([
        this.#reader.read(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error("no event within 5 s")),
            Math.max(0, deadline - Date.now()),
          );
        }),
      ]).finally(() => clearTimeout(timer));
      if (chunk.done) throw new Error("the event stream ended");
      this.#buffer += chunk.value;
    }
  }

  /** Reads slot events until `count` slots came; returns their indexes. */
  async slots(count: number): Promise<number[]> {
    const indexes: number[] = [];
    while (indexes.length < count) {
      const { event, data } = await this.next();
      assert.equal(event, "slots");
      indexes.push(...data.map((row: { index: number }) => row.index));
    }
    return indexes;
  }

  async ended(): Promise<boolean> {
    const chunk = await this.#reader.read();
    return chunk.done === true;
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

/** A request with a Host header of our choosing (fetch sets its own). */
async function statusWithHost(port: number, host: string): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET /api/info HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
      ),
    );
    let text = "";
    const decoder = new TextDecoder();
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n));
    }
    return Number(text.split(" ")[1]);
  } finally {
    conn.close();
  }
}

/** The backend, counting the watches opened on it. */
function counting(backend: SharedBackend): {
  backend: SharedBackend;
  watches: () => number;
} {
  let watches = 0;
  const proxy = new Proxy(backend, {
    get(target, property) {
      if (property === "bufferWatch") {
        return (...args: Parameters<SharedBackend["bufferWatch"]>) => {
          watches++;
          return target.bufferWatch(...args);
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { backend: proxy, watches: () => watches };
}

// ---- the API, in this isolate ----

Deno.test("serve: the API shows the store, threads, slots and registry", async () => {
  await using backend = new InMemoryBackend();
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer<unknown>(backend);
  const uuid = await registry.getOrCreate("console.router.greeter");
  await registry.getOrCreate("console.router");
  await buffer.append(uuid, { text: "Hello?" }, {
    fromId: "router",
    toId: "greeter",
  });
  await buffer.append(uuid, { text: "x".repeat(5_000) }, {
    fromId: "greeter",
    toId: "router",
  });
  await backend.bufferAppend("raw", new Uint8Array([0xc1, 0x41]));
  await backend.bufferAppend("raw", serializeSlot({ at: new Date(0) }));
  await using served = await serveHere([], { backend });
  assert.equal(served.token, null); // loopback: no token
  assert.match(served.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);

  const page = await fetch(served.url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<script type="module" src="app\.js">/);
  assert.match(
    page.headers.get("content-security-policy")!,
    /default-src 'none'; script-src 'self'/,
  );
  for (const file of ["app.js", "app.css"]) {
    const response = await fetch(served.origin + "/" + file);
    assert.equal(response.status, 200);
    await response.body?.cancel();
  }

  const info = await getJson(served.origin + "/api/info");
  assert.deepEqual(info.body, {
    store: "the given memory backend",
    prefix: null,
    kind: "memory",
    version: JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).version,
    allowWrite: false,
    threads: 2,
    slots: 4,
    registryEntries: 2,
    readerTtlMs: 86_400_000,
    expiryKnown: false,
  });

  const threads = await getJson(served.origin + "/api/threads");
  assert.deepEqual(
    threads.body.threads.map((
      t: { threadId: string; slots: number; chain: string | null },
    ) => [t.threadId, t.slots, t.chain]),
    [["raw", 2, null], [uuid, 2, "console.router.greeter"]].sort((a, b) =>
      a[0]! < b[0]! ? -1 : 1
    ),
  );
  const mine = threads.body.threads.find((t: { threadId: string }) =>
    t.threadId === uuid
  );
  assert.ok(Date.now() - Date.parse(mine.lastWrite) < 60_000);
  assert.equal(mine.expiresAt, null); // a given backend does not tell
  const searched = await getJson(served.origin + "/api/threads?q=GREETER");
  assert.deepEqual([searched.body.total, searched.body.matched], [2, 1]);
  assert.equal(searched.body.threads[0].threadId, uuid);

  const slots = await getJson(
    `${served.origin}/api/slots?thread=${uuid}&tail=100`,
  );
  assert.equal(slots.body.length, 2);
  assert.equal(slots.body.chain, "console.router.greeter");
  const [first, second] = slots.body.rows;
  assert.deepEqual(
    { ...first, time: undefined },
    {
      index: 0,
      size: first.size,
      from: "router",
      to: "greeter",
      type: "Object",
      time: undefined,
      payload: '{"text":"Hello?"}',
    },
  );
  assert.equal(second.cut, true); // a long payload is cut in the list...
  assert.equal(second.payload.length, 2_000);
  const full = await getJson(
    `${served.origin}/api/slot?thread=${uuid}&index=1`,
  );
  assert.equal(full.body.payload, JSON.stringify({ text: "x".repeat(5_000) }));
  assert.equal(full.body.hex.length, 2 * full.body.size); // ...and whole, with its hex, alone

  const raw = await getJson(
    `${served.origin}/api/slots?thread=raw&start=0&end=2`,
  );
  assert.match(raw.body.rows[0].error, /malformed MessagePack/);
  assert.equal(raw.body.rows[0].hex, "c141");
  assert.equal(
    raw.body.rows[1].payload,
    '{"at":{"$date":"1970-01-01T00:00:00.000Z"}}',
  );

  const pairs = await getJson(served.origin + "/api/registry");
  assert.deepEqual(pairs.body.map((p: { chain: string }) => p.chain), [
    "console.router",
    "console.router.greeter",
  ]);

  const bad = await getJson(
    `${served.origin}/api/slots?thread=${uuid}&start=x`,
  );
  assert.equal(bad.status, 400);
  assert.match(bad.body.error, /Invalid start/);
  const tooLong = await getJson(
    `${served.origin}/api/slots?thread=${"x".repeat(1025)}`,
  );
  assert.equal(tooLong.status, 400);
  assert.match(tooLong.body.error, /threadId/);
  assert.equal((await getJson(served.origin + "/api/nothing")).status, 404);
  assert.equal(
    (await getJson(served.origin + "/api/info", { method: "POST" })).status,
    405,
  );

  assert.equal(await served.stop(), 0);
});

Deno.test("serve: live slots reach every page through ONE bufferWatch per thread", async () => {
  await using memory = new InMemoryBackend();
  const { backend, watches } = counting(memory);
  await memory.bufferAppend("t1", serializeSlot({ n: 0 }));
  await using served = await serveHere([], { backend });
  const open = async (from: number, thread = "t1") =>
    new Events(
      await fetch(`${served.origin}/api/events?thread=${thread}&from=${from}`),
    );

  const pages: Events[] = [];
  try {
    for (let i = 0; i < 5; i++) pages.push(await open(1));
    for (let n = 1; n <= 3; n++) {
      await memory.bufferAppend("t1", serializeSlot({ n }));
    }
    for (const page of pages) assert.deepEqual(await page.slots(3), [1, 2, 3]);
    assert.equal(watches(), 1);

    // A page that comes late from index 0 gets what it missed, then the rest.
    const late = await open(0);
    pages.push(late);
    await memory.bufferAppend("t1", serializeSlot({ n: 4 }));
    assert.deepEqual(await late.slots(5), [0, 1, 2, 3, 4]);
    for (const page of pages.slice(0, 5)) {
      assert.deepEqual(await page.slots(1), [4]);
    }
    assert.equal(watches(), 1);

    // A reconnecting page resumes where its last event left off.
    const resumed = new Events(
      await fetch(`${served.origin}/api/events?thread=t1&from=0`, {
        headers: { "last-event-id": "3" },
      }),
    );
    pages.push(resumed);
    assert.deepEqual(await resumed.slots(2), [3, 4]);

    // Rows carry the decoded slot; a batch's id is the next index.
    await memory.bufferAppend("t1", serializeSlot({ n: "<script>" }));
    const event = await pages[0]!.next();
    assert.deepEqual([event.event, event.id, event.data[0].payload], [
      "slots",
      "6",
      '{"n":"<script>"}',
    ]);

    // Deleting the thread ends every page's stream with "gone".
    await memory.bufferDeleteThread("t1");
    for (const page of pages.slice(1)) await page.slots(1);
    for (const page of pages) {
      assert.equal((await page.next()).event, "gone");
      assert.equal(await page.ended(), true);
    }
  } finally {
    for (const page of pages) await page.cancel();
  }

  // The last page to leave ends its thread's watch: the next page needs a new one.
  await memory.bufferAppend("t2", serializeSlot(1));
  const leaving = await open(0, "t2");
  assert.deepEqual(await leaving.slots(1), [0]);
  assert.equal(watches(), 2);
  await leaving.cancel();
  await new Promise((r) => setTimeout(r, 50));
  const next = await open(0, "t2");
  assert.deepEqual(await next.slots(1), [0]);
  await next.cancel();
  assert.equal(watches(), 3);
  assert.equal(await served.stop(), 0);
});

Deno.test("serve: read-only unless --allow-write; deletes need JSON from the page's own origin", async () => {
  await using backend = new InMemoryBackend();
  await backend.bufferAppend("t1", serializeSlot(1));
  await backend.registrySet("a.b", "u1");
  const post = (
    origin: string,
    path: string,
    body: unknown,
    headers: Record<string, string> = {},
  ) =>
    getJson(origin + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });

  {
    await using readOnly = await serveHere([], { backend });
    const refused = await post(readOnly.origin, "/api/delete-thread", {
      threadId: "t1",
    });
    assert.equal(refused.status, 403);
    assert.match(refused.body.error, /without --allow-write/);
    assert.equal(
      (await post(readOnly.origin, "/api/clear", { confirm: "clear" })).status,
      403,
    );
    assert.equal(await backend.bufferThreadLen("t1"), 1);
    // DNS rebinding: without a token, only this machine's names are served.
    assert.equal(
      await statusWithHost(readOnly.port, `127.0.0.1:${readOnly.port}`),
      200,
    );
    assert.equal(
      await statusWithHost(readOnly.port, `localhost:${readOnly.port}`),
      200,
    );
    assert.equal(
      await statusWithHost(readOnly.port, `evil.example:${readOnly.port}`),
      403,
    );
  }

  await using writable = await serveHere(["--allow-write"], { backend });
  const elsewhere = await post(writable.origin, "/api/delete-thread", {
    threadId: "t1",
  }, {
    origin: "http://evil.example",
  });
  assert.equal(elsewhere.status, 403);
  const form = await getJson(writable.origin + "/api/delete-thread", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "threadId=t1",
  });
  assert.equal(form.status, 415);
  assert.equal(await backend.bufferThreadLen("t1"), 1);
  const deleted = await post(writable.origin, "/api/delete-thread", {
    threadId: "t1",
  }, {
    origin: writable.origin,
  });
  assert.deepEqual(deleted.body, { threadId: "t1", deleted: true, slots: 1 });
  assert.equal(
    (await post(writable.origin, "/api/delete-thread", { threadId: "t1" }))
      .status,
    404,
  );
  assert.equal((await post(writable.origin, "/api/clear", {})).status, 400);
  const cleared = await post(writable.origin, "/api/clear", {
    confirm: "clear",
  });
  assert.deepEqual(cleared.body, { threads: 0, slots: 0, registryEntries: 1 });
  assert.equal((await backend.stats()).registryEntries, 0);
});

Deno.test("serve: any host but loopback needs the token (a random one unless given)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xp-inspector-test-" });
  const env = { XP_BACKEND: "kv", XP_KV_PATH: `${dir}/state.db` };
  try {
    {
      await using writer = await createSharedBackend({
        backendType: "kv",
        kvPath: env.XP_KV_PATH,
      });
      await writer.bufferAppend("t1", serializeSlot(1));
    }
    await using served = await serveHere(["--host", "127.0.0.2"], { env });
    assert.match(served.token!, /^[A-Za-z0-9_-]{24}$/);
    assert.equal(
      served.url,
      `http://127.0.0.2:${served.port}/?token=${served.token}`,
    );
    const api = `${served.origin}/api/info`;

    const none = await fetch(api);
    assert.equal(none.status, 401);
    assert.match(await none.text(), /needs its token/);
    assert.equal(
      (await getJson(api, {
        headers: { authorization: "Bearer wrong-token-123" },
      })).status,
      401,
    );
    assert.equal((await getJson(`${served.origin}/`)).status, 401);
    assert.equal((await getJson(`${served.origin}/app.js`)).status, 401);
    assert.equal(
      (await getJson(`${served.origin}/api/events?thread=t1`)).status,
      401,
    );

    const bearer = await getJson(api, {
      headers: { authorization: `Bearer ${served.token}` },
    });
    assert.equal(bearer.status, 200);
    assert.equal(bearer.body.expiryKnown, true); // kv opened from the config tells expiry
    // The printed URL sets a cookie and drops the token from the address.
    const first = await fetch(served.url, { redirect: "manual" });
    await first.body?.cancel();
    assert.equal(first.status, 303);
    assert.equal(first.headers.get("location"), "/");
    const cookie = first.headers.get("set-cookie")!;
    assert.match(
      cookie,
      /^xp_inspector_\d+=[A-Za-z0-9_-]+; Path=\/; HttpOnly; SameSite=Strict$/,
    );
    const withCookie = await getJson(api, {
      headers: { cookie: cookie.split(";")[0]! },
    });
    assert.equal(withCookie.status, 200);
    const threads = await getJson(
      `${served.origin}/api/threads?token=${served.token}`,
    );
    assert.ok(threads.body.threads[0].expiresAt > Date.now());
    assert.equal(await served.stop(), 0);

    await using chosen = await serveHere([
      "--host",
      "127.0.0.2",
      "--token",
      "my-own-token",
    ], { env });
    assert.equal(chosen.token, "my-own-token");
    assert.equal(
      (await getJson(`${chosen.origin}/api/info?token=my-own-token`)).status,
      200,
    );
    // Asked for on loopback, a token is needed there too.
    await using loopback = await serveHere(["--token", "my-own-token"], {
      env,
    });
    assert.equal((await getJson(`${loopback.origin}/api/info`)).status, 401);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve: bad options are exit 2 before anything listens", async () => {
  await using backend = new InMemoryBackend();
  for (
    const [args, message] of [
      [
        ["--port", "70000"],
        /Invalid --port: expected an integer from 0 to 65535/,
      ],
      [["--port", "-1"], /Invalid --port/],
      [["--token", "short"], /Invalid --token/],
      [["--host", ""], /Invalid --host/],
    ] as const
  ) {
    let stderr = "";
    const code = await main(["serve", ...args], {
      backend,
      stderr: (text) => stderr += text,
    });
    assert.equal(code, 2, stderr);
    assert.match(stderr, message);
  }
});

Deno.test("the demo with --serve keeps its store and serves the inspector until Ctrl-C", async () => {
  const dir = await Deno.makeTempDir({ prefix: "xp-inspector-demo-" });
  try {
    const demo = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "demo/main.ts",
        "--backend",
        "kv",
        "--kv-path",
        `${dir}/demo.db`,
        "--serve",
        "--workers",
        "1",
        "--slots",
        "40",
        "--conversations",
        "2",
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const reader = demo.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let output = "";
    let url: string | undefined;
    try {
      while (url === undefined) {
        const chunk = await reader.read();
        if (chunk.done) throw new Error(`the demo ended: ${output}`);
        output += chunk.value;
        url = /^inspector {2}(http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(output)?.[1];
      }
      assert.match(output, /^verified {10}OK$/m);
      const prefix = /prefix "(demo-[0-9a-f]+:)"/.exec(output)![1];
      const info = await getJson(`${url}api/info`);
      assert.equal(info.body.prefix, prefix);
      assert.ok(info.body.threads > 0);
      assert.equal(info.body.expiryKnown, true);
    } finally {
      demo.kill("SIGINT");
      assert.equal((await demo.status).code, 0);
      await reader.cancel().catch(() => {});
    }
    await Deno.stat(`${dir}/demo.db`); // kept
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- the page, in a browser ----

const chromiumMissing = await Deno.stat(CHROMIUM).then(() => false, () => true);
if (chromiumMissing) {
  console.log(
    `inspector_test: the browser test is skipped: no Chromium at ${CHROMIUM} (Debian's chromium package)`,
  );
}

/** `cli serve` as its own process; its first line (--json) says where. */
async function serveProcess(args: string[]): Promise<
  AsyncDisposable & {
    url: string;
    origin: string;
    token: string | null;
    process: Deno.ChildProcess;
  }
> {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args, "serve", "--json"],
    env: { NO_COLOR: "1" },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let text = "";
  while (!text.includes("\n")) {
    const chunk = await reader.read();
    if (chunk.done) throw new Error(`serve ended: ${text}`);
    text += chunk.value;
  }
  const started = JSON.parse(text.slice(0, text.indexOf("\n")));
  return {
    url: started.url,
    origin: new URL(started.url).origin,
    token: started.token,
    process,
    async [Symbol.asyncDispose]() {
      try {
        process.kill("SIGINT");
      } catch {
        // ended
      }
      const { code } = await process.status;
      await reader.cancel().catch(() => {});
      assert.equal(code, 0, "serve ends on Ctrl-C with exit 0");
    },
  };
}

Deno.test({
  name:
    "the page in Chromium: lists the demo's threads, opens one, shows slots appended by another process live, escapes them, refuses what it must",
  ignore: chromiumMissing,
  async fn(t) {
    const { chromium } = await import("playwright-core");
    const dir = await Deno.makeTempDir({ prefix: "xp-inspector-browser-" });
    const kvPath = `${dir}/demo.db`;
    try {
      // A store written by the demo (kept), and a thread of 10 000 slots beside it.
      const demo = await denoRun([
        "run",
        "-A",
        "demo/main.ts",
        "--backend",
        "kv",
        "--kv-path",
        kvPath,
        "--keep",
        "--workers",
        "2",
        "--slots",
        "200",
        "--conversations",
        "4",
      ]);
      assert.equal(demo.code, 0, demo.stderr);
      const prefix = /--prefix (demo-[0-9a-f]+:)/.exec(demo.stdout)![1]!;
      {
        await using writer = await createSharedBackend({
          backendType: "kv",
          kvPath,
          prefix,
        });
        const buffer = new ContextBuffer<unknown>(writer);
        for (let i = 0; i < 10_000; i += 500) {
          await Promise.all(
            Array.from(
              { length: 500 },
              (_, j) =>
                buffer.append("big-thread", { type: "note", n: i + j }, {
                  fromId: "bulk",
                  toId: "inspector",
                }),
            ),
          );
        }
      }
      const store = [
        "--backend",
        "kv",
        "--kv-path",
        kvPath,
        "--prefix",
        prefix,
      ];
      const stats = JSON.parse(
        (await denoRun(["run", "-A", CLI, ...store, "stats", "--json"])).stdout,
      );

      await using served = await serveProcess([
        ...store,
        "--host",
        "127.0.0.2",
      ]);
      assert.ok(served.token, "a non-loopback bind prints a token");
      const profile = await Deno.makeTempDir({ prefix: "xp-chromium-" });
      const browser = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1400, height: 820 },
        args: [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
        ],
      });
      try {
        const page = browser.pages()[0] ?? await browser.newPage();
        const problems: string[] = [];
        page.on("pageerror", (error) => problems.push(error.message));

        await t.step("it lists the threads of the demo's store", async () => {
          await page.goto(served.url);
          assert.equal(
            new URL(page.url()).search,
            "",
            "the token leaves the address bar",
          );
          await page.waitForFunction(
            (n) => document.querySelectorAll("#threads tbody tr").length === n,
            stats.threads,
          );
          assert.equal(
            await page.textContent("#stat-threads"),
            String(stats.threads),
          );
          assert.equal(
            await page.textContent("#prefix"),
            JSON.stringify(prefix),
          );
          assert.match(
            (await page.textContent("#threads tbody"))!,
            /console-0\.router/,
          );
        });

        let threadId = "";
        await t.step(
          "it opens a thread and shows its slots decoded",
          async () => {
            const row = page.locator("#threads tbody tr", {
              hasText: "console-1.router.greeter",
            });
            threadId = (await row.locator("td").nth(1).textContent())!;
            await row.click();
            await page.waitForSelector("#slots tbody tr");
            const cells = await page.locator("#slots tbody tr").first().locator(
              "td",
            ).allTextContents();
            assert.equal(cells[0], "0");
            assert.ok(
              cells[1] !== "" && cells[2] !== "" && cells[3] !== "",
              cells.join(" | "),
            );
            assert.match(cells[4]!, /^\d\d:\d\d:\d\d\.\d{3}$/);
            JSON.parse(cells[5]!); // the payload, as JSON
            assert.equal(await page.textContent("#live"), "live");
            assert.equal(new URL(page.url()).hash, `#thread=${threadId}`);
            await page.locator("#slots tbody tr").first().locator("button.hex")
              .click();
            assert.match(
              (await page.textContent("pre.hex"))!,
              /^00000000 {2}[0-9a-f]{2} /,
            );
          },
        );

        await t.step(
          "a slot appended by another process shows within 2 s, as text",
          async () => {
            const before = await page.locator("#slots tbody tr[data-index]")
              .count();
            const hostile = {
              html:
                '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>',
            };
            const appended = Date.now();
            const writer = await denoRun([
              "run",
              "-A",
              "tests/_fixtures/inspector_append.ts",
              kvPath,
              prefix,
              threadId,
              JSON.stringify(hostile),
            ]);
            assert.equal(writer.code, 0, writer.stderr);
            const row = page.locator("#slots tbody tr[data-index]").nth(before);
            await row.waitFor({ timeout: 2_000 });
            const shownAfter = Date.now() - appended;
            console.log(
              `  live: the slot showed ${shownAfter} ms after the writer process started`,
            );
            const cells = await row.locator("td").allTextContents();
            assert.equal(cells[0], String(Number(writer.stdout.trim())));
            assert.equal(cells[1], "intruder");
            assert.equal(cells[5], JSON.stringify(hostile));
            assert.equal(
              await page.locator("#slots img, #slots script").count(),
              0,
            );
            assert.equal(
              await page.evaluate(() =>
                (globalThis as { __pwned?: number }).__pwned
              ),
              undefined,
            );
          },
        );

        await t.step("a request without the token gets 401", async () => {
          for (
            const path of ["/", "/api/info", `/api/slots?thread=${threadId}`]
          ) {
            const response = await fetch(served.origin + path);
            await response.body?.cancel();
            assert.equal(response.status, 401, path);
          }
          const status = await page.evaluate(async () => {
            const response = await fetch("api/info", { credentials: "omit" });
            return response.status;
          });
          assert.equal(status, 401);
        });

        await t.step("a delete without --allow-write is refused", async () => {
          assert.equal(await page.isHidden("#delete-thread"), true);
          assert.equal(await page.isHidden("#clear"), true);
          const status = await page.evaluate(async (id) => {
            const response = await fetch("api/delete-thread", {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ threadId: id }),
            });
            return response.status;
          }, threadId);
          assert.equal(status, 403);
          const rows = await page.locator("#slots tbody tr[data-index]")
            .count();
          assert.ok(rows > 0);
        });

        await t.step("a thread of 10 000 slots opens within 1 s", async () => {
          // The cookie holds the token: the page loads without it.
          const times: number[] = [];
          for (let i = 0; i < 3; i++) {
            await page.goto("about:blank"); // a whole load, not a same-page jump
            const started = performance.now();
            await page.goto(`${served.origin}/#thread=big-thread`);
            await page.waitForFunction(() =>
              document.querySelector("#range")?.textContent ===
                "#9900–#9999 of 10,000 slots" &&
              document.querySelectorAll("#slots tbody tr").length === 100
            );
            times.push(performance.now() - started);
          }
          console.log(
            `  a 10 000-slot thread's page opened in ${
              times.map((t) => t.toFixed(0)).join(", ")
            } ms (load, script, first page of slots drawn)`,
          );
          assert.ok(Math.min(...times) < 1_000, `${times} ms`);
          // Its pages: the first one, the next.
          await page.click("#first");
          await page.waitForFunction(() =>
            document.querySelector("#range")?.textContent ===
              "#0–#99 of 10,000 slots"
          );
          await page.click("#next");
          await page.waitForFunction(() =>
            document.querySelector("#range")?.textContent ===
              "#100–#199 of 10,000 slots"
          );
        });

        await t.step("the registry is a tree of chains", async () => {
          await page.click("#tab-registry");
          await page.waitForSelector("#registry li");
          const top = await page.locator(
            "#registry > li > details > summary .segment",
          ).allTextContents();
          assert.ok(top.every((name) => /^console-\d$/.test(name)), top.join());
          await page.fill("#search", "console-1.router.greeter");
          await page.waitForFunction(() =>
            document.querySelectorAll("#registry button.uuid").length === 1
          );
          await page.click("#registry button.uuid");
          await page.waitForFunction(
            (id) => document.querySelector("#thread-id")?.textContent === id,
            threadId,
          );
          const shot = Deno.env.get("XP_INSPECTOR_SCREENSHOT");
          if (shot !== undefined) {
            // For the docs: the list, and a router's thread (both directions).
            await page.click("#tab-threads");
            await page.fill("#search", "");
            await page.waitForFunction(
              (n) =>
                document.querySelectorAll("#threads tbody tr").length === n,
              stats.threads,
            );
            await page.locator("#threads tbody tr").filter({
              has: page.locator("td:nth-child(3)", {
                hasText: /^console-0\.router$/,
              }),
            }).click();
            await page.waitForFunction(() =>
              document.querySelector("#thread-chain")?.textContent ===
                "chain console-0.router"
            );
            await page.waitForTimeout(300);
            await page.screenshot({ path: shot });
          }
        });

        assert.deepEqual(problems, [], "no script errors on the page");
      } finally {
        await browser.close();
        await Deno.remove(profile, { recursive: true });
      }

      await t.step(
        "with --allow-write, a delete asks first, then the page says the thread is gone",
        async () => {
          await using writable = await serveProcess([
            ...store,
            "--allow-write",
          ]);
          const profile = await Deno.makeTempDir({ prefix: "xp-chromium-" });
          const browser = await chromium.launchPersistentContext(profile, {
            executablePath: CHROMIUM,
            headless: true,
            args: [
              "--headless",
              "--no-sandbox",
              "--disable-gpu",
              "--disable-quic",
              "--no-first-run",
              "--disable-background-networking",
              "--disable-component-update",
              "--disable-sync",
            ],
          });
          try {
            const page = browser.pages()[0] ?? await browser.newPage();
            const dialogs: string[] = [];
            let accept = false;
            page.on("dialog", (dialog) => {
              dialogs.push(dialog.message());
              accept ? dialog.accept() : dialog.dismiss();
            });
            await page.goto(`${writable.url}#thread=big-thread`);
            await page.waitForSelector("#slots tbody tr");
            await page.click("#delete-thread");
            assert.match(
              dialogs[0]!,
              /^Delete thread "big-thread" and its 10,000 slots\?/,
            );
            assert.equal((await page.textContent("#banner")) ?? "", "");
            accept = true;
            await page.click("#delete-thread");
            await page.waitForFunction(() =>
              /deleted or has expired|Deleted thread/.test(
                document.querySelector("#banner")?.textContent ?? "",
              )
            );
            const left = await createSharedBackend({
              backendType: "kv",
              kvPath,
              prefix,
            });
            assert.equal(await left.bufferThreadLen("big-thread"), 0);
            await left.close();
          } finally {
            await browser.close();
            await Deno.remove(profile, { recursive: true });
          }
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
