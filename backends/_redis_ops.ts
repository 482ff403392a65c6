// Retries of the Redis backend, and the op records that make a retried
// mutation apply once (issue 11: exactly-once through lost replies, restarts
// and failovers).
//
// A RedisOps belongs to one backend instance, a producer with a random id:
// it numbers the backend's mutations (ops) and writes the header that each
// mutation script records its reply under (see OPS in _redis_lua.ts),
// with the floor (the lowest op still awaiting its outcome) and the acks
// (settled ops whose records may go); it sends a call again after a failure
// that a retry can fix, until the call's deadline (`retryTimeoutMs`), waking
// as soon as the connection is back; it waits for replicas
// (`durableReplicas`: WAIT, pipelined after the script on the same
// connection, so that it waits for that script's writes); and it words what
// became of a call that failed for good.
//
// It must never retry what a retry cannot fix (a script error), never send a
// mutation without its header while retries are on, and never say that a
// call was not applied when one of its attempts lost its reply.

import { errorMessage } from "../_messages.ts";
import { BackendError } from "../errors.ts";
import { failureKind, type RedisConnection } from "./_redis_connection.ts";
import type { RedisKeys } from "./_redis_keys.ts";
import type {
  ScriptArg,
  ScriptClient,
  ScriptCommands,
} from "./_redis_scripts.ts";

/** The first pause before a retry; it doubles up to {@linkcode MAX_PAUSE_MS}. */
const FIRST_PAUSE_MS = 20;
/** The longest pause between two attempts of a call. */
const MAX_PAUSE_MS = 500;
/**
 * The longest single WAIT. It blocks the connection it is sent on, and must
 * stay well under the connection's watchdog (4 s of silence); a call whose
 * replicas do not confirm in time runs again (a replay) and waits anew.
 */
const WAIT_CHUNK_MS = 1_000;
/** How long a producer's op records outlive its last write, beyond `retryTimeoutMs`. */
const RECORDS_KEPT_MS = 60_000;
/** Acks wait until this many are due (one HDEL for many ops), and go at most this many times 8 per op. */
const ACK_BATCH = 32;
/** How often an op asks for the op records' TTL to be refreshed, in ms. */
const REFRESH_EVERY_MS = 5_000;

/** A script that the backend runs through {@linkcode RedisOps.call}. */
export type ScriptName = keyof ScriptCommands;
/** What a script's call resolves to. */
export type ScriptReply<K extends ScriptName> = Awaited<
  ReturnType<ScriptCommands[K]>
>;

/**
 * A call that was applied, but that fewer than `durableReplicas` replicas
 * confirmed within the WAIT that followed it. It is retried (a replay of
 * its op, then WAIT again) until the call's deadline.
 */
export class Unconfirmed extends Error {
  /** The script's reply: what was applied. */
  readonly reply: unknown;
  /** How many replicas confirmed. */
  readonly replicas: number;

  constructor(reply: unknown, replicas: number, cause?: unknown) {
    super(`only ${replicas} replicas confirmed`, { cause });
    this.name = "Unconfirmed";
    this.reply = reply;
    this.replicas = replicas;
  }
}

/** What the attempts of one call came to, for the message of its failure. */
export class Trail {
  /** An attempt's reply was lost: the call may have been applied. */
  maybeApplied = false;
  /** The call was applied, but not confirmed by enough replicas. */
  unconfirmed: Unconfirmed | undefined;

  /** Notes a failed attempt. */
  note(error: unknown): void {
    if (error instanceof Unconfirmed) this.unconfirmed = error;
    else if (failureKind(error) === "lost") this.maybeApplied = true;
  }
}

/** What a {@linkcode RedisOps} needs. */
export interface RedisOpsOptions {
  /** The connection calls go through (watched). */
  connection: RedisConnection;
  /** Its client, with the scripts defined on it. */
  client: ScriptClient;
  /** The tenant's keys. */
  keys: RedisKeys;
  /** How long a call is retried (0: sent once, no op records). */
  retryTimeoutMs: number;
  /** Replicas that must confirm each mutation (0: no WAIT). */
  durableReplicas: number;
}

