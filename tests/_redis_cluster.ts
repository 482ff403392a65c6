/**
 * Test harness: a real Redis Cluster of 6 `redis-server` processes (3
 * masters, 3 replicas) on free `127.0.0.1` ports, each with its own temporary
 * directory, `--cluster-enabled yes`, `--appendonly yes` and
 * `--cluster-node-timeout 2000`, joined with `redis-cli --cluster create
 * ... --cluster-replicas 1 --cluster-yes`. {@linkcode startRedisCluster}
 * resolves once every slot is served and every replica is in sync; `stop()`
 * ends every process by pid and removes the directories.
 *
 * Needs `redis-server` and `redis-cli` on `PATH` ({@linkcode clusterMissing}
 * says what is missing, for a test to skip with that reason) and
 * `--allow-run --allow-net=127.0.0.1 --allow-read --allow-write
 * --allow-env` (or `-A`).
 *
 * @example A failover
 * ```ts ignore
 * import { startRedisCluster } from "./_redis_cluster.ts";
 *
 * await using cluster = await startRedisCluster();
 * const [master] = await cluster.masters();
 * await cluster.signal(master!.replicaPort, "SIGSTOP");
 * await cluster.signal(master!.port, "SIGKILL");
 * await cluster.signal(master!.replicaPort, "SIGCONT");
 * await cluster.waitForMaster(master!.replicaPort);
 * ```
 *
 * @module
 */

import { type RedisServer, startRedisServer } from "./_redis_server.ts";

/** The Cluster's node timeout, in ms (`--cluster-node-timeout`). */
export const NODE_TIMEOUT_MS = 2_000;

/** A master of the Cluster, as `CLUSTER NODES` describes it. */
export interface ClusterMaster {
  port: number;
  /** Its replica's port (every master has one when the Cluster is healthy). */
  replicaPort: number;
  /** The hash slot ranges it serves, `[from, to]` inclusive. */
  slots: [number, number][];
}

/** A running Redis Cluster for a test. */
export interface RedisCluster extends AsyncDisposable {
  /** Where a client starts: every node. */
  readonly startupNodes: { host: string; port: number }[];
  /** The masters now (read from a live node's `CLUSTER NODES`). */
  masters(): Promise<ClusterMaster[]>;
  /** The master serving a hash slot now. */
  masterOf(slot: number): Promise<ClusterMaster>;
  /** Sends a signal to the node of `port` (by pid). */
  signal(port: number, signal: "SIGKILL" | "SIGSTOP" | "SIGCONT"): void;
  /** Starts again the node of `port` (after a SIGKILL), on its port and directory. */
  restart(port: number): Promise<void>;
  /** Resolves when the node of `port` is a master serving slots, and the Cluster is ok. */
  waitForMaster(port: number, timeoutMs?: number): Promise<void>;
  /** Resolves when every master has a replica in sync and the Cluster is ok. */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** Runs `redis-cli -p port ...args` and returns its output. */
  cli(port: number, ...args: string[]): Promise<string>;
  /** Ends every node (by pid) and removes the directories. Idempotent. */
  stop(): Promise<void>;
  /**
   * Kills every node (SIGKILL, by pid) and removes the directories,
   * synchronously: for an `unload` handler, which cannot await.
   */
  killNow(): void;
}

/**
 * Why a Cluster cannot be started here (`redis-server` or `redis-cli` not on
 * `PATH`), or `undefined` when it can.
 */
export async function clusterMissing(): Promise<string | undefined> {
  for (const binary of ["redis-server", "redis-cli"]) {
    const found = await new Deno.Command(binary, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output().then((o) => o.success, () => false);
    if (!found) {
      return `${binary} is not on PATH (Debian/Ubuntu: apt-get install -y redis-server redis-tools)`;
    }
  }
  return undefined;
}

/** Starts 6 nodes, creates the Cluster, and waits until it is healthy. */
export async function startRedisCluster(): Promise<RedisCluster> {
  const servers: RedisServer[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      servers.push(
        await startRedisServer({
          own: true,
          args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            String(NODE_TIMEOUT_MS),
            "--appendonly",
            "yes",
            // A new replica syncs at once (Redis 7 waits 5 s for more).
            "--repl-diskless-sync-delay",
            "0",
          ],
        }),
      );
    }
    const cluster = new Cluster(servers);
    const created = await cluster.run("redis-cli", [
      "--cluster",
      "create",
      ...servers.map((s) => `127.0.0.1:${s.port}`),
      "--cluster-replicas",
      "1",
      "--cluster-yes",
    ]);
    if (!/All 16384 slots covered/.test(created)) {
      throw new Error(`redis-cli --cluster create failed: ${created}`);
    }
    await cluster.waitHealthy(30_000);
    return cluster;
  } catch (error) {
    await Promise.all(servers.map((s) => s.stop()));
    throw error;
  }
}

class Cluster implements RedisCluster {
  readonly #servers: RedisServer[];
  #stopped = false;

  constructor(servers: RedisServer[]) {
    this.#servers = servers;
  }

  get startupNodes(): { host: string; port: number }[] {
    return this.#servers.map((s) => ({ host: "127.0.0.1", port: s.port }));
  }

  async masters(): Promise<ClusterMaster[]> {
    const nodes = await this.#nodes();
    const masters = nodes.filter((n) =>
      n.flags.includes("master") && !n.flags.includes("fail") &&
      n.slots.length > 0
    );
    return masters.map((m) => ({
      port: m.port,
      replicaPort: nodes.find((n) => n.masterId === m.id)?.port ?? 0,
      slots: m.slots,
    }));
  }

