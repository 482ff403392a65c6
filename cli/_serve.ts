// The web inspector's server (the `serve` command): it listens, checks who
// may ask (the token off loopback, the Host header on it, --allow-write for
// deletes), routes the page and its JSON API, streams live slots as
// server-sent events, and stops on the command's signal. It never builds the
// page's data itself (_views.ts, _live.ts) and never writes unless
// --allow-write.

import PACKAGE from "../deno.json" with { type: "json" };
import { errorMessage, quote } from "../_messages.ts";
import { BackendError } from "../errors.ts";
import type { SharedBackend } from "../protocol.ts";
import type { CommandContext } from "./_commands.ts";
import { CliError, usageError } from "./_errors.ts";
import { number, printable } from "./_format.ts";
import { type LiveSink, LiveThreads } from "./_live.ts";
import { PAGE_CSS, PAGE_HTML } from "./_page.ts";
import { PAGE_SCRIPT } from "./_page_script.ts";
import {
  registryPairs,
  slotPage,
  slotRow,
  storeInfo,
  threadPage,
} from "./_views.ts";

/** The hosts that need no token: this machine only. */
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

/** What a page may load and connect to: its own files and API, nothing inline. */
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/** The most threads or slots one API request returns. */
const MAX_PAGE = 1_000;

const encoder = new TextEncoder();

/** How the server was asked to run. */
interface ServeOptions {
  hostname: string;
  port: number;
  /** Every request must carry it (null: none needed, loopback only). */
  token: string | null;
  allowWrite: boolean;
}

/** Runs the web inspector until `out.signal` aborts. */
export async function serve(context: CommandContext<"serve">): Promise<null> {
  const { out, where } = context;
  const options = serveOptions(context.flags);
  const live = new LiveThreads(context.backend);
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      onListen: () => {},
      onError: (error) => json(500, { error: errorMessage(error) }),
    }, (request) => handle(request, context, options, live));
  } catch (error) {
    throw new CliError(
      "notFound",
      `cannot listen on ${hostPort(options.hostname, options.port)}: ${
        errorMessage(error)
      }`,
    );
  }
  const port = server.addr.port;
  const everywhere = options.hostname === "0.0.0.0" ||
    options.hostname === "::";
  const url = `http://${
    everywhere ? "127.0.0.1" : urlHost(options.hostname)
  }:${port}/${options.token === null ? "" : `?token=${options.token}`}`;
  if (out.json) {
    out.write(`${
      JSON.stringify({
        url,
        hostname: options.hostname,
        port,
        token: options.token,
        allowWrite: options.allowWrite,
        store: where.store,
        prefix: where.prefix,
      })
    }\n`);
  } else {
    out.write(
      `inspector  ${url}\n` +
        `listening  ${hostPort(options.hostname, port)}${
          everywhere ? " (every interface)" : ""
        }: ${
          options.token === null
            ? "this machine only, no token"
            : "requests need the token (it is in the URL above)"
        }\n` +
        `store      ${where.store}${
          where.prefix === null ? "" : `, prefix ${quote(where.prefix)}`
        }\n` +
        `mode       ${
          options.allowWrite
            ? "writable: the page can delete a thread or clear the prefix"
            : "read-only (--allow-write lets the page delete)"
        }\n` +
        "Ctrl-C to stop\n",
    );
  }
  if (!out.signal.aborted) {
    await new Promise((resolve) =>
      out.signal.addEventListener("abort", resolve, { once: true })
    );
  }
  live.close();
  await server.shutdown();
  return null;
}

function serveOptions(flags: CommandContext<"serve">["flags"]): ServeOptions {
  let port = 0;
  if (flags.port !== undefined) {
    port = Number(flags.port);
    if (!/^\d+$/.test(flags.port) || port > 65_535) {
      throw usageError(
        `Invalid --port: expected an integer from 0 to 65535, got ${
          quote(flags.port)
        }`,
      );
    }
  }
  const hostname = (flags.host ?? "127.0.0.1").replace(/^\[(.*)\]$/, "$1");
  if (hostname === "") {
    throw usageError(
      "Invalid --host: expected an address, got an empty string",
    );
  }
  let token: string | null = null;
  if (flags.token !== undefined) {
    if (!/^[A-Za-z0-9._~-]{8,}$/.test(flags.token)) {
      throw usageError(
        "Invalid --token: expected at least 8 letters, digits or ._~- (it goes into a URL)",
      );
    }
    token = flags.token;
  } else if (!LOOPBACK.has(hostname.toLowerCase())) {
    token = randomToken();
  }
  return { hostname, port, token, allowWrite: flags["allow-write"] === true };
}

function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-")
    .replaceAll("/", "_");
}

