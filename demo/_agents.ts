// The agents of the demo, as a plain function over a backend: each Worker of
// demo/main.ts runs it (demo/_agent_worker.ts), and the memory run calls it
// in the main isolate. It uses the public API only: ThreadRegistry routes the
// calls, ContextBuffer keeps the messages.
//
// One turn of conversation k, four messages on four shared threads:
//
//   console-k --request--> router           thread of "console-k.router"
//   router    --call-----> greeter          thread of "console-k.router.greeter"
//                          (or calculator)  (the specialist reads it back)
//   greeter   --response-> router           pruneForResponse: back to "console-k.router"
//   router    --reply----> console-k        pruneForResponse: back to "console-k"
//
// Every Worker plays turns of every conversation at the same time as the
// others, so several Workers append to the same threads and create the same
// chains at once: the journal each returns (which index every append got,
// which uuid every chain got) is what the main isolate verifies the store
// against.

import { ContextBuffer, type SharedBackend, ThreadRegistry } from "../mod.ts";

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
  /** Chains the registry gave it two different uuids for, or read-backs that found another message. */
  mismatches: string[];
  /** `pruneForResponse` calls made. */
  prunes: number;
}

/** The payload of every demo message. */
export interface DemoMessage {
  type: "request" | "call" | "response" | "reply";
  /** Unique per message: `w<worker>#<n>`. */
  id: string;
  text: string;
}

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
  ): Promise<AppendRecord> => {
    const id = `w${job.worker}#${sequence++}`;
    const slot = await buffer.append(threadId, { type, id, text }, {
      fromId: from,
      toId: to,
    });
    const record = { threadId, index: slot.slotIndex, id };
    report.appends.push(record);
    onAppend();
    return record;
  };

  const turn = async (t: number, lane: number): Promise<void> => {
    // Every Worker plays the same conversation at about the same time; each
    // round of conversations, a Worker switches specialist, and half the
    // Workers start with the other one, so every thread has many writers.
    const played = t * job.lanes + lane;
    const k = played % job.conversations;
    const round = Math.floor(played / job.conversations);
    const console_ = `console-${k}`;
    const specialist = SPECIALISTS[(round + job.worker) % 2]!;

    // The console starts (or rejoins) its conversation with the router.
    const toRouter = saw(
      `${console_}.router`,
      await registry.startChain(console_, "router"),
    );
    await send(toRouter, console_, "router", "request", `turn ${t}`);

    // The router calls a specialist one hop further down the chain.
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

    // The specialist reads its thread back: its call is at the index its
    // append returned, whatever the other Workers appended meanwhile.
    const thread = await buffer.getThread(toSpecialist);
    const found = thread?.[call.index];
    if (found === undefined || found.payload.id !== call.id) {
      report.mismatches.push(
        `Worker ${job.worker} read back slot ${call.index} of ${toSpecialist} and found ${
          found === undefined ? "nothing" : found.payload.id
        } instead of its call ${call.id}`,
      );
    }

    // It answers: pruning its chain routes the response back to the router.
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
    await send(
      back.uuid,
      specialist,
      "router",
      "response",
      specialist === "greeter"
        ? `Hello, ${console_}!`
        : `${t} + ${k} = ${t + k}`,
    );

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
    await send(up.uuid, "router", console_, "reply", `done: turn ${t}`);
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
