// Owns one committer per process for a KV file: the isolates of a process that open the same file, prefix and limits elect one of them (a Web Lock) to commit the appends of all, forwarded through shared memory, and the recovery that keeps every forwarded append exactly once when the committer changes; never plans or commits an append itself (the append queue does).
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
// A member posts "hello" on the group's BroadcastChannel when it opens. A
// solo member that hears "hello" requests the lock, as does one that hears a
// leader announce its term. The holder announces its term (with its
// doorbell) when granted the lock and when it hears "hello"; a waiting member
// then joins the term with a pair link of its own (_kv_pair.ts), which the
// term drains (_kv_leader_term.ts: the leader's side). The holder gives the
// lock up (resigns) when nobody waits for it and when its backend closes.
// When its isolate dies (a terminated Worker), Deno releases the lock.
// Either way the first member waiting is granted the lock and leads a new
// term. BroadcastChannels are unref'd and Atomics.waitAsync keeps nothing
// alive: only a held or requested lock does, and only while there is another
// member.
//
// Exactly once. A forwarded append carries its member id and a sequence
// number (and its append id, if any). The leader commits it with a check of
// the term record ([p, "producer", term]) and writes its index to the term's
// log ([p, "op", term, seq]) in the same commit (_kv_append_plan.ts). The
// answer may not arrive: the leader died, resigned, or its term was fenced
// (_kv_terms.ts: the records).
// A member whose forwards to a term are unanswered when another term
// leads, or when it leads itself, first fences that term (rewrites its
// record to FENCED in a commit checked against what it read, so that no
// commit of the term still in flight can land after), then reads the term's
// log from the last log number it saw before sending: a forward found there
// gets its index, the others were not applied and are sent again (or
// committed, by a leader), before anything appended since. The log records
// expire after retryTimeoutMs + 60 s, as op records do.

import { BroadcastChannel } from "node:worker_threads";
import { copyBytes } from "../_bytes.ts";
import { BackendError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { KvAppendQueue } from "./_kv_append_queue.ts";
import type { KvBlobStore, Upload } from "./_kv_blobs.ts";
import { CHUNK_BYTES } from "./_kv_keys.ts";
import { LeaderTerm, revive } from "./_kv_leader_term.ts";
import {
  type Answer,
  Doorbell,
  type ForwardedAppend,
  PairLink,
} from "./_kv_pair.ts";
import type { KvStore } from "./_kv_store.ts";
import { appliedByTerm } from "./_kv_terms.ts";
import { newId } from "./_kv_util.ts";

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

/** What the group's channel carries (rarely: on joining and leading). */
type GroupMessage =
  | { k: "hello"; from: string }
  | { k: "leader"; term: string; log: number; bell: SharedArrayBuffer }
  | { k: "join"; term: string; from: string; link: SharedArrayBuffer };

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
}

/** While waiting: the announced leader. */
interface Leader {
  term: string;
  /** The last log number of the term seen. */
  log: number;
  bell: Doorbell;
  /** This member's link with the term. */
  link: PairLink;
  /** Whether the leader has taken the link (it welcomed this member). */
  welcomed: boolean;
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
  #term: LeaderTerm | undefined;
  #leader: Leader | undefined;
  /** Appends to forward (or, once this member commits, to commit), in order. */
  #outbox: Forward[] = [];
  /** Forwards sent and not answered, by sequence number. */
  readonly #sent = new Map<number, Forward>();
  #seq = 0;
  #pumping = false;
  /** Recoveries of unanswered forwards: appends wait behind them. */
  #gate: Promise<void> | undefined;
  #stall: ReturnType<typeof setTimeout> | undefined;
  /** When the leader was last heard from. */
  #heard = 0;
  /** Appends of this member in its own queue's hands (committed here). */
  #direct = 0;
  #directDone: PromiseWithResolvers<void> | undefined;
  #closing = false;

  /**
   * Joins this process's commit group `name` (the file, prefix and limits),
   * unless this isolate has a member of it already or the runtime lacks Web
   * Locks, BroadcastChannel or SharedArrayBuffer: then `undefined` (commit
   * on your own).
   */
  static join(name: string, parts: CommitterParts): KvCommitter | undefined {
    const locks = webLocks();
    if (
      locks === undefined ||
      typeof globalThis.BroadcastChannel !== "function" ||
      typeof globalThis.SharedArrayBuffer !== "function" ||
      typeof Atomics.waitAsync !== "function"
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
    this.#channel = new BroadcastChannel(name) as unknown as Channel;
    // Never keeps the process alive: a held or requested lock does.
    this.#channel.unref();
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
   * answered first), a waiting member withdraws its lock request and leaves
   * its link. The backend's calls have settled before.
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
    this.#leaveLeader();
    this.#channel.close();
    JOINED.delete(this.#name);
  }

  /** Whether an append made now is committed by this member's own queue. */
  #commitsHere(): boolean {
    return this.#gate === undefined && this.#outbox.length === 0 &&
      (this.#lock === undefined || this.#term !== undefined);
  }

  #post(message: GroupMessage): void {
    this.#channel.postMessage(message);
  }

