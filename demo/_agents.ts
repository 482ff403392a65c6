// The agents of the demo, as a plain function over a backend: each Worker of
// demo/main.ts runs it (demo/_agent_worker.ts), and the memory run calls it
// in the main isolate. It uses the public API only: ThreadRegistry routes the
// calls, ContextBuffer keeps the messages, and every agent waits for the
// message it is to act on with ContextBuffer.waitFor (a watch of the thread,
// no polling, no read-back).
//
// One turn of conversation k, four messages on four shared threads:
//
//   console-k --request--> router           thread of "console-k.router"
//   router    --call-----> greeter          thread of "console-k.router.greeter"
//                          (or calculator)  the specialist waits for its call
//   greeter   --response-> router           pruneForResponse: back to "console-k.router",
//                                           where the router waits for it
//   router    --reply----> console-k        pruneForResponse: back to "console-k",
//                                           where the console waits for it
//
// Every Worker plays turns of every conversation at the same time as the
// others, so several Workers append to the same threads and create the same
// chains at once: the journal each returns (which index every append got,
// which uuid every chain got) is what the main isolate verifies the store
// against. Each wait checks that the message it received is at the index its
// append returned.

import {
  type BufferSlot,
  ContextBuffer,
  type SharedBackend,
  ThreadRegistry,
} from "../mod.ts";

/** What one Worker (or, on memory, one agent group) plays. */
export interface AgentJob {
  /** The Worker's number, 0-based: it names the messages (`w2#17`). */
  worker: number;
  /** Conversation turns to play (4 appends each). */
  turns: number;
  /** Conversations shared by every Worker: `console-0` .. `console-<n-1>`. */
  conversations: number;
  /** Turns in flight at once in this Worker. */
  lanes: number;
}

/** One append as its agent saw it. */
export interface AppendRecord {
  /** The thread (a uuid from the registry). */
  threadId: string;
  /** The index the atomic append returned. */
  index: number;
  /** The message's id, stored in its payload: `w<worker>#<n>`. */
  id: string;
}

/** What one Worker reports when it is done. */
export interface AgentReport {
  worker: number;
  /** Every append it made. */
  appends: AppendRecord[];
  /** Every `[chain, uuid]` the registry gave it (one per chain it used). */
  chains: [string, string][];
  /** Chains the registry gave it two different uuids for, or waits that did not find their message where its append put it. */
  mismatches: string[];
  /** `pruneForResponse` calls made. */
  prunes: number;
  /** Messages its agents waited for and received (with `waitFor`), each at the index its append returned. */
  received: number;
}

/** The payload of every demo message. */
export interface DemoMessage {
  type: "request" | "call" | "response" | "reply";
  /** Unique per message: `w<worker>#<n>`. */
  id: string;
  /** The id of the message this one answers (a response: the call; a reply: the request). */
  inReplyTo?: string;
  text: string;
}

/** How long an agent waits for a message before it reports a mismatch. */
const WAIT_MS = 60_000;

const SPECIALISTS = ["greeter", "calculator"] as const;

/**
 * Plays `job.turns` turns on `backend`, `job.lanes` at a time, calling
 * `onAppend` after every append (for progress).
 */
