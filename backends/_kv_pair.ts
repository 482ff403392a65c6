// Owns the shared memory between the members of a commit group (_kv_committer.ts): a waiting member's pair link with the leader's term (a ring of forwarded appends, a ring of answers, in one SharedArrayBuffer) and the term's doorbell, with their encodings and wake-ups; never decides what to forward, nor what an answer means.
//
// Why shared memory: a BroadcastChannel message costs each other isolate that
// holds a channel of its name some 30-40 us of CPU to receive (Deno 2.9, on
// this machine), and a round trip with the leader as messages about 90 us;
// with SharedArrayBuffers (which a BroadcastChannel hands over once, on
// joining) and Atomics.waitAsync, about 45 us, and the leader is woken only
// when it has nothing to commit: while a commit is in flight, forwarded
// appends pile up in the rings and the leader takes them all (a drain) right
// before it plans the next batch.
//
// Rings are single-producer, single-consumer byte rings with monotonically
// growing 32-bit head (written) and tail (read) counters; a record is a
// 4-byte length and its bytes, copied in and out around the ring's end.
// Atomics loads and stores order the bytes (the JS memory model's
// sequentially consistent atomics). A writer that finds no room keeps its
// records (the member: in its outbox, until its next answers; the leader: in
// memory, until the member has read and rings the doorbell).
//
// Strings are written as UTF-16 code units, so that every id crosses exactly
// (lone surrogates included).

/** Bytes of a pair's ring of forwarded appends (a slot up to 60 KiB inline). */
const REQUEST_BYTES = 1 << 18;
/** Bytes of a pair's ring of answers. */
const ANSWER_BYTES = 1 << 16;

// The control words of a pair (Int32 indexes).
const REQ_HEAD = 0;
const REQ_TAIL = 1;
const ANS_HEAD = 2;
const ANS_TAIL = 3;
/** Bit 1: the member left; bit 2: the leader left (its term ended). */
const LEFT = 4;
/** 1 while the leader holds answers that did not fit: the member rings after reading. */
const BLOCKED = 5;
const MEMBER_LEFT = 1;
const LEADER_LEFT = 2;
const CONTROL_BYTES = 32;

// The words of a term's doorbell.
/** 1 while the leader waits for work (ring it); 0 while it is busy. */
const WAITING = 0;
/** 1 once the term ended. */
const ENDED = 1;

/** The reference to an uploaded large slot, as it crosses (its key is rebuilt from the thread and upload id). */
export interface UploadRef {
  u: string;
  n: number;
  c: number;
  versionstamp: string;
}

/** A forwarded append as it crosses. */
export interface ForwardedAppend {
  seq: number;
  threadId: string;
  appendId: string | undefined;
  value: Uint8Array | UploadRef;
}

/** An answer of the leader to a member. */
export type Answer =
  | { k: "welcome" }
  | { k: "log"; log: number }
  | { k: "ok"; seq: number; index: number }
  | { k: "moved"; seq: number }
  | { k: "slots" | "threads"; seq: number; limit: number }
  | { k: "backend"; seq: number; message: string };

const ANSWER_KINDS = [
  "welcome",
  "log",
  "ok",
  "moved",
  "slots",
  "threads",
  "backend",
] as const;

/** Appends values to a growable buffer: the record being encoded. */
class Encoder {
  #bytes = new Uint8Array(4096);
  #view = new DataView(this.#bytes.buffer);
  #at = 0;

  reset(): void {
    this.#at = 0;
  }

  /** The record encoded so far (a view, valid until the next reset). */
  get record(): Uint8Array {
    return this.#bytes.subarray(0, this.#at);
  }

