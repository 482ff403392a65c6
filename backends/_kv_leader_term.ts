// Owns one term of a commit group's leader (_kv_committer.ts): the members' pair links it took, draining their forwarded appends into its append queue, answering them, and ending the term; never elects, holds or releases the lock, nor forwards an append.
//
// A member that holds its group's Web Lock leads a term under a fresh term
// id: its append queue commits its own appends and those forwarded to the
// term, together. A waiting member joins the term with a pair link of its
// own (_kv_pair.ts: shared memory for its appends and their answers), which
// the term drains right before each batch, or when the member rings the
// term's doorbell while the queue has nothing to commit. Each forwarded
// append is committed with a check of the term record and its index is
// written to the term's log in the same commit (_kv_terms.ts); the answers a
// commit settles go out together, with the term's log number. The term ends
// (its member resigns) when nobody waits for the lock (checked every second,
// with an unref'd timer), when its backend closes, or when it is fenced: it
// commits and answers what it took, and leaves the rest in the links.

import { BackendError, SlotLimitError, ThreadLimitError } from "../errors.ts";
import { errorMessage } from "../_messages.ts";
import type { KvAppendQueue } from "./_kv_append_queue.ts";
import {
  type Answer,
  Doorbell,
  type ForwardedAppend,
  PairLink,
} from "./_kv_pair.ts";
import type { KvStore } from "./_kv_store.ts";
import { TermEndedError } from "./_kv_terms.ts";
import { newId } from "./_kv_util.ts";

/** How often a leader checks whether any member still waits for its lock. */
const ALONE_CHECK_MS = 1_000;

/** What a term needs of its member (the committer holding the lock). */
export interface TermParts {
  store: KvStore;
  queue: KvAppendQueue;
  /** Whether another member of the group waits for the lock. */
  othersWait(): Promise<boolean>;
  /** Ends the member's current term (see {@linkcode LeaderTerm.resign}); with `rejoin`, requests the lock again. */
  resign(rejoin: boolean): Promise<void>;
}

/** One term of this member while it holds the group's lock. */
export class LeaderTerm {
  /** The term id: a fresh random id, which its records in the store carry. */
  readonly id: string = newId();
  /** Rung by members that forward while the leader has nothing to commit. */
  readonly bell: Doorbell = new Doorbell();
  readonly #parts: TermParts;
  /** The links of the members that joined the term, by member. */
  readonly #links = new Map<string, PairLink>();
  /** Forwarded appends queued and not settled yet. */
  #served = 0;
  /** Resolved when `#served` drops to 0 while resigning. */
  #drained: PromiseWithResolvers<void> | undefined;
  #resigning = false;
  /** Resolved to end the term: the lock is released. */
  readonly #ended = Promise.withResolvers<void>();
  #aloneCheck: ReturnType<typeof setInterval> | undefined;
  /** Links with answers queued since the last flush. */
  readonly #answered = new Set<PairLink>();
  #answering = false;

  constructor(parts: TermParts) {
    this.#parts = parts;
  }

  /** Whether the term is ending: it takes nothing more. */
  get resigning(): boolean {
    return this.#resigning;
  }

  /** Resolves when the term has ended: its member releases the lock. */
  get ended(): Promise<void> {
    return this.#ended.promise;
  }

  /** Starts the term in the append queue, which drains the links before each batch. */
  open(): void {
    this.#parts.queue.startTerm(this.id);
    this.#parts.queue.beforeEachBatch(() => this.#drain());
  }

