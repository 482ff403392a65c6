// Owns one committer per process for a KV file: the isolates of a process that open the same file, prefix and limits elect one of them (a Web Lock) to commit the appends of all, forwarded over BroadcastChannels, and the recovery that keeps every forwarded append exactly once when the committer changes; never plans or commits an append itself (the append queue does).
//
// Why: a SQLite file takes one commit at a time, and a commit that checks
// loses to any other connection's commit ("database is locked"); each
// isolate's head cache goes stale as soon as another appends; and a file
// commits only so often, so throughput is appends per commit. One committer
// per process keeps its head cache fresh and puts every isolate's waiting
// appends in one group commit. (docs/deploy.md: the figures.)
//
// Members. A backend on a local file joins its process's group (one member
// per isolate and group: another backend of the group in the same isolate
// commits on its own). A member is
// - solo: no other member heard of; it commits its own appends and holds or
//   requests no lock, so an idle process can exit;
// - waiting: it has requested the group's Web Lock, which another member
//   holds; it forwards its appends to the holder's term;
// - leading: it holds the lock, under a fresh term id; its append queue
//   commits its own appends and those forwarded to the term, together.
// A member posts "hello" when it opens. A solo member that hears "hello"
// requests the lock, as does one that hears a leader announce its term. The
// holder announces its term when granted the lock and when it hears
// "hello". It gives the lock up (resigns) when nobody waits for it (checked
// every second, with an unref'd timer) and when its backend closes: it
// answers what it took, refuses ("moved") what comes after, and releases
// the lock. When its isolate dies (a terminated Worker), Deno releases it.
// Either way the first member waiting is granted the lock and leads a new
// term.
//
// Exactly once. A forwarded append carries its member id and a sequence
// number (and its append id, if any). The leader commits it with a check of
// the term record ([p, "producer", term]) and writes its index to the term's
// log ([p, "op", term, seq]) in the same commit (_kv_append_queue.ts). The
// answer may not arrive: the leader died, resigned, or its term was fenced.
// A member whose forwards to a term are unanswered when another term
// leads, or when it leads itself, first fences that term (rewrites its
// record to FENCED in a commit checked against what it read, so that no
// commit of the term still in flight can land after), then reads the term's
// log from the last log number it saw before sending: a forward found there
// gets its index, the others were not applied and are sent again (or
// committed, by a leader), before anything appended since. The log records
// expire after retryTimeoutMs + 60 s, as op records do.
//
// Messages (structured clones). On the group's channel: hello {from};
// leader {term, log}; done {term, log, ok: {member: [seq, index, ...]},
// err: {member: [seq, error][]}}, one per group commit for every member it
// answers. On the term's own channel, so that only the leader deserializes
// slots: append {from, items: [seq, threadId, slot or upload, appendId][]}.
// A member keeps one append message unanswered at a time; what its callers
// append meanwhile goes in the next, as the queue does with commits.

import { BroadcastChannel } from "node:worker_threads";
import { copyBytes } from "../_bytes.ts";
import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import {
  FENCED,
  type ForwardLog,
  type KvAppendQueue,
  TermEndedError,
} from "./_kv_append_queue.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import { CHUNK_BYTES } from "./_kv_keys.ts";
import type { KvStore } from "./_kv_store.ts";
import { newId } from "./_kv_util.ts";

/** Append messages a member keeps unanswered at once. */
const MESSAGES_IN_FLIGHT = 1;
/** How often a leader checks whether any member still waits for its lock. */
const ALONE_CHECK_MS = 1_000;
/** How long a member with unanswered forwards waits before asking who leads. */
const STALL_MS = 500;

/** The part of the Web Locks API (`navigator.locks`) the committer uses. */
interface WebLocks {
  request(
    name: string,
    options: { signal?: AbortSignal },
    callback: () => Promise<void>,
  ): Promise<void>;
  query(): Promise<{ pending?: { name?: string }[] }>;
}

/** A BroadcastChannel of `node:worker_threads`: Deno's own, plus unref(). */
interface Channel {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
  unref(): void;
}

/** A forwarded append's error, as it crosses to its sender. */
type WireError =
  | { kind: "moved" }
  | { kind: "slots" | "threads"; threadId: string; limit: number }
  | { kind: "backend"; message: string };