/** The retries and op records of one backend instance (see the file's opening). */
export class RedisOps {
  /** See {@linkcode RedisOpsOptions.retryTimeoutMs}. */
  readonly retryTimeoutMs: number;
  /** See {@linkcode RedisOpsOptions.durableReplicas}. */
  readonly durableReplicas: number;
  /** This producer's op records key (`T:p:<producer>`). */
  readonly records: string;
  readonly #connection: RedisConnection;
  readonly #client: ScriptClient;
  /** The TTL of the op records, in ms. */
  readonly #keepMs: number;
  #nextSeq = 1;
  /** Ops awaiting their outcome (the floor is the lowest). */
  readonly #live = new Set<number>();
  /** Settled ops whose records the next headers may drop (once below the floor). */
  #settled: number[] = [];
  /** When an op last asked for the records' TTL to be refreshed (`performance.now()`). */
  #refreshed = -Infinity;

  constructor(options: RedisOpsOptions) {
    this.#connection = options.connection;
    this.#client = options.client;
    this.retryTimeoutMs = options.retryTimeoutMs;
    this.durableReplicas = options.durableReplicas;
    this.records = options.keys.records(producerId());
    this.#keepMs = options.retryTimeoutMs + RECORDS_KEPT_MS;
  }

  /** Starts an op: its number (0 when retries are off: no record). */
  begin(): number {
    if (this.retryTimeoutMs === 0) return 0;
    const seq = this.#nextSeq++;
    this.#live.add(seq);
    return seq;
  }