export async function playAgents(
  backend: SharedBackend,
  job: AgentJob,
  onAppend: () => void = () => {},
): Promise<AgentReport> {
  const registry = new ThreadRegistry(backend);
  const buffer = new ContextBuffer<DemoMessage>(backend);
  const report: AgentReport = {
    worker: job.worker,
    appends: [],
    chains: [],
    mismatches: [],
    prunes: 0,
    received: 0,
  };
  const seen = new Map<string, string>();
  let sequence = 0;

  const saw = (chain: string, uuid: string): string => {
    const before = seen.get(chain);
    if (before === undefined) {
      seen.set(chain, uuid);
      report.chains.push([chain, uuid]);
    } else if (before !== uuid) {
      report.mismatches.push(
        `Worker ${job.worker} got two uuids for chain "${chain}": ${before} and ${uuid}`,
      );
    }
    return uuid;
  };

  const send = async (
    threadId: string,
    from: string,
    to: string,
    type: DemoMessage["type"],
    text: string,
    inReplyTo?: string,
  ): Promise<AppendRecord> => {
    const id = `w${job.worker}#${sequence++}`;
    const message: DemoMessage = { type, id, text };
    if (inReplyTo !== undefined) message.inReplyTo = inReplyTo;
    const slot = await buffer.append(threadId, message, {
      fromId: from,
      toId: to,
    });
    const record = { threadId, index: slot.slotIndex, id };
    report.appends.push(record);
    onAppend();
    return record;
  };

  /**
   * `who` waits on `threadId`, from `fromIndex` on, for the first message
   * `match` accepts. Null (and a mismatch) when the wait fails.
   */
  const wait = async (
    who: string,
    threadId: string,
    fromIndex: number,
    match: (slot: BufferSlot<DemoMessage>) => boolean,
    signal?: AbortSignal,
  ): Promise<BufferSlot<DemoMessage> | null> => {
    try {
      return await buffer.waitFor(threadId, match, {
        fromIndex,
        timeoutMs: WAIT_MS,
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (error) {
      report.mismatches.push(
        `Worker ${job.worker}: the ${who} waited in vain on ${threadId}: ${
          error instanceof Error ? error.message : String(error)
        }`,
      );
      return null;
    }
  };

  /**
   * Checks that what `who` received is `expected`: the message its sender
   * appended, at the index that append returned. False (and a mismatch)
   * when it is not.
   */
  const check = (
    who: string,
    slot: BufferSlot<DemoMessage> | null,
    expected: AppendRecord | undefined,
  ): boolean => {
    if (slot === null) return false;
    if (
      expected === undefined || slot.payload.id !== expected.id ||
      slot.slotIndex !== expected.index
    ) {
      report.mismatches.push(
        `Worker ${job.worker}: the ${who} received ${slot.payload.id} at slot ${slot.slotIndex} of ${slot.threadId}, but expected ${
          expected === undefined
            ? "nothing"
            : `${expected.id}, whose append returned ${expected.index}`
        }`,
      );
      return false;
    }
    report.received++;
    return true;
  };

  /** Waits for `expected` by its id from its index on, and checks it. */
  const receive = async (
    who: string,
    expected: AppendRecord,
  ): Promise<boolean> =>
    check(
      who,
      await wait(
        who,
        expected.threadId,
        expected.index,
        (slot) => slot.payload.id === expected.id,
      ),
      expected,
    );

  const turn = async (t: number, lane: number): Promise<void> => {
    // Every Worker plays the same conversation at about the same time; each
    // round of conversations, a Worker switches specialist, and half the
    // Workers start with the other one, so every thread has many writers.
    const played = t * job.lanes + lane;
    const k = played % job.conversations;
    const round = Math.floor(played / job.conversations);
    const console_ = `console-${k}`;
    const specialist = SPECIALISTS[(round + job.worker) % 2]!;

    // The console's inbox is the thread of its own chain: the reply to this
    // turn's request is appended there after this length was read.
    const inbox = seen.get(console_) ??
      saw(console_, await registry.getOrCreate(console_));
    const inboxFrom = await buffer.threadLength(inbox);

    // The console starts (or rejoins) its conversation with the router.
    const toRouter = saw(
      `${console_}.router`,
      await registry.startChain(console_, "router"),
    );
    const request = await send(
      toRouter,
      console_,
      "router",
      "request",
      `turn ${t}`,
    );

    // The router waits for the request, then calls a specialist one hop
    // further down the chain.
    if (!await receive("router", request)) return;
    const toSpecialist = saw(
      `${console_}.router.${specialist}`,
      await registry.extendChain(toRouter, specialist),
    );
    const call = await send(
      toSpecialist,
      "router",
      specialist,
      "call",
      specialist === "greeter" ? `greet ${console_}` : `add ${t} and ${k}`,
    );

    // The specialist waits for its call and answers: pruning its chain
    // routes the response back to the router.
    let response: AppendRecord | undefined;
    const answer = async (): Promise<void> => {
      if (!await receive(specialist, call)) return;
      const back = await registry.pruneForResponse(toSpecialist);
      report.prunes++;
      if (back === null || back.target !== "router") {
        report.mismatches.push(
          `Worker ${job.worker}: pruning ${toSpecialist} routed to ${
            back === null ? "nobody" : back.target
          } instead of router`,
        );
        return;
      }
      saw(`${console_}.router`, back.uuid);
      response = await send(
        back.uuid,
        specialist,
        "router",
        "response",
        specialist === "greeter"
          ? `Hello, ${console_}!`
          : `${t} + ${k} = ${t + k}`,
        call.id,
      );
    };

    // Meanwhile the router waits for the response on its own thread: it
    // comes after the request (and stops waiting if no answer is coming).
    const noAnswer = new AbortController();
    const [, responded] = await Promise.all([
      answer().finally(() => {
        if (response === undefined) {
          noAnswer.abort(new Error(`${specialist} did not answer ${call.id}`));
        }
      }),
      wait(
        "router",
        toRouter,
        request.index + 1,
        (slot) =>
          slot.payload.type === "response" &&
          slot.payload.inReplyTo === call.id,
        noAnswer.signal,
      ),
    ]);
    if (!check("router", responded, response)) return;

    // The router replies to the console, one hop further up.
    const up = await registry.pruneForResponse(toRouter);
    report.prunes++;
    if (up === null || up.target !== console_) {
      report.mismatches.push(
        `Worker ${job.worker}: pruning ${toRouter} routed to ${
          up === null ? "nobody" : up.target
        } instead of ${console_}`,
      );
      return;
    }
    saw(console_, up.uuid);
    const reply = await send(
      up.uuid,
      "router",
      console_,
      "reply",
      `done: turn ${t}`,
      request.id,
    );

    // The console waits for the reply in its inbox.
    check(
      console_,
      await wait(
        console_,
        inbox,
        inboxFrom,
        (slot) =>
          slot.payload.type === "reply" &&
          slot.payload.inReplyTo === request.id,
      ),
      reply,
    );
  };

  // `lanes` loops, each playing every lanes-th turn.
  await Promise.all(
    Array.from({ length: job.lanes }, async (_, lane) => {
      for (let t = 0; t * job.lanes + lane < job.turns; t++) {
        await turn(t, lane);
      }
    }),
  );
  return report;
}