  #room(more: number): void {
    if (this.#at + more <= this.#bytes.length) return;
    const bigger = new Uint8Array(
      Math.max(2 * this.#bytes.length, this.#at + more),
    );
    bigger.set(this.#bytes.subarray(0, this.#at));
    this.#bytes = bigger;
    this.#view = new DataView(bigger.buffer);
  }

  u8(value: number): void {
    this.#room(1);
    this.#view.setUint8(this.#at, value);
    this.#at += 1;
  }

  f64(value: number): void {
    this.#room(8);
    this.#view.setFloat64(this.#at, value);
    this.#at += 8;
  }

  string(value: string): void {
    this.#room(4 + 2 * value.length);
    this.#view.setUint32(this.#at, value.length);
    this.#at += 4;
    for (let i = 0; i < value.length; i++) {
      this.#view.setUint16(this.#at, value.charCodeAt(i));
      this.#at += 2;
    }
  }

  bytes(value: Uint8Array): void {
    this.#room(4 + value.byteLength);
    this.#view.setUint32(this.#at, value.byteLength);
    this.#bytes.set(value, this.#at + 4);
    this.#at += 4 + value.byteLength;
  }
}

/** Reads the values of one record. */
class Decoder {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #at = 0;

  constructor(record: Uint8Array) {
    this.#bytes = record;
    this.#view = new DataView(record.buffer, record.byteOffset, record.length);
  }

  u8(): number {
    return this.#view.getUint8(this.#at++);
  }

  f64(): number {
    const value = this.#view.getFloat64(this.#at);
    this.#at += 8;
    return value;
  }

  string(): string {
    const length = this.#view.getUint32(this.#at);
    this.#at += 4;
    const units = new Array<number>(length);
    for (let i = 0; i < length; i++) {
      units[i] = this.#view.getUint16(this.#at);
      this.#at += 2;
    }
    let text = "";
    for (let i = 0; i < length; i += 4096) {
      text += String.fromCharCode(...units.slice(i, i + 4096));
    }
    return text;
  }

  /** A copy in its own ArrayBuffer. */
  bytes(): Uint8Array {
    const length = this.#view.getUint32(this.#at);
    const start = this.#at + 4;
    this.#at = start + length;
    return this.#bytes.slice(start, start + length);
  }
}

/** One direction of a pair: a single-producer, single-consumer ring of records. */
class Ring {
  readonly #control: Int32Array;
  readonly #headAt: number;
  readonly #tailAt: number;
  readonly #data: Uint8Array;

  constructor(
    control: Int32Array,
    headAt: number,
    tailAt: number,
    data: Uint8Array,
  ) {
    this.#control = control;
    this.#headAt = headAt;
    this.#tailAt = tailAt;
    this.#data = data;
  }

  /** Whether records wait to be read. */
  get ready(): boolean {
    return Atomics.load(this.#control, this.#headAt) !==
      Atomics.load(this.#control, this.#tailAt);
  }

  /** The tail as last published (what the reader has read). */
  get tail(): number {
    return Atomics.load(this.#control, this.#tailAt);
  }

  /** The head as last published, for Atomics.waitAsync. */
  get head(): number {
    return Atomics.load(this.#control, this.#headAt);
  }

  /** Writes a record if it fits (and returns true): readable at once. */
  write(record: Uint8Array): boolean {
    const head = Atomics.load(this.#control, this.#headAt) >>> 0;
    const tail = Atomics.load(this.#control, this.#tailAt) >>> 0;
    const free = this.#data.length - ((head - tail) >>> 0);
    if (4 + record.length > free) return false;
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, record.length);
    this.#copyIn(head, length);
    this.#copyIn(head + 4, record);
    Atomics.store(this.#control, this.#headAt, (head + 4 + record.length) | 0);
    return true;
  }

  /** Every record written and not read yet, in order (copies); frees their room. */
  read(): Uint8Array[] {
    const head = Atomics.load(this.#control, this.#headAt) >>> 0;
    let at = Atomics.load(this.#control, this.#tailAt) >>> 0;
    if (head === at) return [];
    const records: Uint8Array[] = [];
    const length = new Uint8Array(4);
    while (at !== head) {
      this.#copyOut(at, length);
      const size = new DataView(length.buffer).getUint32(0);
      const record = new Uint8Array(size);
      this.#copyOut(at + 4, record);
      records.push(record);
      at = (at + 4 + size) >>> 0;
    }
    Atomics.store(this.#control, this.#tailAt, at | 0);
    return records;
  }

  #copyIn(at: number, bytes: Uint8Array): void {
    const start = at % this.#data.length;
    const first = Math.min(bytes.length, this.#data.length - start);
    this.#data.set(bytes.subarray(0, first), start);
    if (first < bytes.length) this.#data.set(bytes.subarray(first), 0);
  }

  #copyOut(at: number, into: Uint8Array): void {
    const start = at % this.#data.length;
    const first = Math.min(into.length, this.#data.length - start);
    into.set(this.#data.subarray(start, start + first));
    if (first < into.length) {
      into.set(this.#data.subarray(0, into.length - first), first);
    }
  }
}

/**
 * A term's doorbell: the leader waits on it when it has nothing to commit,
 * a member rings it after writing appends (which wakes the leader only if
 * it waits), and the leader ends it with its term.
 */
export class Doorbell {
  /** The memory, handed to members with the term's announcement. */
  readonly memory: SharedArrayBuffer;
  readonly #words: Int32Array;

  /** A new doorbell (the leader's), or the one in `memory` (a member's). */
  constructor(memory: SharedArrayBuffer = new SharedArrayBuffer(8)) {
    this.memory = memory;
    this.#words = new Int32Array(memory);
  }

  get ended(): boolean {
    return Atomics.load(this.#words, ENDED) === 1;
  }

  /** Wakes the leader if it waits. */
  ring(): void {
    if (Atomics.compareExchange(this.#words, WAITING, 1, 0) === 1) {
      Atomics.notify(this.#words, WAITING);
    }
  }

  /**
   * Waits until a member rings or the term ends, unless `ready()` says there
   * is work already (checked after declaring the wait, so that a member
   * writing meanwhile either is seen or rings).
   */
  async wait(ready: () => boolean): Promise<void> {
    Atomics.store(this.#words, WAITING, 1);
    if (ready() || this.ended) {
      Atomics.store(this.#words, WAITING, 0);
      return;
    }
    const result = Atomics.waitAsync(this.#words, WAITING, 1);
    if (result.async) await result.value;
  }

  /** Ends the term: a leader waiting wakes up, and nobody waits again. */
  end(): void {
    Atomics.store(this.#words, ENDED, 1);
    Atomics.store(this.#words, WAITING, 0);
    Atomics.notify(this.#words, WAITING);
  }
}

/**
 * A waiting member's link with the leader's term: the member writes its
 * appends and reads its answers, the leader the other way round.
 */
export class PairLink {
  /** The memory, handed to the leader when the member joins. */
  readonly memory: SharedArrayBuffer;
  readonly #control: Int32Array;
  readonly #requests: Ring;
  readonly #answers: Ring;
  readonly #encoder = new Encoder();
  /** The leader's answers that did not fit yet. */
  #pending: Uint8Array[] = [];

  /** A new link (the member's), or the one in `memory` (the leader's). */
  constructor(
    memory: SharedArrayBuffer = new SharedArrayBuffer(
      CONTROL_BYTES + REQUEST_BYTES + ANSWER_BYTES,
    ),
  ) {
    this.memory = memory;
    this.#control = new Int32Array(memory, 0, CONTROL_BYTES / 4);
    this.#requests = new Ring(
      this.#control,
      REQ_HEAD,
      REQ_TAIL,
      new Uint8Array(memory, CONTROL_BYTES, REQUEST_BYTES),
    );
    this.#answers = new Ring(
      this.#control,
      ANS_HEAD,
      ANS_TAIL,
      new Uint8Array(memory, CONTROL_BYTES + REQUEST_BYTES, ANSWER_BYTES),
    );
  }

  get memberLeft(): boolean {
    return (Atomics.load(this.#control, LEFT) & MEMBER_LEFT) !== 0;
  }

  get leaderLeft(): boolean {
    return (Atomics.load(this.#control, LEFT) & LEADER_LEFT) !== 0;
  }

  // ---------------------------------------------------------------- member

  /** Writes appends in order while they fit; returns how many it wrote. */
  send(appends: readonly ForwardedAppend[]): number {
    const encoder = this.#encoder;
    let written = 0;
    for (const item of appends) {
      encoder.reset();
      const small = item.value instanceof Uint8Array;
      encoder.u8(small ? 0 : 1);
      encoder.f64(item.seq);
      encoder.string(item.threadId);
      encoder.u8(item.appendId === undefined ? 0 : 1);
      if (item.appendId !== undefined) encoder.string(item.appendId);
      if (item.value instanceof Uint8Array) encoder.bytes(item.value);
      else {
        encoder.string(item.value.u);
        encoder.f64(item.value.n);
        encoder.f64(item.value.c);
        encoder.string(item.value.versionstamp);
      }
      if (!this.#requests.write(encoder.record)) break;
      written++;
    }
    return written;
  }

  /** The answers written since the last call, in order. */
  receive(): Answer[] {
    const answers: Answer[] = [];
    for (const record of this.#answers.read()) {
      const decoder = new Decoder(record);
      const kind = ANSWER_KINDS[decoder.u8()]!;
      switch (kind) {
        case "welcome":
          answers.push({ k: kind });
          break;
        case "log":
          answers.push({ k: kind, log: decoder.f64() });
          break;
        case "ok":
          answers.push({ k: kind, seq: decoder.f64(), index: decoder.f64() });
          break;
        case "moved":
          answers.push({ k: kind, seq: decoder.f64() });
          break;
        case "slots":
        case "threads":
          answers.push({ k: kind, seq: decoder.f64(), limit: decoder.f64() });
          break;
        case "backend":
          answers.push({
            k: kind,
            seq: decoder.f64(),
            message: decoder.string(),
          });
          break;
      }
    }
    return answers;
  }

  /**
   * Whether the leader holds answers that did not fit (then the member
   * rings the doorbell once it has read); clears the flag.
   */
  takeBlocked(): boolean {
    return Atomics.exchange(this.#control, BLOCKED, 0) === 1;
  }

  /** Resolves once answers may be ready, or the link is left by either side. */
  async answered(): Promise<void> {
    const head = this.#answers.head;
    if (this.#answers.ready || this.memberLeft || this.leaderLeft) return;
    const result = Atomics.waitAsync(this.#control, ANS_HEAD, head);
    if (result.async) await result.value;
  }

  /** The member leaves: its own wait for answers ends, the leader forgets the link. */
  leaveAsMember(): void {
    Atomics.or(this.#control, LEFT, MEMBER_LEFT);
    Atomics.notify(this.#control, ANS_HEAD);
  }

  // ---------------------------------------------------------------- leader

  /** Whether appends wait to be taken. */
  get appendsReady(): boolean {
    return this.#requests.ready;
  }

  /** The appends written since the last call, in order. */
  take(): ForwardedAppend[] {
    const appends: ForwardedAppend[] = [];
    for (const record of this.#requests.read()) {
      const decoder = new Decoder(record);
      const small = decoder.u8() === 0;
      const seq = decoder.f64();
      const threadId = decoder.string();
      const appendId = decoder.u8() === 1 ? decoder.string() : undefined;
      const value: Uint8Array | UploadRef = small ? decoder.bytes() : {
        u: decoder.string(),
        n: decoder.f64(),
        c: decoder.f64(),
        versionstamp: decoder.string(),
      };
      appends.push({ seq, threadId, appendId, value });
    }
    return appends;
  }

  /** Queues an answer; {@linkcode flush} writes it. */
  answer(answer: Answer): void {
    const encoder = this.#encoder;
    encoder.reset();
    encoder.u8(ANSWER_KINDS.indexOf(answer.k));
    switch (answer.k) {
      case "welcome":
        break;
      case "log":
        encoder.f64(answer.log);
        break;
      case "ok":
        encoder.f64(answer.seq);
        encoder.f64(answer.index);
        break;
      case "moved":
        encoder.f64(answer.seq);
        break;
      case "slots":
      case "threads":
        encoder.f64(answer.seq);
        encoder.f64(answer.limit);
        break;
      case "backend":
        encoder.f64(answer.seq);
        encoder.string(answer.message.slice(0, 4096));
        break;
    }
    this.#pending.push(encoder.record.slice());
  }

  /**
   * Writes the queued answers that fit and wakes the member; returns
   * whether some are left (the member has not read; flush again after it
   * rings).
   */
  flush(): boolean {
    for (;;) {
      if (this.#pending.length === 0) return false;
      let written = 0;
      while (
        written < this.#pending.length &&
        this.#answers.write(this.#pending[written]!)
      ) {
        written++;
      }
      if (written > 0) {
        this.#pending = this.#pending.slice(written);
        Atomics.notify(this.#control, ANS_HEAD);
        if (this.#pending.length === 0) return false;
      }
      // Some did not fit. Say so, then look again: either the member reads
      // after this (and sees the flag, and rings), or it has read already
      // (and there is room now).
      const tail = this.#answers.tail;
      Atomics.store(this.#control, BLOCKED, 1);
      if (this.#answers.tail === tail) return true;
    }
  }

  /** The leader leaves (its term ended): the member's wait for answers ends. */
  leaveAsLeader(): void {
    Atomics.or(this.#control, LEFT, LEADER_LEFT);
    Atomics.notify(this.#control, ANS_HEAD);
  }
}
