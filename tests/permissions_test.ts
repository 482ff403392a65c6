// The minimal Deno permissions of each backend (the table in docs/deploy.md):
// each backend runs in a subprocess with exactly the table's flags and works;
// without any one of them it fails with a BackendError that names the flag
// to add. The subprocess gets a config of its own (the project's imports,
// not its "unstable": ["kv"]), so --unstable-kv is tested too.

import assert from "node:assert/strict";
import { startRedisServer } from "./_redis_server.ts";

const ROOT = new URL("..", import.meta.url);
const DOCS = new URL("docs/deploy.md", ROOT);

/** One row of the table: a store, its flags, and the environment it needs. */
interface Case {
  /** The row's first cell in docs/deploy.md. */
  row: string;
  /** The row's flags as the docs spell them (placeholders in `<...>`). */
  documented: string;
  /** The config the probe opens the backend with. */
  config: Record<string, unknown>;
  /** The flags, placeholders filled in. */
  flags: string[];
  /** Extra environment of the subprocess. */
  env?: Record<string, string>;
  /** Whether the probe writes (appends, clears) or only pings. */
  writes: boolean;
  /** Extra subprocess arguments that are not permissions. */
  extra?: string[];
}

/** The probe: opens the backend, writes or pings, prints OK or the error. */
const PROBE = `
import { BackendError, createSharedBackend } from ${
  JSON.stringify(new URL("mod.ts", ROOT).href)
};
const [config, writes] = JSON.parse(Deno.args[0]);
try {
  const backend = await createSharedBackend(config);
  try {
    if (writes) {
      await backend.bufferAppend("permissions", new Uint8Array([1, 2, 3]));
      if ((await backend.bufferThreadLen("permissions")) < 1) throw new Error("nothing stored");
      await backend.bufferClear();
    } else if (!(await backend.ping())) {
      throw new Error("ping failed");
    }
  } finally {
    await backend.close();
  }
  console.log("OK");
} catch (error) {
  const kind = error instanceof BackendError ? "BackendError" : error?.name;
  console.log(\`ERROR \${kind}: \${error?.message ?? error}\`);
  Deno.exit(1);
}
`;

/** A KV Connect server that answers the metadata exchange and reads (every key absent). */
function startKvConnectStub(token: string): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const path = new URL(request.url).pathname;
      if (request.headers.get("authorization") !== `Bearer ${token}`) {
        return new Response("bad token", { status: 401 });
      }
      if (path === "/" && request.method === "POST") {
        return Response.json({
          version: 2,
          databaseId: crypto.randomUUID(),
          endpoints: [{ url: "/v2", consistency: "strong" }],
          token,
          expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        });
      }
      if (path === "/v2/snapshot_read") {
        const bytes = new Uint8Array(await request.arrayBuffer());
        const ranges = countRanges(bytes);
        // SnapshotReadOutput: one empty ReadRangeOutput per range (field 1),
        // read_is_strongly_consistent = true (field 4).
        const body = new Uint8Array(ranges * 2 + 2);
        for (let i = 0; i < ranges; i++) body.set([0x0a, 0x00], i * 2);
        body.set([0x20, 0x01], ranges * 2);
        return new Response(body, {
          headers: { "content-type": "application/x-protobuf" },
        });
      }
      return new Response("not found", { status: 404 });
    },
  );
}