  /** The header of an attempt of op `seq` (see OPS in _redis_lua.ts). */
  header(seq: number): string {
    if (seq === 0) return "";
    let floor = this.#nextSeq;
    for (const live of this.#live) if (live < floor) floor = live;
    const now = performance.now();
    const refresh = now - this.#refreshed >= REFRESH_EVERY_MS;
    if (refresh) this.#refreshed = now;
    let header = `${seq} ${floor} ${this.#keepMs} ${refresh ? 1 : 0}`;
    if (this.#settled.length >= ACK_BATCH) {
      const later: number[] = [];
      let acks = 0;
      for (const settled of this.#settled) {
        // Only below the floor: a late copy of the op is then stale.
        if (settled < floor && acks < 8 * ACK_BATCH) {
          header += ` ${settled}`;
          acks++;
        } else {
          later.push(settled);
        }
      }
      this.#settled = later;
    }
    return header;
  }

  /** Ends op `seq`: settled (answered, or given up). */
  end(seq: number): void {
    if (seq === 0) return;
    this.#live.delete(seq);
    this.#settled.push(seq);
  }

  /** The deadline of a call that starts at `start` (`performance.now()`). */
  deadline(start = performance.now()): number {
    return start + this.retryTimeoutMs;
  }

  /**
   * One attempt of a script call: the script, and with `durableReplicas`
   * a WAIT pipelined after it on the same connection.
   *
   * @throws The client's error; {@linkcode Unconfirmed} when the script ran
   * but too few replicas confirmed.
   */
  async call<K extends ScriptName>(
    name: K,
    args: ScriptArg[],
    deadline: number,
  ): Promise<ScriptReply<K>> {
    if (this.durableReplicas === 0) {
      return await this.#connection.send(() =>
        (this.#client[name] as (...a: ScriptArg[]) => Promise<ScriptReply<K>>)(
          ...args,
        )
      );
    }
    const waitMs = Math.round(
      Math.min(
        WAIT_CHUNK_MS,
        Math.max(100, deadline - performance.now()),
      ),
    );
    const results = await this.#connection.send(() => {
      const pipeline = this.#client.pipeline();
      (pipeline as unknown as Record<K, (...a: ScriptArg[]) => unknown>)[name](
        ...args,
      );
      return pipeline.wait(this.durableReplicas, waitMs).exec();
    });
    const [script, wait] = results ?? [];
    if (script === undefined) throw new Error("Connection is closed.");
    if (script[0]) {
      this.#redirected(script[0]);
      throw script[0];
    }
    const reply = script[1] as ScriptReply<K>;
    if (wait === undefined || wait[0]) {
      throw new Unconfirmed(reply, 0, wait?.[0]);
    }
    const replicas = Number(wait[1]);
    if (replicas < this.durableReplicas) throw new Unconfirmed(reply, replicas);
    return reply;
  }

  /**
   * Runs `attempt` until it succeeds, a failure that a retry cannot fix, or
   * the deadline; every failure is noted in `trail`. The first attempt is
   * always made.
   *
   * @throws The last attempt's error.
   */
  async retry<T>(
    attempt: () => Promise<T>,
    deadline: number,
    trail: Trail,
  ): Promise<T> {
    for (let tries = 0;; tries++) {
      try {
        return await attempt();
      } catch (error) {
        trail.note(error);
        const left = deadline - performance.now();
        if (
          left <= 0 || this.#connection.closed ||
          (!(error instanceof Unconfirmed) && failureKind(error) === "failed")
        ) {
          throw error;
        }
        const pause = Math.min(FIRST_PAUSE_MS * 2 ** tries, MAX_PAUSE_MS);
        await this.#connection.whenReady(
          Math.min(left, pause * (0.5 + Math.random() / 2)),
        );
      }
    }
  }

  /**
   * Runs a mutation script as op: `args(header)` gives its arguments for an
   * attempt; retried until the deadline.
   *
   * @param action What is done, for the message: "Cannot ..." + ": why".
   * @param record Whether the script records its op (`false`: no header,
   * for a script that may run twice, like a refresh).
   * @throws {BackendError} It failed for good: the message says whether it
   * was applied, when that is known.
   */
  async mutate<K extends ScriptName>(
    action: string,
    name: K,
    args: (header: string) => ScriptArg[],
    record = true,
  ): Promise<NonNullable<ScriptReply<K>>> {
    const seq = record ? this.begin() : 0;
    const deadline = this.deadline();
    const trail = new Trail();
    try {
      const reply = await this.retry(
        () => this.call(name, args(this.header(seq)), deadline),
        deadline,
        trail,
      );
      if (reply === null) throw this.stale(action);
      return reply as NonNullable<ScriptReply<K>>;
    } catch (error) {
      if (error instanceof BackendError) throw error;
      throw this.failure(action, error, trail, true);
    } finally {
      this.end(seq);
    }
  }

  /**
   * Runs a read (no op, no WAIT), retried until the deadline.
   *
   * @throws {BackendError} It failed for good.
   */
  async read<T>(action: string, command: () => Promise<T>): Promise<T> {
    const trail = new Trail();
    try {
      return await this.retry(
        () => this.#connection.send(command),
        this.deadline(),
        trail,
      );
    } catch (error) {
      throw this.failure(action, error, trail, false);
    }
  }

  /**
   * The error of a call that failed for good: `action` ("Cannot ..."), what
   * became of the last attempt, how long it was retried, and for a
   * `mutation` whether it was applied (when known: applied but not confirmed
   * by the replicas, not applied, or "may or may not" when a reply was lost).
   *
   * @param applied For a call applied but not confirmed: where ("at index
   * 4"), for the message.
   */
  failure(
    action: string,
    error: unknown,
    trail: Trail,
    mutation: boolean,
    applied = "",
  ): BackendError {
    const retried = this.retryTimeoutMs > 0
      ? `retried for ${this.retryTimeoutMs} ms (retryTimeoutMs)`
      : "not retried (retryTimeoutMs is 0)";
    if (mutation && trail.unconfirmed !== undefined) {
      return new BackendError(
        `${action}: it was applied${
          applied === "" ? "" : ` ${applied}`
        } on Redis at ${this.#connection.endpoint}, but only ${trail.unconfirmed.replicas} of the ${this.durableReplicas} replicas it must reach (durableReplicas) confirmed it, ${retried}: a failover could still lose it`,
        { cause: error },
      );
    }
    const state = this.#connection.state(error);
    if (failureKind(error) === "failed") {
      return new BackendError(
        `${action}: ${state}${
          mutation && trail.maybeApplied
            ? "; an earlier attempt lost its reply: it may or may not have been applied"
            : ""
        }`,
        { cause: error },
      );
    }
    const outcome = !mutation
      ? ""
      : trail.maybeApplied
      ? "; it may or may not have been applied"
      : "; it was not applied";
    return new BackendError(`${action}: ${state}, ${retried}${outcome}`, {
      cause: error,
    });
  }

  /** The error of an op that the server had already given up (a stale copy). */
  stale(action: string): BackendError {
    return new BackendError(
      `${action}: Redis at ${this.#connection.endpoint} took this call for a late copy of one given up; it was not applied`,
    );
  }

  /**
   * A `MOVED` in a pipeline's reply: ioredis' Cluster follows `MOVED` for
   * single commands, but not in a pipeline holding a WAIT (which is not
   * read-only); refresh its slot map so that the retry goes to the new
   * master.
   */
  #redirected(error: unknown): void {
    if (!/^MOVED /.test(errorMessage(error))) return;
    const cluster = this.#client as unknown as {
      refreshSlotsCache?: (callback?: () => void) => void;
    };
    try {
      cluster.refreshSlotsCache?.(() => {});
    } catch {
      // the next attempt says what is wrong
    }
  }
}

/** A random producer id: 12 URL-safe base64 characters (72 bits). */
function producerId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll(
    "/",
    "_",
  );
}