type Message =
  | { k: "hello"; from: string }
  | { k: "leader"; term: string; log: number }
  | {
    k: "done";
    term: string;
    log: number;
    ok: Record<string, number[]>;
    err: Record<string, [number, WireError][]>;
  };

/** One forwarded append: [seq, threadId, slot or upload, appendId or null]. */
type WireAppend = [number, string, Uint8Array | Upload, string | null];

interface AppendMessage {
  from: string;
  items: WireAppend[];
}

/** An append of this member that another member's term commits, until answered. */
interface Forward {
  seq: number;
  threadId: string;
  value: Uint8Array | Upload;
  appendId: string | undefined;
  resolve: (index: number) => void;
  reject: (error: unknown) => void;
  /** The term it was sent to (undefined while not sent). */
  term: string | undefined;
  /** The last log number of that term seen before it was sent. */
  logFrom: number;
  /** The message that carried it. */
  message: number;
}

/** This member's term while it leads. */
interface Leading {
  id: string;
  /** The term's own channel: the append messages forwarded to it. */
  requests: Channel;
  /** Forwarded appends queued and not settled yet. */
  served: number;
  /** Resolved when `served` drops to 0 while resigning. */
  drained: PromiseWithResolvers<void> | undefined;
  resigning: boolean;
  /** Resolved to end the term: the lock is released. */
  ended: PromiseWithResolvers<void>;
  aloneCheck: ReturnType<typeof setInterval> | undefined;
  /** Answers to send, by member. */
  ok: Record<string, number[]>;
  err: Record<string, [number, WireError][]>;
  answering: boolean;
}

/** The lock as requested by this member (pending or held). */
interface LockRequest {
  controller: AbortController;
  done: Promise<void>;
}

/** Groups that have a member in this isolate. */
const JOINED = new Set<string>();

/** The Web Locks API, if this runtime has it. */
function webLocks(): WebLocks | undefined {
  return (globalThis.navigator as { locks?: WebLocks } | undefined)?.locks;
}

function openChannel(name: string): Channel {
  const channel = new BroadcastChannel(name) as unknown as Channel;
  // Never keeps the process alive: a held or requested lock does, while
  // there is something to commit or wait for.
  channel.unref();
  return channel;
}

/** What a member needs of its backend. */
export interface CommitterParts {
  store: KvStore;
  blobs: KvBlobStore;
  queue: KvAppendQueue;
}

/**
 * One member of its process's commit group for a KV file (see the file's
 * opening comment): appends go through {@linkcode KvCommitter.append}.
 */
export class KvCommitter {
  readonly #name: string;
  readonly #locks: WebLocks;
  readonly #store: KvStore;
  readonly #blobs: KvBlobStore;
  readonly #queue: KvAppendQueue;
  readonly #id = newId();
  readonly #channel: Channel;
  #lock: LockRequest | undefined;
  #term: Leading | undefined;
  /** While waiting: the announced leader, the last log number seen of it, its channel. */
  #leader: { term: string; log: number; requests: Channel } | undefined;
  /** Appends to forward (or, once this member commits, to commit), in order. */
  #outbox: Forward[] = [];
  /** Forwards sent and not answered, by sequence number. */
  readonly #sent = new Map<number, Forward>();
  /** Unanswered forwards per append message. */
  readonly #messages = new Map<number, number>();
  #seq = 0;
  #messageSeq = 0;
  #pumping = false;
  /** Recoveries of unanswered forwards: appends wait behind them. */
  #gate: Promise<void> | undefined;
  #stall: ReturnType<typeof setTimeout> | undefined;
  /** Appends of this member in its own queue's hands (committed here). */
  #direct = 0;
  #directDone: PromiseWithResolvers<void> | undefined;
  /** When the leader was last heard from. */
  #heard = 0;
  #closing = false;

  /**
   * Joins this process's commit group `name` (the file, prefix and limits),
   * unless this isolate has a member of it already or the runtime lacks Web
   * Locks or BroadcastChannel: then `undefined` (commit on your own).
   */
  static join(name: string, parts: CommitterParts): KvCommitter | undefined {
    const locks = webLocks();
    if (
      locks === undefined || typeof globalThis.BroadcastChannel !== "function"
    ) {
      return undefined;
    }
    if (JOINED.has(name)) return undefined;
    JOINED.add(name);
    return new KvCommitter(name, locks, parts);
  }