/** The number of `ranges` (field 1) in a SnapshotRead protobuf message. */
function countRanges(bytes: Uint8Array): number {
  let at = 0;
  let ranges = 0;
  const varint = () => {
    let value = 0;
    for (let shift = 0;; shift += 7) {
      const byte = bytes[at++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
  };
  while (at < bytes.length) {
    const tag = varint();
    const wireType = tag & 7;
    if (wireType === 0) varint();
    else if (wireType === 1) at += 8;
    else if (wireType === 5) at += 4;
    else if (wireType === 2) at += varint();
    else throw new Error(`unexpected wire type ${wireType}`);
    if (tag >>> 3 === 1 && wireType === 2) ranges++;
  }
  return ranges;
}

/** Runs the probe with exactly `flags`; returns its one line of output. */
async function probe(
  dir: string,
  test: Case,
  flags: string[],
): Promise<{ code: number; line: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--no-lock",
      "--config",
      `${dir}/deno.json`,
      ...(test.extra ?? []),
      ...flags,
      `${dir}/probe.ts`,
      JSON.stringify([test.config, test.writes]),
    ],
    env: { NO_COLOR: "1", ...test.env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  const errors = new TextDecoder().decode(output.stderr);
  return { code: output.code, line: text.split("\n").at(-1) + errors };
}

/** The table's rows in docs/deploy.md: first cell -> flags cell. */
async function documentedRows(): Promise<Map<string, string>> {
  const rows = new Map<string, string>();
  const text = await Deno.readTextFile(DOCS);
  const start = text.indexOf("<!-- permissions table -->");
  assert.ok(start >= 0, "docs/deploy.md has no permissions table");
  for (const line of text.slice(start).split("\n").slice(1)) {
    if (!line.startsWith("|")) {
      if (rows.size > 0) break;
      continue;
    }
    const cells = line.split("|").slice(1, -1).map((cell) => cell.trim());
    if (/^-+$/.test(cells[0] ?? "")) {
      rows.clear(); // what came before was the header
      continue;
    }
    rows.set(cells[0] ?? "", cells[1] ?? "");
  }
  return rows;
}

Deno.test("each backend works with exactly the permissions docs/deploy.md lists, and names the flag it lacks", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "permissions_test_" });
  const token = crypto.randomUUID();
  await using redis = await startRedisServer();
  await using kvConnect = startKvConnectStub(token);
  const location = `https://xp-permissions-${crypto.randomUUID()}.invalid/`;
  try {
    const { imports } = JSON.parse(
      await Deno.readTextFile(new URL("deno.json", ROOT)),
    ) as { imports: Record<string, string> };
    await Deno.writeTextFile(
      `${dir}/deno.json`,
      JSON.stringify({ imports }),
    );
    await Deno.writeTextFile(`${dir}/probe.ts`, PROBE);
    const file = `${dir}/state.db`;
    const redisHost = new URL(redis.url).host;
    const kvHost = `127.0.0.1:${kvConnect.addr.port}`;
    const cases: Case[] = [
      {
        row: "memory",
        documented: "none",
        config: { backendType: "memory" },
        flags: [],
        writes: true,
      },
      {
        row: "kv, a file",
        documented: "`--unstable-kv --allow-read=<file> --allow-write=<file>`",
        config: { backendType: "kv", kvPath: file },
        flags: [
          "--unstable-kv",
          `--allow-read=${file}`,
          `--allow-write=${file}`,
        ],
        writes: true,
      },
      {
        row: 'kv, `":memory:"`',
        documented: "`--unstable-kv`",
        config: { backendType: "kv", kvPath: ":memory:" },
        flags: ["--unstable-kv"],
        writes: true,
      },
      {
        row: "kv, no `kvPath` (`Deno.openKv()`)",
        documented: "`--unstable-kv`",
        config: { backendType: "kv" },
        flags: ["--unstable-kv"],
        writes: true,
        extra: ["--location", location],
      },
      {
        row: "kv, KV Connect (`http(s)://<host>:<port>`)",
        documented:
          "`--unstable-kv --allow-net=<host>:<port> --allow-env=DENO_KV_ACCESS_TOKEN`, and `DENO_KV_ACCESS_TOKEN` set",
        config: { backendType: "kv", kvPath: `http://${kvHost}` },
        flags: [
          "--unstable-kv",
          `--allow-net=${kvHost}`,
          "--allow-env=DENO_KV_ACCESS_TOKEN",
        ],
        env: { DENO_KV_ACCESS_TOKEN: token },
        writes: false,
      },
      {
        row: "redis (`redis://<host>:<port>`)",
        documented: "`--allow-net=<host>:<port> --allow-env`",
        config: { backendType: "redis", redisUrl: redis.url },
        flags: [`--allow-net=${redisHost}`, "--allow-env"],
        writes: true,
      },
    ];
    const rows = await documentedRows();
    assert.deepEqual(
      [...rows.keys()],
      cases.map((c) => c.row),
      "the rows of the permissions table in docs/deploy.md",
    );
    for (const test of cases) {
      await t.step(`${test.row}: ${test.documented}`, async () => {
        assert.equal(rows.get(test.row), test.documented);
        const all = await probe(dir, test, test.flags);
        assert.equal(all.line.split("\n")[0], "OK", all.line);
        for (const flag of test.flags) {
          const without = await probe(
            dir,
            test,
            test.flags.filter((f) => f !== flag),
          );
          const name = flag.split("=")[0]!;
          assert.notEqual(without.code, 0, `ran without ${flag}`);
          assert.match(without.line, /^ERROR BackendError: /, without.line);
          assert.ok(
            without.line.includes(name),
            `without ${flag}, the error names ${name}: ${without.line}`,
          );
        }
      });
    }
    await t.step(
      "KV Connect without DENO_KV_ACCESS_TOKEN names the variable",
      async () => {
        const test = cases.find((c) => c.row.startsWith("kv, KV Connect"))!;
        const unset = await probe(dir, { ...test, env: {} }, test.flags);
        assert.match(unset.line, /^ERROR BackendError: .*DENO_KV_ACCESS_TOKEN/);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
    // The default KV of the probe's --location lives in Deno's origin
    // storage, in a folder named by the SHA-256 of the location's origin.
    const info = await new Deno.Command(Deno.execPath(), {
      args: ["info"],
      env: { NO_COLOR: "1" },
      stdout: "piped",
    }).output();
    const root = new TextDecoder().decode(info.stdout).match(
      /Origin storage: (.*)/,
    )?.[1]?.trim();
    const digest = await crypto.subtle.digest(
      "SHA-256",
      new TextEncoder().encode(new URL(location).origin),
    );
    const hash = Array.from(
      new Uint8Array(digest),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    if (root !== undefined && root.endsWith("location_data")) {
      await Deno.remove(`${root}/${hash}`, { recursive: true }).catch(() => {});
    }
  }
});
