// Owns driving the agent service with bounded concurrent HTTP requests (a fixed count or a fixed time, one keep-alive connection per lane) and measuring each one; never checks what the service stored.

/** One request of a load: a path and a JSON body (POST) or none (GET). */
export interface LoadRequest {
  path: string;
  body?: unknown;
}

/** How to drive the service. */
export interface LoadOptions {
  /** The service's URL, e.g. `http://127.0.0.1:8000`. */
  url: string;
  /** Lanes: requests in flight at once, each lane on its own keep-alive connection. */
  connections: number;
  /**
   * Spread the lanes' connections evenly over this many isolates (each
   * connection stays with the isolate that accepted it; the kernel picks
   * that isolate at random). Default: as the kernel picks.
   */
  isolates?: number;
  /** Stop after this many requests ... */
  count?: number;
  /** ... or after this many milliseconds. */
  durationMs?: number;
  /** The `n`th request (from 0). */
  request: (n: number) => LoadRequest;
  /** Called with each answer (its status and JSON body). */
  onResponse?: (n: number, status: number, body: unknown) => void;
}

/** What a load did. */
export interface LoadResult {
  /** Requests answered 2xx. */
  ok: number;
  /** Requests answered otherwise, or that failed. */
  failed: number;
  /** The first failure, for the report. */
  firstFailure?: string;
  /** Each request's latency in milliseconds, in completion order. */
  latencies: number[];
  /** From the first request to the last answer. */
  elapsedMs: number;
}

/** No request waits longer than this: a stuck service fails the load, never hangs it. */
const REQUEST_TIMEOUT_MS = 30_000;

function timeout(): AbortSignal {
  return AbortSignal.timeout(REQUEST_TIMEOUT_MS);
}

/** One lane's own connection: a client that keeps at most one idle. */
function laneClient(): Deno.HttpClient {
  return Deno.createHttpClient({ poolMaxIdlePerHost: 1 });
}

/**
 * Opens `count` lane clients whose connections are spread evenly over
 * `isolates` isolates: each connects, asks `/health` which isolate it
 * reached, and is replaced while that isolate has its share already.
 */
async function balancedClients(
  url: string,
  count: number,
  isolates: number,
): Promise<Deno.HttpClient[]> {
  const share = Math.ceil(count / isolates);
  const perIsolate = new Map<string, number>();
  const clients: Deno.HttpClient[] = [];
  for (let tries = 0; clients.length < count; tries++) {
    if (tries > count * isolates * 20) {
      for (const client of clients) client.close();
      throw new Error(
        `Cannot spread ${count} connections over ${isolates} isolates`,
      );
    }
    const client = laneClient();
    const response = await fetch(`${url}/health`, {
      client,
      signal: timeout(),
    });
    const { isolate } = await response.json() as { isolate: string };
    const taken = perIsolate.get(isolate) ?? 0;
    if (taken < share) {
      perIsolate.set(isolate, taken + 1);
      clients.push(client);
    } else {
      client.close();
    }
  }
  return clients;
}

/** Drives the service: `connections` lanes, each sending its next request when the last is answered. */
export async function drive(options: LoadOptions): Promise<LoadResult> {
  const { url, connections, count, durationMs, request, onResponse } = options;
  const clients = options.isolates === undefined
    ? Array.from({ length: connections }, laneClient)
    : await balancedClients(url, connections, options.isolates);
  const result: LoadResult = { ok: 0, failed: 0, latencies: [], elapsedMs: 0 };
  const start = performance.now();
  const deadline = durationMs === undefined ? Infinity : start + durationMs;
  let next = 0;
  const lane = async (client: Deno.HttpClient) => {
    while (performance.now() < deadline) {
      const n = next++;
      if (count !== undefined && n >= count) return;
      const { path, body } = request(n);
      const sent = performance.now();
      try {
        const response = await fetch(
          url + path,
          body === undefined ? { client, signal: timeout() } : {
            client,
            signal: timeout(),
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(body),
          },
        );
        const json = await response.json();
        result.latencies.push(performance.now() - sent);
        if (response.ok) result.ok++;
        else {
          result.failed++;
          result.firstFailure ??= `${response.status} ${JSON.stringify(json)}`;
        }
        onResponse?.(n, response.status, json);
      } catch (error) {
        result.latencies.push(performance.now() - sent);
        result.failed++;
        result.firstFailure ??= String(error);
        onResponse?.(n, 0, undefined);
      }
    }
  };
  try {
    await Promise.all(clients.map(lane));
  } finally {
    for (const client of clients) client.close();
  }
  result.elapsedMs = performance.now() - start;
  return result;
}

/** The `p` quantile (0..1) of some numbers, by the nearest-rank method. */
export function quantile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = values.toSorted((a, b) => a - b);
  const rank = Math.min(
    sorted.length - 1,
    Math.max(0, Math.ceil(p * sorted.length) - 1),
  );
  return sorted[rank]!;
}