  /** Starts the check for members waiting, and the wait for forwards while the queue is idle. */
  watch(): void {
    this.#aloneCheck = setInterval(() => this.#checkAlone(), ALONE_CHECK_MS);
    Deno.unrefTimer(this.#aloneCheck);
    void this.#waitForForwards();
  }

  /** Takes a member's link into the term and welcomes it. */
  welcome(member: string, memory: SharedArrayBuffer): void {
    let link = this.#links.get(member);
    if (link?.memory !== memory) {
      link = new PairLink(memory);
      this.#links.set(member, link);
    }
    link.answer({ k: "welcome" });
    link.flush();
  }

  /**
   * While the queue has nothing to commit, waits for a member to ring, then
   * drains: the queue drains by itself before each batch while it commits.
   */
  async #waitForForwards(): Promise<void> {
    while (!this.#resigning) {
      await this.#parts.queue.idle();
      if (this.#resigning) return;
      await this.bell.wait(() => {
        for (const link of this.#links.values()) {
          if (link.appendsReady) return true;
        }
        return false;
      });
      if (this.#resigning) return;
      this.#drain();
    }
  }

  /** Queues what the members forwarded since the last drain, and writes answers held back. */
  #drain(): void {
    if (this.#resigning) return;
    for (const [member, link] of this.#links) {
      if (link.memberLeft) {
        this.#links.delete(member);
        continue;
      }
      link.flush();
      for (const item of link.take()) this.#serve(link, member, item);
    }
  }

  #serve(
    link: PairLink,
    from: string,
    item: ForwardedAppend,
  ): void {
    const { seq, threadId, appendId, value } = item;
    this.#served++;
    this.#parts.queue.commit(
      threadId,
      value instanceof Uint8Array ? value : {
        ref: { u: value.u, n: value.n, c: value.c },
        key: this.#parts.store.keys.upload(threadId, value.u),
        versionstamp: value.versionstamp,
      },
      appendId,
      (index) => {
        this.#answer(link, { k: "ok", seq, index });
        this.#settled();
      },
      (error) => {
        this.#answer(link, wire(error, seq));
        this.#settled();
        if (error instanceof TermEndedError) void this.#parts.resign(true);
      },
      { from, seq },
    );
  }

  #settled(): void {
    if (--this.#served === 0) this.#drained?.resolve();
  }

  #answer(link: PairLink, answer: Answer): void {
    link.answer(answer);
    this.#answered.add(link);
    if (this.#answering) return;
    this.#answering = true;
    // What a commit settles goes out together, with the term's log number.
    queueMicrotask(() => this.#sendAnswers());
  }

  #sendAnswers(): void {
    if (!this.#answering) return;
    this.#answering = false;
    const log = this.#parts.queue.termApplied;
    for (const link of this.#answered) {
      link.answer({ k: "log", log });
      link.flush();
    }
    this.#answered.clear();
  }

  /** Resigns when no other member waits for the lock. */
  async #checkAlone(): Promise<void> {
    try {
      const othersWait = await this.#parts.othersWait();
      if (!this.#resigning && !othersWait) await this.#parts.resign(false);
    } catch {
      // Checked again in a second.
    }
  }

  /**
   * Starts ending the term: it takes nothing more, and stops checking for
   * waiting members.
   *
   * @returns What resolves once every forward it took has settled, or `undefined` if none is pending.
   */
  resign(): Promise<void> | undefined {
    this.#resigning = true;
    clearInterval(this.#aloneCheck);
    if (this.#served === 0) return undefined;
    this.#drained = Promise.withResolvers<void>();
    return this.#drained.promise;
  }

  /**
   * Ends the term once what it took has settled: the last answers go out,
   * the queue leaves the term, the links are left to their members (what
   * they hold goes to the next term), and {@linkcode LeaderTerm.ended}
   * resolves.
   */
  end(): void {
    this.#sendAnswers();
    this.#parts.queue.endTerm();
    for (const link of this.#links.values()) link.leaveAsLeader();
    this.#links.clear();
    this.bell.end();
    this.#ended.resolve();
  }
}

/** A forwarded append's error, for its sender (the member revives it). */
function wire(error: unknown, seq: number): Answer {
  if (error instanceof TermEndedError) return { k: "moved", seq };
  if (error instanceof SlotLimitError) {
    return { k: "slots", seq, limit: error.limit };
  }
  if (error instanceof ThreadLimitError) {
    return { k: "threads", seq, limit: error.limit };
  }
  return { k: "backend", seq, message: errorMessage(error) };
}

/** The error a forwarded append's caller gets, as the leader's queue threw it (see wire). */
export function revive(
  answer: Extract<Answer, { k: "slots" | "threads" | "backend" }>,
  threadId: string,
): Error {
  switch (answer.k) {
    case "slots":
      return new SlotLimitError(threadId, answer.limit);
    case "threads":
      return new ThreadLimitError(threadId, answer.limit);
    case "backend":
      return new BackendError(answer.message);
  }
}
