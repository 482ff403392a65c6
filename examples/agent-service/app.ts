/**
 * The agent service's HTTP handler: conversations (call chains in a
 * {@linkcode ThreadRegistry}) and their messages (typed slots in a
 * {@linkcode ContextBuffer}), over any {@linkcode SharedBackend}. It keeps
 * nothing in the isolate, so any number of isolates can serve one store.
 *
 * | request | does | answers |
 * | --- | --- | --- |
 * | `POST /conversations` `{ from, to }` | `registry.startChain(from, to)` | `201 { uuid, chain }` |
 * | `GET /conversations/:uuid` | `registry.lookup(uuid)` and `buffer.getThread(uuid)` | `200 { uuid, chain, messages }` |
 * | `POST /conversations/:uuid/messages` `{ from, to, payload }` | `buffer.append(uuid, payload, ...)` | `201 { threadId, index, timestamp }` |
 * | `GET /conversations/:uuid/messages?start=&end=` | `buffer.getSlice(uuid, start, end)` | `200 { messages }` |
 * | `POST /conversations/:uuid/calls` `{ to }` | `registry.extendChain(uuid, to)` | `201 { uuid, chain }` |
 * | `POST /conversations/:uuid/response` | `registry.pruneForResponse(uuid)` | `200 { target, uuid }` or `200 null` |
 * | `GET /health` | `backend.ping()` and `backend.stats()` | `200 { ok, isolate, stats }` |
 *
 * `isolate` is a random id of the handler, so of the isolate that answered:
 * under `deno serve --parallel` it tells the isolates apart.
 *
 * A bad request (not JSON, a missing or invalid field) is a `400`, an unknown
 * conversation a `404`, a full thread or too many threads a `409`, a store
 * that fails a `503`; the body is `{ error }`.
 *
 * @example
 * ```ts
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 * import { agentService } from "./app.ts";
 *
 * await using backend = new InMemoryBackend();
 * const fetch = agentService(backend);
 * const post = (path: string, body: unknown) =>
 *   fetch(new Request(`http://x${path}`, { method: "POST", body: JSON.stringify(body) }));
 *
 * const { uuid } = await (await post("/conversations", { from: "console", to: "router" })).json();
 * const sent = await post(`/conversations/${uuid}/messages`, { from: "console", to: "router", payload: "hi" });
 * assert.equal(sent.status, 201);
 * assert.equal((await sent.json()).index, 0);
 * const read = await (await fetch(new Request(`http://x/conversations/${uuid}`))).json();
 * assert.equal(read.chain, "console.router");
 * assert.equal(read.messages[0].payload, "hi");
 * ```
 *
 * @module
 */

// Owns the routes of the example service and the mapping of errors to HTTP statuses; never opens or closes the backend.

import {
  BackendError,
  type BufferSlot,
  ContextBuffer,
  type SharedBackend,
  SlotLimitError,
  ThreadLimitError,
  ThreadRegistry,
} from "@xml-pipeline/shared-backend";

/**
 * The environment variables the service's entry point reads (`main.ts`, with
 * `configFromEnv`), so that `--allow-env` can name exactly these.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { SERVICE_VARIABLES } from "./app.ts";
 *
 * assert.ok(SERVICE_VARIABLES.includes("XP_KV_PATH"));
 * ```
 */
export const SERVICE_VARIABLES: readonly string[] = [
  "XP_BACKEND",
  "XP_KV_PATH",
  "XP_REDIS_URL",
  "XP_PREFIX",
  "XP_TTL_MS",
  "XP_MAX_THREADS",
  "XP_MAX_SLOTS_PER_THREAD",
];

/** A message as the service answers it: a slot without its thread id. */
export interface MessageView {
  index: number;
  from: string;
  to: string;
  timestamp: string;
  payload: unknown;
}

/** A request the service refuses: its status and message. */
class HttpError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "HttpError";
    this.status = status;
  }
}

/**
 * Makes the service's handler over a backend (the caller opens and closes
 * it): `export default { fetch: agentService(backend) }` for `deno serve`.
 *
 * @param backend The store every isolate shares.
 * @returns The handler: a `Request` in, a JSON `Response` out; it never rejects.
 *
 * @example
 * ```ts
 * import { InMemoryBackend } from "@xml-pipeline/shared-backend/memory";
 * import assert from "node:assert/strict";
 * import { agentService } from "./app.ts";
 *
 * await using backend = new InMemoryBackend();
 * const response = await agentService(backend)(new Request("http://x/health"));
 * assert.equal((await response.json()).ok, true);
 * ```
 */
