// The watch source of the Redis backend: one subscriber connection per
// backend, shared by all its watches, that turns the scripts' announcements
// (ANNOUNCE in _redis_scripts.ts: "<from> <to> <ttlMs>" after an append,
// with the bytes of the first slots when they are small, "gone" after a
// deletion or a clear, on the thread's channel) into wake-ups of the watch
// engine (_watch.ts), handing it the slots an announcement carries, and ends
// the watches of a thread that expires (Redis announces no expiry).
//
// It owns the subscriber connection (a duplicate of the backend's client,
// opened at the first watch, ended when no watch is left and on close(),
// reconnected by itself: on a Cluster, to the node serving the tenant's hash
// slot), the channels it subscribes (sharded SSUBSCRIBE on Redis >= 7, else
// SUBSCRIBE: what the scripts publish with; the tenant's channel too, which
// tells the append script that someone listens), and one timer at the
// earliest expiry of a watched thread, which checks the PTTL of the threads
// due. After every (re)subscribe it wakes every watch: the engine reads the
// range it may have missed, so a dropped connection or a restarted server
// loses nothing, and repeats nothing (the engine reads from the index it has
// reached, and takes handed-over slots only where they follow on).
//
// It must never write to the store, never read slots (the engine does; it
// only hands over the bytes announcements carry), and never send on the
// backend's connection any command but PTTL.

import { withTimeout } from "../_async.ts";
import { errorMessage } from "../_messages.ts";
import {
  type WatchDelivery,
  type WatchEvent,
  WatchListeners,
  type WatchSource,
} from "../_watch.ts";
import { BackendClosedError, BackendError } from "../errors.ts";
import {
  CONNECT_TIMEOUT_MS,
  type RedisConnection,
} from "./_redis_connection.ts";
import { hashSlot, type RedisKeys } from "./_redis_keys.ts";

/** Most channels in one (S)SUBSCRIBE when many threads are (re)subscribed at once. */
const SUBSCRIBE_BATCH = 1_000;
/** Waits before reconnecting after a failed attempt: the first, doubling up to the cap. */
const FIRST_RECONNECT_MS = 50;
const MAX_RECONNECT_MS = 1_000;
/**
 * The subscriber connection is pinged this often; a ping still unanswered at
 * the next one cuts it (a half-open connection would never deliver again).
 */
const HEARTBEAT_MS = 5_000;
/** How long ending a subscriber connection waits for its socket before cutting it. */
const END_TIMEOUT_MS = 2_000;
/** When an expiry check fails (the backend's connection is down), it is tried again after this. */
const PROBE_RETRY_MS = 500;

/**
 * The ioredis options of a subscriber connection (over the duplicated
 * client's own: host, password, TLS, protocol). This module subscribes again
 * itself after a reconnect (then wakes every watch), and reconnects itself
 * (to the slot's node anew on a Cluster).
 */
const SUBSCRIBER_OPTIONS = {
  lazyConnect: true,
  autoResubscribe: false,
  autoResendUnfulfilledCommands: false,
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  connectTimeout: CONNECT_TIMEOUT_MS,
  retryStrategy: (): null => null,
};

/** The ioredis `Redis` methods a subscriber connection uses (declared: no ioredis import). */
interface SubscriberClient {
  readonly status: string;
  readonly options: { host?: string; port?: number };
  readonly stream?: { destroy(error?: Error): void };
  connect(): Promise<void>;
  disconnect(): void;
  // deno-lint-ignore no-explicit-any
  on(event: string, listener: (...args: any[]) => void): unknown;
  // deno-lint-ignore no-explicit-any
  once(event: string, listener: (...args: any[]) => void): unknown;
  ssubscribe(...channels: string[]): Promise<unknown>;
  sunsubscribe(...channels: string[]): Promise<unknown>;
  subscribe(...channels: string[]): Promise<unknown>;
  unsubscribe(...channels: string[]): Promise<unknown>;
  ping(): Promise<unknown>;
  duplicate(options: typeof SUBSCRIBER_OPTIONS): SubscriberClient;
}