function urlHost(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

function hostPort(hostname: string, port: number): string {
  return `${urlHost(hostname)}:${port}`;
}

// ---- requests ----

async function handle(
  request: Request,
  context: CommandContext<"serve">,
  options: ServeOptions,
  live: LiveThreads,
): Promise<Response> {
  const url = new URL(request.url);
  const denied = checkAccess(request, url, options);
  if (denied !== null) return denied;
  try {
    return await route(request, url, context, options, live);
  } catch (error) {
    return json(statusOf(error), { error: errorMessage(error) });
  }
}

/** A refusal (401, 403, the token's redirect), or null when the request may go on. */
function checkAccess(
  request: Request,
  url: URL,
  options: ServeOptions,
): Response | null {
  const cookieName = `xp_inspector_${url.port || "80"}`;
  if (options.token === null) {
    // Served to this machine's names only: a page elsewhere that points a
    // DNS name at 127.0.0.1 (DNS rebinding) is refused.
    const host = request.headers.get("host") ?? "";
    const name = host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
    if (!LOOPBACK.has(name.toLowerCase())) {
      return text(403, `403 Forbidden: not served to host ${quote(host)}\n`);
    }
    return null;
  }
  const given = url.searchParams.get("token") ??
    bearerToken(request) ?? cookie(request, cookieName);
  if (given === null || !sameToken(given, options.token)) {
    return text(
      401,
      "401 Unauthorized: this inspector needs its token. Open the URL it printed at start (it ends in ?token=...).\n",
      { "www-authenticate": 'Bearer realm="inspector"' },
    );
  }
  if (
    url.searchParams.has("token") && request.method === "GET" &&
    url.pathname === "/"
  ) {
    // Keep the token in a cookie, and out of the address bar and history.
    return new Response(null, {
      status: 303,
      headers: {
        ...SECURITY_HEADERS,
        location: "/",
        "set-cookie":
          `${cookieName}=${options.token}; Path=/; HttpOnly; SameSite=Strict`,
      },
    });
  }
  return null;
}

function bearerToken(request: Request): string | null {
  const match = /^Bearer (.+)$/.exec(
    request.headers.get("authorization") ?? "",
  );
  return match === null ? null : match[1]!;
}

function cookie(request: Request, name: string): string | null {
  for (const part of (request.headers.get("cookie") ?? "").split(";")) {
    const [key, ...value] = part.trim().split("=");
    if (key === name) return value.join("=");
  }
  return null;
}

/** Compares in time that does not depend on where they differ. */
function sameToken(given: string, token: string): boolean {
  const a = encoder.encode(given);
  const b = encoder.encode(token);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i]!;
  return diff === 0;
}

async function route(
  request: Request,
  url: URL,
  context: CommandContext<"serve">,
  options: ServeOptions,
  live: LiveThreads,
): Promise<Response> {
  const { backend, where, admin } = context;
  const get = request.method === "GET" || request.method === "HEAD";
  const params = url.searchParams;
  switch (url.pathname) {
    case "/":
      return get ? file(PAGE_HTML, "text/html") : notAllowed("GET");
    case "/app.js":
      return get ? file(PAGE_SCRIPT, "text/javascript") : notAllowed("GET");
    case "/app.css":
      return get ? file(PAGE_CSS, "text/css") : notAllowed("GET");
    case "/favicon.ico":
      return new Response(null, { status: 204, headers: SECURITY_HEADERS });
    case "/api/info":
      if (!get) return notAllowed("GET");
      return json(
        200,
        await storeInfo(
          backend,
          where,
          admin,
          options.allowWrite,
          PACKAGE.version,
        ),
      );
    case "/api/threads":
      if (!get) return notAllowed("GET");
      return json(
        200,
        await threadPage(backend, where, admin, {
          query: params.get("q") ?? "",
          offset: intParam(params, "offset", 0, Number.MAX_SAFE_INTEGER) ?? 0,
          limit: intParam(params, "limit", 1, MAX_PAGE) ?? 200,
        }),
      );
    case "/api/registry":
      if (!get) return notAllowed("GET");
      return json(200, await registryPairs(backend));
    case "/api/slots": {
      if (!get) return notAllowed("GET");
      const threadId = threadParam(params);
      const tail = intParam(params, "tail", 1, MAX_PAGE);
      const start = intParam(params, "start", 0, Number.MAX_SAFE_INTEGER) ?? 0;
      const end = intParam(params, "end", 0, Number.MAX_SAFE_INTEGER) ??
        start + 100;
      if (end - start > MAX_PAGE) {
        throw new RangeError(`Invalid end: at most ${MAX_PAGE} slots a page`);
      }
      return json(
        200,
        await slotPage(
          backend,
          threadId,
          tail === undefined ? { start, end } : { tail },
        ),
      );
    }
    case "/api/slot": {
      if (!get) return notAllowed("GET");
      const threadId = threadParam(params);
      const index = intParam(params, "index", 0, Number.MAX_SAFE_INTEGER);
      if (index === undefined) throw new TypeError("Missing index");
      const slot = await backend.bufferGetSlot(threadId, index);
      if (slot === null) {
        return json(404, {
          error: `no slot #${index} in thread ${printable(threadId)}`,
        });
      }
      return json(200, slotRow(index, slot, true));
    }
    case "/api/events":
      if (!get) return notAllowed("GET");
      return await events(request, params, backend, live);
    case "/api/delete-thread": {
      const refused = checkWrite(request, options);
      if (refused !== null) return refused;
      const { threadId } = await jsonBody(request);
      if (typeof threadId !== "string") {
        throw new TypeError("Invalid threadId: expected a string");
      }
      const slots = await backend.bufferThreadLen(threadId);
      if (!(await backend.bufferDeleteThread(threadId))) {
        return json(404, { error: `no thread ${quote(threadId)}` });
      }
      return json(200, { threadId, deleted: true, slots });
    }
    case "/api/clear": {
      const refused = checkWrite(request, options);
      if (refused !== null) return refused;
      const { confirm } = await jsonBody(request);
      if (confirm !== "clear") {
        throw new TypeError('Invalid confirm: expected "clear"');
      }
      const stats = await backend.stats();
      await backend.bufferClear();
      await backend.registryClear();
      return json(200, {
        threads: stats.threads,
        slots: stats.slots,
        registryEntries: stats.registryEntries,
      });
    }
    default:
      return json(404, { error: `no such page: ${url.pathname}` });
  }
}