  #onMessage(message: GroupMessage): void {
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
        this.#onLeader(message.term, message.log, message.bell);
        return;
      case "join":
        if (this.#term?.id === message.term && !this.#term.resigning) {
          this.#term.welcome(message.from, message.link);
        }
        return;
    }
  }

  // ------------------------------------------------------------ forwarding

  #onLeader(term: string, log: number, bell: SharedArrayBuffer): void {
    if (this.#term !== undefined) return; // this member holds the lock
    this.#heard = performance.now();
    this.#requestLock();
    const leader = this.#leader;
    if (leader?.term === term) {
      leader.log = Math.max(leader.log, log);
      // Not welcomed yet: the join may have crossed the leader's start.
      if (!leader.welcomed) this.#join(leader);
      return;
    }
    this.#leaveLeader();
    const joined: Leader = {
      term,
      log,
      bell: new Doorbell(bell),
      link: new PairLink(),
      welcomed: false,
    };
    this.#leader = joined;
    this.#join(joined);
    void this.#listen(joined);
    // A new term leads: what earlier terms left unanswered never will be.
    const stale = [...this.#sent.values()].filter((f) => f.term !== term);
    if (stale.length > 0) this.#recover(stale);
  }

  #join(leader: Leader): void {
    this.#post({
      k: "join",
      term: leader.term,
      from: this.#id,
      link: leader.link.memory,
    });
  }

  /** Leaves the link with the leader (the leader forgets it at its next drain). */
  #leaveLeader(): void {
    const leader = this.#leader;
    if (leader === undefined) return;
    this.#leader = undefined;
    leader.link.leaveAsMember();
  }

  /** Reads the leader's answers as they come, while this member is joined to its term. */
  async #listen(leader: Leader): Promise<void> {
    while (this.#leader === leader) {
      const answers = leader.link.receive();
      if (answers.length > 0) {
        this.#heard = performance.now();
        // It could not write all: it may write more now.
        if (leader.link.takeBlocked()) leader.bell.ring();
        this.#onAnswers(leader, answers);
        continue;
      }
      if (leader.link.leaderLeft) {
        // Its term ended; what it did not answer waits for the next one.
        if (this.#leader === leader) this.#leaveLeader();
        return;
      }
      await leader.link.answered();
    }
  }

  #onAnswers(leader: Leader, answers: Answer[]): void {
    const { term } = leader;
    const moved: Forward[] = [];
    for (const answer of answers) {
      if (answer.k === "welcome") {
        leader.welcomed = true;
        continue;
      }
      if (answer.k === "log") {
        leader.log = Math.max(leader.log, answer.log);
        continue;
      }
      const forward = this.#sent.get(answer.seq);
      if (forward?.term !== term) continue;
      this.#sent.delete(answer.seq);
      if (answer.k === "ok") forward.resolve(answer.index);
      else if (answer.k === "moved") moved.push(forward);
      else forward.reject(revive(answer, forward.threadId));
    }
    if (moved.length > 0) {
      // That term commits no more: send them to the next one, first.
      if (this.#leader === leader) this.#leaveLeader();
      this.#requeue(moved);
    }
    this.#schedulePump();
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
    // After the callers of this tick have added theirs.
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
    if (leader?.welcomed) {
      const forwards = this.#outbox;
      const sent = leader.link.send(forwards.map(forwarded));
      if (sent > 0) {
        if (this.#sent.size === 0) this.#heard = performance.now();
        for (const forward of forwards.slice(0, sent)) {
          forward.term = leader.term;
          forward.logFrom = leader.log;
          this.#sent.set(forward.seq, forward);
        }
        // The rest (the link is full) goes once answers have made room.
        this.#outbox = forwards.slice(sent);
        leader.bell.ring();
      }
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
    for (const forward of forwards) this.#sent.delete(forward.seq);
    this.#hold(async () => {
      const again: Forward[] = [];
      for (
        const [term, ofTerm] of Map.groupBy(forwards, (f) => f.term!)
      ) {
        let applied: Map<number, number>;
        try {
          applied = await appliedByTerm(
            this.#store,
            term,
            this.#id,
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
    const term = new LeaderTerm({
      store: this.#store,
      queue: this.#queue,
      othersWait: async () => {
        const { pending = [] } = await this.#locks.query();
        return pending.some((l) => l.name === this.#name);
      },
      resign: (rejoin) => this.#resign(rejoin),
    });
    this.#term = term;
    term.open();
    this.#leaveLeader();
    // What earlier terms left unanswered: found in their logs, or committed here.
    if (this.#sent.size > 0) this.#recover([...this.#sent.values()]);
    this.#announce(term);
    this.#schedulePump();
    term.watch();
    await term.ended;
  }

  #announce(term: LeaderTerm): void {
    this.#post({
      k: "leader",
      term: term.id,
      log: this.#queue.termApplied,
      bell: term.bell.memory,
    });
  }

  /**
   * Ends this member's term: what it took is committed and answered, what
   * it did not take stays in the links (their members send it to the next
   * term), then the lock is released. With `rejoin` (its term was fenced),
   * it requests the lock again.
   */
  async #resign(rejoin = false): Promise<void> {
    const term = this.#term;
    if (term === undefined || term.resigning) return;
    const settling = term.resign();
    if (settling !== undefined) await settling;
    term.end();
    this.#term = undefined;
    const lock = this.#lock;
    await lock?.done;
    if (rejoin) this.#requestLock();
  }
}

/** A forwarded append as it crosses to the leader. */
function forwarded(forward: Forward): ForwardedAppend {
  const { seq, threadId, appendId, value } = forward;
  return {
    seq,
    threadId,
    appendId,
    value: value instanceof Uint8Array ? value : {
      u: value.ref.u,
      n: value.ref.n,
      c: value.ref.c,
      versionstamp: value.versionstamp,
    },
  };
}