/** The ioredis `Cluster` members used to find the node serving a slot. */
interface ClusterClient {
  readonly isCluster: true;
  readonly slots: (string[] | undefined)[];
  nodes(role: "master"): SubscriberClient[];
  refreshSlotsCache(callback?: (error?: Error) => void): void;
}

/** A thread with watches, and what is known of it. */
interface WatchedThread {
  readonly channel: string;
  /** The current connection confirmed its subscription. */
  subscribed: boolean;
  /** subscribe() calls waiting for that. */
  readonly waiting: Set<Waiter>;
  /** The length the last announcement heard left (0: none heard, or gone). */
  length: number;
  /** The thread exists, as far as announcements and checks tell. */
  exists: boolean;
  /** When it expires, in `Date.now()` ms (Infinity: never, or not known to exist). */
  expiresAt: number;
  /** Announcements heard: a check sent before the latest one is stale. */
  heard: number;
}

interface Waiter {
  resolve(): void;
  reject(error: Error): void;
}

/** One subscriber connection and what it has subscribed. */
interface Session {
  readonly client: SubscriberClient;
  /** SSUBSCRIBE (Redis >= 7) until the server says it does not know it. */
  sharded: boolean;
  /** Ready, and its first subscriptions were sent: later threads are subscribed one by one. */
  live: boolean;
  /** Being ended (no watch left, closed, or cut): reconnects once it has ended, if watches remain. */
  dropped: boolean;
  heartbeat: ReturnType<typeof setInterval> | undefined;
  pinging: boolean;
}

/** What a {@linkcode RedisSubscriber} needs. */
export interface RedisSubscriberOptions {
  /** The backend's connection: its client is duplicated for subscribing, and expiry checks (PTTL) go through it. */
  connection: RedisConnection;
  /** The tenant's keys: thread keys, and the hash tag that channels carry. */
  keys: RedisKeys;
  /** How long a watch's start waits for a subscriber connection. */
  retryTimeoutMs: number;
}

/**
 * The {@linkcode WatchSource} of a Redis backend: every watch of the backend
 * shares one subscriber connection (1 000 watches cost one connection).
 */
export class RedisSubscriber implements WatchSource {
  readonly #connection: RedisConnection;
  readonly #keys: RedisKeys;
  readonly #retryTimeoutMs: number;
  /** `T:w:`: a thread's channel is this and its id (see _redis_keys.ts). */
  readonly #channelPrefix: string;
  /** `T:w`: held while any thread is watched (the append script asks). */
  readonly #tenantChannel: string;
  readonly #listeners = new WatchListeners();
  readonly #threads = new Map<string, WatchedThread>();
  #session: Session | undefined;
  /** Connections being ended: close() waits for their sockets. */
  readonly #ending = new Set<Promise<void>>();
  #reconnect: ReturnType<typeof setTimeout> | undefined;
  /** The wait before the next reconnect (0 after a connection that worked). */
  #reconnectMs = 0;
  #lastError: unknown;
  /** One timer, at the earliest known expiry of a watched thread. */
  #expiry: ReturnType<typeof setTimeout> | undefined;
  #expiryAt = Infinity;
  #closed = false;

  constructor(options: RedisSubscriberOptions) {
    this.#connection = options.connection;
    this.#keys = options.keys;
    this.#retryTimeoutMs = options.retryTimeoutMs;
    this.#channelPrefix = options.keys.channelPrefix;
    this.#tenantChannel = options.keys.tenantChannel;
  }