export function agentService(
  backend: SharedBackend,
): (request: Request) => Promise<Response> {
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer(backend);
  const isolate = crypto.randomUUID().slice(0, 8);

  async function route(request: Request): Promise<[number, unknown]> {
    const url = new URL(request.url);
    const parts = url.pathname.split("/").filter((part) => part !== "");
    const method = request.method;
    if (parts.length === 1 && parts[0] === "health" && method === "GET") {
      const ok = await backend.ping();
      return [200, { ok, isolate, stats: await backend.stats() }];
    }
    if (parts[0] !== "conversations") throw new HttpError(404, "Not found");
    if (parts.length === 1 && method === "POST") {
      const body = await jsonBody(request);
      const uuid = await registry.startChain(
        field(body, "from"),
        field(body, "to"),
      );
      return [201, { uuid, chain: await registry.lookup(uuid) }];
    }
    const uuid = decodeURIComponent(parts[1] ?? "");
    const action = parts.slice(2).join("/");
    if (action === "" && method === "GET") {
      const chain = await registry.lookup(uuid);
      if (chain === null) throw unknown(uuid);
      const messages = await buffer.getThread(uuid);
      return [200, { uuid, chain, messages: messages.map(view) }];
    }
    if (action === "messages" && method === "POST") {
      // The uuid is not looked up first: one read less per message. A
      // client that invents a uuid writes a thread nobody routes to, which
      // expires with the store's TTL.
      const body = await jsonBody(request);
      if (!("payload" in body)) {
        throw new HttpError(400, "Missing field payload");
      }
      const slot = await buffer.append(uuid, body.payload, {
        fromId: field(body, "from"),
        toId: field(body, "to"),
      });
      return [201, {
        threadId: slot.threadId,
        index: slot.slotIndex,
        timestamp: slot.timestamp,
      }];
    }
    if (action === "messages" && method === "GET") {
      const start = Number(url.searchParams.get("start") ?? 0);
      const endParam = url.searchParams.get("end");
      const slots = await buffer.getSlice(
        uuid,
        start,
        endParam === null ? undefined : Number(endParam),
      );
      return [200, { messages: slots.map(view) }];
    }
    if (action === "calls" && method === "POST") {
      const body = await jsonBody(request);
      if (await registry.lookup(uuid) === null) throw unknown(uuid);
      const callee = await registry.extendChain(uuid, field(body, "to"));
      return [201, { uuid: callee, chain: await registry.lookup(callee) }];
    }
    if (action === "response" && method === "POST") {
      return [200, await registry.pruneForResponse(uuid)];
    }
    throw new HttpError(404, "Not found");
  }

  return async (request) => {
    try {
      const [status, body] = await route(request);
      return Response.json(body, { status });
    } catch (error) {
      return Response.json(
        { error: error instanceof Error ? error.message : String(error) },
        { status: statusOf(error) },
      );
    }
  };
}

/** The HTTP status of an error the handler caught. */
function statusOf(error: unknown): number {
  if (error instanceof HttpError) return error.status;
  // Caller mistakes: an invalid id, hop or payload.
  if (error instanceof TypeError || error instanceof RangeError) return 400;
  if (error instanceof SlotLimitError || error instanceof ThreadLimitError) {
    return 409;
  }
  if (error instanceof BackendError) return 503;
  return 500;
}

/** The request's JSON body, which must be an object. */
async function jsonBody(request: Request): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await request.json();
  } catch {
    throw new HttpError(400, "Expected a JSON body");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "Expected a JSON object");
  }
  return body as Record<string, unknown>;
}

/** A string field of a body; a 400 naming the field if it is not one. */
function field(body: Record<string, unknown>, name: string): string {
  const value = body[name];
  if (typeof value !== "string") {
    throw new HttpError(400, `Expected a string field ${name}`);
  }
  return value;
}

function unknown(uuid: string): HttpError {
  return new HttpError(404, `No conversation ${JSON.stringify(uuid)}`);
}

function view(slot: BufferSlot): MessageView {
  return {
    index: slot.slotIndex,
    from: slot.fromId,
    to: slot.toId,
    timestamp: slot.timestamp,
    payload: slot.payload,
  };
}