  async masterOf(slot: number): Promise<ClusterMaster> {
    const master = (await this.masters()).find((m) =>
      m.slots.some(([from, to]) => slot >= from && slot <= to)
    );
    if (master === undefined) throw new Error(`no master serves slot ${slot}`);
    return master;
  }

  signal(port: number, signal: "SIGKILL" | "SIGSTOP" | "SIGCONT"): void {
    const pid = this.#server(port).pid;
    if (pid === undefined) throw new Error(`node ${port} is not running`);
    Deno.kill(pid, signal);
  }

  async restart(port: number): Promise<void> {
    // restart() ends the process (already gone after a SIGKILL) and starts it
    // again on the same port and directory (nodes.conf, AOF).
    await this.#server(port).restart({ signal: "SIGKILL" });
  }

  async waitForMaster(port: number, timeoutMs = 20_000): Promise<void> {
    await this.#until(
      async () => {
        const nodes = await this.#nodes(port);
        const self = nodes.find((n) => n.flags.includes("myself"));
        return self !== undefined && self.flags.includes("master") &&
          self.slots.length > 0 && await this.#ok(port);
      },
      timeoutMs,
      `node ${port} to become a master`,
    );
  }

  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    await this.#until(
      async () => {
        const masters = await this.masters();
        if (masters.length !== 3 || masters.some((m) => m.replicaPort === 0)) {
          return false;
        }
        for (const server of this.#servers) {
          if (!await this.#ok(server.port)) return false;
        }
        for (const master of masters) {
          const info = await this.cli(
            master.replicaPort,
            "INFO",
            "replication",
          );
          if (!/master_link_status:up/.test(info)) return false;
          if (/master_sync_in_progress:1/.test(info)) return false;
          const replicaOffset = Number(
            /slave_repl_offset:(\d+)/.exec(info)?.[1] ?? -1,
          );
          const masterInfo = await this.cli(master.port, "INFO", "replication");
          const masterOffset = Number(
            /master_repl_offset:(\d+)/.exec(masterInfo)?.[1] ?? -2,
          );
          if (replicaOffset < masterOffset) return false;
        }
        return true;
      },
      timeoutMs,
      "the Cluster to be healthy (3 masters with replicas in sync)",
    );
  }

  async cli(port: number, ...args: string[]): Promise<string> {
    return await this.run("redis-cli", ["-p", String(port), ...args]);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const server of this.#servers) {
      // A stopped process cannot end: let it receive SIGTERM.
      try {
        if (server.pid !== undefined) Deno.kill(server.pid, "SIGCONT");
      } catch {
        // already gone
      }
    }
    await Promise.all(this.#servers.map((s) => s.stop()));
  }

  killNow(): void {
    this.#stopped = true;
    for (const server of this.#servers) {
      try {
        if (server.pid !== undefined) Deno.kill(server.pid, "SIGKILL");
      } catch {
        // already gone
      }
      try {
        if (server.dir !== undefined) {
          Deno.removeSync(server.dir, { recursive: true });
        }
      } catch {
        // already gone
      }
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /** Runs a command with a 10 s limit; its stdout and stderr. */
  async run(command: string, args: string[]): Promise<string> {
    const { stdout, stderr } = await new Deno.Command(command, {
      args,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(10_000),
    }).output();
    const decoder = new TextDecoder();
    return decoder.decode(stdout) + decoder.decode(stderr);
  }

  #server(port: number): RedisServer {
    const server = this.#servers.find((s) => s.port === port);
    if (server === undefined) throw new Error(`no node on port ${port}`);
    return server;
  }

  /** Whether the node of `port` answers and says cluster_state:ok. */
  async #ok(port: number): Promise<boolean> {
    return /cluster_state:ok/.test(
      await this.cli(port, "CLUSTER", "INFO").catch(() => ""),
    );
  }

  /** `CLUSTER NODES` of the node of `port`, or of the first node that answers. */
  async #nodes(port?: number): Promise<ClusterNode[]> {
    const ports = port === undefined
      ? this.#servers.map((s) => s.port)
      : [port];
    for (const candidate of ports) {
      const text = await this.cli(candidate, "CLUSTER", "NODES").catch(() =>
        ""
      );
      const nodes = parseNodes(text);
      if (nodes.length > 0) return nodes;
    }
    return [];
  }

  async #until(
    condition: () => Promise<boolean>,
    timeoutMs: number,
    what: string,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!await condition().catch(() => false)) {
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

interface ClusterNode {
  id: string;
  port: number;
  flags: string[];
  masterId: string;
  slots: [number, number][];
}

/** Parses `CLUSTER NODES` output (nodes that answer with text; others skipped). */
function parseNodes(text: string): ClusterNode[] {
  const nodes: ClusterNode[] = [];
  for (const line of text.split("\n")) {
    const fields = line.trim().split(" ");
    if (fields.length < 8) continue;
    const port = Number(/:(\d+)@/.exec(fields[1]!)?.[1]);
    if (!Number.isInteger(port)) continue;
    const slots: [number, number][] = [];
    for (const range of fields.slice(8)) {
      if (range.startsWith("[")) continue; // a slot being migrated
      const [from, to] = range.split("-").map(Number);
      slots.push([from!, to ?? from!]);
    }
    nodes.push({
      id: fields[0]!,
      port,
      flags: fields[2]!.split(","),
      masterId: fields[3]!,
      slots,
    });
  }
  return nodes;
}