  /**
   * Watches `threadId`; resolves once its channel is subscribed on the
   * subscriber connection (opening it if none is), so that no announcement
   * made after it resolves can be missed.
   *
   * @throws {BackendError} No subscriber connection within `retryTimeoutMs`.
   * @throws {BackendClosedError} The backend closed meanwhile.
   */
  async subscribe(
    threadId: string,
    wake: (event: WatchEvent, delivery?: WatchDelivery) => void,
  ): Promise<() => void> {
    if (this.#closed) throw new BackendClosedError("redis", "bufferWatch");
    const remove = this.#listeners.add(threadId, wake);
    let thread = this.#threads.get(threadId);
    if (thread === undefined) {
      thread = {
        channel: this.#channelPrefix + threadId,
        subscribed: false,
        waiting: new Set(),
        length: 0,
        exists: false,
        expiresAt: Infinity,
        heard: 0,
      };
      this.#threads.set(threadId, thread);
      const session = this.#session;
      if (session?.live && !session.dropped) {
        void this.#subscribeThreads(session, [threadId], false);
      } else if (session === undefined && this.#reconnect === undefined) {
        this.#connect();
      }
      // Otherwise the connection on its way subscribes it once it is ready.
    }
    const stop = () => {
      remove();
      if (!this.#listeners.has(threadId)) this.#unwatch(threadId);
    };
    if (!thread.subscribed) {
      try {
        await this.#subscribed(threadId, thread);
      } catch (error) {
        stop();
        throw error;
      }
    }
    return stop;
  }

  /**
   * Ends the subscriber connection and the expiry timer; watches still
   * starting reject with {@linkcode BackendClosedError}. Idempotent.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      const error = new BackendClosedError("redis", "bufferWatch");
      for (const thread of this.#threads.values()) {
        for (const waiter of [...thread.waiting]) waiter.reject(error);
      }
      this.#stopExpiry();
      this.#end();
    }
    await Promise.all(this.#ending);
  }

  /** Waits until the current connection has subscribed `thread`, at most retryTimeoutMs. */
  #subscribed(threadId: string, thread: WatchedThread): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: () => {
          clearTimeout(timer);
          thread.waiting.delete(waiter);
          resolve();
        },
        reject: (error) => {
          clearTimeout(timer);
          thread.waiting.delete(waiter);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        const cause = this.#lastError;
        waiter.reject(
          new BackendError(
            `Cannot watch thread ${
              JSON.stringify(threadId)
            }: no subscriber connection to Redis at ${this.#connection.endpoint} within ${this.#retryTimeoutMs} ms (retryTimeoutMs)${
              cause === undefined ? "" : `: ${errorMessage(cause)}`
            }`,
            { cause },
          ),
        );
      }, this.#retryTimeoutMs);
      thread.waiting.add(waiter);
    });
  }

  /** Opens a subscriber connection; once ready, it subscribes every watched thread. */
  #connect(): void {
    this.#reconnect = undefined;
    if (this.#closed || this.#threads.size === 0) return;
    let client: SubscriberClient;
    try {
      client = this.#newClient();
    } catch (error) {
      this.#lastError = error;
      if (error instanceof TypeError) {
        // Not an ioredis client that can be duplicated: no use retrying.
        for (const thread of this.#threads.values()) {
          for (const waiter of [...thread.waiting]) waiter.reject(error);
        }
        return;
      }
      this.#retryLater();
      return;
    }
    const session: Session = {
      client,
      sharded: true,
      live: false,
      dropped: false,
      heartbeat: undefined,
      pinging: false,
    };
    this.#session = session;
    // Without an error listener ioredis prints every connection error.
    client.on("error", (error: unknown) => this.#lastError = error);
    client.on("smessageBuffer", this.#onMessage);
    client.on("messageBuffer", this.#onMessage);
    // ioredis' "moved": the slot of a sharded channel moved to another node.
    client.on("moved", () => this.#drop(session));
    client.once("end", () => this.#ended(session));
    client.connect().then(
      () => this.#start(session),
      (error: unknown) => {
        this.#lastError = error;
        this.#drop(session);
      },
    );
  }

  /** A connection is ready: subscribe everything, then wake every watch. */
  async #start(session: Session): Promise<void> {
    if (this.#session !== session || session.dropped) return;
    session.live = true;
    const ids = [...this.#threads.keys()];
    if (ids.length === 0) {
      this.#drop(session);
      return;
    }
    const batches: Promise<boolean>[] = [];
    for (let i = 0; i < ids.length; i += SUBSCRIBE_BATCH) {
      // The first also takes the tenant's channel: confirmed before any
      // thread's (one connection answers in order).
      batches.push(
        this.#subscribeThreads(
          session,
          ids.slice(i, i + SUBSCRIBE_BATCH),
          true,
          i === 0,
        ),
      );
    }
    const done = await Promise.all(batches);
    if (this.#session !== session || done.includes(false)) return;
    this.#reconnectMs = 0;
    session.heartbeat = setInterval(() => this.#beat(session), HEARTBEAT_MS);
    Deno.unrefTimer(session.heartbeat as unknown as number);
    // What was appended while no connection listened is read now; the
    // expiries are checked again (an expiry or a deletion may have passed).
    this.#listeners.notifyAll("changed");
    this.#probe(ids);
  }

  /**
   * Subscribes the channels of `ids` on `session` (and the tenant's
   * channel first, if `tenant`); resolves `true` once the server confirmed
   * them (their waiting watches go on), `false` if the connection failed
   * first (the next one subscribes them). Threads subscribed on a running
   * connection (not `initial`ly) get their expiry checked.
   */
  async #subscribeThreads(
    session: Session,
    ids: string[],
    initial: boolean,
    tenant = false,
  ): Promise<boolean> {
    const threads = ids.map((id) => this.#threads.get(id)!);
    const channels = threads.map((thread) => thread.channel);
    if (tenant) channels.unshift(this.#tenantChannel);
    const send = () =>
      session.sharded
        ? session.client.ssubscribe(...channels)
        : session.client.subscribe(...channels);
    try {
      try {
        await send();
      } catch (error) {
        // Redis < 7: no sharded pub/sub, and the scripts PUBLISH instead.
        if (!session.sharded || !/unknown command/i.test(errorMessage(error))) {
          throw error;
        }
        session.sharded = false;
        await send();
      }
    } catch (error) {
      this.#lastError = error;
      // MOVED: the slot is served elsewhere now; otherwise the connection failed.
      this.#drop(session);
      return false;
    }
    if (this.#session !== session || session.dropped) return false;
    const fresh: string[] = [];
    for (const [k, thread] of threads.entries()) {
      // A thread unwatched meanwhile (and maybe watched anew: another record) is left alone.
      if (this.#threads.get(ids[k]!) !== thread) continue;
      thread.subscribed = true;
      if (!initial) fresh.push(ids[k]!);
      for (const waiter of [...thread.waiting]) waiter.resolve();
    }
    if (fresh.length > 0) this.#probe(fresh);
    return true;
  }

  /** A thread's last watch ended: unsubscribe it; with no watch left, end the connection. */
  #unwatch(threadId: string): void {
    const thread = this.#threads.get(threadId);
    if (thread === undefined) return;
    this.#threads.delete(threadId);
    if (this.#threads.size === 0) {
      this.#stopExpiry();
      this.#end();
      return;
    }
    const session = this.#session;
    if (session?.live && !session.dropped) {
      const sent = session.sharded
        ? session.client.sunsubscribe(thread.channel)
        : session.client.unsubscribe(thread.channel);
      sent.catch(() => {
        // the connection dropped: the next one does not subscribe it
      });
    }
  }

  /** An announcement on a thread's channel (see ANNOUNCE in _redis_scripts.ts). */
  #onMessage = (channelBytes: Uint8Array, message?: Uint8Array): void => {
    const channel = decoder.decode(channelBytes);
    if (!channel.startsWith(this.#channelPrefix) || message === undefined) {
      return;
    }
    const threadId = channel.slice(this.#channelPrefix.length);
    const thread = this.#threads.get(threadId);
    if (thread === undefined) return;
    thread.heard++;
    const newline = message.indexOf(NEWLINE);
    const head = decoder.decode(
      newline === -1 ? message : message.subarray(0, newline),
    );
    if (head === "gone") {
      thread.exists = false;
      thread.length = 0;
      thread.expiresAt = Infinity;
      this.#listeners.notify(threadId, "gone");
      return;
    }
    const fields = head.split(" ");
    const from = Number(fields[0]);
    const to = Number(fields[1]);
    const ttlMs = Number(fields[2]);
    // A thread only grows until it is removed: slots appended below the
    // length last heard mean that it was removed unheard (an expiry is not
    // announced) and started anew; its watches end as for a deletion.
    const renewed = from < thread.length;
    thread.exists = true;
    thread.length = to;
    thread.expiresAt = ttlMs > 0 ? Date.now() + ttlMs : Infinity;
    this.#expireBy(thread.expiresAt);
    if (renewed) {
      this.#listeners.notify(threadId, "gone");
      return;
    }
    this.#listeners.notify(
      threadId,
      "changed",
      carried(message, newline, fields, from, to),
    );
  };

  /**
   * Checks the TTL of watched threads (on the backend's connection): one
   * that no longer exists, though it did, is gone (expired, or removed
   * while no connection listened); the others get their expiry right.
   */
  #probe(ids: string[]): void {
    const client = this.#connection.client as unknown as {
      pttl(key: string): Promise<number>;
    };
    for (const threadId of ids) {
      const thread = this.#threads.get(threadId);
      if (thread === undefined) continue;
      const heard = thread.heard;
      this.#connection.send(() => client.pttl(this.#keys.thread(threadId)))
        .then(
          (pttl) => {
            // Unwatched, or an announcement since tells more.
            if (
              this.#closed || this.#threads.get(threadId) !== thread ||
              thread.heard !== heard
            ) return;
            if (pttl === -2) {
              const existed = thread.exists;
              thread.exists = false;
              thread.length = 0;
              thread.expiresAt = Infinity;
              if (existed) this.#listeners.notify(threadId, "gone");
              return;
            }
            thread.exists = true;
            thread.expiresAt = pttl < 0 ? Infinity : Date.now() + pttl;
            this.#expireBy(thread.expiresAt);
          },
          (error: unknown) => {
            if (this.#closed || this.#threads.get(threadId) !== thread) return;
            this.#lastError = error;
            // With no subscriber connection either, the next one checks
            // every thread once it has subscribed; otherwise, check again soon.
            const session = this.#session;
            if (session === undefined || !session.live || session.dropped) {
              return;
            }
            thread.expiresAt = Math.min(
              thread.expiresAt,
              Date.now() + PROBE_RETRY_MS,
            );
            this.#expireBy(thread.expiresAt);
          },
        );
    }
  }

  /** Makes sure the expiry timer runs by `at`. */
  #expireBy(at: number): void {
    if (at === Infinity || at >= this.#expiryAt || this.#closed) return;
    clearTimeout(this.#expiry);
    this.#expiryAt = at;
    this.#expiry = setTimeout(
      this.#expireDue,
      Math.max(0, at - Date.now()) + 1,
    );
  }

  /** The expiry timer: checks the threads due, then rearms for the next. */
  #expireDue = (): void => {
    this.#expiry = undefined;
    this.#expiryAt = Infinity;
    const now = Date.now();
    const due: string[] = [];
    for (const [threadId, thread] of this.#threads) {
      if (thread.expiresAt <= now) {
        // Until the check answers (a failed one sets a retry).
        thread.expiresAt = Infinity;
        due.push(threadId);
      } else {
        this.#expireBy(thread.expiresAt);
      }
    }
    if (due.length > 0) this.#probe(due);
  };

  #stopExpiry(): void {
    clearTimeout(this.#expiry);
    this.#expiry = undefined;
    this.#expiryAt = Infinity;
  }

  /** Pings the connection; one that did not answer the last ping is cut (and reconnected). */
  #beat(session: Session): void {
    if (session.pinging) {
      this.#lastError = new Error(`no reply to PING within ${HEARTBEAT_MS} ms`);
      session.client.stream?.destroy(this.#lastError as Error);
      this.#drop(session);
      return;
    }
    session.pinging = true;
    session.client.ping().then(() => session.pinging = false, () => {});
  }

  /** Ends the connection and any reconnect (no watch left, or closed). */
  #end(): void {
    clearTimeout(this.#reconnect);
    this.#reconnect = undefined;
    this.#reconnectMs = 0;
    if (this.#session !== undefined) this.#drop(this.#session);
  }

  /** Ends a connection; if watches remain when it has ended, another opens. */
  #drop(session: Session): void {
    if (session.dropped) return;
    session.dropped = true;
    clearInterval(session.heartbeat);
    const ending = endClient(session.client);
    this.#ending.add(ending);
    ending.finally(() => this.#ending.delete(ending));
  }

  /** A connection ended (ioredis' "end": it never reconnects by itself here). */
  #ended(session: Session): void {
    session.dropped = true;
    clearInterval(session.heartbeat);
    if (this.#session !== session) return;
    this.#session = undefined;
    for (const thread of this.#threads.values()) thread.subscribed = false;
    if (this.#closed || this.#threads.size === 0) return;
    this.#retryLater();
  }

  /** Schedules a reconnect: at once after a connection that worked, then backing off. */
  #retryLater(): void {
    const ms = this.#reconnectMs;
    this.#reconnectMs = Math.min(
      Math.max(ms * 2, FIRST_RECONNECT_MS),
      MAX_RECONNECT_MS,
    );
    if (ms > 0) this.#refreshSlots();
    this.#reconnect = setTimeout(() => this.#connect(), ms);
  }

  /** A new subscriber connection (not connected yet) to the server, or to the node serving the tenant's slot. */
  #newClient(): SubscriberClient {
    const client = this.#connection.client as unknown as Partial<
      ClusterClient & SubscriberClient
    >;
    if (client.isCluster === true) {
      const cluster = client as ClusterClient;
      const slot = hashSlot(this.#channelPrefix);
      const nodeKey = cluster.slots[slot]?.[0];
      const node = nodeKey === undefined ? undefined : cluster.nodes("master")
        .find((node) => nodeKeyOf(node.options) === nodeKey);
      if (node === undefined) {
        throw new Error(
          `no node of the Cluster is known to serve slot ${slot}`,
        );
      }
      return node.duplicate(SUBSCRIBER_OPTIONS);
    }
    if (typeof client.duplicate !== "function") {
      throw new TypeError(
        "Cannot watch: the redisClient has no duplicate() to open a subscriber connection with (expected an ioredis Redis or Cluster client)",
      );
    }
    return client.duplicate(SUBSCRIBER_OPTIONS);
  }

  /** On a Cluster, asks for the slots' nodes again (after a failure or a MOVED). */
  #refreshSlots(): void {
    const cluster = this.#connection.client as unknown as Partial<
      ClusterClient
    >;
    if (cluster.isCluster === true) cluster.refreshSlotsCache?.(() => {});
  }
}

const decoder = new TextDecoder();
const NEWLINE = 0x0a;

/**
 * The slots an append announcement carries after its "\n" (their lengths
 * are the header's fields after the third), as views of the message; none
 * if it carries none or does not add up.
 */
function carried(
  message: Uint8Array,
  newline: number,
  fields: string[],
  from: number,
  to: number,
): WatchDelivery | undefined {
  if (newline === -1 || fields.length <= 3) return undefined;
  const slots: Uint8Array[] = [];
  let at = newline + 1;
  for (let k = 3; k < fields.length; k++) {
    const length = Number(fields[k]);
    slots.push(message.subarray(at, at + length));
    at += length;
  }
  if (at !== message.length || from + slots.length > to) return undefined;
  return { from, slots, length: to };
}

/** Ends a subscriber connection: disconnect, then wait for its socket's end (cut after 2 s). */
async function endClient(client: SubscriberClient): Promise<void> {
  if (client.status === "end") return;
  const ended = new Promise<void>((resolve) => {
    client.once("end", () => resolve());
  });
  client.disconnect();
  await withTimeout(ended, END_TIMEOUT_MS, () => client.stream?.destroy());
}

/** ioredis' name of a node: `host:port`. */
function nodeKeyOf(options: { host?: string; port?: number }): string {
  return `${options.host ?? "127.0.0.1"}:${options.port ?? 6379}`;
}