  private constructor(name: string, locks: WebLocks, parts: CommitterParts) {
    this.#name = name;
    this.#locks = locks;
    this.#store = parts.store;
    this.#blobs = parts.blobs;
    this.#queue = parts.queue;
    this.#channel = openChannel(name);
    this.#channel.onmessage = (event) => this.#onMessage(event.data);
    this.#post({ k: "hello", from: this.#id });
  }

  /**
   * Appends a copy of `slot` (checked by the caller): committed here when
   * this member is solo or leads, else forwarded to the leader's term.
   *
   * @returns The slot's index.
   * @throws What {@linkcode KvAppendQueue.append} throws.
   */
  async append(
    threadId: string,
    slot: Uint8Array,
    appendId: string | undefined,
  ): Promise<number> {
    if (this.#commitsHere()) {
      this.#direct++;
      try {
        return await this.#queue.append(threadId, slot, appendId);
      } finally {
        if (--this.#direct === 0) this.#directDone?.resolve();
      }
    }
    const value = slot.byteLength <= CHUNK_BYTES
      ? copyBytes(slot)
      : await this.#blobs.upload(threadId, copyBytes(slot));
    const { promise, resolve, reject } = Promise.withResolvers<number>();
    if (this.#commitsHere()) {
      this.#queue.commit(threadId, value, appendId, resolve, reject);
    } else {
      this.#outbox.push({
        seq: ++this.#seq,
        threadId,
        value,
        appendId,
        resolve,
        reject,
        term: undefined,
        logFrom: 0,
        message: 0,
      });
      this.#schedulePump();
    }
    try {
      return await promise;
    } catch (error) {
      if (!(value instanceof Uint8Array)) {
        // Not published: reclaim the chunks now (the sweep would, later).
        await this.#blobs.discard(threadId, value).catch(() => {});
      }
      throw error;
    }
  }

  /**
   * Leaves the group: a leader resigns (what it took is committed and
   * answered first), a waiting member withdraws its lock request; the
   * channels close. The backend's calls have settled before.
   */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#gate;
    if (this.#term !== undefined) await this.#resign();
    const lock = this.#lock;
    if (lock !== undefined) {
      lock.controller.abort();
      await lock.done;
    }
    clearTimeout(this.#stall);
    this.#stall = undefined;
    for (const forward of [...this.#outbox, ...this.#sent.values()]) {
      // Not expected: the backend waited for its appends.
      forward.reject(
        new BackendError(
          `Cannot append to thread ${
            JSON.stringify(forward.threadId)
          }: the backend closed first; it was not applied`,
        ),
      );
    }
    this.#outbox = [];
    this.#sent.clear();
    this.#leader?.requests.close();
    this.#leader = undefined;
    this.#channel.close();
    JOINED.delete(this.#name);
  }

  /** Whether an append made now is committed by this member's own queue. */
  #commitsHere(): boolean {
    return this.#gate === undefined && this.#outbox.length === 0 &&
      (this.#lock === undefined || this.#term !== undefined);
  }

  #post(message: Message): void {
    this.#channel.postMessage(message);
  }

  #onMessage(message: Message): void {
    if (this.#closing) return;
    switch (message.k) {
      case "hello":
        if (this.#term !== undefined && !this.#term.resigning) {
          this.#announce(this.#term);
        } else if (this.#lock === undefined) {
          // Another member of the group: elect a committer.
          this.#requestLock();
        }
        return;
      case "leader":
        this.#onLeader(message.term, message.log);
        return;
      case "done":
        this.#onDone(message);
        return;
    }
  }

  // ------------------------------------------------------------ forwarding

  #onLeader(term: string, log: number): void {
    if (this.#term !== undefined) return; // this member holds the lock
    this.#heard = performance.now();
    this.#requestLock();
    if (this.#leader?.term === term) {
      this.#leader.log = Math.max(this.#leader.log, log);
    } else {
      this.#leader?.requests.close();
      this.#leader = {
        term,
        log,
        requests: openChannel(this.#requestsOf(term)),
      };
      // A new term leads: what earlier terms left unanswered never will be.
      const stale = [...this.#sent.values()].filter((f) => f.term !== term);
      if (stale.length > 0) this.#recover(stale);
    }
    this.#schedulePump();
  }

  #onDone(message: Extract<Message, { k: "done" }>): void {
    const { term } = message;
    if (this.#leader?.term === term) {
      this.#leader.log = Math.max(this.#leader.log, message.log);
      this.#heard = performance.now();
    }
    const ok = message.ok[this.#id];
    if (ok !== undefined) {
      for (let i = 0; i < ok.length; i += 2) {
        const forward = this.#sent.get(ok[i]!);
        if (forward?.term !== term) continue;
        this.#answered(forward);
        forward.resolve(ok[i + 1]!);
      }
    }
    const moved: Forward[] = [];
    for (const [seq, error] of message.err[this.#id] ?? []) {
      const forward = this.#sent.get(seq);
      if (forward?.term !== term) continue;
      this.#answered(forward);
      if (error.kind === "moved") moved.push(forward);
      else forward.reject(revive(error, forward.threadId));
    }
    if (moved.length > 0) {
      // That term commits no more: send them to the next one, first.
      if (this.#leader?.term === term) {
        this.#leader.requests.close();
        this.#leader = undefined;
      }
      this.#requeue(moved);
    }
    this.#schedulePump();
  }

  /** Forgets a sent forward as unanswered (its message may free a send). */
  #answered(forward: Forward): void {
    this.#sent.delete(forward.seq);
    const left = (this.#messages.get(forward.message) ?? 1) - 1;
    if (left > 0) this.#messages.set(forward.message, left);
    else this.#messages.delete(forward.message);
  }

  /** Puts forwards that were not applied back at the head of the outbox, in order. */
  #requeue(forwards: Forward[]): void {
    for (const forward of forwards) forward.term = undefined;
    this.#outbox = [
      ...forwards.toSorted((a, b) => a.seq - b.seq),
      ...this.#outbox,
    ];
  }

  #schedulePump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    // After the callers of this tick have added theirs: one message for all.
    queueMicrotask(() => {
      this.#pumping = false;
      this.#pump();
    });
  }

  /** Sends (or commits) the outbox when it may. */
  #pump(): void {
    if (this.#gate !== undefined || this.#outbox.length === 0) {
      this.#armStall();
      return;
    }
    if (this.#lock === undefined || this.#term !== undefined) {
      // Solo or leading: commit them here, in order.
      const forwards = this.#outbox;
      this.#outbox = [];
      for (const f of forwards) {
        this.#queue.commit(
          f.threadId,
          f.value,
          f.appendId,
          f.resolve,
          f.reject,
        );
      }
      return;
    }
    const leader = this.#leader;
    if (leader !== undefined && this.#messages.size < MESSAGES_IN_FLIGHT) {
      const forwards = this.#outbox;
      this.#outbox = [];
      const message = ++this.#messageSeq;
      this.#messages.set(message, forwards.length);
      const items: WireAppend[] = [];
      for (const forward of forwards) {
        forward.term = leader.term;
        forward.logFrom = leader.log;
        forward.message = message;
        this.#sent.set(forward.seq, forward);
        items.push([
          forward.seq,
          forward.threadId,
          forward.value,
          forward.appendId ?? null,
        ]);
      }
      if (this.#sent.size === forwards.length) this.#heard = performance.now();
      leader.requests.postMessage(
        { from: this.#id, items } satisfies AppendMessage,
      );
    }
    this.#armStall();
  }

  /**
   * While forwards wait (unanswered, or for a leader to be announced): if
   * the leader stays silent for STALL_MS, asks who leads ("hello"); the
   * holder of the lock announces itself again.
   */
  #armStall(): void {
    if (this.#stall !== undefined || this.#closing) return;
    if (this.#sent.size === 0 && this.#outbox.length === 0) return;
    this.#stall = setTimeout(() => {
      this.#stall = undefined;
      if (this.#sent.size === 0 && this.#outbox.length === 0) return;
      if (performance.now() - this.#heard >= STALL_MS) {
        this.#heard = performance.now();
        this.#post({ k: "hello", from: this.#id });
      }
      this.#armStall();
    }, STALL_MS);
  }

  // -------------------------------------------------------------- recovery

  /**
   * Settles forwards whose term will never answer: each found in its term's
   * log gets its index; the others were not applied and go back to the
   * outbox ahead of later appends. Appends wait meanwhile (the gate).
   */
  #recover(forwards: Forward[]): void {
    for (const forward of forwards) this.#answered(forward);
    this.#hold(async () => {
      const again: Forward[] = [];
      for (
        const [term, ofTerm] of Map.groupBy(forwards, (f) => f.term!)
      ) {
        let applied: Map<number, number>;
        try {
          applied = await this.#appliedIn(
            term,
            Math.min(...ofTerm.map((f) => f.logFrom)),
          );
        } catch (error) {
          for (const forward of ofTerm) {
            forward.reject(
              new BackendError(
                `Cannot append to thread ${
                  JSON.stringify(forward.threadId)
                }: the isolate that committed for this process stopped, and what it applied cannot be read (${
                  errorMessage(error)
                }); it may or may not have been applied`,
                { cause: error },
              ),
            );
          }
          continue;
        }
        for (const forward of ofTerm) {
          const index = applied.get(forward.seq);
          if (index !== undefined) forward.resolve(index);
          else again.push(forward);
        }
      }
      this.#requeue(again);
    });
  }

  /** Makes appends wait (in the outbox, in order) until `work` is done, after any earlier such work. */
  #hold(work: () => Promise<void>): void {
    const previous = this.#gate;
    const gate = (async () => {
      await previous;
      await work();
    })();
    this.#gate = gate;
    gate.finally(() => {
      if (this.#gate === gate) this.#gate = undefined;
      this.#schedulePump();
    });
  }

  /**
   * The forwards of this member that term `term` applied, seq -> index, read
   * from its log from number `from` on, once the term is fenced (none of
   * its commits can land any more).
   *
   * @throws {BackendError} The store failed (for retryTimeoutMs).
   */
  async #appliedIn(term: string, from: number): Promise<Map<number, number>> {
    const store = this.#store;
    const { kv, keys } = store;
    const record = keys.producer(term);
    for (let attempt = 0;; attempt++) {
      const entry = await store.retryWhileLocked(() => kv.get<number>(record));
      if (entry.value === FENCED) break;
      const fence = kv.atomic().check(entry)
        .set(record, FENCED, { expireIn: store.recordExpireIn });
      if ((await store.retryWhileLocked(() => fence.commit())).ok) break;
      if (attempt >= store.maxAttempts) {
        throw new BackendError("the committer's term record kept changing");
      }
    }
    const start = keys.op(term, from + 1);
    const entries = await store.listAll<ForwardLog | true>(start.slice(0, -1));
    const applied = new Map<number, number>();
    for (const entry of entries) {
      const seq = entry.key.at(-1);
      if (typeof seq !== "number" || seq <= from) continue;
      const mine = typeof entry.value === "object"
        ? entry.value.f[this.#id]
        : undefined;
      for (let i = 0; mine !== undefined && i < mine.length; i += 2) {
        applied.set(mine[i]!, mine[i + 1]!);
      }
    }
    return applied;
  }

  // --------------------------------------------------------------- leading

  #requestLock(): void {
    if (this.#lock !== undefined || this.#closing) return;
    // Appends made from now on are forwarded (or committed in a term): they
    // wait for those this member queued alone, so that its appends keep
    // their order.
    if (this.#direct > 0) {
      this.#hold(async () => {
        while (this.#direct > 0) {
          this.#directDone = Promise.withResolvers<void>();
          await this.#directDone.promise;
        }
      });
    }
    const controller = new AbortController();
    const lock: LockRequest = {
      controller,
      done: this.#locks
        .request(this.#name, { signal: controller.signal }, () => this.#lead())
        .catch(() => {
          // Aborted by close().
        })
        .finally(() => {
          if (this.#lock === lock) this.#lock = undefined;
          // Forwards may wait for a member to lead or to commit alone.
          this.#schedulePump();
        }),
    };
    this.#lock = lock;
  }

  /** Runs while this member holds the lock: one term. */
  async #lead(): Promise<void> {
    if (this.#closing) return;
    const id = newId();
    const requests = openChannel(this.#requestsOf(id));
    const term: Leading = {
      id,
      requests,
      served: 0,
      drained: undefined,
      resigning: false,
      ended: Promise.withResolvers<void>(),
      aloneCheck: undefined,
      ok: {},
      err: {},
      answering: false,
    };
    requests.onmessage = (event) => this.#serve(term, event.data);
    this.#term = term;
    this.#queue.startTerm(id);
    this.#leader?.requests.close();
    this.#leader = undefined;
    // What earlier terms left unanswered: found in their logs, or committed here.
    if (this.#sent.size > 0) this.#recover([...this.#sent.values()]);
    this.#announce(term);
    this.#schedulePump();
    term.aloneCheck = setInterval(() => this.#checkAlone(term), ALONE_CHECK_MS);
    Deno.unrefTimer(term.aloneCheck);
    await term.ended.promise;
  }

  #announce(term: Leading): void {
    this.#post({ k: "leader", term: term.id, log: this.#queue.termApplied });
  }

  #requestsOf(term: string): string {
    return `${this.#name} term ${term}`;
  }

  #serve(term: Leading, message: AppendMessage): void {
    if (this.#term !== term) return;
    const from = message.from;
    for (const [seq, threadId, value, appendId] of message.items) {
      if (term.resigning) {
        this.#answer(term, from, seq, { kind: "moved" });
        continue;
      }
      term.served++;
      this.#queue.commit(
        threadId,
        value,
        appendId ?? undefined,
        (index) => {
          this.#answer(term, from, seq, index);
          this.#served(term);
        },
        (error) => {
          this.#answer(term, from, seq, wire(error));
          this.#served(term);
          if (error instanceof TermEndedError) void this.#resign(true);
        },
        { from, seq },
      );
    }
  }

  #served(term: Leading): void {
    if (--term.served === 0) term.drained?.resolve();
  }

  #answer(
    term: Leading,
    to: string,
    seq: number,
    outcome: number | WireError,
  ): void {
    if (typeof outcome === "number") (term.ok[to] ??= []).push(seq, outcome);
    else (term.err[to] ??= []).push([seq, outcome]);
    if (term.answering) return;
    term.answering = true;
    // One message for every member the commit answers.
    queueMicrotask(() => this.#sendAnswers(term));
  }

  #sendAnswers(term: Leading): void {
    if (!term.answering) return;
    term.answering = false;
    this.#post({
      k: "done",
      term: term.id,
      log: this.#queue.termApplied,
      ok: term.ok,
      err: term.err,
    });
    term.ok = {};
    term.err = {};
  }

  async #checkAlone(term: Leading): Promise<void> {
    try {
      const { pending = [] } = await this.#locks.query();
      if (
        this.#term === term && !pending.some((l) => l.name === this.#name)
      ) {
        await this.#resign();
      }
    } catch {
      // Checked again in a second.
    }
  }

  /**
   * Ends this member's term: what it took is committed and answered, what
   * comes after is refused ("moved"), then the lock is released. With
   * `rejoin` (its term was fenced), it requests the lock again.
   */
  async #resign(rejoin = false): Promise<void> {
    const term = this.#term;
    if (term === undefined || term.resigning) return;
    term.resigning = true;
    clearInterval(term.aloneCheck);
    if (term.served > 0) {
      term.drained = Promise.withResolvers<void>();
      await term.drained.promise;
    }
    this.#sendAnswers(term);
    this.#queue.endTerm();
    term.requests.close();
    this.#term = undefined;
    const lock = this.#lock;
    term.ended.resolve();
    await lock?.done;
    if (rejoin) this.#requestLock();
  }
}

/** A forwarded append's error, for its sender. */
function wire(error: unknown): WireError {
  if (error instanceof TermEndedError) return { kind: "moved" };
  if (error instanceof SlotLimitError) {
    return { kind: "slots", threadId: error.threadId, limit: error.limit };
  }
  if (error instanceof ThreadLimitError) {
    return { kind: "threads", threadId: error.threadId, limit: error.limit };
  }
  return { kind: "backend", message: errorMessage(error) };
}

/** The error a forwarded append's caller gets, as the committer's queue threw it. */
function revive(error: WireError, threadId: string): Error {
  switch (error.kind) {
    case "slots":
      return new SlotLimitError(error.threadId, error.limit);
    case "threads":
      return new ThreadLimitError(error.threadId, error.limit);
    case "backend":
      return new BackendError(error.message);
    case "moved":
      return new BackendError(
        `Cannot append to thread ${JSON.stringify(threadId)}: not applied`,
      );
  }
}