/** The live slots of a thread as server-sent events, from `from` (or where a reconnecting page left off). */
async function events(
  request: Request,
  params: URLSearchParams,
  backend: SharedBackend,
  live: LiveThreads,
): Promise<Response> {
  const threadId = threadParam(params);
  const resumeAt = request.headers.get("last-event-id");
  const asked = intParam(params, "from", 0, Number.MAX_SAFE_INTEGER);
  // Also checks the id: a bad one fails here, as a 400.
  const length = await backend.bufferThreadLen(threadId);
  const from = resumeAt !== null && /^\d+$/.test(resumeAt)
    ? Number(resumeAt)
    : asked ?? length;
  let unsubscribe = () => {};
  let closed = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const sink: LiveSink = {
        send(chunk) {
          if (closed) return;
          try {
            controller.enqueue(chunk);
          } catch {
            closed = true;
          }
        },
        close() {
          if (closed) return;
          closed = true;
          try {
            controller.close();
          } catch {
            // already closed
          }
        },
      };
      controller.enqueue(encoder.encode("retry: 2000\n\n"));
      unsubscribe = live.subscribe(threadId, from, sink);
    },
    cancel() {
      closed = true;
      unsubscribe();
    },
  });
  return new Response(body, {
    headers: { ...SECURITY_HEADERS, "content-type": "text/event-stream" },
  });
}

/** Refuses a write unless --allow-write, and one that a page elsewhere could send. */
function checkWrite(request: Request, options: ServeOptions): Response | null {
  if (request.method !== "POST") return notAllowed("POST");
  if (!options.allowWrite) {
    return json(403, {
      error:
        "read-only: this inspector was started without --allow-write, so it deletes nothing",
    });
  }
  const origin = request.headers.get("origin");
  if (origin !== null && origin !== `http://${request.headers.get("host")}`) {
    return json(403, { error: `refused: a request from ${origin}` });
  }
  if (
    !(request.headers.get("content-type") ?? "").startsWith("application/json")
  ) {
    return json(415, { error: "expected a JSON body (application/json)" });
  }
  return null;
}

async function jsonBody(request: Request): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await request.json();
  } catch {
    throw new TypeError("Invalid body: expected JSON");
  }
  if (body === null || typeof body !== "object") {
    throw new TypeError("Invalid body: expected a JSON object");
  }
  return body as Record<string, unknown>;
}

function threadParam(params: URLSearchParams): string {
  const threadId = params.get("thread");
  if (threadId === null || threadId === "") {
    throw new TypeError("Missing thread: expected ?thread=<threadId>");
  }
  return threadId;
}

function intParam(
  params: URLSearchParams,
  name: string,
  min: number,
  max: number,
): number | undefined {
  const text = params.get(name);
  if (text === null) return undefined;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new RangeError(
      `Invalid ${name}: expected an integer from ${number(min)} to ${
        number(max)
      }, got ${quote(text)}`,
    );
  }
  return value;
}

function statusOf(error: unknown): number {
  if (error instanceof TypeError || error instanceof RangeError) return 400;
  if (error instanceof BackendError) return 503;
  return 500;
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      ...SECURITY_HEADERS,
      "content-type": "application/json; charset=utf-8",
    },
  });
}

function text(
  status: number,
  body: string,
  headers: Record<string, string> = {},
): Response {
  return new Response(body, {
    status,
    headers: {
      ...SECURITY_HEADERS,
      ...headers,
      "content-type": "text/plain; charset=utf-8",
    },
  });
}

function file(body: string, type: string): Response {
  return new Response(body, {
    headers: { ...SECURITY_HEADERS, "content-type": `${type}; charset=utf-8` },
  });
}

function notAllowed(method: string): Response {
  return new Response(JSON.stringify({ error: `use ${method}` }), {
    status: 405,
    headers: {
      ...SECURITY_HEADERS,
      allow: method,
      "content-type": "application/json; charset=utf-8",
    },
  });
}
